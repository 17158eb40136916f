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

/// One round trip on a pooled connection, bounded by `timeout`.
///
/// A connection that deadpool had to open for this checkout (the old one
/// was found closed) has just passed both warmup phases, which is proof
/// enough: it costs no further round trip.
pub(crate) async fn check(pool: &WarmPool, timeout: Duration) -> Result<(), Error> {
    let conn = pool.checkout().await?;
    if Object::metrics(conn.object()).recycled.is_none() {
        tracing::debug!("health check satisfied by a freshly warmed connection");
        return Ok(());
    }
    match tokio::time::timeout(timeout, conn.sent(conn.simple_query(HEALTH_CHECK_SQL))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Error::Db(e)),
        Err(_) => Err(Error::Timeout { what: "health check (DB_HEALTH_CHECK_TIMEOUT_MS)", after: timeout }),
    }
}
