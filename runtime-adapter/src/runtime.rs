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
