use std::fmt;

use deadpool_postgres::Pool;
use eventrail_store_postgres::{ConnectError, PgConnectOptions};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};

use crate::error::{classify, classify_write};
use crate::options::to_bigint;
use crate::{
    CategoryReadOptions, InvalidArgument, Message, MessageDbError, MessageDbOptions, NewMessage,
    StreamReadOptions, SummaryRow, SummaryView,
};

/// Makes Message DB's schema the first on the search path for the rest of the transaction (the
/// statement's own implicit transaction outside a transaction block), keeping the caller's path
/// behind it. Message DB's functions name their table and helpers unqualified, so they need it;
/// setting it per statement (rather than per connection) leaves pooled connections untouched.
/// When the path already starts with `message_store` (connections of [`MessageDb::connect`]),
/// nothing is set.
///
/// Arguments go through `_call` too: the stream-name functions are `IMMUTABLE`, and PostgreSQL
/// evaluates an immutable call on constants while planning, before the search path is set.
macro_rules! call_prefix {
    () => {
        "WITH _call AS MATERIALIZED (SELECT CASE \
         WHEN current_setting('search_path') ~ '^\\s*message_store\\s*(,|$)' THEN NULL \
         WHEN btrim(current_setting('search_path')) = '' THEN set_config('search_path', 'message_store', true) \
         ELSE set_config('search_path', 'message_store, ' || current_setting('search_path'), true) END AS _path"
    };
}

/// The same, also turning `message_store.sql_condition` on.
macro_rules! call_prefix_condition {
    () => {
        concat!(
            call_prefix!(),
            ", set_config('message_store.sql_condition', 'on', true) AS _condition"
        )
    };
}

// The reads pass their arguments through `_call`, so the function scan depends on it laterally
// and runs after the settings took effect.
macro_rules! stream_read {
    ($prefix:expr) => {
        concat!(
            $prefix,
            ", $1::varchar AS s, $2::bigint AS p, $3::bigint AS b, $4::varchar AS c) \
             SELECT m.id, m.stream_name, m.type, m.position, m.global_position, m.data, m.metadata, m.time \
             FROM _call, LATERAL message_store.get_stream_messages(_call.s, _call.p, _call.b, _call.c) AS m"
        )
    };
}

macro_rules! category_read {
    ($prefix:expr) => {
        concat!(
            $prefix,
            ", $1::varchar AS s, $2::bigint AS p, $3::bigint AS b, $4::varchar AS r, $5::bigint AS gm, \
             $6::bigint AS gs, $7::varchar AS c) \
             SELECT m.id, m.stream_name, m.type, m.position, m.global_position, m.data, m.metadata, m.time \
             FROM _call, LATERAL message_store.get_category_messages(_call.s, _call.p, _call.b, _call.r, _call.gm, _call.gs, _call.c) AS m"
        )
    };
}

const WRITE: &str = concat!(
    call_prefix!(),
    ") SELECT message_store.write_message($1::varchar, $2::varchar, $3::varchar, $4::jsonb, $5::jsonb, $6::bigint) FROM _call"
);
const STREAM_READ: &str = stream_read!(call_prefix!());
const STREAM_READ_CONDITION: &str = stream_read!(call_prefix_condition!());
const CATEGORY_READ: &str = category_read!(call_prefix!());
const CATEGORY_READ_CONDITION: &str = category_read!(call_prefix_condition!());
const LAST_MESSAGE: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s, $2::varchar AS t) \
     SELECT m.id, m.stream_name, m.type, m.position, m.global_position, m.data, m.metadata, m.time \
     FROM _call, LATERAL message_store.get_last_stream_message(_call.s, _call.t) AS m"
);
const STREAM_VERSION: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.stream_version(_call.s) FROM _call"
);
const ID: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.id(_call.s)::text FROM _call"
);
const CARDINAL_ID: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.cardinal_id(_call.s)::text FROM _call"
);
const CATEGORY: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.category(_call.s)::text FROM _call"
);
const IS_CATEGORY: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.is_category(_call.s) FROM _call"
);
const HASH_64: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.hash_64(_call.s) FROM _call"
);
const ACQUIRE_LOCK: &str = concat!(
    call_prefix!(),
    ", $1::varchar AS s) SELECT message_store.acquire_lock(_call.s) FROM _call"
);
const VERSION: &str = concat!(
    call_prefix!(),
    ") SELECT message_store.message_store_version()::text FROM _call"
);

