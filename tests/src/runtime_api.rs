//! Emulation of the AWS Lambda Runtime API.
//!
//! A [`RuntimeApi`] is a real HTTP/1.1 server on `127.0.0.1:<free port>` serving the
//! paths `lambda_runtime` uses:
//!
//! | request | effect |
//! | --- | --- |
//! | `GET /2018-06-01/runtime/invocation/next` | long-polls for the next queued invocation |
//! | `POST /2018-06-01/runtime/invocation/{id}/response` | completes it with [`Outcome::Response`] (202) |
//! | `POST /2018-06-01/runtime/invocation/{id}/error` | completes it with [`Outcome::Error`] (202) |
//! | `POST /2018-06-01/runtime/init/error` | records an [`InitError`] (202) |
//! | `GET /2018-06-01/runtime/restore/next` | waits until the test restores the snapshot ([`RuntimeApi::restore`]), then 200 |
//! | `POST /2018-06-01/runtime/restore/error` | records an [`InitError`] in a separate list (202) |
//! | `POST /2020-01-01/extension/register` | registers an extension (200, `Lambda-Extension-Identifier`) |
//! | `GET /2020-01-01/extension/event/next` | waits for ever: this emulation sends no lifecycle events |
//!
//! Anything else gets 404. It owns the invocation queue, the outcome of every invocation
//! and the counters tests wait on ([`RuntimeApi::wait_next_polls`]). Any number of
//! `/next` polls may wait at once; each gets a different invocation, in queue order. A
//! poll whose connection closes stops waiting without taking an invocation.
//!
//! `RuntimeApi` is a cheap handle (`Clone`); the server shuts down when the last handle
//! is dropped.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
    task::{JoinHandle, JoinSet},
};

const PREFIX: &str = "/2018-06-01/runtime";
/// Path prefix of the Extensions API.
const EXTENSION_PREFIX: &str = "/2020-01-01";
const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";
const ERROR_BODY_TRAILER: &str = "lambda-runtime-function-error-body";
/// Default account/region used in invoked-function ARNs.
const ARN_PREFIX: &str = "arn:aws:lambda:us-east-1:123456789012:function:";

/// Default time [`RuntimeApi::invoke`] waits for an outcome.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default function timeout used for `Lambda-Runtime-Deadline-Ms`.
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The constant deadline cargo-lambda's emulator sends (already in the past).
pub const CARGO_LAMBDA_DEADLINE_MS: u64 = 600_000;

/// How an invocation finished, as reported by the function.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST .../response`. The body parsed as JSON (a JSON string if it was not JSON).
    Response(Value),
    /// `POST .../error`, or a streamed response that ended with error trailers.
    Error {
        /// The body's `errorType` if present, else the `Lambda-Runtime-Function-Error-Type`
        /// header (lambda_runtime always sends `unhandled` there).
        error_type: String,
        /// The error body (`{"errorType": .., "errorMessage": ..}` from lambda_runtime).
        body: Value,
    },
}

impl Outcome {
    /// The response body. Panics, showing the error, if the invocation failed.
    pub fn response(&self) -> &Value {
        match self {
            Outcome::Response(value) => value,
            Outcome::Error { error_type, body } => {
                panic!("expected a response, the invocation failed: {error_type}: {body}")
            }
        }
    }

    /// Whether the invocation failed.
    pub fn is_error(&self) -> bool {
        matches!(self, Outcome::Error { .. })
    }

    /// The error type, if the invocation failed.
    pub fn error_type(&self) -> Option<&str> {
        match self {
            Outcome::Error { error_type, .. } => Some(error_type),
            Outcome::Response(_) => None,
        }
    }

    /// The error body's `errorMessage`, if the invocation failed and it has one.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            Outcome::Error { body, .. } => body.get("errorMessage").and_then(Value::as_str),
            Outcome::Response(_) => None,
        }
    }
}

/// A finished invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `Lambda-Runtime-Aws-Request-Id` it was delivered with.
    pub request_id: String,
    /// What the function reported.
    pub outcome: Outcome,
    /// Time from queueing until the outcome arrived.
    pub latency: Duration,
}

