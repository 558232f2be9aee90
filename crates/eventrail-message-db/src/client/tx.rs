//! The `_in` calls: the same as the pooled ones, on the caller's transaction (the idiom of every
//! eventrail crate), plus `acquire_lock_in`, which only makes sense there.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::MessageDb;
use super::conn::Conn;
use super::sql::ACQUIRE_LOCK;
use crate::{
    CategoryReadOptions, Message, MessageDbError, NewMessage, StreamReadOptions, SummaryRow,
    SummaryView,
};

impl MessageDb {
    // The same calls on the caller's transaction (the `_in` idiom of every eventrail crate):
    // writes commit or roll back with it; after a failed call the transaction is aborted.

    /// [`MessageDb::write_message`] in the transaction.
    ///
    /// # Errors
    /// As [`MessageDb::write_message`].
    #[tracing::instrument(
        name = "message_db.write_message",
        level = "debug",
        skip_all,
        fields(stream = %stream, message_type = %message.message_type),
    )]
    pub async fn write_message_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
        message: &NewMessage,
    ) -> Result<u64, MessageDbError> {
        Conn::Tx(tx).write_message(stream, message).await
    }

    /// [`MessageDb::get_stream_messages`] in the transaction (it sees the transaction's writes).
    ///
    /// # Errors
    /// As [`MessageDb::get_stream_messages`].
    #[tracing::instrument(
        name = "message_db.get_stream_messages",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn get_stream_messages_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
        read: &StreamReadOptions,
    ) -> Result<Vec<Message>, MessageDbError> {
        Conn::Tx(tx)
            .get_stream_messages(&self.options, stream, read)
            .await
    }

    /// [`MessageDb::get_category_messages`] in the transaction.
    ///
    /// # Errors
    /// As [`MessageDb::get_category_messages`].
    #[tracing::instrument(
        name = "message_db.get_category_messages",
        level = "debug",
        skip_all,
        fields(category = %category),
    )]
    pub async fn get_category_messages_in(
        &self,
        tx: &Transaction<'_>,
        category: &str,
        read: &CategoryReadOptions,
    ) -> Result<Vec<Message>, MessageDbError> {
        Conn::Tx(tx)
            .get_category_messages(&self.options, category, read)
            .await
    }

    /// [`MessageDb::get_last_stream_message`] in the transaction.
    ///
    /// # Errors
    /// As [`MessageDb::get_last_stream_message`].
    #[tracing::instrument(
        name = "message_db.get_last_stream_message",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn get_last_stream_message_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
    ) -> Result<Option<Message>, MessageDbError> {
        Conn::Tx(tx).get_last_stream_message(stream, None).await
    }

    /// [`MessageDb::get_last_stream_message_of_type`] in the transaction.
    ///
    /// # Errors
    /// As [`MessageDb::get_last_stream_message_of_type`].
    #[tracing::instrument(
        name = "message_db.get_last_stream_message_of_type",
        level = "debug",
        skip_all,
        fields(stream = %stream, message_type = %message_type),
    )]
    pub async fn get_last_stream_message_of_type_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
        message_type: &str,
    ) -> Result<Option<Message>, MessageDbError> {
        Conn::Tx(tx)
            .get_last_stream_message(stream, Some(message_type))
            .await
    }

    /// [`MessageDb::stream_version`] in the transaction.
    ///
    /// # Errors
    /// As [`MessageDb::stream_version`].
    #[tracing::instrument(
        name = "message_db.stream_version",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn stream_version_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
    ) -> Result<Option<u64>, MessageDbError> {
        Conn::Tx(tx).stream_version(stream).await
    }

    /// Takes the transaction-scoped advisory lock of the stream's category (`acquire_lock`, the
    /// lock `write_message` takes) and returns its key, `hash_64(category)`. Other writers to the
    /// category wait until this transaction ends. Only useful in a transaction, hence only here.
    ///
    /// # Errors
    /// [`MessageDbError::Database`].
    #[tracing::instrument(
        name = "message_db.acquire_lock",
        level = "debug",
        skip_all,
        fields(stream = %stream),
    )]
    pub async fn acquire_lock_in(
        &self,
        tx: &Transaction<'_>,
        stream: &str,
    ) -> Result<i64, MessageDbError> {
        Conn::Tx(tx)
            .scalar(ACQUIRE_LOCK, &[(&stream, Type::VARCHAR)])
            .await
    }

    /// [`MessageDb::summary`] in the transaction.
    ///
    /// # Errors
    /// As [`MessageDb::summary`].
    #[tracing::instrument(
        name = "message_db.summary",
        level = "debug",
        skip_all,
        fields(view = ?view),
    )]
    pub async fn summary_in(
        &self,
        tx: &Transaction<'_>,
        view: SummaryView,
    ) -> Result<Vec<SummaryRow>, MessageDbError> {
        Conn::Tx(tx).summary(view).await
    }
}
