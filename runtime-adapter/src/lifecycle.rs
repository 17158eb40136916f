//! The adapter's lifecycle for any Lambda service: [`Builder::start`] and
//! [`Lifecycle`] for what happens once per environment, [`LifecycleLayer`]
//! for what happens around each invocation.
//!
//! Once per environment, at INIT ([`Builder::start`]): the pool is built and
//! warmed, a permanent failure is reported to `/runtime/init/error`, and the
//! shutdown extension and signal handlers are installed. [`Lifecycle::run`]
//! then registers the SnapStart hooks and runs the loop.
//!
//! Around each invocation ([`LifecycleLayer`], a tower layer): the handler's
//! panic is caught and answered as [`HANDLER_PANICKED`](crate::HANDLER_PANICKED), its error becomes a
//! [`Diagnostic`] (keeping the adapter's `RuntimeAdapter.*` types), and the
//! EMF records due, if any, are taken before the handler and after it,
//! before the answer (see `metrics`): written then, or after the answer under
//! [`Lifecycle::run`].
//!
//! The layer wraps two kinds of services:
//! - `Service<LambdaEvent<T>>`, as [`Builder::run`] does;
//! - `Service<http::Request<B>>` answering `http::Response<RB>`, inside
//!   `lambda_http` (an axum `Router`, for one). The layer puts the
//!   [`Adapter`] into the request's extensions, where the `Db` extractor
//!   (feature `axum`) finds it with the invocation's `Context` that
//!   `lambda_http` put there, and runs the gate only when a handler asks for
//!   a `Db`: a route that never touches the database never checks one out.
//!   A response carrying a database failure (what an adapter [`Error`]
//!   becomes as an axum response) fails the invocation with that error's
//!   `errorType` rather than answering 500.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};

use futures_util::future;
use futures_util::{FutureExt as _, TryFutureExt as _};
use lambda_runtime::layers::TracingLayer;
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{Context, Diagnostic, LambdaEvent, LambdaInvocation, Runtime, SnapStartResource};

use crate::adapter::{Adapter, Builder};
use crate::db::Db;
use crate::deadline::Deadline;
use crate::error::Error;
use crate::metrics::{self, Point};
use crate::report::{panicked, report_init_error};
use crate::shutdown;
use crate::snapstart::SnapStart;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Builder {
    /// INIT for a service of your own: initializes the adapter
    /// ([`Builder::init`]), reports a permanent failure to Lambda as an init
    /// error whose message names the cause, and installs graceful shutdown
    /// (SIGTERM closes every connection with Terminate and writes the last
    /// metrics record). Then wrap the service in [`Lifecycle::layer`] and
    /// run it with [`Lifecycle::run`].
    ///
    /// ```no_run
    /// use lambda_runtime::tower::Layer as _;
    /// use lambda_runtime::{service_fn, LambdaEvent, Runtime};
    /// use runtime_adapter::{Adapter, Error};
    /// use serde_json::Value;
    ///
    /// # async fn app() -> Result<(), lambda_runtime::Error> {
    /// let lifecycle = Adapter::builder().statement("SELECT 1").start().await?;
    /// let handler = service_fn(|event: LambdaEvent<Value>| async move { Ok::<_, Error>(event.payload) });
    /// let service = lifecycle.layer().layer(handler);
    /// lifecycle.run(Runtime::new(service)).await
    /// # }
    /// ```
    ///
    /// With `lambda_http` (an axum `Router` as `router`):
    /// `lifecycle.run(lambda_http::runtime_concurrent(lifecycle.layer().layer(router)))`.
    ///
    /// # Errors
    ///
    /// The init failure, already reported to Lambda.
    pub async fn start(self) -> Result<Lifecycle, Error> {
        // A task of its own, so that on more than one core the extension's
        // HTTP round trip runs beside the warmup rather than interleaved
        // with it on one thread; INIT ends only once both did.
        let registration = tokio::spawn(shutdown::register_extension());
        let init = self.init().await;
        if let Err(error) = registration.await {
            tracing::warn!(%error, "registering the shutdown extension failed; Lambda will not send SIGTERM");
        }
        let adapter = match init {
            Ok(adapter) => adapter,
            Err(error) => {
                tracing::error!(%error, error_type = error.error_type(), "init failed");
                report_init_error(&error).await;
                return Err(error);
            }
        };
        shutdown::listen(adapter.clone());
        Ok(Lifecycle { adapter })
    }
}

