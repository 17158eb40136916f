//! When maintenance is due: a health check ([`Liveness`]: when a round trip
//! last succeeded) and a pool refresh ([`Expiry`]: the pool's age against
//! its jittered maximum).
//!
//! Any successful round trip proves the database healthy (like HikariCP's
//! bypass window), so a busy function never pays for checks. Only when none
//! succeeded within `DB_HEALTH_CHECK_INTERVAL_MS` does the next invocation
//! spend one. Time is an argument, never read here except to record a
//! success, so the rules are unit-tested on paused time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

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

/// When a pool is due for a refresh: its age against a lifetime, the
/// maximum age less up to 10 % jitter ([`jittered_lifetime`]), moved later
/// when a refresh could not build a replacement.
#[derive(Debug)]
pub(crate) struct Expiry {
    built: Instant,
    /// Nanoseconds after `built` at which the pool is due.
    after: AtomicU64,
}

impl Expiry {
    /// A pool built at `built`, due once `lifetime` old.
    pub(crate) fn new(built: Instant, lifetime: Duration) -> Self {
        Self { built, after: AtomicU64::new(nanos(lifetime)) }
    }

    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.built)
    }

    /// Whether the pool is due at `now`: at its lifetime exactly, not after.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        nanos(self.age(now)) >= self.after.load(Ordering::Relaxed)
    }

    /// Whether the pool is `grace` or more past being due at `now`.
    pub(crate) fn is_overdue(&self, now: Instant, grace: Duration) -> bool {
        nanos(self.age(now)) >= self.after.load(Ordering::Relaxed).saturating_add(nanos(grace))
    }

    /// Sets the age at which the pool is due.
    pub(crate) fn set_lifetime(&self, lifetime: Duration) {
        self.after.store(nanos(lifetime), Ordering::Relaxed);
    }

    /// Makes the pool due `by` after `now`.
    pub(crate) fn postpone(&self, now: Instant, by: Duration) {
        self.after.store(nanos(self.age(now) + by), Ordering::Relaxed);
    }
}

/// A pool's lifetime: `max_age` less up to 10 % jitter (`fraction` in
/// [0, 1)), so that environments started together spread their refreshes.
pub(crate) fn jittered_lifetime(max_age: Duration, fraction: f64) -> Duration {
    max_age.mul_f64(1.0 - 0.1 * fraction)
}

/// Saturating: a lifetime beyond 584 years is forever.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_check_is_due_until_a_success_then_again_exactly_at_the_interval() {
        let liveness = Liveness::default();
        assert!(liveness.check_due(Instant::now(), INTERVAL), "never succeeded: due");
        assert_eq!(liveness.last_success(), None);
        liveness.succeeded();
        let at = Instant::now();
        assert!(!liveness.check_due(at, INTERVAL));
        tokio::time::advance(INTERVAL - Duration::from_nanos(1)).await;
        assert!(!liveness.check_due(Instant::now(), INTERVAL), "one nanosecond short of the interval");
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(liveness.check_due(Instant::now(), INTERVAL), "exactly at the interval");
        assert!(liveness.check_due(at, Duration::ZERO), "a zero interval checks every time");
    }

    #[tokio::test(start_paused = true)]
    async fn the_latest_success_counts_and_reset_forgets_them_all() {
        let liveness = Liveness::default();
        liveness.succeeded();
        tokio::time::advance(Duration::from_secs(20)).await;
        liveness.succeeded();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!liveness.check_due(Instant::now(), INTERVAL), "20 s since the latest success");
        let first = liveness.last_success().expect("recorded");
        // An earlier instant, as a slower concurrent invocation reports it,
        // never moves the record back.
        liveness.last_success.store(1, Ordering::Relaxed);
        liveness.succeeded();
        assert!(liveness.last_success().expect("recorded") > first);
        liveness.reset();
        assert!(liveness.check_due(Instant::now(), INTERVAL), "after a restore nothing is proven");
        assert_eq!(liveness.last_success(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_at_an_instant_before_the_success_is_not_due() {
        let before = Instant::now();
        let liveness = Liveness::default();
        tokio::time::advance(Duration::from_secs(1)).await;
        liveness.succeeded();
        assert!(!liveness.check_due(before, INTERVAL), "no negative durations");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_is_due_exactly_at_its_lifetime_and_postponing_moves_that_from_now() {
        let lifetime = Duration::from_secs(300);
        let expiry = Expiry::new(Instant::now(), lifetime);
        tokio::time::advance(lifetime - Duration::from_nanos(1)).await;
        assert!(!expiry.is_due(Instant::now()));
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(expiry.is_due(Instant::now()), "exactly at the maximum age");
        assert_eq!(expiry.age(Instant::now()), lifetime);

        expiry.postpone(Instant::now(), Duration::from_secs(2));
        assert!(!expiry.is_due(Instant::now()), "a failed refresh waits");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(expiry.is_due(Instant::now()), "then is due again, 2 s later");

        expiry.set_lifetime(Duration::MAX);
        assert!(!expiry.is_due(Instant::now()), "saturates rather than wraps");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_is_overdue_exactly_a_grace_after_it_is_due_and_postponing_moves_both() {
        let lifetime = Duration::from_secs(300);
        let grace = Duration::from_secs(30);
        let expiry = Expiry::new(Instant::now(), lifetime);
        tokio::time::advance(lifetime).await;
        assert!(expiry.is_due(Instant::now()) && !expiry.is_overdue(Instant::now(), grace));
        tokio::time::advance(grace - Duration::from_nanos(1)).await;
        assert!(!expiry.is_overdue(Instant::now(), grace), "one nanosecond short of the grace");
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(expiry.is_overdue(Instant::now(), grace), "exactly at the grace");
        assert!(expiry.is_overdue(Instant::now(), Duration::ZERO), "no grace: overdue once due");

        expiry.postpone(Instant::now(), Duration::from_secs(2));
        assert!(!expiry.is_overdue(Instant::now(), Duration::ZERO), "a failed refresh moves the fallback too");
        expiry.set_lifetime(Duration::MAX);
        assert!(!expiry.is_overdue(Instant::now(), grace), "saturates rather than wraps");
    }

    #[test]
    fn lifetimes_are_jittered_down_by_at_most_ten_percent() {
        let max_age = Duration::from_secs(300);
        assert_eq!(jittered_lifetime(max_age, 0.0), max_age);
        assert_eq!(jittered_lifetime(max_age, 0.5), Duration::from_secs(285));
        let shortest = jittered_lifetime(max_age, 0.999_999);
        assert!(shortest > Duration::from_secs(270) && shortest < Duration::from_millis(270_001), "{shortest:?}");
    }
}