impl Invocation {
    /// Shorthand for `self.outcome.response()`.
    pub fn response(&self) -> &Value {
        self.outcome.response()
    }
}

/// Options for [`RuntimeApi::invoke_with`] / [`RuntimeApi::enqueue`].
#[derive(Debug, Clone)]
pub struct InvokeOptions {
    /// Exact `Lambda-Runtime-Deadline-Ms` value to send (epoch ms; may be in the past,
    /// e.g. [`CARGO_LAMBDA_DEADLINE_MS`]). `None`: delivery time + `function_timeout`.
    pub deadline_ms: Option<u64>,
    /// The function timeout used when `deadline_ms` is `None` (default 30 s).
    pub function_timeout: Duration,
    /// How long to wait for the outcome before panicking (default 60 s).
    pub timeout: Duration,
}

impl Default for InvokeOptions {
    fn default() -> Self {
        InvokeOptions { deadline_ms: None, function_timeout: DEFAULT_FUNCTION_TIMEOUT, timeout: DEFAULT_INVOKE_TIMEOUT }
    }
}

impl InvokeOptions {
    /// Send this exact deadline (epoch ms).
    pub fn deadline_ms(mut self, deadline_ms: u64) -> Self {
        self.deadline_ms = Some(deadline_ms);
        self
    }

    /// Deadline = delivery time + `function_timeout`.
    pub fn function_timeout(mut self, function_timeout: Duration) -> Self {
        self.function_timeout = function_timeout;
        self
    }

    /// How long to wait for the outcome.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// An error the function reported during init (`/init/error`) or restore
/// (`/restore/error`).
#[derive(Debug, Clone, PartialEq)]
pub struct InitError {
    /// The `Lambda-Runtime-Function-Error-Type` header, if sent.
    pub header: Option<String>,
    /// The whole body (`{"errorType": .., "errorMessage": ..}`; a JSON string if it was
    /// not JSON).
    pub body: Value,
}

impl InitError {
    /// The body's `errorType`, else the `Lambda-Runtime-Function-Error-Type` header.
    pub fn error_type(&self) -> Option<&str> {
        self.body.get("errorType").and_then(Value::as_str).or(self.header.as_deref())
    }

    /// The body's `errorMessage`.
    pub fn error_message(&self) -> Option<&str> {
        self.body.get("errorMessage").and_then(Value::as_str)
    }
}

/// A queued invocation whose outcome can be awaited later (see [`RuntimeApi::enqueue`]).
pub struct PendingInvocation {
    request_id: String,
    queued_at: Instant,
    timeout: Duration,
    outcome: oneshot::Receiver<Outcome>,
    state: Arc<State>,
}

impl std::fmt::Debug for PendingInvocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingInvocation")
            .field("request_id", &self.request_id)
            .field("delivered", &self.is_delivered())
            .finish_non_exhaustive()
    }
}

impl PendingInvocation {
    /// The request id the invocation will be delivered with.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Whether a `/next` poll has taken this invocation.
    pub fn is_delivered(&self) -> bool {
        lock(&self.state.delivered_ids).contains(&self.request_id)
    }

    /// Wait for the outcome up to the invocation's `timeout`; panics on timeout.
    pub async fn wait(self) -> Invocation {
        let timeout = self.timeout;
        match self.try_wait(timeout).await {
            Ok(invocation) => invocation,
            Err(pending) => {
                let counters = *pending.state.counters.borrow();
                let fate = if pending.is_delivered() {
                    "it was delivered by /next but never completed"
                } else {
                    "no /next poll ever took it (did the function start and poll?)"
                };
                panic!(
                    "invocation {} got no response or error within {timeout:?}: {fate}; emulator saw \
                     {} /next polls ({} waiting now), {} delivered, {} completed, {} init errors",
                    pending.request_id,
                    counters.next_polls,
                    counters.waiting_polls,
                    counters.delivered,
                    counters.completed,
                    counters.init_errors,
                )
            }
        }
    }

