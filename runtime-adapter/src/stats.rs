//! Counters kept per execution environment, read as one [`Stats`] snapshot.
//!
//! Updates are relaxed atomics: they sit on the invocation path and need no
//! ordering with each other. The few fields that are not counters (timings,
//! timestamps, percentiles) sit behind mutexes never held across an await.
//! Percentiles come from HDR histograms of fixed size; the durations since
//! the last metrics record are kept too, as distinct values with their
//! counts ([`Tally`]), every one of them until a record takes them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use crate::metrics::Tally;

/// Histograms cover 1 µs to 10 minutes with two significant digits.
const HISTOGRAM_MAX_MICROS: u64 = 600_000_000;

/// The 50th, 95th and 99th percentiles of a duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Why a pool was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum RefreshReason {
    /// It passed its maximum age.
    MaxAge,
    /// A health check failed on it.
    FailedCheck,
    /// A write reached a read-only server (25006): after a failover the old
    /// writer came back as a reader, and new connections reach the new one.
    Failover,
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
    /// Pools replaced because a write reached a read-only server (25006,
    /// after a failover).
    pub refreshes_failover: u64,
    /// Refreshes that could not build a new pool; the old one stayed in use.
    pub refresh_failures: u64,
    /// Invocations that waited for a refresh: the pool past its maximum age
    /// plus a grace of a tenth of it, its replacement not built in the
    /// background by then.
    pub refresh_waits: u64,
    /// Retries made (checkouts, statements, transactions), not counting
    /// first attempts.
    pub retry_attempts: u64,
    /// Times the server refused a connection for lack of slots (53300).
    pub pool_exhausted: u64,
    /// Connections released mid-request or mid-transaction (a dropped or
    /// panicked call, an abandoned transaction): each was rolled back before
    /// going back to the pool, or closed when that failed.
    pub abandoned_sessions: u64,
    /// Statement durations (the adapter's [`Db`](crate::Db) calls).
    pub query_durations: Percentiles,
    /// Time invocations waited for their connection, gate included.
    pub checkout_waits: Percentiles,
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
    pub(crate) refreshes_failover: AtomicU64,
    pub(crate) refresh_failures: AtomicU64,
    pub(crate) refresh_waits: AtomicU64,
    pub(crate) retry_attempts: AtomicU64,
    pub(crate) pool_exhausted: AtomicU64,
    pub(crate) abandoned_sessions: AtomicU64,
    times: Mutex<Times>,
    query: Mutex<Durations>,
    checkout: Mutex<Durations>,
}

#[derive(Debug, Default)]
struct Times {
    last_warmup: Option<WarmupTimings>,
    warmup_total: Duration,
    last_failure: Option<SystemTime>,
    /// Warmups since the last metrics record.
    warmups_pending: Tally,
}

/// One kind of duration: a histogram for percentiles, and the values since
/// the last metrics record.
#[derive(Debug)]
struct Durations {
    histogram: Histogram<u64>,
    pending: Tally,
}

impl Default for Durations {
    fn default() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 2).expect("valid histogram bounds"),
            pending: Tally::default(),
        }
    }
}

impl Durations {
    fn record(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, HISTOGRAM_MAX_MICROS);
        self.histogram.saturating_record(micros);
        self.pending.add(d);
    }

    fn percentiles(&self) -> Percentiles {
        let at = |q: f64| Duration::from_micros(self.histogram.value_at_quantile(q));
        Percentiles { count: self.histogram.len(), p50: at(0.50), p95: at(0.95), p99: at(0.99) }
    }
}

/// The durations recorded since the previous call to
/// [`Counters::take_pending`], for one metrics record.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) warmups: Tally,
    pub(crate) checkouts: Tally,
    pub(crate) queries: Tally,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn refreshed(&self, reason: RefreshReason) {
        bump(match reason {
            RefreshReason::MaxAge => &self.refreshes_max_age,
            RefreshReason::FailedCheck => &self.refreshes_failed_check,
            RefreshReason::Failover => &self.refreshes_failover,
        });
    }

    pub(crate) fn warmed(&self, timings: WarmupTimings) {
        bump(&self.warmups);
        let mut times = self.times();
        times.last_warmup = Some(timings);
        times.warmup_total += timings.total;
        times.warmups_pending.add(timings.total);
    }

    pub(crate) fn query_took(&self, d: Duration) {
        lock(&self.query).record(d);
    }

    pub(crate) fn checkout_took(&self, d: Duration) {
        lock(&self.checkout).record(d);
    }

    /// The durations since the last call, for one metrics record.
    pub(crate) fn take_pending(&self) -> Pending {
        Pending {
            warmups: std::mem::take(&mut self.times().warmups_pending),
            checkouts: std::mem::take(&mut lock(&self.checkout).pending),
            queries: std::mem::take(&mut lock(&self.query).pending),
        }
    }

    /// Distinct pending values of each duration, in [`Pending`]'s order.
    pub(crate) fn pending_distinct(&self) -> [usize; 3] {
        [
            self.times().warmups_pending.distinct(),
            lock(&self.checkout).pending.distinct(),
            lock(&self.query).pending.distinct(),
        ]
    }

    pub(crate) fn failed_now(&self) {
        self.times().last_failure = Some(SystemTime::now());
    }

    fn times(&self) -> MutexGuard<'_, Times> {
        lock(&self.times)
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
            refreshes_failover: read(&self.refreshes_failover),
            refresh_failures: read(&self.refresh_failures),
            refresh_waits: read(&self.refresh_waits),
            retry_attempts: read(&self.retry_attempts),
            pool_exhausted: read(&self.pool_exhausted),
            abandoned_sessions: read(&self.abandoned_sessions),
            query_durations: lock(&self.query).percentiles(),
            checkout_waits: lock(&self.checkout).percentiles(),
            last_success,
            last_failure: times.last_failure,
        }
    }
}

/// A panic while holding one of these locks leaves only plain values behind.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_durations() {
        let counters = Counters::default();
        for ms in 1..=100 {
            counters.query_took(Duration::from_millis(ms));
        }
        let p = counters.snapshot(None).query_durations;
        assert_eq!(p.count, 100);
        let near = |d: Duration, ms: u64| {
            d.as_secs_f64() * 1000.0 >= ms as f64 * 0.98 && d.as_secs_f64() * 1000.0 <= ms as f64 * 1.02
        };
        assert!(near(p.p50, 50), "{p:?}");
        assert!(near(p.p95, 95), "{p:?}");
        assert!(near(p.p99, 99), "{p:?}");
    }

    #[test]
    fn pending_durations_are_kept_whole_and_taken_once() {
        let counters = Counters::default();
        for i in 0..150 {
            counters.checkout_took(Duration::from_micros(10 + i % 2));
        }
        assert_eq!(counters.pending_distinct(), [0, 2, 0]);
        let pending = counters.take_pending();
        assert_eq!((pending.checkouts.distinct(), pending.checkouts.occurrences()), (2, 150), "none dropped");
        assert!(counters.take_pending().checkouts.is_empty());
        assert_eq!(counters.snapshot(None).checkout_waits.count, 150, "the histogram counts them too");
    }
}
