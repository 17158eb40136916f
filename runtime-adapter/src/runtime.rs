//! The Lambda side: [`Builder::run`], the short path for a `LambdaEvent`
//! handler, built on the `lifecycle` module's pieces ([`Builder::start`],
//! [`LifecycleLayer`](crate::LifecycleLayer), [`Lifecycle::run`](crate::Lifecycle::run)).
//!
//! A handler's error reaches Lambda as the `errorType` its
//! `Into<Diagnostic>` gives: `runtime_adapter::Error` keeps its own
//! (`RuntimeAdapter.DatabaseUnavailable`, …). A panic in the handler is
//! caught by the layer, around the handler's future, and answered as
//! [`HANDLER_PANICKED`](crate::HANDLER_PANICKED) with the panic's message; the environment keeps
//! serving, and the invocation's metrics record is still written.

use std::fmt::Debug;
use std::future::Future;
use std::io;

use futures_util::future::{self, Either};
use futures_util::{FutureExt as _, Stream, TryFutureExt as _};
use lambda_runtime::tower::Layer as _;
use lambda_runtime::{Diagnostic, IntoFunctionResponse, LambdaEvent};
use serde::{Deserialize, Serialize};

use crate::adapter::Builder;
use crate::db::Db;
use crate::lifecycle::gate;

impl Builder {
    /// Initializes the adapter ([`Builder::init`]) during Lambda's INIT phase,
    /// then runs the Lambda loop with `handler`, which receives a warmed
    /// [`Db`] with each event.
    ///
    /// Under SnapStart the pool is closed before the snapshot and re-warmed
    /// after each restore (see the `snapstart` module).
    ///
    /// Runs `lambda_runtime`'s concurrent loop: with `AWS_LAMBDA_MAX_CONCURRENCY`
    /// above 1 (Lambda Managed Instances) that many invocations run at once
    /// and share the pool; otherwise one at a time.
    ///
    /// A permanent init failure is reported to Lambda as an init error whose
    /// message names the cause, and the handler never runs.
    ///
    /// The handler's error becomes Lambda's `errorType` and `errorMessage`
    /// through its `Into<Diagnostic>`: return [`Error`](crate::Error) (or an error of
    /// your own that converts from it and into a [`Diagnostic`]) to keep
    /// the adapter's types, such as `RuntimeAdapter.DatabaseUnavailable`.
    /// `lambda_runtime::Error`, a boxed error, would lose them. A panic in
    /// the handler is answered as [`HANDLER_PANICKED`](crate::HANDLER_PANICKED) with the panic's
    /// message, and the environment goes on serving.
    ///
    /// # Errors
    ///
    /// The init failure, or the runtime's own error.
    pub async fn run<A, F, Fut, R, B, S, D, E, HE>(self, handler: F) -> Result<(), lambda_runtime::Error>
    where
        F: Fn(Db, LambdaEvent<A>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HE>> + Send + 'static,
        HE: Into<Diagnostic> + Send + 'static,
        A: for<'de> Deserialize<'de> + Send + 'static,
        R: IntoFunctionResponse<B, S> + Send + 'static,
        B: Serialize + Send + 'static,
        S: Stream<Item = Result<D, E>> + Unpin + Send + 'static,
        D: Into<bytes::Bytes> + Send + 'static,
        E: Into<lambda_runtime::Error> + Send + Debug + 'static,
    {
        let lifecycle = self.start().await?;
        let adapter = lifecycle.adapter().clone();
        // The gate before the handler: a `LambdaEvent` handler always
        // receives a `Db`. The rest of the lifecycle is the layer's.
        let handler = lambda_runtime::service_fn(move |event: LambdaEvent<A>| {
            let adapter = adapter.clone();
            let handler = handler.clone();
            let until = adapter.gate_until(&event.context);
            // The gate, then the handler: `then` holds the event beside the
            // gate's future, and the handler's future (which holds the event)
            // in their place; an `async` block would hold the event for the
            // whole invocation beside both, a larger future to move.
            let gate = async move { gate(&adapter, until).await };
            gate.then(move |db| match db {
                Ok(db) => Either::Left(handler(db, event).map_err(Into::into)),
                Err(error) => Either::Right(future::ready(Err(Diagnostic::from(error)))),
            })
        });
        let service = lifecycle.layer().layer(handler);
        lifecycle.run(lambda_runtime::Runtime::new(service)).await
    }
}

/// The tokio runtime that fits a Lambda execution environment, for `main` to
/// run the adapter on (in place of `#[tokio::main]`):
///
/// ```no_run
/// # async fn handle(_: runtime_adapter::Db, _: runtime_adapter::LambdaEvent<serde_json::Value>)
/// #     -> Result<serde_json::Value, runtime_adapter::Error> { unimplemented!() }
/// use runtime_adapter::Adapter;
///
/// fn main() -> Result<(), lambda_runtime::Error> {
///     lambda_runtime::tracing::init_default_subscriber();
///     runtime_adapter::tokio_runtime()?.block_on(Adapter::builder().run(handle))
/// }
/// ```
///
/// - **One invocation at a time** (`AWS_LAMBDA_MAX_CONCURRENCY` unset or 1,
///   as on-demand Lambda, SnapStart and `cargo lambda watch` run a
///   function): a current-thread runtime. The handler, the connection's
///   task and the Runtime API client then run on the thread that polls
///   `/next`, and an invocation is not handed between worker threads.
///   `#[tokio::main]`'s multi-thread runtime put threads on a CPU about 19
///   times per warm invocation against about 4, and cost the same function
///   about 245 µs more CPU and 0.15 ms more latency (BENCHMARKS.md, "The
///   runtime's flavor (sixth pass)"). Lambda below 1,769 MB gives less than
///   one vCPU, so a second worker has no CPU of its own to run on.
/// - **Several at once** (`AWS_LAMBDA_MAX_CONCURRENCY` above 1, Lambda
///   Managed Instances): a multi-thread runtime, one worker per CPU, so
///   that concurrent invocations run in parallel.
///
/// Both have I/O and time enabled. A value that is not a number is left to
/// [`Builder::init`] (through [`Builder::run`]), which fails INIT with a
/// message that names the variable; the runtime for it is the
/// current-thread one.
///
/// On one thread, a handler that blocks it (synchronous I/O, a long
/// computation, `std::thread::sleep`) stops everything else until it
/// returns: the connection's task, the cancel at the deadline, the SIGTERM
/// handler that writes the last metrics. Run such work with
/// `tokio::task::spawn_blocking`, as on any tokio runtime.
///
/// The adapter runs on any tokio runtime: `#[tokio::main]` works too, at
/// the cost above.
///
/// # Errors
///
/// The operating system's error when the runtime cannot be built (no file
/// descriptor or thread left for its driver or workers).
pub fn tokio_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio_runtime_for(std::env::var("AWS_LAMBDA_MAX_CONCURRENCY").ok().as_deref())
}

