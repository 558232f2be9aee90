//! How pooled work sends its statements: cached prepared statements, or unnamed ones for
//! PgBouncer in transaction pooling mode.

use postgres_types::{ToSql, Type};
use tokio_postgres::{Error, GenericClient, Row, Statement};

/// How the store, the worker and the outbox relay send statements on their pooled connections.
///
/// Both send every parameter with its declared type, so a statement means the same either way.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Statements {
    /// Prepared once per pooled connection and kept (deadpool-postgres' statement cache): the
    /// server parses and plans each statement once. For connections straight to PostgreSQL, or
    /// through a pooler that keeps prepared statements (PgBouncer in session mode, or 1.21 and
    /// later with `max_prepared_statements`).
    #[default]
    Cached,
    /// Unnamed statements only: parse, bind and execute in one round trip, nothing kept on the
    /// server, so consecutive statements may run on different server connections. For PgBouncer
    /// in transaction pooling mode (see the README's "Behind PgBouncer"). The server parses and
    /// plans every statement each time.
    Unnamed,
}

/// A pooled connection, or a transaction on one: what [`Statements`] runs statements on.
pub trait PooledClient: Sync {
    /// The tokio-postgres client or transaction underneath.
    type Inner: GenericClient + Sync;

    /// The tokio-postgres client or transaction underneath.
    fn inner(&self) -> &Self::Inner;

    /// Prepares `sql` with `types`, or takes it from the connection's statement cache.
    fn prepare_cached(
        &self,
        sql: &str,
        types: &[Type],
    ) -> impl Future<Output = Result<Statement, Error>> + Send;
}

impl PooledClient for deadpool_postgres::ClientWrapper {
    type Inner = tokio_postgres::Client;

    fn inner(&self) -> &Self::Inner {
        self
    }

    fn prepare_cached(
        &self,
        sql: &str,
        types: &[Type],
    ) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare_typed_cached(sql, types)
    }
}

impl<'a> PooledClient for deadpool_postgres::Transaction<'a> {
    type Inner = tokio_postgres::Transaction<'a>;

    fn inner(&self) -> &Self::Inner {
        self
    }

    fn prepare_cached(
        &self,
        sql: &str,
        types: &[Type],
    ) -> impl Future<Output = Result<Statement, Error>> + Send {
        self.prepare_typed_cached(sql, types)
    }
}

type Params<'p> = [(&'p (dyn ToSql + Sync), Type)];

/// The cached statement of `sql` for the parameters' types, and the parameter values.
async fn prepared<'p>(
    client: &impl PooledClient,
    sql: &str,
    params: &Params<'p>,
) -> Result<(Statement, Vec<&'p (dyn ToSql + Sync)>), Error> {
    let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
    let statement = client.prepare_cached(sql, &types).await?;
    Ok((statement, params.iter().map(|(v, _)| *v).collect()))
}

impl Statements {
    /// In [`Statements::Cached`] mode, prepares `sql` into the connection's cache now, so a
    /// later call sends its statement at once (keeps the order of pipelined requests); nothing
    /// in [`Statements::Unnamed`] mode.
    ///
    /// # Errors
    /// The server's refusal to prepare it.
    pub async fn warm(
        self,
        client: &impl PooledClient,
        sql: &str,
        types: &[Type],
    ) -> Result<(), Error> {
        if self == Self::Cached {
            client.prepare_cached(sql, types).await?;
        }
        Ok(())
    }

    /// The rows of `sql` with `params`.
    ///
    /// # Errors
    /// The statement's failure.
    pub async fn query(
        self,
        client: &impl PooledClient,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, Error> {
        match self {
            Self::Cached => {
                let (statement, values) = prepared(client, sql, params).await?;
                client.inner().query(&statement, &values).await
            }
            Self::Unnamed => client.inner().query_typed(sql, params).await,
        }
    }

    /// The one row of `sql` with `params`.
    ///
    /// # Errors
    /// The statement's failure, or a number of rows other than one.
    pub async fn query_one(
        self,
        client: &impl PooledClient,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Row, Error> {
        match self {
            Self::Cached => {
                let (statement, values) = prepared(client, sql, params).await?;
                client.inner().query_one(&statement, &values).await
            }
            Self::Unnamed => client.inner().query_typed_one(sql, params).await,
        }
    }

    /// The row of `sql` with `params`, if any.
    ///
    /// # Errors
    /// The statement's failure, or more than one row.
    pub async fn query_opt(
        self,
        client: &impl PooledClient,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, Error> {
        match self {
            Self::Cached => {
                let (statement, values) = prepared(client, sql, params).await?;
                client.inner().query_opt(&statement, &values).await
            }
            Self::Unnamed => client.inner().query_typed_opt(sql, params).await,
        }
    }

    /// Runs `sql` with `params`; the number of rows it changed.
    ///
    /// # Errors
    /// The statement's failure.
    pub async fn execute(
        self,
        client: &impl PooledClient,
        sql: &str,
        params: &Params<'_>,
    ) -> Result<u64, Error> {
        match self {
            Self::Cached => {
                let (statement, values) = prepared(client, sql, params).await?;
                client.inner().execute(&statement, &values).await
            }
            Self::Unnamed => client.inner().execute_typed(sql, params).await,
        }
    }
}
