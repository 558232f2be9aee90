//! The [`MessageDb`] calls on a pooled connection: each takes a connection from the pool for
//! one statement.

use tokio_postgres::types::Type;

use super::MessageDb;
use super::conn::{Conn, check_category_read, check_stream_read};
use super::sql::{CARDINAL_ID, CATEGORY, HASH_64, ID, IS_CATEGORY, VERSION};
use crate::{
    CategoryReadOptions, Message, MessageDbError, NewMessage, StreamReadOptions, SummaryRow,
    SummaryView,
};

impl MessageDb {
    /// One of the name functions (`id`, `category`, …): one text argument, one value.
    async fn name_function<T>(&self, sql: &str, argument: &str) -> Result<T, MessageDbError>
    where
        T: for<'r> tokio_postgres::types::FromSql<'r>,
    {
        let conn = self.conn().await?;
        Conn::Pooled(&conn)
            .scalar(sql, &[(&argument, Type::VARCHAR)])
            .await
    }

    /// Writes `message` to `stream` (`write_message`) and returns its position in the stream.
    ///
    /// # Errors
    /// [`MessageDbError::WrongExpectedVersion`] when the stream is not at the message's expected
    /// version; [`MessageDbError::DuplicateMessageId`] when the id is taken; otherwise
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.write_message",
        level = "debug",
        skip_all,
        fields(stream = %stream, message_type = %message.message_type),
    )]
    pub async fn write_message(
        &self,
        stream: &str,
        message: &NewMessage,
    ) -> Result<u64, MessageDbError> {
        message.expected_version.to_sql()?;
        let conn = self.conn().await?;
        Conn::Pooled(&conn).write_message(stream, message).await
    }

    /// Reads a stream from a position (`get_stream_messages`).
    ///
    /// # Errors
    /// [`MessageDbError::InvalidArgument`] for a category, a zero batch size or a position beyond
    /// `i64::MAX`; [`MessageDbError::ConditionNotActivated`] for a condition while conditions are
    /// off; otherwise [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.get_stream_messages",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn get_stream_messages(
        &self,
        stream: &str,
        read: &StreamReadOptions,
    ) -> Result<Vec<Message>, MessageDbError> {
        check_stream_read(stream, read)?;
        let conn = self.conn().await?;
        Conn::Pooled(&conn)
            .get_stream_messages(&self.options, stream, read)
            .await
    }

    /// Reads a category from a global position (`get_category_messages`), optionally filtered by
    /// correlation, consumer group and condition.
    ///
    /// # Errors
    /// [`MessageDbError::InvalidArgument`] for a stream name, a correlation that is not a
    /// category, a consumer group Message DB cannot take or a zero batch size — all before any
    /// query; [`MessageDbError::ConditionNotActivated`] for a condition while conditions are off;
    /// otherwise [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.get_category_messages",
        level = "debug",
        skip_all,
        fields(category = %category),
    )]
    pub async fn get_category_messages(
        &self,
        category: &str,
        read: &CategoryReadOptions,
    ) -> Result<Vec<Message>, MessageDbError> {
        check_category_read(category, read)?;
        let conn = self.conn().await?;
        Conn::Pooled(&conn)
            .get_category_messages(&self.options, category, read)
            .await
    }

    /// The stream's last message (`get_last_stream_message`), `None` for an empty stream.
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.get_last_stream_message",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn get_last_stream_message(
        &self,
        stream: &str,
    ) -> Result<Option<Message>, MessageDbError> {
        let conn = self.conn().await?;
        Conn::Pooled(&conn)
            .get_last_stream_message(stream, None)
            .await
    }

    /// The stream's last message of type `message_type`, `None` when there is none.
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.get_last_stream_message_of_type",
        level = "debug",
        skip_all,
        fields(stream = %stream, message_type = %message_type),
    )]
    pub async fn get_last_stream_message_of_type(
        &self,
        stream: &str,
        message_type: &str,
    ) -> Result<Option<Message>, MessageDbError> {
        let conn = self.conn().await?;
        Conn::Pooled(&conn)
            .get_last_stream_message(stream, Some(message_type))
            .await
    }

    /// The position of the stream's last message (`stream_version`), `None` for an empty stream.
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.stream_version",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn stream_version(&self, stream: &str) -> Result<Option<u64>, MessageDbError> {
        let conn = self.conn().await?;
        Conn::Pooled(&conn).stream_version(stream).await
    }

    /// The rows of one of Message DB's summary views.
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(
        name = "message_db.summary",
        level = "debug",
        skip_all,
        fields(view = ?view),
    )]
    pub async fn summary(&self, view: SummaryView) -> Result<Vec<SummaryRow>, MessageDbError> {
        let conn = self.conn().await?;
        Conn::Pooled(&conn).summary(view).await
    }

    /// `message_store.id`: see [`names::id`](crate::names::id) for the same without a query.
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(name = "message_db.id", level = "debug", skip_all)]
    pub async fn id(&self, stream: &str) -> Result<Option<String>, MessageDbError> {
        self.name_function(ID, stream).await
    }

    /// `message_store.cardinal_id`: see [`names::cardinal_id`](crate::names::cardinal_id).
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(name = "message_db.cardinal_id", level = "debug", skip_all)]
    pub async fn cardinal_id(&self, stream: &str) -> Result<Option<String>, MessageDbError> {
        self.name_function(CARDINAL_ID, stream).await
    }

    /// `message_store.category`: see [`names::category`](crate::names::category).
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(name = "message_db.category", level = "debug", skip_all)]
    pub async fn category(&self, stream: &str) -> Result<String, MessageDbError> {
        self.name_function(CATEGORY, stream).await
    }

    /// `message_store.is_category`: see [`names::is_category`](crate::names::is_category).
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(name = "message_db.is_category", level = "debug", skip_all)]
    pub async fn is_category(&self, name: &str) -> Result<bool, MessageDbError> {
        self.name_function(IS_CATEGORY, name).await
    }

    /// `message_store.hash_64`: see [`names::hash_64`](crate::names::hash_64).
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(name = "message_db.hash_64", level = "debug", skip_all)]
    pub async fn hash_64(&self, value: &str) -> Result<i64, MessageDbError> {
        self.name_function(HASH_64, value).await
    }

    /// The version of the installed Message DB (`message_store_version`).
    ///
    /// # Errors
    /// [`MessageDbError::Database`] or [`MessageDbError::Pool`].
    #[tracing::instrument(name = "message_db.message_store_version", level = "debug", skip_all)]
    pub async fn message_store_version(&self) -> Result<String, MessageDbError> {
        let conn = self.conn().await?;
        Conn::Pooled(&conn).scalar(VERSION, &[]).await
    }
}