/// An initialized adapter with graceful shutdown installed, made by
/// [`Builder::start`]: the layer for each invocation, and the loop.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    adapter: Adapter,
}

impl Lifecycle {
    /// The adapter, for code that needs it outside a handler.
    #[must_use]
    pub fn adapter(&self) -> &Adapter {
        &self.adapter
    }

    /// The tower layer that brings the per-invocation lifecycle (panics,
    /// errors, metrics, the `Db` extractor's adapter) to a service.
    #[must_use]
    pub fn layer(&self) -> LifecycleLayer {
        LifecycleLayer { adapter: self.adapter.clone() }
    }

    /// The SnapStart hooks (pool closed before the snapshot, re-warmed after
    /// each restore), for a [`Runtime`] you run yourself;
    /// [`Lifecycle::run`] registers them.
    #[must_use]
    pub fn snap_start(&self) -> Arc<dyn SnapStartResource> {
        Arc::new(SnapStart(self.adapter.clone()))
    }

    /// Runs `runtime` (`Runtime::new(service)`, or
    /// `lambda_http::runtime_concurrent(service)`) with the SnapStart hooks
    /// registered and lambda_runtime's `TracingLayer` (one span per
    /// invocation carrying its request id), on the concurrent loop: with
    /// `AWS_LAMBDA_MAX_CONCURRENCY` above 1 that many invocations share the
    /// pool.
    ///
    /// Around the runtime's own services, which post each answer, it adds
    /// what follows an answer: the metrics record due, if any, is written
    /// then rather than before the answer; the replacement for a pool past
    /// its maximum age is built then, and the runtime asks Lambda for the
    /// next invocation (when Lambda freezes the environment) once it is in
    /// place, or after a bounded wait (see the `adapter` module).
    ///
    /// The service given to the runtime should be wrapped in
    /// [`Lifecycle::layer`]; without it no metrics are written and panics
    /// keep lambda_runtime's own error type.
    ///
    /// # Errors
    ///
    /// The runtime's own error.
    pub async fn run<S>(self, runtime: Runtime<S>) -> Result<(), lambda_runtime::Error>
    where
        S: Service<LambdaInvocation, Response = (), Error = BoxError> + Clone + Send + 'static,
        S::Future: Send,
    {
        self.adapter.answers_reported();
        let after_answer = AfterAnswerLayer { adapter: self.adapter.clone() };
        let runtime =
            runtime.register_snapstart_resource(self.snap_start()).layer(after_answer).layer(TracingLayer::new());
        // Boxed: the runtime's future type is deep enough to overflow the
        // compiler's query depth in the caller's `main`.
        Box::pin(runtime.run_concurrent()).await
    }
}

/// Around lambda_runtime's own services, which post the answer: what the
/// adapter does once an invocation has answered and before the runtime asks
/// for the next one, Lambda freezing the environment only then (see
/// [`Adapter::after_answer`]).
#[derive(Debug, Clone)]
struct AfterAnswerLayer {
    adapter: Adapter,
}

impl<S> Layer<S> for AfterAnswerLayer {
    type Service = AfterAnswerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AfterAnswerService { inner, adapter: self.adapter.clone() }
    }
}

/// A runtime's service wrapped in [`AfterAnswerLayer`].
#[derive(Debug, Clone)]
struct AfterAnswerService<S> {
    inner: S,
    adapter: Adapter,
}

