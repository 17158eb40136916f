//! How long the gate may spend before the handler must run.
//!
//! Lambda gives each invocation a deadline (`Lambda-Runtime-Deadline-Ms`,
//! epoch milliseconds). Retries stop, and running statements are cancelled,
//! `DB_DEADLINE_MARGIN_MS` before it, so
//! the handler can still answer with a clear error before Lambda kills the
//! invocation. A deadline already past on arrival is not a real one
//! (`cargo lambda watch` sends a constant from 1970): it is treated as
//! unknown, and the configured attempts alone bound the work.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use lambda_runtime::Context;

/// The instant by which database work for this invocation must stop
/// (`margin` before its deadline), if the invocation has a real deadline.
pub(crate) fn gate_until(context: &Context, margin: Duration) -> Option<Instant> {
    until(context.deadline, margin, SystemTime::now(), Instant::now())
}

/// [`gate_until`] for a deadline of `deadline_ms` (epoch milliseconds), with
/// the wall clock reading `wall` at the monotonic instant `now`.
fn until(deadline_ms: u64, margin: Duration, wall: SystemTime, now: Instant) -> Option<Instant> {
    let wall = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let remaining = Duration::from_millis(deadline_ms).checked_sub(wall).filter(|r| !r.is_zero())?;
    Some(now + remaining.saturating_sub(margin))
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
pub(crate) fn restore_until(started: Instant) -> Instant {
    started + RESTORE_BUDGET
}

/// The instant by which a warmup at INIT must give up, if any.
pub(crate) fn init_until(started: Instant) -> Option<Instant> {
    init_until_for(started, std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE").ok().as_deref())
}

/// [`init_until`] for the initialization type `kind`.
fn init_until_for(started: Instant, kind: Option<&str>) -> Option<Instant> {
    (kind != Some("snap-start")).then_some(started + INIT_BUDGET)
}

/// Refuses to start `step` once `until` (the deadline less the margin) has
/// passed: nothing may be sent then, so that the error can say that nothing
/// was.
pub(crate) fn before(until: Option<Instant>, step: &'static str) -> Result<(), crate::error::Error> {
    match until {
        Some(until) if Instant::now() >= until => Err(crate::error::Error::DeadlineReached { step }),
        _ => Ok(()),
    }
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
        assert_eq!(until(at + 3_000, MARGIN, wall(at), now), Some(now + Duration::from_millis(2_500)));
        assert_eq!(until(at + 300, MARGIN, wall(at), now), Some(now), "less left than the margin: stop at once");
        assert_eq!(until(at + 1, Duration::ZERO, wall(at), now), Some(now + Duration::from_millis(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_already_past_or_from_1970_is_no_deadline() {
        let now = Instant::now();
        let at = 1_764_201_600_000;
        assert_eq!(until(at, MARGIN, wall(at), now), None, "exactly now");
        assert_eq!(until(at - 1, MARGIN, wall(at), now), None, "past");
        // cargo lambda's constant deadline: 600 000 ms after the epoch.
        assert_eq!(until(600_000, MARGIN, wall(at), now), None, "cargo lambda watch");
        assert_eq!(
            until(at, MARGIN, wall(0) - Duration::from_secs(1), now),
            Some(now + Duration::from_millis(at) - MARGIN),
            "a clock before 1970 reads as 1970"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn init_gives_up_within_lambdas_10_s_except_for_a_snapstart_publish() {
        let started = Instant::now();
        assert_eq!(init_until_for(started, None), Some(started + INIT_BUDGET));
        assert_eq!(init_until_for(started, Some("on-demand")), Some(started + INIT_BUDGET));
        assert_eq!(init_until_for(started, Some("provisioned-concurrency")), Some(started + INIT_BUDGET));
        assert_eq!(init_until_for(started, Some("snap-start")), None);
        assert!(INIT_BUDGET < Duration::from_secs(10));
        assert_eq!(restore_until(started), started + RESTORE_BUDGET);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_starts_once_the_gate_has_passed() {
        let until = Instant::now() + Duration::from_millis(10);
        before(Some(until), "statement").expect("before the gate");
        before(None, "statement").expect("no deadline");
        tokio::time::advance(Duration::from_millis(10)).await;
        let error = before(Some(until), "statement").expect_err("exactly at the gate");
        assert!(matches!(error, crate::error::Error::DeadlineReached { step: "statement" }), "{error:?}");
    }
}