/// [`tokio_runtime`] for a value of `AWS_LAMBDA_MAX_CONCURRENCY`.
fn tokio_runtime_for(max_concurrency: Option<&str>) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = if runs_several_at_once(max_concurrency) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build()
}

/// Whether `AWS_LAMBDA_MAX_CONCURRENCY`'s value lets Lambda run more than one
/// invocation at once.
fn runs_several_at_once(max_concurrency: Option<&str>) -> bool {
    max_concurrency.and_then(|value| value.trim().parse::<usize>().ok()).is_some_and(|n| n > 1)
}

#[cfg(test)]
mod tests {
    use super::runs_several_at_once;

    #[test]
    fn only_a_concurrency_above_one_gets_worker_threads() {
        for (value, several) in [
            (None, false),
            (Some("1"), false),
            (Some("0"), false),
            (Some("2"), true),
            (Some(" 16 "), true),
            (Some("-4"), false),
            (Some("eight"), false),
            (Some(""), false),
        ] {
            assert_eq!(runs_several_at_once(value), several, "AWS_LAMBDA_MAX_CONCURRENCY={value:?}");
        }
    }

    #[test]
    fn the_runtime_for_one_invocation_at_a_time_runs_tasks_on_the_calling_thread() {
        // Built the way `tokio_runtime` builds it without the variable: a task
        // spawned on it runs on the thread that blocks on it.
        let runtime = super::tokio_runtime_for(None).expect("a runtime");
        let caller = std::thread::current().id();
        let spawned_on = runtime.block_on(async { tokio::spawn(async { std::thread::current().id() }).await });
        assert_eq!(spawned_on.expect("the task ran"), caller);
        let several = super::tokio_runtime_for(Some("4")).expect("a runtime");
        let spawned_on = several.block_on(async { tokio::spawn(async { std::thread::current().id() }).await });
        assert_ne!(spawned_on.expect("the task ran"), caller, "a multi-thread runtime runs tasks on its workers");
    }
}