impl<S> Service<LambdaInvocation> for AfterAnswerService<S>
where
    S: Service<LambdaInvocation, Response = (), Error = BoxError>,
{
    type Response = ();
    type Error = BoxError;
    type Future = AfterAnswer<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, invocation: LambdaInvocation) -> Self::Future {
        let deadline_ms = invocation.context.deadline;
        AfterAnswer { answered: self.inner.call(invocation), adapter: self.adapter.clone(), deadline_ms, after: None }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`AfterAnswerService`]: the answer, then the work
    /// after it, if any, then the answer's result.
    struct AfterAnswer<F> {
        #[pin]
        answered: F,
        adapter: Adapter,
        deadline_ms: u64,
        after: Option<(future::BoxFuture<'static, ()>, Result<(), BoxError>)>,
    }
}

impl<F> Future for AfterAnswer<F>
where
    F: Future<Output = Result<(), BoxError>>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.after.is_none() {
            let result = std::task::ready!(this.answered.poll(cx));
            match this.adapter.after_answer(*this.deadline_ms) {
                None => return Poll::Ready(result),
                Some(work) => *this.after = Some((work, result)),
            }
        }
        let (work, _) = this.after.as_mut().expect("set above");
        std::task::ready!(work.as_mut().poll(cx));
        let (_, result) = this.after.take().expect("set above");
        Poll::Ready(result)
    }
}

/// The per-invocation lifecycle as a tower [`Layer`]; see the module docs.
#[derive(Debug, Clone)]
pub struct LifecycleLayer {
    adapter: Adapter,
}

impl<S> Layer<S> for LifecycleLayer {
    type Service = LifecycleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LifecycleService { inner, adapter: self.adapter.clone() }
    }
}

/// A service wrapped in [`LifecycleLayer`].
#[derive(Debug, Clone)]
pub struct LifecycleService<S> {
    inner: S,
    adapter: Adapter,
}

/// The future of a [`LifecycleService`].
pub type LifecycleFuture<R> = Pin<Box<dyn Future<Output = Result<R, Diagnostic>> + Send>>;

impl<S> LifecycleService<S> {
    /// The inner service that was polled ready, leaving a fresh clone in its
    /// place (tower's rule: call the instance that reported ready).
    fn take_ready(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, T, R> Service<LambdaEvent<T>> for LifecycleService<S>
where
    S: Service<LambdaEvent<T>, Response = R> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Diagnostic>,
    T: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = Diagnostic;
    type Future = LifecycleFuture<R>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Diagnostic>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, event: LambdaEvent<T>) -> Self::Future {
        let mut inner = self.take_ready();
        let record = Record::of(&self.adapter, &event.context);
        // Boxed: an event is large (1.7 KB for API Gateway) and moved field
        // by field, in hundreds of instructions, at each step to the inner
        // service; boxed, those steps move a pointer.
        let event = Box::new(event);
        invocation(self.adapter.clone(), record, move || inner.call(*event).map_err(Into::into))
    }
}

impl<S, B, RB> Service<http::Request<B>> for LifecycleService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<Diagnostic>,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<ResponseBody<RB>>;
    type Error = Diagnostic;
    type Future = LifecycleFuture<http::Response<ResponseBody<RB>>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Diagnostic>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let mut inner = self.take_ready();
        let record = request.extensions().get::<Context>().map(|c| Record::of(&self.adapter, c)).unwrap_or_default();
        request.extensions_mut().insert(self.adapter.clone());
        invocation(self.adapter.clone(), record, move || {
            inner.call(request).map(|response| {
                let mut response = response.map_err(Into::into)?;
                match response.extensions_mut().remove::<Failed>() {
                    Some(Failed(diagnostic)) => Err(diagnostic),
                    None => Ok(response.map(|body| ResponseBody(Mutex::new(body)))),
                }
            })
        })
    }
}

