//! Transactions as closures, retried whole when that is safe.
//!
//! [`Db::transaction`] runs the closure between `BEGIN` and `COMMIT`. It runs
//! it again, on a fresh connection if needed, when the server aborted the
//! transaction for a serialization failure (40001) or a deadlock (40P01), or
//! when the connection was lost before `COMMIT` was sent: in each case the
//! server has rolled everything back. Statements inside are never retried on
//! their own. If the connection is lost while `COMMIT` is in flight, nobody
//! knows whether it committed: that is [`Error::CommitOutcomeUnknown`], never
//! retried.
//!
//! What the handler does around it cannot leak the transaction: dropped
//! (a `timeout` or `select!`), or unwound by a panic, the transaction leaves
//! its connection marked, and the connection is closed instead of reused
//! (see `lease`), so the server rolls it back. A closure that handled a
//! statement's error and returned `Ok` gets [`Error::CommitRolledBack`]:
//! PostgreSQL answers `COMMIT` of a failed transaction with `ROLLBACK`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

use crate::adapter::Adapter;
use crate::db::statement_methods;
use crate::db::{self, Db, Recovery};
use crate::deadline::Deadline;
use crate::error::{Error, ErrorKind, Step};
use crate::lease::OpenTransaction;
use crate::pool::Conn;
use crate::statement::Op;

/// The open transaction handed to a [`Db::transaction`] closure.
pub struct Tx {
    conn: Arc<Conn>,
    adapter: Adapter,
    until: Deadline,
    /// The transaction's number on its session: a `Tx` kept past its
    /// transaction sends nothing.
    number: u32,
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("until", &self.until).finish_non_exhaustive()
    }
}

impl Tx {
    statement_methods! {
        /// Runs `sql` in the transaction and returns its rows.
        ///
        /// # Errors
        ///
        /// As [`Db::query`]; the transaction is then rolled back (and retried
        /// whole if the error allows it).
        query;
        /// Runs `sql`, which must return exactly one row.
        ///
        /// # Errors
        ///
        /// As [`Tx::query`], and [`Error::RowCount`].
        query_one;
        /// Runs `sql`, which returns at most one row.
        ///
        /// # Errors
        ///
        /// As [`Tx::query`], and [`Error::RowCount`].
        query_opt;
        /// Runs `sql` and returns the number of rows it affected.
        ///
        /// # Errors
        ///
        /// As [`Tx::query`].
        execute;
    }

    async fn run_statement<O: Op>(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<O::Out, Error> {
        if self.conn.state().open_transaction() != Some(self.number) {
            return Err(Error::TransactionEnded);
        }
        let result = async {
            let prepared = db::prepare(&self.adapter, &self.conn, sql, self.until).await?;
            db::execute::<O>(&self.adapter, &self.conn, sql, &prepared, params, self.until).await
        }
        .await;
        if result.is_err() {
            // Whatever the closure does with the error, the transaction may
            // now be aborted: its COMMIT is checked.
            self.conn.state().failed_in_transaction();
        }
        result
    }
}

impl Db {
    /// Runs `f` in a transaction at the server's default isolation level
    /// (`default_transaction_isolation`, `READ COMMITTED` unless changed) and
    /// commits it; see [`Db::transaction_with`].
    ///
    /// # Errors
    ///
    /// As [`Db::transaction_with`].
    pub async fn transaction<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.transaction_with(IsolationLevel::ReadCommitted, f).await
    }