    /// Wait for the outcome up to `timeout`; on timeout, hands the pending invocation back.
    pub async fn try_wait(mut self, timeout: Duration) -> Result<Invocation, PendingInvocation> {
        match tokio::time::timeout(timeout, &mut self.outcome).await {
            Ok(Ok(outcome)) => {
                Ok(Invocation { request_id: self.request_id, outcome, latency: self.queued_at.elapsed() })
            }
            Ok(Err(_)) => panic!("runtime API emulator dropped invocation {}", self.request_id),
            Err(_) => Err(self),
        }
    }
}

/// Counters tests can wait on.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    next_polls: usize,
    waiting_polls: usize,
    delivered: usize,
    completed: usize,
    init_errors: usize,
    restore_errors: usize,
    restore_polls: usize,
    extensions_registered: usize,
}

struct Queued {
    request_id: String,
    payload: Bytes,
    deadline_ms: Option<u64>,
    function_timeout: Duration,
}

struct State {
    function_name: String,
    queue_tx: mpsc::UnboundedSender<Queued>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    /// Outcome senders by request id; `None` once completed.
    outcomes: Mutex<HashMap<String, Option<oneshot::Sender<Outcome>>>>,
    delivered_ids: Mutex<HashSet<String>>,
    counters: watch::Sender<Counters>,
    init_errors: Mutex<Vec<InitError>>,
    restore_errors: Mutex<Vec<InitError>>,
    /// Restores granted by the test; each `/restore/next` poll takes one.
    restores: watch::Sender<usize>,
    rejected: Mutex<Vec<String>>,
    /// When each `/next` poll and each completion (response or error) arrived.
    times: Mutex<Times>,
}

/// See [`RuntimeApi::times`].
#[derive(Debug, Clone, Default)]
pub struct Times {
    /// When each `GET /invocation/next` arrived, in order.
    pub polls: Vec<std::time::Instant>,
    /// When each completion (`/response` or `/error`) arrived, in order.
    pub completions: Vec<std::time::Instant>,
}

impl Times {
    /// For each completion, how long until the next `/next` poll arrived
    /// (one worker): how long the runtime went on working after the answer
    /// before it asked for more, which is when Lambda freezes an
    /// environment. `None` for a completion no poll followed yet.
    pub fn held_after_completions(&self) -> Vec<Option<Duration>> {
        self.completions
            .iter()
            .map(|&done| {
                // Both in arrival order: the first poll at or after `done`.
                let next = self.polls.partition_point(|&poll| poll < done);
                self.polls.get(next).map(|&poll| poll - done)
            })
            .collect()
    }
}

/// Aborts the server (and with it every connection task) when the last handle drops.
struct ServerGuard(JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Runtime API emulator; see the [module docs](self).
#[derive(Clone)]
pub struct RuntimeApi {
    addr: SocketAddr,
    state: Arc<State>,
    _server: Arc<ServerGuard>,
}

impl std::fmt::Debug for RuntimeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeApi")
            .field("addr", &self.addr)
            .field("counters", &*self.state.counters.borrow())
            .finish_non_exhaustive()
    }
}

impl RuntimeApi {
    /// Start the emulator for a function named `orders` (used in the invoked ARN).
    pub async fn start() -> RuntimeApi {
        Self::start_for("orders").await
    }