/// An HTTP service's response body, made `Sync`, which
/// `lambda_http::runtime_concurrent` requires of a response and axum's body
/// is not. Never locked while polled: the mutex is there for its `Sync`.
#[derive(Debug)]
pub struct ResponseBody<B>(Mutex<B>);

impl<B> http_body::Body for ResponseBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let body = self.get_mut().0.get_mut().unwrap_or_else(PoisonError::into_inner);
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.try_lock().is_ok_and(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.try_lock().map(|body| body.size_hint()).unwrap_or_default()
    }
}

/// What an invocation's metrics record names.
#[derive(Debug, Default)]
struct Record {
    request_id: String,
    xray_trace_id: Option<String>,
}

impl Record {
    /// Empty unless the records name each invocation: aggregated records
    /// (the default) do not, and the ids are not copied for nothing.
    fn of(adapter: &Adapter, context: &Context) -> Self {
        if !adapter.names_invocations() {
            return Self::default();
        }
        Self { request_id: context.request_id.clone(), xray_trace_id: context.xray_trace_id.clone() }
    }
}

/// One invocation: the handler's future, made by `call`, with a panic in
/// making or polling it answered as [`HANDLER_PANICKED`](crate::HANDLER_PANICKED), and the metrics
/// checked before and after.
///
/// The handler's future is kilobytes (the gate, the statements, the
/// handler's own state): it is made here and held once, in the one
/// allocation of the invocation, and polled in place.
fn invocation<F, R>(adapter: Adapter, record: Record, call: impl FnOnce() -> F) -> LifecycleFuture<R>
where
    F: Future<Output = Result<R, Diagnostic>> + Send + 'static,
    R: Send + 'static,
{
    match std::panic::catch_unwind(AssertUnwindSafe(call)) {
        Ok(handled) => Box::pin(Invocation { handled, adapter, record, started: false }),
        Err(payload) => {
            let handled = future::ready(Err(panicked(payload.as_ref())));
            Box::pin(Invocation { handled, adapter, record, started: false })
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of one invocation; see [`invocation`].
    struct Invocation<F> {
        #[pin]
        handled: F,
        adapter: Adapter,
        record: Record,
        started: bool,
    }
}

impl<F, R> Future for Invocation<F>
where
    F: Future<Output = Result<R, Diagnostic>>,
{
    type Output = Result<R, Diagnostic>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.started {
            *this.started = true;
            // A record whose window has passed is taken before the
            // handler adds to what it holds.
            this.adapter.flush_metrics(Point::Start);
        }
        let result = match std::panic::catch_unwind(AssertUnwindSafe(|| this.handled.poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(result)) => result,
            Err(payload) => Err(panicked(payload.as_ref())),
        };
        // After the handler, so a record holds the invocation's statements;
        // before the answer, which may freeze the process: the last point at
        // which a record due now can be taken. Under `Lifecycle::run` it is
        // written after the answer, before the next `/next`.
        this.adapter.flush_metrics(Point::End(metrics::Invocation {
            request_id: &this.record.request_id,
            xray_trace_id: this.record.xray_trace_id.as_deref(),
        }));
        Poll::Ready(result)
    }
}

/// The gate for one invocation: a warmed [`Db`], or the error that reaches
/// Lambda, logged once here.
pub(crate) fn gate(adapter: &Adapter, until: Deadline) -> impl Future<Output = Result<Db, Error>> + Send + '_ {
    adapter.db_until(until).inspect_err(|error| {
        tracing::error!(%error, kind = ?error.kind(), "no database connection for this invocation");
    })
}

/// Marks an HTTP response that stands for a failed invocation: the layer
/// answers Lambda with this [`Diagnostic`] instead of the response.
#[derive(Debug, Clone)]
pub(crate) struct Failed(pub(crate) Diagnostic);

/// The `errorType` of an invocation whose handler asked for a `Db` from a
/// service that is not wrapped in [`LifecycleLayer`].
pub const LAYER_MISSING: &str = "RuntimeAdapter.LayerMissing";
