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
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let deadline = Duration::from_millis(context.deadline);
    let remaining = deadline.checked_sub(now).filter(|r| !r.is_zero())?;
    Some(Instant::now() + remaining.saturating_sub(margin))
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
    let snap_start = std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE").is_ok_and(|t| t == "snap-start");
    (!snap_start).then_some(started + INIT_BUDGET)
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
