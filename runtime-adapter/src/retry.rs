//! Retries: exponential backoff with full jitter, bounded by attempts and by
//! the invocation's deadline (less the margin), whichever ends first.
//!
//! What may be retried is decided by the caller; this module only spaces the
//! attempts and refuses one that could not finish before the deadline. A
//! hand-written "5 attempts, up to 3.2 s" loop can outlive a 3 s function;
//! this one stops early enough for the handler to answer.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::deadline::Deadline;
use crate::error::{Error, Step};
use crate::random::Entropy;
use crate::stats::{bump, Counters};
use crate::units::millis;

/// No single pause is longer than this, however many attempts are allowed.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Spaces the attempts of one operation.
#[derive(Debug)]
pub(crate) struct Retrier {
    attempts: u32,
    base_delay: Duration,
    until: Deadline,
    made: u32,
    counters: Arc<Counters>,
    entropy: Arc<Entropy>,
}

impl Retrier {
    pub(crate) fn new(
        attempts: u32,
        base_delay: Duration,
        until: Deadline,
        counters: Arc<Counters>,
        entropy: Arc<Entropy>,
    ) -> Self {
        Self { attempts, base_delay, until, made: 0, counters, entropy }
    }

    /// Records a failed attempt. If another is allowed and its pause ends
    /// before the deadline, waits that pause and returns `Ok`; otherwise
    /// returns the error to give the caller, [`Error::Unavailable`] around
    /// `error`.
    pub(crate) async fn backoff(&mut self, error: Error, step: Step) -> Result<(), Error> {
        self.made += 1;
        let delay = full_jitter(self.base_delay, self.made, self.entropy.fraction());
        let out_of_time = self.until.passed_at(Instant::now() + delay);
        if self.made >= self.attempts || out_of_time {
            tracing::warn!(%error, attempts = self.made, out_of_time, kind = ?error.kind(), %step, "giving up");
            return Err(Error::Unavailable { attempts: self.made, out_of_time, source: Box::new(error) });
        }
        bump(&self.counters.retry_attempts);
        tracing::info!(
            %error,
            attempt = self.made,
            delay_ms = millis(delay),
            kind = ?error.kind(),
            %step,
            "retrying"
        );
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// A pause at `fraction` (a uniform draw from `[0, 1)`) of the way from zero
/// to `base × 2^(attempt-1)`, capped. Full jitter spreads the retries of
/// environments that failed together.
pub(crate) fn full_jitter(base: Duration, attempt: u32, fraction: f64) -> Duration {
    let ceiling = base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(MAX_DELAY);
    ceiling.mul_f64(fraction)
}

/// A pause at `fraction` of the way from `low` to `high`.
pub(crate) fn jitter_between(low: Duration, high: Duration, fraction: f64) -> Duration {
    low + (high.saturating_sub(low)).mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_under_the_exponential_ceiling() {
        let base = Duration::from_millis(200);
        for attempt in 1..=8 {
            let ceiling = (base * 2u32.pow(attempt - 1)).min(MAX_DELAY);
            let entropy = Entropy::default();
            for _ in 0..200 {
                assert!(full_jitter(base, attempt, entropy.fraction()) <= ceiling);
            }
        }
    }

    #[test]
    fn jitter_spans_the_whole_range_from_zero_to_the_ceiling() {
        let base = Duration::from_millis(200);
        // The draw maps linearly onto [0, ceiling).
        assert_eq!(full_jitter(base, 1, 0.0), Duration::ZERO);
        assert_eq!(full_jitter(base, 1, 0.5), Duration::from_millis(100));
        assert_eq!(full_jitter(base, 3, 0.25), Duration::from_millis(200));
        assert_eq!(full_jitter(base, 30, 0.5), MAX_DELAY / 2, "capped");
        // Real draws spread over the range: some near zero, some near the
        // ceiling, a mean near the middle.
        let ceiling = base * 4;
        let entropy = Entropy::default();
        let draws: Vec<Duration> = (0..2_000).map(|_| full_jitter(base, 3, entropy.fraction())).collect();
        assert!(draws.iter().any(|d| *d < ceiling / 10), "some pauses near zero");
        assert!(draws.iter().any(|d| *d > ceiling * 9 / 10), "some pauses near the ceiling");
        let mean = draws.iter().sum::<Duration>() / 2_000;
        assert!(mean > ceiling * 2 / 5 && mean < ceiling * 3 / 5, "mean {mean:?} near half of {ceiling:?}");
    }

    #[test]
    fn jitter_between_stays_in_range() {
        let (low, high) = (Duration::from_secs(2), Duration::from_secs(5));
        let entropy = Entropy::default();
        for _ in 0..200 {
            let d = jitter_between(low, high, entropy.fraction());
            assert!(d >= low && d <= high, "{d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_runs_past_the_deadline() {
        let until = Instant::now() + Duration::from_millis(300);
        let mut retrier =
            Retrier::new(100, Duration::from_millis(200), Deadline::at(until), Arc::default(), Arc::default());
        let mut last = Ok(());
        while last.is_ok() {
            last = retrier.backoff(Error::PoolClosed, Step::Statement).await;
        }
        assert!(Instant::now() <= until, "slept past the deadline");
        match last {
            Err(Error::Unavailable { out_of_time: true, .. }) => {}
            other => panic!("expected a deadline stop, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_far_deadline_lets_every_attempt_run() {
        let until = Instant::now() + Duration::from_secs(3600);
        let mut retrier =
            Retrier::new(3, Duration::from_millis(200), Deadline::at(until), Arc::default(), Arc::default());
        assert!(retrier.backoff(Error::PoolClosed, Step::Statement).await.is_ok());
        assert!(retrier.backoff(Error::PoolClosed, Step::Statement).await.is_ok());
        match retrier.backoff(Error::PoolClosed, Step::Statement).await {
            Err(Error::Unavailable { attempts: 3, out_of_time: false, .. }) => {}
            other => panic!("expected the attempt limit, not the deadline, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded() {
        let mut retrier = Retrier::new(3, Duration::from_millis(1), Deadline::NONE, Arc::default(), Arc::default());
        assert!(retrier.backoff(Error::PoolClosed, Step::Statement).await.is_ok());
        assert!(retrier.backoff(Error::PoolClosed, Step::Statement).await.is_ok());
        match retrier.backoff(Error::PoolClosed, Step::Statement).await {
            Err(Error::Unavailable { attempts: 3, out_of_time: false, .. }) => {}
            other => panic!("expected the attempt limit, got {other:?}"),
        }
    }
}
