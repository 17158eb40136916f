//! The health check. When one is due is [`Liveness`](crate::liveness::Liveness)'s
//! business.
//!
//! Any successful round trip proves the database healthy (like HikariCP's
//! bypass window), so a busy function never pays for checks. Only when none
//! succeeded within `DB_HEALTH_CHECK_INTERVAL_MS` does the next invocation
//! spend one round trip, bounded by `DB_HEALTH_CHECK_TIMEOUT_MS`, because a
//! connection left half-open by a frozen environment would otherwise hang it.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Step};
use crate::pool::WarmPool;

/// The check's query. The comment names it in the server's logs.
pub(crate) const HEALTH_CHECK_SQL: &str = "/* runtime-adapter health check */ SELECT 1";

/// What a health check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checked {
    /// A round trip succeeded, or a connection was just opened and warmed.
    Passed,
    /// Every connection stayed in use by other invocations for the whole
    /// bound: nothing is known against the pool, and nothing for it either.
    Busy,
}

/// One round trip on a pooled connection, bounded end to end by `timeout`:
/// the checkout (which may open a connection) and the round trip together.
///
/// A connection that deadpool had to open for this checkout (the old one
/// was found closed) has just passed both warmup phases, which is proof
/// enough: it costs no further round trip. A pool whose connections all
/// stay checked out is busy, not broken: the check is inconclusive, and
/// the pool is not rebuilt because its checkout waited.
pub(crate) async fn check(pool: &WarmPool, timeout: Duration) -> Result<Checked, Error> {
    let started = Instant::now();
    let Some(conn) = pool.checkout_within(timeout).await? else {
        tracing::info!(
            timeout_ms = crate::units::millis(timeout),
            "health check inconclusive: every connection is in use by other invocations"
        );
        return Ok(Checked::Busy);
    };
    if conn.is_fresh() {
        tracing::debug!("health check satisfied by a freshly warmed connection");
        return Ok(Checked::Passed);
    }
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, conn.sent(conn.simple_query(HEALTH_CHECK_SQL))).await {
        Ok(Ok(_)) => Ok(Checked::Passed),
        Ok(Err(e)) => Err(Error::Db(e)),
        Err(_) => Err(Error::Timeout { step: Step::HealthCheck, after: timeout }),
    }
}
