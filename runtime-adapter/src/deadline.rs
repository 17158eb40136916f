//! How long the gate may spend before the handler must run.
//!
//! Lambda gives each invocation a deadline (`Lambda-Runtime-Deadline-Ms`,
//! epoch milliseconds). Retries stop, and running statements are cancelled,
//! `DB_DEADLINE_MARGIN_MS` before it, so
//! the handler can still answer with a clear error before Lambda kills the
//! invocation. A deadline already past on arrival is not a real one
//! (`cargo lambda watch` sends a constant from 1970): it is treated as
//! unknown, and the configured attempts alone bound the work.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{Either, FutureExt as _};
use tokio::time::Instant;

use lambda_runtime::Context;

use crate::error::{Error, Step};

/// When the adapter's work must stop, if ever: an invocation's deadline less
/// `DB_DEADLINE_MARGIN_MS`, INIT's or a restore's budget, or none (`cargo
/// lambda`'s deadline from 1970, a SnapStart publish). One type carries
/// "bound this or not", so no caller matches on an `Option` to decide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: the configured attempts alone bound the work.
    pub(crate) const NONE: Self = Self(None);

    /// Work must stop at `instant`.
    pub(crate) fn at(instant: Instant) -> Self {
        Self(Some(instant))
    }

    /// The instant, if there is a deadline.
    pub(crate) fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Whether `at` is at or past the deadline; never without one.
    pub(crate) fn passed_at(self, at: Instant) -> bool {
        self.0.is_some_and(|until| at >= until)
    }

    /// Refuses to start `step` once the deadline has passed: nothing may be
    /// sent then, so that the error can say that nothing was.
    pub(crate) fn check(self, step: Step) -> Result<(), Error> {
        if self.passed_at(Instant::now()) {
            return Err(Error::DeadlineReached { step });
        }
        Ok(())
    }

    /// Runs `future`, but no later than the deadline: then it is dropped and
    /// `step` reported as timed out.
    ///
    /// Not an `async fn`: one would hold `future` twice, as its argument and
    /// inside the timeout, and every caller's future (the gate's, on every
    /// invocation's path) would carry and copy both.
    pub(crate) fn bound<T, F>(self, step: Step, future: F) -> impl Future<Output = Result<T, Error>>
    where
        F: Future<Output = Result<T, Error>>,
    {
        match self.0 {
            Some(until) => {
                let started = Instant::now();
                let timed = tokio::time::timeout_at(until, future);
                Either::Left(
                    timed
                        .map(move |out| out.unwrap_or_else(|_| Err(Error::Timeout { step, after: started.elapsed() }))),
                )
            }
            None => Either::Right(future),
        }
    }
}

/// The instant by which database work for this invocation must stop
/// (`margin` before its deadline), if the invocation has a real deadline.
pub(crate) fn gate_until(context: &Context, margin: Duration) -> Deadline {
    until_ms(context.deadline, margin)
}

/// [`gate_until`] for a deadline of `deadline_ms` (epoch milliseconds).
pub(crate) fn until_ms(deadline_ms: u64, margin: Duration) -> Deadline {
    until(deadline_ms, margin, SystemTime::now(), Instant::now())
}

/// [`gate_until`] for a deadline of `deadline_ms` (epoch milliseconds), with
/// the wall clock reading `wall` at the monotonic instant `now`.
fn until(deadline_ms: u64, margin: Duration, wall: SystemTime, now: Instant) -> Deadline {
    let wall = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    match Duration::from_millis(deadline_ms).checked_sub(wall).filter(|r| !r.is_zero()) {
        Some(remaining) => Deadline::at(now + remaining.saturating_sub(margin)),
        None => Deadline::NONE,
    }
}

/// Lambda ends an on-demand INIT after 10 s. Warmup at INIT gives up before
/// that, leaving time to reach the runtime loop; the first invocation then
/// warms the pool. SnapStart's INIT, at publish time, may take minutes.
const INIT_BUDGET: Duration = Duration::from_secs(8);

/// Lambda fails a restore whose after-restore hooks take more than 10 s
/// (`SnapStartTimeoutException`). Re-warming gives up after this, well
/// within it, and the first invocation warms the pool instead.
pub(crate) const RESTORE_BUDGET: Duration = Duration::from_secs(5);