    /// Runs `f` in a transaction at `isolation` and commits it when `f`
    /// returns `Ok`; rolls back when it returns `Err`.
    ///
    /// `f` runs again (so it must be safe to repeat: everything it did in the
    /// database was rolled back) after a serialization failure or deadlock,
    /// and after the connection was lost before `COMMIT` was sent, with
    /// backoff, up to `DB_RETRY_ATTEMPTS` attempts and never past the
    /// deadline.
    ///
    /// Statements go through the [`Tx`] that `f` receives. The `Db` itself
    /// refuses statements while its transaction is open
    /// ([`Error::InTransaction`]). If this future is dropped before it
    /// finishes, or `f` panics, the transaction is rolled back: its
    /// connection is closed instead of being reused.
    ///
    /// ```no_run
    /// # async fn example(db: &runtime_adapter::Db) -> Result<(), runtime_adapter::Error> {
    /// let moved = db
    ///     .transaction(|tx| async move {
    ///         tx.execute("UPDATE stock SET n = n - 1 WHERE item = $1", &[&"tea"]).await?;
    ///         tx.execute("INSERT INTO orders (item, quantity) VALUES ($1, 1)", &[&"tea"]).await
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// `f`'s own error (after rollback); [`Error::CommitRolledBack`] when a
    /// statement failed inside and `f` returned `Ok` anyway (nothing was
    /// committed); [`Error::CommitOutcomeUnknown`] when the connection was
    /// lost, or the server shut down, while `COMMIT` was in flight;
    /// [`Error::DeadlineReached`] when the deadline less the margin passed
    /// before `BEGIN` or `COMMIT` could be sent (nothing was committed);
    /// [`Error::Unavailable`] once retries are spent.
    pub async fn transaction_with<T, F, Fut>(&self, isolation: IsolationLevel, mut f: F) -> Result<T, Error>
    where
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let begin = match isolation {
            IsolationLevel::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
            IsolationLevel::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            IsolationLevel::ReadUncommitted => "BEGIN ISOLATION LEVEL READ UNCOMMITTED",
            _ => "BEGIN",
        };
        let adapter = self.adapter();
        let until = self.until();
        let mut retrier = self.retrier();
        let mut recovery = Recovery::default();
        loop {
            let conn = self.connection().await?;
            until.check(Step::Begin)?;
            // Marked open before BEGIN is sent: dropped from here on, this
            // future leaves the connection to be closed, not reused.
            let open = conn.state().begin();
            if let Err(error) = simple(adapter, &conn, Step::Begin, begin, until).await {
                if error.is_transient() {
                    retrier.backoff(error, Step::Begin).await?;
                    continue;
                }
                return Err(error);
            }
            let tx = Tx { conn: conn.clone(), adapter: adapter.clone(), until, number: open.number() };
            let value = match f(tx).await {
                Ok(value) => value,
                Err(error) => {
                    rollback(adapter, &conn, until, open).await;
                    if recovery.again(self, &conn, &error).await? {
                        continue;
                    }
                    if rerun(&error) {
                        retrier.backoff(error, Step::Transaction).await?;
                        continue;
                    }
                    return Err(error);
                }
            };
            if conn.is_closed() {
                // Lost before COMMIT was sent: the server rolled it back.
                retrier.backoff(Error::ConnectionClosed, Step::Transaction).await?;
                continue;
            }
            match commit(adapter, &conn, until, open).await {
                Ok(()) => return Ok(value),
                Err(error) if error.kind() == ErrorKind::Serialization => {
                    retrier.backoff(error, Step::Transaction).await?;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Whether a failed transaction may run again: the server has rolled it back
/// and the cause is passing.
fn rerun(error: &Error) -> bool {
    matches!(error.kind(), ErrorKind::Serialization | ErrorKind::Transient)
        && !matches!(error, Error::DeadlineExceeded { .. } | Error::Unavailable { .. })
}

/// One simple-protocol statement for `step`, no later than `until`, and not
/// sent at all once `until` has passed.
async fn simple(adapter: &Adapter, conn: &Conn, step: Step, sql: &str, until: Deadline) -> Result<(), Error> {
    until.check(step)?;
    let work = conn.sent(async {
        match conn.batch_execute(sql).await {
            Ok(()) => {
                adapter.liveness().succeeded();
                Ok(())
            }
            Err(error) => Err(db::observe_failure(adapter, error)),
        }
    });
    until.bound(step, work).await
}

/// Commits the open transaction, and says what became of it.
///
/// When a statement in it failed (or was abandoned, or raw calls ran in it),
/// the transaction may be aborted, and PostgreSQL would answer `COMMIT` with
/// the tag `ROLLBACK` and no error. So `SELECT 1` goes ahead of `COMMIT` in
/// the same round trip: in an aborted transaction it fails with 25P02 and the
/// server skips the `COMMIT`.
async fn commit(adapter: &Adapter, conn: &Conn, until: Deadline, open: OpenTransaction<'_>) -> Result<(), Error> {
    let sql = if conn.state().commit_needs_check() { "SELECT 1; COMMIT" } else { "COMMIT" };
    match simple(adapter, conn, Step::Commit, sql, until).await {
        Ok(()) => {
            open.ended();
            Ok(())
        }
        // Not sent: the transaction stays open, and `open`, dropped, has its
        // connection closed, which rolls it back.
        Err(error @ Error::DeadlineReached { .. }) => Err(error),
        Err(error) if error.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) => {
            rollback(adapter, conn, until, open).await;
            tracing::warn!("a statement of the transaction had failed; COMMIT would have rolled it back");
            Err(Error::CommitRolledBack)
        }
        Err(error) if error.leaves_commit_unknown() => {
            tracing::error!(%error, "commit outcome unknown");
            Err(Error::CommitOutcomeUnknown { source: Box::new(error) })
        }
        // The server answered with an error: the transaction was rolled back
        // (a deferred constraint, a serialization failure).
        Err(error) => {
            open.ended();
            Err(error)
        }
    }
}

/// Ends a failed transaction, if its connection still lets it. Unless the
/// server answered the `ROLLBACK`, `open` is dropped unended, and the
/// connection is closed instead of reused.
async fn rollback(adapter: &Adapter, conn: &Conn, until: Deadline, open: OpenTransaction<'_>) {
    if conn.is_closed() {
        return;
    }
    match simple(adapter, conn, Step::Rollback, "ROLLBACK", until).await {
        Ok(()) => open.ended(),
        Err(error) => tracing::warn!(%error, "rollback failed; the connection will be closed"),
    }
}
