//! How statements reach the server, by [`PoolerMode`].
//!
//! - `none`: each statement is prepared once per connection under a name
//!   (tokio-postgres's `s0`, `s1`, …) and cached on it; a run is one round
//!   trip (Bind/Execute).
//! - `transaction`: a transaction-mode pooler hands each transaction a
//!   different server connection, where a named statement does not exist
//!   (or, worse, another client's does). Statements are therefore sent
//!   unnamed, with their parameter types (`query_typed`): Parse, Bind and
//!   Execute in one round trip. The types are learnt once per SQL text by
//!   preparing it inside a `BEGIN … COMMIT` (one server connection), closing
//!   it there, and cached for the environment. Inside the application's own
//!   transaction, which already holds one server connection, the statement
//!   is only prepared and closed: no transaction control is sent, which
//!   would end the application's transaction halfway.
//!
//! Either way the handle's API is the same, so a handler works unchanged.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::ClientWrapper;
use futures_util::future::try_join_all;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Statement};

use crate::config::PoolerMode;
use crate::lease::{Cache, Connection};
use crate::lru::Lru;

/// The statements an application declares, checked (and in `none` mode
/// prepared) on every connection during warmup phase 2, and the parameter
/// types learnt in `transaction` mode.
///
/// Both caches are bounded by `DB_STATEMENT_CACHE_SIZE`, least recently used
/// first, the declared statements apart: dynamic SQL, whose every text
/// differs, would otherwise grow each server backend (its prepared
/// statements and plans) and this process until the pool's maximum age.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    declared: Arc<[String]>,
    mode: PoolerMode,
    capacity: usize,
    types: Arc<Mutex<Lru<Arc<[Type]>>>>,
}

/// A statement ready to run on one connection.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    /// Prepared under a name on this connection.
    Named(Statement),
    /// Sent unnamed with these parameter types.
    Unnamed(Arc<[Type]>),
}

impl Prepared {
    /// The number of parameters the statement takes.
    pub(crate) fn parameters(&self) -> usize {
        match self {
            Prepared::Named(statement) => statement.params().len(),
            Prepared::Unnamed(types) => types.len(),
        }
    }
}

/// Why phase 2 failed: the statement being prepared, if the failure was
/// one's (not the transaction around them), and the server's error.
pub(crate) type Unprepared = (Option<String>, tokio_postgres::Error);

/// What a statement is run for, and so what it returns: its rows
/// ([`Rows`]) or the number of rows it affected ([`Count`]). A type, so that
/// a query cannot come back with a count.
pub(crate) trait Op {
    /// What the statement returns.
    type Out: Send;

    /// Runs a statement prepared under a name.
    fn named<'a>(
        client: &'a ClientWrapper,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Self::Out, tokio_postgres::Error>> + Send + 'a;

    /// Runs an unnamed statement with its parameter types given.
    fn typed<'a>(
        client: &'a ClientWrapper,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Self::Out, tokio_postgres::Error>> + Send + 'a;
}

/// Run for its rows (`query`).
pub(crate) struct Rows;

impl Op for Rows {
    type Out = Vec<Row>;

    fn named<'a>(
        client: &'a ClientWrapper,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        client.query(statement, params)
    }

    fn typed<'a>(
        client: &'a ClientWrapper,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        client.query_typed(sql, params)
    }
}

/// Run for the number of rows it affected (`execute`).
pub(crate) struct Count;

impl Op for Count {
    type Out = u64;

    fn named<'a>(
        client: &'a ClientWrapper,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        client.execute(statement, params)
    }

    fn typed<'a>(
        client: &'a ClientWrapper,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        client.execute_typed(sql, params)
    }
}

impl Statements {
    pub(crate) fn new(declared: Vec<String>, mode: PoolerMode, capacity: usize) -> Self {
        Self { declared: declared.into(), mode, capacity, types: Arc::new(Mutex::new(Lru::new(capacity))) }
    }

    fn is_declared(&self, sql: &str) -> bool {
        self.declared.iter().any(|d| d == sql)
    }

    /// A connection's statement cache, holding what warmup prepared on it.
    pub(crate) fn cache(&self, prepared: Vec<(String, Statement)>) -> Cache {
        let mut cache = Lru::new(self.capacity);
        for (sql, statement) in prepared {
            drop(cache.insert(sql, statement, true));
        }
        Mutex::new(cache)
    }

    pub(crate) fn len(&self) -> usize {
        self.declared.len()
    }

