//! The executor every call goes through ([`Conn`]): a pooled connection (prepared statements)
//! or a caller's transaction (typed parameters), with the one implementation of each Message DB
//! call and the argument checks made before any connection is taken.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Transaction};

use super::sql::{
    CATEGORY_READ, CATEGORY_READ_CONDITION, LAST_MESSAGE, STREAM_READ, STREAM_READ_CONDITION,
    STREAM_VERSION, WRITE,
};
use crate::error::{classify, classify_write};
use crate::options::to_bigint;
use crate::{
    CategoryReadOptions, InvalidArgument, Message, MessageDbError, MessageDbOptions, NewMessage,
    StreamReadOptions, SummaryRow, SummaryView,
};

/// Where a call runs: a pooled connection (statements prepared once per connection) or a
/// caller's transaction (one round trip per call with explicitly typed parameters).
#[derive(Clone, Copy)]
pub(super) enum Conn<'a> {
    Pooled(&'a deadpool_postgres::Object),
    Tx(&'a Transaction<'a>),
}

type Param<'a> = (&'a (dyn ToSql + Sync), Type);

impl Conn<'_> {
    pub(super) async fn query(
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

    pub(super) async fn scalar<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<T, MessageDbError>
    where
        T: for<'r> tokio_postgres::types::FromSql<'r>,
    {
        let rows = self.query(sql, params).await.map_err(classify)?;
        let row = rows.first().ok_or_else(|| MessageDbError::Refused {
            message: "the function returned no row".into(),
        })?;
        row.try_get(0).map_err(MessageDbError::Database)
    }

    pub(super) async fn write_message(
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

    pub(super) async fn get_stream_messages(
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

    pub(super) async fn get_category_messages(
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

    pub(super) async fn get_last_stream_message(
        &self,
        stream: &str,
        message_type: Option<&str>,
    ) -> Result<Option<Message>, MessageDbError> {
        let params: [Param<'_>; 2] = [(&stream, Type::VARCHAR), (&message_type, Type::VARCHAR)];
        Ok(messages(&self.query(LAST_MESSAGE, &params).await.map_err(classify)?)?.pop())
    }

    pub(super) async fn stream_version(&self, stream: &str) -> Result<Option<u64>, MessageDbError> {
        let version: Option<i64> = self
            .scalar(STREAM_VERSION, &[(&stream, Type::VARCHAR)])
            .await?;
        Ok(version.and_then(|v| u64::try_from(v).ok()))
    }

    pub(super) async fn summary(
        &self,
        view: SummaryView,
    ) -> Result<Vec<SummaryRow>, MessageDbError> {
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
pub(super) fn check_stream_read(
    stream: &str,
    read: &StreamReadOptions,
) -> Result<(i64, i64), InvalidArgument> {
    if crate::names::is_category(stream) {
        return Err(InvalidArgument::NotAStreamName(stream.to_owned()));
    }
    read.to_sql()
}

/// Checks a category read's arguments (before any connection is taken).
pub(super) fn check_category_read(
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
