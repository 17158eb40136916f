//! [`Db`]: the database handle a handler receives, and what it retries.
//!
//! A statement is retried on another connection only when that is safe:
//! - its connection was found closed before the statement was sent;
//! - preparing it failed (a prepare changes no data);
//! - the handler marked it idempotent ([`Db::idempotent`]) and it failed for
//!   a transient reason.
//!
//! A write that may have reached the server is never retried. Every
//! statement stops at the invocation's deadline less the margin, and one
//! still running then is cancelled on the server.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::adapter::Adapter;
use crate::config::PoolerMode;
use crate::deadline::Deadline;
use crate::error::{Error, ErrorKind, Step};
use crate::pool::Conn;
use crate::retry::Retrier;
use crate::statement::{self, Op, Prepared};
use crate::units::millis;

/// The four ways to run a statement (`query`, `query_one`, `query_opt`,
/// `execute`), written once for [`Db`], [`Idempotent`] and [`Tx`]: each type
/// gives its own documentation and a `run_statement::<O: Op>(sql, params)`,
/// its way to run a statement for rows or for a count.
macro_rules! statement_methods {
    (
        $(#[$query:meta])* query;
        $(#[$one:meta])* query_one;
        $(#[$opt:meta])* query_opt;
        $(#[$execute:meta])* execute;
    ) => {
        $(#[$query])*
        pub async fn query(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Vec<Row>, Error> {
            self.run_statement::<$crate::statement::Rows>(sql, params).await
        }

        $(#[$one])*
        pub async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
            $crate::db::one(self.run_statement::<$crate::statement::Rows>(sql, params).await?)
        }

        $(#[$opt])*
        pub async fn query_opt(
            &self,
            sql: &str,
            params: &[&(dyn ToSql + Sync)],
        ) -> Result<Option<Row>, Error> {
            $crate::db::at_most_one(self.run_statement::<$crate::statement::Rows>(sql, params).await?)
        }

        $(#[$execute])*
        pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
            self.run_statement::<$crate::statement::Count>(sql, params).await
        }
    };
}
pub(crate) use statement_methods;

/// How long a cancel request may take; it opens its own connection.
pub(crate) const CANCEL_TIMEOUT: Duration = Duration::from_secs(1);

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
    /// The invocation's connection; empty after a closed one was released
    /// and before its replacement arrived.
    slot: Mutex<Option<Arc<Conn>>>,
    adapter: Adapter,
    until: Deadline,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("until", &self.until).finish_non_exhaustive()
    }
}

/// Whether a statement may run again after it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Only if nothing was sent (closed connection, failed prepare).
    BeforeSend,
    /// Also after a transient failure once sent: the handler said running
    /// it twice is harmless.
    Idempotent,
}

impl Db {
    pub(crate) fn new(conn: Conn, adapter: Adapter, until: Deadline) -> Self {
        Self { slot: Mutex::new(Some(Arc::new(conn))), adapter, until }
    }

    statement_methods! {
        /// Runs `sql` and returns its rows. Not retried once sent.
        ///
        /// # Errors
        ///
        /// [`Error::Db`] with the server's SQLSTATE, a connection failure, or
        /// [`Error::DeadlineExceeded`].
        query;
        /// Runs `sql`, which must return exactly one row. Not retried once sent.
        ///
        /// # Errors
        ///
        /// As [`Db::query`], and [`Error::RowCount`] when the row count is not one.
        query_one;
        /// Runs `sql`, which returns at most one row. Not retried once sent.
        ///
        /// # Errors
        ///
        /// As [`Db::query`], and [`Error::RowCount`] when more than one row comes back.
        query_opt;
        /// Runs `sql` and returns the number of rows it affected. Not retried
        /// once sent.
        ///
        /// # Errors
        ///
        /// As [`Db::query`].
        execute;
    }

    /// The same statements, marked as safe to run twice (reads, or writes
    /// made idempotent, e.g. with `ON CONFLICT DO NOTHING`): a transient
    /// failure after sending is retried on another connection, with backoff,
    /// within the deadline.
    #[must_use]
    pub fn idempotent(&self) -> Idempotent<'_> {
        Idempotent(self)
    }

    /// The underlying tokio-postgres client, for what this handle does not
    /// cover. Calls made through it are neither retried nor bounded by the
    /// deadline, and do not count as proof of health.
    ///
    /// # Errors
    ///
    /// As [`Db::query`], when the invocation's connection had to be replaced.
    /// The adapter cannot see what is sent through it: if a transaction is
    /// left open, the connection's next checkout rolls it back first.
    pub async fn client(&self) -> Result<RawClient, Error> {
        let conn = self.connection().await?;
        conn.state().raw_used();
        Ok(RawClient(conn))
    }

    pub(crate) fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    pub(crate) fn until(&self) -> Deadline {
        self.until
    }

    pub(crate) fn retrier(&self) -> Retrier {
        self.adapter.retrier(self.until)
    }

    async fn run_statement<O: Op>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<O::Out, Error> {
        self.run::<O>(Retry::BeforeSend, sql, params).await
    }

    async fn run<O: Op>(&self, retry: Retry, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<O::Out, Error> {
        // Made at the first failure: most statements never need one.
        let mut retrier: Option<Retrier> = None;
        let mut recovery = Recovery::default();
        loop {
            let conn = self.connection().await?;
            // A prepare changes no data: its failure is always safe to retry.
            let statement = match prepare(&self.adapter, &conn, sql, self.until).await {
                Ok(statement) => statement,
                Err(error) if error.is_transient() => {
                    retrier.get_or_insert_with(|| self.retrier()).backoff(error, Step::Statement).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            let error = match execute::<O>(&self.adapter, &conn, sql, &statement, params, self.until).await {
                Ok(out) => return Ok(out),
                Err(error) => error,
            };
            // Boxed, as every path taken only after a failure: inline, a
            // failover's pool build would be part of every statement's future.
            if Box::pin(recovery.again(self, &conn, &error)).await? {
                continue;
            }
            if !error.is_transient() {
                return Err(error);
            }
            match retry {
                Retry::Idempotent => {
                    retrier.get_or_insert_with(|| self.retrier()).backoff(error, Step::IdempotentStatement).await?;
                }
                // Sent, and then the connection failed: it may have run.
                Retry::BeforeSend => return Err(Error::OutcomeUnknown { source: Box::new(error) }),
            }
        }
    }

    /// After a write reached a read-only server on `conn`: the pool it came
    /// from is replaced (once, whoever sees it first), and the invocation
    /// gets a connection from the new one.
    async fn fail_over(&self, conn: &Arc<Conn>) -> Result<(), Error> {
        self.adapter.failover(crate::pool::generation_of(conn.object()), self.until).await?;
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_some_and(|current| Arc::ptr_eq(current, conn)) {
            *slot = None;
        }
        Ok(())
    }

    /// The invocation's connection. A closed one, on which nothing can have
    /// been sent, or one left in an unknown state (a call or transaction
    /// abandoned by the handler), is first released (the pool discards it)
    /// and replaced through the gate.
    ///
    /// # Errors
    ///
    /// [`Error::InTransaction`] while this handle's own transaction is open:
    /// a statement sent now would silently join it.
    pub(crate) async fn connection(&self) -> Result<Arc<Conn>, Error> {
        {
            let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_ref() {
                Some(conn) if conn.is_closed() => {
                    tracing::info!("the invocation's connection closed; replacing it");
                    // Frees its pool slot, so that a pool of one can replace it.
                    *slot = None;
                }
                Some(conn) if conn.state().is_unknown() => {
                    tracing::info!("the invocation's connection was left mid-request or mid-transaction; replacing it");
                    *slot = None;
                }
                Some(conn) if conn.state().open_transaction().is_some() => return Err(Error::InTransaction),
                Some(conn) => return Ok(conn.clone()),
                None => {}
            }
        }
        // Boxed: only a replaced connection takes this path, and the gate's
        // future inline would make every statement's future carry it.
        let fresh = Arc::new(Box::pin(self.adapter.checkout(self.until)).await?);
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(slot.get_or_insert(fresh).clone())
    }
}

/// What a failed statement, or transaction, may run again after, once each
/// per call (a second time means the cause did not pass). Both refusals come
/// before anything ran, so this is safe for writes too.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    reprepared: bool,
    failed_over: bool,
}

impl Recovery {
    /// Whether to run again after `error` on `conn`, having done what that
    /// takes.
    pub(crate) async fn again(&mut self, db: &Db, conn: &Arc<Conn>, error: &Error) -> Result<bool, Error> {
        // A stale prepared statement, failed at Bind: `execute` dropped it,
        // so the next run prepares it again.
        if error.is_stale_statement() && !self.reprepared {
            self.reprepared = true;
            return Ok(true);
        }
        // A write refused by a server that turned reader: the pool is
        // replaced, and the next run goes to the new writer.
        if error.is_read_only() && !self.failed_over {
            self.failed_over = true;
            db.fail_over(conn).await?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The tokio-postgres client under a [`Db`]; see [`Db::client`].
pub struct RawClient(Arc<Conn>);

impl fmt::Debug for RawClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawClient").finish_non_exhaustive()
    }
}

impl std::ops::Deref for RawClient {
    type Target = tokio_postgres::Client;

    fn deref(&self) -> &tokio_postgres::Client {
        &self.0
    }
}

/// The statements of a [`Db`] marked idempotent; see [`Db::idempotent`].
#[derive(Debug)]
pub struct Idempotent<'a>(&'a Db);

impl Idempotent<'_> {
    statement_methods! {
        /// [`Db::query`], retried on transient failures.
        ///
        /// # Errors
        ///
        /// As [`Db::query`], and [`Error::Unavailable`] once retries are spent.
        query;
        /// [`Db::query_one`], retried on transient failures.
        ///
        /// # Errors
        ///
        /// As [`Db::query_one`], and [`Error::Unavailable`] once retries are spent.
        query_one;
        /// [`Db::query_opt`], retried on transient failures.
        ///
        /// # Errors
        ///
        /// As [`Db::query_opt`], and [`Error::Unavailable`] once retries are spent.
        query_opt;
        /// [`Db::execute`], retried on transient failures.
        ///
        /// # Errors
        ///
        /// As [`Db::execute`], and [`Error::Unavailable`] once retries are spent.
        execute;
    }

    async fn run_statement<O: Op>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<O::Out, Error> {
        self.0.run::<O>(Retry::Idempotent, sql, params).await
    }
}

pub(crate) fn one(rows: Vec<Row>) -> Result<Row, Error> {
    let got = rows.len();
    let mut rows = rows.into_iter();
    match (rows.next(), got) {
        (Some(row), 1) => Ok(row),
        _ => Err(Error::RowCount { expected: "exactly one", got }),
    }
}

pub(crate) fn at_most_one(rows: Vec<Row>) -> Result<Option<Row>, Error> {
    match rows.len() {
        0 | 1 => Ok(rows.into_iter().next()),
        got => Err(Error::RowCount { expected: "at most one", got }),
    }
}

/// `sql` ready to run on `conn`, prepared on first use.
pub(crate) async fn prepare(adapter: &Adapter, conn: &Conn, sql: &str, until: Deadline) -> Result<Prepared, Error> {
    until.check(Step::Statement)?;
    conn.sent(adapter.statements().prepare(conn, sql)).await.map_err(|e| observe_failure(adapter, e))
}

/// Runs a prepared statement, no later than `until`; one still running then
/// is cancelled on the server.
pub(crate) async fn execute<O: Op>(
    adapter: &Adapter,
    conn: &Conn,
    sql: &str,
    prepared: &Prepared,
    params: &[&(dyn ToSql + Sync)],
    until: Deadline,
) -> Result<O::Out, Error> {
    if prepared.parameters() != params.len() {
        return Err(Error::Parameters { expected: prepared.parameters(), got: params.len() });
    }
    until.check(Step::Statement)?;
    let started = Instant::now();
    // Behind a transaction-mode pooler the server cannot hold a session's
    // statement_timeout: the client enforces it.
    let config = adapter.config();
    let client_timeout = config.client_statement_timeout();
    let statement_timeout =
        (config.pooler_mode == PoolerMode::Transaction && !client_timeout.is_zero()).then(|| started + client_timeout);
    let stop = match (until.instant(), statement_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Pinned where it is made: a local moved into `pin!` would be a second
    // copy of the statement's future in this one's state.
    let mut work = std::pin::pin!(conn.sent(statement::run::<O>(conn, sql, prepared, params)));
    let result = match stop {
        Some(stop) => {
            match conn.within(stop, work.as_mut()).await {
                Some(result) => result,
                None => {
                    // Cancel it, and wait (briefly) for its answer, so that
                    // the session is idle again and the connection reusable;
                    // if that does not come in time, dropping the statement
                    // marks the connection for closing. Boxed, as a path
                    // taken only at the deadline.
                    let budget = CANCEL_TIMEOUT.min(config.deadline_margin / 2);
                    let settled = async {
                        cancel(conn, budget).await;
                        work.as_mut().await
                    };
                    let _ = Box::pin(tokio::time::timeout(budget, settled)).await;
                    return Err(if statement_timeout == Some(stop) {
                        Error::StatementTimeout { after: client_timeout }
                    } else {
                        Error::DeadlineExceeded { after: started.elapsed() }
                    });
                }
            }
        }
        None => work.await,
    };
    let took = started.elapsed();
    adapter.counters().query_took(took);
    if took >= adapter.config().slow_query {
        // The SQL text only: parameter values may be personal data or secrets.
        tracing::warn!(sql, duration_ms = millis(took), "slow statement");
    }
    match result {
        Ok(out) => {
            adapter.liveness().succeeded();
            Ok(out)
        }
        Err(e) => {
            let error = observe_failure(adapter, e);
            if error.is_stale_statement() {
                adapter.statements().forget(conn, sql, error.code());
            }
            Err(error)
        }
    }
}

/// Asks the server to cancel what `conn` is running, so that it does not go
/// on after the function gave up on it.
pub(crate) async fn cancel(conn: &Conn, within: Duration) {
    match tokio::time::timeout(within, conn.cancel(conn.cancel_tls())).await {
        Ok(Ok(())) => tracing::warn!("statement still running at the deadline; cancelled it on the server"),
        Ok(Err(error)) => tracing::warn!(%error, "could not cancel the statement running at the deadline"),
        Err(_) => tracing::warn!("cancelling the statement running at the deadline timed out"),
    }
}

/// Records a failure. A server error that leaves the session usable
/// (constraint, syntax…) still proves the connection works; a stale
/// statement or a read-only server does not prove it fit for use.
pub(crate) fn observe_failure(adapter: &Adapter, error: tokio_postgres::Error) -> Error {
    let error = Error::Db(error);
    if error.is_stale_statement() || error.is_read_only() {
        return error;
    }
    if error.code().is_some() && matches!(error.kind(), ErrorKind::Permanent | ErrorKind::Serialization) {
        adapter.liveness().succeeded();
    } else {
        adapter.counters().failed_now();
    }
    error
}
