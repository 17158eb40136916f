//! Health: when a check is due, and the check itself.
//!
//! Any successful round trip proves the database healthy (like HikariCP's
//! bypass window), so a busy function never pays for checks. Only when none
//! succeeded within `DB_HEALTH_CHECK_INTERVAL_MS` does the next invocation
//! spend one round trip, bounded by `DB_HEALTH_CHECK_TIMEOUT_MS`, because a
//! connection left half-open by a frozen environment would otherwise hang it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use deadpool::managed::Object;

use crate::error::Error;
use crate::pool::WarmPool;

/// The check's query. The comment names it in the server's logs.
pub(crate) const HEALTH_CHECK_SQL: &str = "/* runtime-adapter health check */ SELECT 1";

/// When a database round trip last succeeded, on a monotonic clock.
#[derive(Debug)]
pub(crate) struct Liveness {
    epoch: Instant,
    epoch_wall: SystemTime,
    /// Nanoseconds after `epoch`, plus one; zero means never.
    last_success: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Self { epoch: Instant::now(), epoch_wall: SystemTime::now(), last_success: AtomicU64::new(0) }
    }
}

impl Liveness {
    /// Forgets every success, as if none had happened (after a SnapStart
    /// restore, the snapshot's clocks prove nothing).
    pub(crate) fn reset(&self) {
        self.last_success.store(0, Ordering::Relaxed);
    }

    pub(crate) fn succeeded(&self) {
        let nanos = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.last_success.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last_success_offset(&self) -> Option<Duration> {
        match self.last_success.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// Whether no round trip succeeded within `interval` before `now`.
    pub(crate) fn check_due(&self, now: Instant, interval: Duration) -> bool {
        match self.last_success_offset() {
            None => true,
            Some(offset) => now.saturating_duration_since(self.epoch + offset) >= interval,
        }
    }

    pub(crate) fn last_success(&self) -> Option<SystemTime> {
        self.last_success_offset().map(|offset| self.epoch_wall + offset)
    }
}

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
            timeout_ms = crate::pool::millis(timeout),
            "health check inconclusive: every connection is in use by other invocations"
        );
        return Ok(Checked::Busy);
    };
    if Object::metrics(conn.object()).recycled.is_none() {
        tracing::debug!("health check satisfied by a freshly warmed connection");
        return Ok(Checked::Passed);
    }
    let left = timeout.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, conn.sent(conn.simple_query(HEALTH_CHECK_SQL))).await {
        Ok(Ok(_)) => Ok(Checked::Passed),
        Ok(Err(e)) => Err(Error::Db(e)),
        Err(_) => Err(Error::Timeout { what: "health check (DB_HEALTH_CHECK_TIMEOUT_MS)", after: timeout }),
    }
}