/// Where a call runs: a pooled connection (statements prepared once per connection) or a
/// caller's transaction (one round trip per call with explicitly typed parameters).
#[derive(Clone, Copy)]
enum Conn<'a> {
    Pooled(&'a deadpool_postgres::Object),
    Tx(&'a Transaction<'a>),
}

type Param<'a> = (&'a (dyn ToSql + Sync), Type);

impl Conn<'_> {
    async fn query(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match self {
            Self::Pooled(client) => {
                let statement = client.prepare_cached(sql).await?;
                let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
                client.query(&statement, &values).await
            }
            Self::Tx(tx) => tx.query_typed(sql, params).await,
        }
    }

    async fn scalar<T>(&self, sql: &str, params: &[Param<'_>]) -> Result<T, MessageDbError>
    where
        T: for<'r> tokio_postgres::types::FromSql<'r>,
    {
        let rows = self.query(sql, params).await.map_err(classify)?;
        let row = rows.first().ok_or_else(|| MessageDbError::Refused {
            message: "the function returned no row".into(),
        })?;
        row.try_get(0).map_err(MessageDbError::Database)
    }

    async fn write_message(
        &self,
        stream: &str,
        message: &NewMessage,
    ) -> Result<u64, MessageDbError> {
        let expected = message.expected_version.to_sql()?;
        let id = message.id.to_string();
        let params: [Param<'_>; 6] = [
            (&id, Type::VARCHAR),
            (&stream, Type::VARCHAR),
            (&message.message_type, Type::VARCHAR),
            (&message.data, Type::JSONB),
            (&message.metadata, Type::JSONB),
            (&expected, Type::INT8),
        ];
        let rows = self
            .query(WRITE, &params)
            .await
            .map_err(|e| classify_write(e, stream, message.expected_version, message.id))?;
        let position: i64 = rows
            .first()
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(MessageDbError::Database)?
            .unwrap_or(-1);
        u64::try_from(position).map_err(|_| MessageDbError::Refused {
            message: format!("write_message returned position {position}"),
        })
    }

    async fn get_stream_messages(
        &self,
        options: &MessageDbOptions,
        stream: &str,
        read: &StreamReadOptions,
    ) -> Result<Vec<Message>, MessageDbError> {
        let (position, batch) = check_stream_read(stream, read)?;
        let sql = if options.sql_condition && read.condition.is_some() {
            STREAM_READ_CONDITION
        } else {
            STREAM_READ
        };
        let params: [Param<'_>; 4] = [
            (&stream, Type::VARCHAR),
            (&position, Type::INT8),
            (&batch, Type::INT8),
            (&read.condition, Type::VARCHAR),
        ];
        messages(&self.query(sql, &params).await.map_err(classify)?)
    }

    async fn get_category_messages(
        &self,
        options: &MessageDbOptions,
        category: &str,
        read: &CategoryReadOptions,
    ) -> Result<Vec<Message>, MessageDbError> {
        let (position, batch) = check_category_read(category, read)?;
        let filter = read.filter.to_sql()?;
        let sql = if options.sql_condition && filter.condition.is_some() {
            CATEGORY_READ_CONDITION
        } else {
            CATEGORY_READ
        };
        let params: [Param<'_>; 7] = [
            (&category, Type::VARCHAR),
            (&position, Type::INT8),
            (&batch, Type::INT8),
            (&filter.correlation, Type::VARCHAR),
            (&filter.member, Type::INT8),
            (&filter.size, Type::INT8),
            (&filter.condition, Type::VARCHAR),
        ];
        messages(&self.query(sql, &params).await.map_err(classify)?)
    }

    async fn get_last_stream_message(
        &self,
        stream: &str,
        message_type: Option<&str>,
    ) -> Result<Option<Message>, MessageDbError> {
        let params: [Param<'_>; 2] = [(&stream, Type::VARCHAR), (&message_type, Type::VARCHAR)];
        Ok(messages(&self.query(LAST_MESSAGE, &params).await.map_err(classify)?)?.pop())
    }

    async fn stream_version(&self, stream: &str) -> Result<Option<u64>, MessageDbError> {
        let version: Option<i64> = self
            .scalar(STREAM_VERSION, &[(&stream, Type::VARCHAR)])
            .await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    async fn summary(&self, view: SummaryView) -> Result<Vec<SummaryRow>, MessageDbError> {
        let rows = self.query(view.sql(), &[]).await.map_err(classify)?;
        rows.iter()
            .map(|row| {
                let count: i64 = row.try_get(3)?;
                Ok(SummaryRow {
                    stream_name: row.try_get(0)?,
                    category: row.try_get(1)?,
                    message_type: row.try_get(2)?,
                    message_count: u64::try_from(count).unwrap_or(0),
                    percent: row.try_get(4)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(MessageDbError::Database)
    }
}

/// Checks a stream read's arguments (before any connection is taken).
fn check_stream_read(
    stream: &str,
    read: &StreamReadOptions,
) -> Result<(i64, i64), InvalidArgument> {
    if crate::names::is_category(stream) {
        return Err(InvalidArgument::NotAStreamName(stream.to_owned()));
    }
    read.to_sql()
}

/// Checks a category read's arguments (before any connection is taken).
fn check_category_read(
    category: &str,
    read: &CategoryReadOptions,
) -> Result<(i64, i64), InvalidArgument> {
    if !crate::names::is_category(category) {
        return Err(InvalidArgument::NotACategory(category.to_owned()));
    }
    let position = to_bigint("position", read.position)?;
    let batch = read.batch_size.to_sql()?;
    read.filter.to_sql()?;
    Ok((position, batch))
}

fn messages(rows: &[Row]) -> Result<Vec<Message>, MessageDbError> {
    rows.iter()
        .map(|row| Message::from_row(row).map_err(MessageDbError::from))
        .collect()
}

/// A Message DB client over a deadpool-postgres pool.
///
/// Every call sets Message DB's search path itself (for its own statement only), so the pool can
/// be shared with other code. The `_in` methods (such as
/// [`write_message_in`](Self::write_message_in)) make the same calls on a caller's transaction.
///
/// Cloning is cheap: clones share the pool.
#[derive(Clone)]
pub struct MessageDb {
    pool: Pool,
    options: MessageDbOptions,
}

impl fmt::Debug for MessageDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageDb")
            .field("pool", &self.pool.status())
            .field("options", &self.options)
            .finish()
    }
}

impl MessageDb {
    /// A client on `pool`, with default options.
    pub fn new(pool: Pool) -> Self {
        Self::with_options(pool, MessageDbOptions::default())
    }

    /// A client on `pool`.
    pub fn with_options(pool: Pool, options: MessageDbOptions) -> Self {
        Self { pool, options }
    }

    /// A client with a pool of its own on `url`, for example
    /// `postgres://message_store@localhost/message_store?sslmode=verify-full`: TLS, timeouts and
    /// the pool size as [`PgConnectOptions`] reads them. Its connections start with
    /// `message_store, public` as their search path (as Eventide's clients do), so calls need not
    /// set it, and are named `eventrail-message-db` unless the URL sets an `application_name`.
    ///
    /// # Errors
    /// [`MessageDbError::Connect`] when the URL does not parse or its TLS settings cannot work.
    /// No connection is opened yet.
    pub fn connect(url: &str) -> Result<Self, MessageDbError> {
        Self::connect_with(&PgConnectOptions::from_url(url)?)
    }

    /// [`connect`](Self::connect) with connection options built in code.
    ///
    /// # Errors
    /// [`MessageDbError::Connect`] when its TLS settings cannot work (an unreadable CA file).
    pub fn connect_with(connect: &PgConnectOptions) -> Result<Self, MessageDbError> {
        let pool = connect.pool_adjusted("eventrail-message-db", |config| {
            let options = match config.get_options() {
                Some(given) => format!("{given} -c search_path=message_store,public"),
                None => "-c search_path=message_store,public".to_owned(),
            };
            config.options(options);
        })?;
        Ok(Self::new(pool))
    }

    /// The pool.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The options.
    pub fn options(&self) -> &MessageDbOptions {
        &self.options
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, MessageDbError> {
        self.pool
            .get()
            .await
            .map_err(|e| ConnectError::from_pool(e, &self.pool).into())
    }

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
