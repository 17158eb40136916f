//! Counters kept per execution environment, read as one [`Stats`] snapshot.
//!
//! Updates are relaxed atomics: they sit on the invocation path and need no
//! ordering with each other. The few fields that are not counters (timings,
//! timestamps) sit behind a mutex that is never held across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Why a pool was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefreshReason {
    /// It passed its maximum age.
    MaxAge,
    /// A health check failed on it.
    FailedCheck,
}

/// Durations of one pool warmup. Connections are warmed side by side, so
/// each phase's figure is the slowest connection's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmupTimings {
    /// Opening the connection (TCP, TLS, startup, authentication).
    pub connect: Duration,
    /// Phase 1: the raw round trip.
    pub round_trip: Duration,
    /// Phase 2: preparing the declared statements.
    pub prepare: Duration,
    /// The whole pool build, from start until every connection passed both phases.
    pub total: Duration,
}

/// A snapshot of the environment's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections the adapter tried to open.
    pub connect_attempts: u64,
    /// Connections opened.
    pub connect_successes: u64,
    /// Connections that could not be opened.
    pub connect_failures: u64,
    /// Pools built and warmed (at INIT, on refresh, on rebuild).
    pub warmups: u64,
    /// Warmups that failed.
    pub warmup_failures: u64,
    /// The last successful warmup's timings.
    pub last_warmup: Option<WarmupTimings>,
    /// Sum of all successful warmups' total durations.
    pub warmup_total: Duration,
    /// Health checks run.
    pub health_checks_run: u64,
    /// Invocations that skipped the check because a round trip had
    /// succeeded within the interval.
    pub health_checks_skipped: u64,
    /// Health checks that failed.
    pub health_checks_failed: u64,
    /// Pools replaced because they passed their maximum age.
    pub refreshes_max_age: u64,
    /// Pools replaced because a health check failed.
    pub refreshes_failed_check: u64,
    /// Refreshes that could not build a new pool; the old one stayed in use.
    pub refresh_failures: u64,
    /// Retries made (checkouts, statements, transactions), not counting
    /// first attempts.
    pub retry_attempts: u64,
    /// Times the server refused a connection for lack of slots (53300).
    pub pool_exhausted: u64,
    /// When a database round trip last succeeded.
    pub last_success: Option<SystemTime>,
    /// When a database operation last failed.
    pub last_failure: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connect_successes: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) warmups: AtomicU64,
    pub(crate) warmup_failures: AtomicU64,
    pub(crate) health_checks_run: AtomicU64,
    pub(crate) health_checks_skipped: AtomicU64,
    pub(crate) health_checks_failed: AtomicU64,
    pub(crate) refreshes_max_age: AtomicU64,
    pub(crate) refreshes_failed_check: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) retry_attempts: AtomicU64,
    pub(crate) pool_exhausted: AtomicU64,
    times: Mutex<Times>,
}

#[derive(Debug, Default)]
struct Times {
    last_warmup: Option<WarmupTimings>,
    warmup_total: Duration,
    last_failure: Option<SystemTime>,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn refreshed(&self, reason: RefreshReason) {
        bump(match reason {
            RefreshReason::MaxAge => &self.refreshes_max_age,
            RefreshReason::FailedCheck => &self.refreshes_failed_check,
        });
    }

    pub(crate) fn warmed(&self, timings: WarmupTimings) {
        bump(&self.warmups);
        let mut times = self.times();
        times.last_warmup = Some(timings);
        times.warmup_total += timings.total;
    }

    pub(crate) fn failed_now(&self) {
        self.times().last_failure = Some(SystemTime::now());
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // A panic while holding this lock leaves only plain values behind.
        self.times.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn snapshot(&self, last_success: Option<SystemTime>) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let times = self.times();
        Stats {
            connect_attempts: read(&self.connect_attempts),
            connect_successes: read(&self.connect_successes),
            connect_failures: read(&self.connect_failures),
            warmups: read(&self.warmups),
            warmup_failures: read(&self.warmup_failures),
            last_warmup: times.last_warmup,
            warmup_total: times.warmup_total,
            health_checks_run: read(&self.health_checks_run),
            health_checks_skipped: read(&self.health_checks_skipped),
            health_checks_failed: read(&self.health_checks_failed),
            refreshes_max_age: read(&self.refreshes_max_age),
            refreshes_failed_check: read(&self.refreshes_failed_check),
            refresh_failures: read(&self.refresh_failures),
            retry_attempts: read(&self.retry_attempts),
            pool_exhausted: read(&self.pool_exhausted),
            last_success,
            last_failure: times.last_failure,
        }
    }
}
