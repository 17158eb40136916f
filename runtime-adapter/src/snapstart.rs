//! SnapStart: the pool must not be in the snapshot.
//!
//! SnapStart runs INIT once, when a version is published, snapshots the
//! microVM and restores copies of it for cold starts, maybe days later. A
//! pool carried through the snapshot is poison: its TCP connections are dead
//! after restore, its credentials may have expired, and every copy shares
//! the same random state. So before the snapshot the pool is closed, and
//! after each restore it is rebuilt and re-warmed, with fresh randomness,
//! before the runtime asks for the first invocation. The metrics pending
//! at the snapshot (INIT's, which belong to the publish) are dropped rather
//! than written, and none stay in memory for every restored copy to write
//! again. Without SnapStart
//! (`AWS_LAMBDA_INITIALIZATION_TYPE` not `snap-start`) `lambda_runtime` never
//! calls these hooks.

use lambda_runtime::{BoxFuture, SnapStartResource};

use crate::adapter::Adapter;

/// The adapter as a `lambda_runtime` SnapStart resource.
pub(crate) struct SnapStart(pub(crate) Adapter);

impl SnapStartResource for SnapStart {
    fn before_snapshot(&self) -> BoxFuture<'_, Result<(), lambda_runtime::Error>> {
        Box::pin(async {
            self.0.before_snapshot().await;
            Ok(())
        })
    }

    fn after_restore(&self) -> BoxFuture<'_, Result<(), lambda_runtime::Error>> {
        Box::pin(async { self.0.after_restore().await.map_err(Into::into) })
    }
}
