//! [`Db`]: the database handle a handler receives.

use std::fmt;
use std::sync::Arc;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::adapter::Shared;
use crate::error::{Error, ErrorKind};
use crate::pool::Conn;

/// A warmed connection, held for one invocation.
///
/// There is no public way to make one: it comes only from
/// [`Adapter::db`](crate::Adapter::db) (or the handler wrapper of
/// [`Builder::run`](crate::Builder::run)), after both warmup phases passed
/// and the health gate let the invocation through. Statements declared with
/// [`Builder::statement`](crate::Builder::statement) are already prepared on
/// it; others are prepared on first use and cached on the connection.
///
/// Each successful call counts as proof of health, so a busy function skips
/// health checks.
pub struct Db {
    conn: Conn,
    shared: Arc<Shared>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    pub(crate) fn new(conn: Conn, shared: Arc<Shared>) -> Self {
        Self { conn, shared }
    }

    /// Runs `sql` and returns its rows.
    ///
    /// # Errors
    ///
    /// [`Error::Db`] with the server's SQLSTATE, or a connection failure.
    pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let statement = self.observe(self.conn.prepare_cached(sql).await)?;
        self.observe(self.conn.query(&statement, params).await)
    }

    /// Runs `sql`, which must return exactly one row.
    ///
    /// # Errors
    ///
    /// As [`Db::query`], and an error when the row count is not one.
    pub async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let statement = self.observe(self.conn.prepare_cached(sql).await)?;
        self.observe(self.conn.query_one(&statement, params).await)
    }

    /// Runs `sql`, which returns at most one row.
    ///
    /// # Errors
    ///
    /// As [`Db::query`], and an error when more than one row comes back.
    pub async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error> {
        let statement = self.observe(self.conn.prepare_cached(sql).await)?;
        self.observe(self.conn.query_opt(&statement, params).await)
    }

    /// Runs `sql` and returns the number of rows it affected.
    ///
    /// # Errors
    ///
    /// As [`Db::query`].
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let statement = self.observe(self.conn.prepare_cached(sql).await)?;
        self.observe(self.conn.execute(&statement, params).await)
    }

    /// The underlying tokio-postgres client, for what this handle does not
    /// cover. Calls made through it do not count as proof of health.
    #[must_use]
    pub fn client(&self) -> &tokio_postgres::Client {
        &self.conn
    }

    fn observe<T>(&self, result: Result<T, tokio_postgres::Error>) -> Result<T, Error> {
        match result {
            Ok(value) => {
                self.shared.liveness.succeeded();
                Ok(value)
            }
            Err(error) => {
                let error = Error::Db(error);
                // A server error that leaves the session usable (constraint,
                // syntax…) still proves the connection works.
                if error.code().is_some() && error.kind() == ErrorKind::Permanent {
                    self.shared.liveness.succeeded();
                } else {
                    self.shared.counters.failed_now();
                }
                Err(error)
            }
        }
    }
}