    /// Start the emulator; `function_name` goes into `Lambda-Runtime-Invoked-Function-Arn`.
    pub async fn start_for(function_name: &str) -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind runtime API emulator on 127.0.0.1:0");
        let addr = listener.local_addr().expect("runtime API emulator local addr");
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            function_name: function_name.to_owned(),
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            outcomes: Mutex::new(HashMap::new()),
            delivered_ids: Mutex::new(HashSet::new()),
            counters: watch::Sender::new(Counters::default()),
            init_errors: Mutex::new(Vec::new()),
            restore_errors: Mutex::new(Vec::new()),
            restores: watch::Sender::new(0),
            rejected: Mutex::new(Vec::new()),
            times: Mutex::new(Times::default()),
        });
        let server = tokio::spawn(serve(listener, state.clone()));
        RuntimeApi { addr, state, _server: Arc::new(ServerGuard(server)) }
    }

    /// `127.0.0.1:<port>`: the value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The variables Lambda gives function `name` served by this API, which
    /// `lambda_runtime` reads at `Runtime::new`: the address, the name, and
    /// the function's memory, version and log group and stream.
    pub fn lambda_env(&self, name: &str) -> [(&'static str, String); 6] {
        [
            ("AWS_LAMBDA_RUNTIME_API", self.addr()),
            ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "2024/01/01/[$LATEST]00000000000000000000000000000000".to_owned()),
        ]
    }

    /// Invoke with `payload` and wait (up to 60 s, else panic) for the outcome.
    pub async fn invoke(&self, payload: Value) -> Invocation {
        self.invoke_with(payload, InvokeOptions::default()).await
    }

    /// Invoke with options and wait (up to `options.timeout`, else panic) for the outcome.
    pub async fn invoke_with(&self, payload: Value, options: InvokeOptions) -> Invocation {
        self.enqueue(payload, options).wait().await
    }

    /// Queue an invocation without waiting; await it with [`PendingInvocation::wait`].
    pub fn enqueue(&self, payload: Value, options: InvokeOptions) -> PendingInvocation {
        let request_id = new_request_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.state.outcomes).insert(request_id.clone(), Some(tx));
        let queued = Queued {
            request_id: request_id.clone(),
            payload: Bytes::from(serde_json::to_vec(&payload).expect("serialize payload")),
            deadline_ms: options.deadline_ms,
            function_timeout: options.function_timeout,
        };
        let queued_at = Instant::now();
        self.state.queue_tx.send(queued).expect("runtime API queue is open while the handle exists");
        PendingInvocation { request_id, queued_at, timeout: options.timeout, outcome: rx, state: self.state.clone() }
    }

    /// Number of `GET /invocation/next` requests received so far.
    pub fn next_polls(&self) -> usize {
        self.state.counters.borrow().next_polls
    }

    /// Number of `/next` polls waiting for an invocation right now.
    pub fn waiting_polls(&self) -> usize {
        self.state.counters.borrow().waiting_polls
    }

    /// Number of invocations handed out by `/next` so far.
    pub fn delivered(&self) -> usize {
        self.state.counters.borrow().delivered
    }

    /// Extensions registered through `POST /2020-01-01/extension/register`.
    pub fn extensions_registered(&self) -> usize {
        self.state.counters.borrow().extensions_registered
    }

    /// Restores the SnapStart snapshot: the oldest waiting (or next)
    /// `GET /restore/next` answers.
    pub fn restore(&self) {
        self.state.restores.send_modify(|granted| *granted += 1);
    }

    /// Waits until `n` `GET /restore/next` polls arrived (the function is at
    /// its snapshot point); false on timeout.
    pub async fn wait_restore_polls(&self, n: usize, timeout: Duration) -> bool {
        let mut counters = self.state.counters.subscribe();
        tokio::time::timeout(timeout, counters.wait_for(|c| c.restore_polls >= n)).await.is_ok_and(|r| r.is_ok())
    }

    /// Number of `GET /restore/next` requests (SnapStart) so far.
    pub fn restore_polls(&self) -> usize {
        self.state.counters.borrow().restore_polls
    }

    /// Number of invocations completed (response or error) so far.
    pub fn completed(&self) -> usize {
        self.state.counters.borrow().completed
    }

    /// When `/next` polls and completions arrived so far.
    pub fn times(&self) -> Times {
        lock(&self.state.times).clone()
    }

    /// Wait until at least `n` `/next` polls arrived; false on timeout.
    pub async fn wait_next_polls(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.next_polls >= n).await
    }

    /// Wait until exactly `n` `/next` polls are waiting (e.g. `n` idle workers, or 0 after
    /// the function's connections closed); false on timeout.
    pub async fn wait_waiting_polls(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |c| c.waiting_polls == n).await
    }

    async fn wait_until(&self, timeout: Duration, ready: impl FnMut(&Counters) -> bool) -> bool {
        let mut rx = self.state.counters.subscribe();
        let result = tokio::time::timeout(timeout, rx.wait_for(ready)).await;
        matches!(result, Ok(Ok(_)))
    }

    /// All `/init/error` reports so far.
    pub fn init_errors(&self) -> Vec<InitError> {
        lock(&self.state.init_errors).clone()
    }

    /// Wait for the first `/init/error` report; `None` on timeout.
    pub async fn wait_init_error(&self, timeout: Duration) -> Option<InitError> {
        if self.wait_until(timeout, |c| c.init_errors > 0).await {
            lock(&self.state.init_errors).first().cloned()
        } else {
            None
        }
    }

    /// All `/restore/error` reports so far.
    pub fn restore_errors(&self) -> Vec<InitError> {
        lock(&self.state.restore_errors).clone()
    }

    /// Request ids of completions that were rejected with 400 (unknown id, or completed
    /// twice).
    pub fn rejected_completions(&self) -> Vec<String> {
        lock(&self.state.rejected).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(state.clone(), req));
                        // Connection errors (client went away) are expected.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // E.g. out of file descriptors: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type HttpResponse = Response<Full<Bytes>>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Some(route) = path.strip_prefix(EXTENSION_PREFIX) {
        return Ok(extension(&state, &method, route).await);
    }
    let Some(route) = path.strip_prefix(PREFIX) else {
        return Ok(not_found());
    };
    let response = match (&method, route) {
        (&Method::GET, "/invocation/next") => next_invocation(&state).await,
        (&Method::GET, "/restore/next") => {
            let mut poll = 0;
            state.counters.send_modify(|c| {
                c.restore_polls += 1;
                poll = c.restore_polls;
            });
            // The snapshot is taken while this waits; the test restores it.
            let mut restores = state.restores.subscribe();
            let _ = restores.wait_for(|granted| *granted >= poll).await;
            empty(StatusCode::OK)
        }
        (&Method::POST, "/init/error") => {
            let error = read_init_error(req).await;
            lock(&state.init_errors).push(error);
            state.counters.send_modify(|c| c.init_errors += 1);
            accepted()
        }
        (&Method::POST, "/restore/error") => {
            let error = read_init_error(req).await;
            lock(&state.restore_errors).push(error);
            state.counters.send_modify(|c| c.restore_errors += 1);
            accepted()
        }
        (&Method::POST, route) => {
            let completion = route.strip_prefix("/invocation/").and_then(|rest| {
                let (id, kind) = rest.rsplit_once('/')?;
                matches!(kind, "response" | "error").then(|| (id.to_owned(), kind == "error"))
            });
            match completion {
                Some((id, is_error)) => complete(&state, id, is_error, req).await,
                None => not_found(),
            }
        }
        _ => not_found(),
    };
    Ok(response)
}