/// The instant by which re-warming after a SnapStart restore must give up.
pub(crate) fn restore_until(started: Instant) -> Deadline {
    Deadline::at(started + RESTORE_BUDGET)
}

/// The instant by which a warmup at INIT must give up, if any.
pub(crate) fn init_until(started: Instant) -> Deadline {
    init_until_for(started, std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE").ok().as_deref())
}

/// [`init_until`] for the initialization type `kind`.
fn init_until_for(started: Instant, kind: Option<&str>) -> Deadline {
    if kind == Some("snap-start") {
        return Deadline::NONE;
    }
    Deadline::at(started + INIT_BUDGET)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARGIN: Duration = Duration::from_millis(500);

    /// A wall clock reading of `ms` epoch milliseconds.
    fn wall(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_stops_the_margin_before_the_deadline() {
        let now = Instant::now();
        let at = 1_764_201_600_000;
        assert_eq!(until(at + 3_000, MARGIN, wall(at), now), Deadline::at(now + Duration::from_millis(2_500)));
        assert_eq!(
            until(at + 300, MARGIN, wall(at), now),
            Deadline::at(now),
            "less left than the margin: stop at once"
        );
        assert_eq!(until(at + 1, Duration::ZERO, wall(at), now), Deadline::at(now + Duration::from_millis(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_or_from_1970_is_no_deadline() {
        let now = Instant::now();
        let at = 1_764_201_600_000;
        assert_eq!(until(at, MARGIN, wall(at), now), Deadline::NONE, "exactly now");
        assert_eq!(until(at - 1, MARGIN, wall(at), now), Deadline::NONE, "past");
        // cargo lambda's constant deadline: 600 000 ms after the epoch.
        assert_eq!(until(600_000, MARGIN, wall(at), now), Deadline::NONE, "cargo lambda watch");
        assert_eq!(
            until(at, MARGIN, wall(0) - Duration::from_secs(1), now),
            Deadline::at(now + Duration::from_millis(at) - MARGIN),
            "a clock before 1970 reads as 1970"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn init_gives_up_within_lambdas_10_s_except_for_a_snapstart_publish() {
        let started = Instant::now();
        assert_eq!(init_until_for(started, None), Deadline::at(started + INIT_BUDGET));
        assert_eq!(init_until_for(started, Some("on-demand")), Deadline::at(started + INIT_BUDGET));
        assert_eq!(init_until_for(started, Some("provisioned-concurrency")), Deadline::at(started + INIT_BUDGET));
        assert_eq!(init_until_for(started, Some("snap-start")), Deadline::NONE);
        assert!(INIT_BUDGET < Duration::from_secs(10));
        assert_eq!(restore_until(started), Deadline::at(started + RESTORE_BUDGET));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_starts_once_the_gate_has_passed() {
        let until = Deadline::at(Instant::now() + Duration::from_millis(10));
        until.check(Step::Statement).expect("before the gate");
        Deadline::NONE.check(Step::Statement).expect("no deadline");
        assert!(!Deadline::NONE.passed_at(Instant::now() + Duration::from_secs(86_400)), "never, without one");
        tokio::time::advance(Duration::from_millis(10)).await;
        let error = until.check(Step::Statement).expect_err("exactly at the gate");
        assert!(matches!(error, Error::DeadlineReached { step: Step::Statement }), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bound_work_is_dropped_at_the_deadline_and_named() {
        let until = Deadline::at(Instant::now() + Duration::from_millis(250));
        let never = std::future::pending::<Result<(), Error>>();
        let error = until.bound(Step::Checkout, never).await.expect_err("stopped at the deadline");
        assert!(
            matches!(error, Error::Timeout { step: Step::Checkout, after } if after == Duration::from_millis(250)),
            "{error:?}"
        );
        assert_eq!(Deadline::NONE.bound(Step::Checkout, async { Ok(7) }).await.expect("unbounded"), 7);
        let late = Deadline::at(Instant::now());
        let error = late.bound(Step::Refresh, std::future::pending::<Result<(), Error>>()).await.expect_err("past");
        assert!(error.to_string().starts_with("pool refresh within the invocation's deadline timed out"), "{error}");
    }
}