    /// Warmup phase 2 on one connection: every declared statement checked
    /// against the schema, and prepared for use. About one round trip in
    /// `none` mode (the prepares are pipelined), three in `transaction` mode.
    pub(crate) async fn warm(&self, client: &ClientWrapper) -> Result<Vec<(String, Statement)>, Unprepared> {
        match self.mode {
            PoolerMode::None => {
                try_join_all(self.declared.iter().map(|sql| async move {
                    client.prepare(sql).await.map(|s| (sql.clone(), s)).map_err(|e| (Some(sql.clone()), e))
                }))
                .await
            }
            PoolerMode::Transaction => self.describe(client, &self.declared).await.map(|()| Vec::new()),
        }
    }

    /// `sql` ready to run on `conn`, prepared on first use.
    pub(crate) async fn prepare(&self, conn: &Connection, sql: &str) -> Result<Prepared, tokio_postgres::Error> {
        match self.mode {
            PoolerMode::None => {
                if let Some(statement) = lock(conn.statements()).get(sql) {
                    return Ok(Prepared::Named(statement));
                }
                let statement = conn.prepare(sql).await?;
                // Dropped after the lock: each sends Close to the server.
                let evicted = lock(conn.statements()).insert(sql.to_owned(), statement.clone(), self.is_declared(sql));
                drop(evicted);
                Ok(Prepared::Named(statement))
            }
            PoolerMode::Transaction => {
                if let Some(types) = self.cached(sql) {
                    return Ok(Prepared::Unnamed(types));
                }
                let types = if conn.state().open_transaction().is_some() {
                    // Parse/Describe and Close only, inside the open transaction.
                    let statement = conn.prepare(sql).await?;
                    Arc::<[Type]>::from(statement.params())
                } else {
                    self.describe(conn, &[sql.to_owned()]).await.map_err(|(_, e)| e)?;
                    self.cached(sql).unwrap_or_default()
                };
                let evicted = lock(&self.types).insert(sql.to_owned(), types.clone(), self.is_declared(sql));
                drop(evicted);
                Ok(Prepared::Unnamed(types))
            }
        }
    }

    /// Drops what is cached for `sql` on `conn` after the server said it is
    /// stale ([`Error::is_stale_statement`](crate::Error)): the next use
    /// prepares it again. 26000 means the session's statements are gone
    /// (`DISCARD ALL`, `DEALLOCATE ALL`), so every one is dropped.
    pub(crate) fn forget(&self, conn: &Connection, sql: &str, code: Option<&tokio_postgres::error::SqlState>) {
        match self.mode {
            PoolerMode::None if code == Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME) => {
                let gone = lock(conn.statements()).clear();
                drop(gone);
            }
            PoolerMode::None => drop(lock(conn.statements()).remove(sql)),
            PoolerMode::Transaction => drop(lock(&self.types).remove(sql)),
        }
        tracing::info!(sql, code = code.map(|c| c.code()), "stale prepared statement dropped; preparing it again");
    }

    fn cached(&self, sql: &str) -> Option<Arc<[Type]>> {
        lock(&self.types).get(sql)
    }

    /// Learns the parameter types of `sqls` by preparing them inside one
    /// transaction, which keeps a transaction-mode pooler on one server
    /// connection, and closing them before it ends: no named statement
    /// outlives it.
    async fn describe(&self, client: &ClientWrapper, sqls: &[String]) -> Result<(), Unprepared> {
        let no_sql = |e| (None, e);
        client.batch_execute("BEGIN").await.map_err(no_sql)?;
        let prepared =
            try_join_all(sqls.iter().map(|sql| async move {
                client.prepare(sql).await.map(|s| (sql, s)).map_err(|e| (Some(sql.clone()), e))
            }))
            .await;
        let described = match prepared {
            Ok(statements) => statements,
            Err(error) => {
                // The failed Parse aborted the transaction; end it.
                if client.batch_execute("ROLLBACK").await.is_err() {
                    tracing::debug!("rolling back a failed describe failed");
                }
                return Err(error);
            }
        };
        let mut types = Vec::with_capacity(described.len());
        for (sql, statement) in described {
            types.push((sql.clone(), Arc::<[Type]>::from(statement.params())));
            // Dropping it sends Close, ahead of the COMMIT below.
            drop(statement);
        }
        client.batch_execute("COMMIT").await.map_err(no_sql)?;
        let mut cache = lock(&self.types);
        for (sql, types) in types {
            let pinned = self.is_declared(&sql);
            drop(cache.insert(sql, types, pinned));
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `prepared` (the statement for `sql`) with `params`, whose count the
/// caller has checked against [`Prepared::parameters`].
pub(crate) async fn run<O: Op>(
    client: &ClientWrapper,
    sql: &str,
    prepared: &Prepared,
    params: &[&(dyn ToSql + Sync)],
) -> Result<O::Out, tokio_postgres::Error> {
    match prepared {
        Prepared::Named(statement) => O::named(client, statement, params).await,
        Prepared::Unnamed(types) => {
            let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().copied().zip(types.iter().cloned()).collect();
            O::typed(client, sql, &typed).await
        }
    }
}