/// The Extensions API: registration, and an event stream that stays silent
/// (SHUTDOWN is delivered to the runtime as SIGTERM by the test itself).
async fn extension(state: &State, method: &Method, route: &str) -> HttpResponse {
    match (method, route) {
        (&Method::POST, "/extension/register") => {
            let mut id = 0;
            state.counters.send_modify(|c| {
                c.extensions_registered += 1;
                id = c.extensions_registered;
            });
            let body = serde_json::json!({
                "functionName": state.function_name,
                "functionVersion": "$LATEST",
                "handler": "bootstrap",
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("Lambda-Extension-Identifier", format!("extension-{id}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .expect("extension register response")
        }
        (&Method::GET, "/extension/event/next") => std::future::pending().await,
        _ => not_found(),
    }
}

/// Keeps `waiting_polls` right even when the poll is abandoned (connection closed).
struct WaitingPoll<'a>(&'a State);

impl<'a> WaitingPoll<'a> {
    fn new(state: &'a State) -> Self {
        lock(&state.times).polls.push(std::time::Instant::now());
        state.counters.send_modify(|c| {
            c.next_polls += 1;
            c.waiting_polls += 1;
        });
        WaitingPoll(state)
    }
}

impl Drop for WaitingPoll<'_> {
    fn drop(&mut self) {
        self.0.counters.send_modify(|c| c.waiting_polls -= 1);
    }
}

async fn next_invocation(state: &State) -> HttpResponse {
    let waiting = WaitingPoll::new(state);
    // The lock makes concurrent polls take invocations one at a time, in arrival order.
    // `recv` is cancel-safe: an abandoned poll takes nothing.
    let queued = state.queue_rx.lock().await.recv().await;
    drop(waiting);
    let Some(queued) = queued else {
        return empty(StatusCode::INTERNAL_SERVER_ERROR);
    };
    lock(&state.delivered_ids).insert(queued.request_id.clone());
    state.counters.send_modify(|c| c.delivered += 1);
    let deadline_ms = queued.deadline_ms.unwrap_or_else(|| {
        let millis = u64::try_from(queued.function_timeout.as_millis()).unwrap_or(u64::MAX);
        epoch_millis().saturating_add(millis)
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &queued.request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", format!("{ARN_PREFIX}{}", state.function_name))
        .header("Lambda-Runtime-Trace-Id", new_trace_id())
        .body(Full::new(queued.payload))
        .expect("build /next response")
}

async fn complete(state: &State, id: String, is_error: bool, req: Request<Incoming>) -> HttpResponse {
    let header_error_type = header_str(req.headers(), ERROR_TYPE_HEADER);
    let collected = match req.into_body().collect().await {
        Ok(collected) => collected,
        Err(_) => return empty(StatusCode::BAD_REQUEST),
    };
    let trailers = collected.trailers().cloned();
    let body = parse_body(&collected.to_bytes());
    let trailer_error = trailers.as_ref().and_then(|t| header_str(t, ERROR_TYPE_HEADER).map(|ty| (ty, t)));
    let outcome = if is_error {
        let error_type = body
            .get("errorType")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .or(header_error_type)
            .unwrap_or_default();
        Outcome::Error { error_type, body }
    } else if let Some((error_type, trailers)) = trailer_error {
        // A streamed response that failed midway reports the error in trailers.
        let body = header_str(trailers, ERROR_BODY_TRAILER).map(|b| parse_body(b.as_bytes())).unwrap_or(Value::Null);
        Outcome::Error { error_type, body }
    } else {
        Outcome::Response(body)
    };

    let sender = match lock(&state.outcomes).get_mut(&id) {
        Some(slot) => slot.take().ok_or(()),
        None => Err(()),
    };
    match sender {
        Ok(sender) => {
            // The invoker may have given up (timeout); the completion still counts.
            lock(&state.times).completions.push(std::time::Instant::now());
            let _ = sender.send(outcome);
            state.counters.send_modify(|c| c.completed += 1);
            accepted()
        }
        Err(()) => {
            lock(&state.rejected).push(id);
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"errorType": "InvalidRequestID", "errorMessage": "unknown or completed request id"}),
            )
        }
    }
}

async fn read_init_error(req: Request<Incoming>) -> InitError {
    let header = header_str(req.headers(), ERROR_TYPE_HEADER);
    let body = match req.into_body().collect().await {
        Ok(collected) => parse_body(&collected.to_bytes()),
        Err(_) => Value::Null,
    };
    InitError { header, body }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// JSON if it parses, else the body as a JSON string.
fn parse_body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn accepted() -> HttpResponse {
    json_response(StatusCode::ACCEPTED, &json!({"status": "OK"}))
}

fn not_found() -> HttpResponse {
    json_response(StatusCode::NOT_FOUND, &json!({"errorType": "NotFound", "errorMessage": "unknown Runtime API path"}))
}

fn empty(status: StatusCode) -> HttpResponse {
    Response::builder().status(status).body(Full::new(Bytes::new())).expect("build empty response")
}

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("build JSON response")
}

fn epoch_millis() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("epoch millis fit u64")
}

static ID_COUNTER: AtomicU64 = AtomicU64::new(1);

/// A unique, UUID-shaped request id.
fn new_request_id() -> String {
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        nanos,
        std::process::id() & 0xffff,
        (n >> 12) & 0xfff,
        n & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

/// An X-Ray style trace header: `Root=1-<epoch hex>-<24 hex>;Parent=<16 hex>;Sampled=1`.
fn new_trace_id() -> String {
    let n = ID_COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = epoch_millis() / 1000;
    format!(
        "Root=1-{secs:08x}-{:08x}{n:016x};Parent={:016x};Sampled=1",
        std::process::id(),
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}
