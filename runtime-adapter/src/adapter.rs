//! [`Adapter`]: the environment's one pool, and the gate every invocation
//! passes before its handler runs.
//!
//! The gate, in order: warm the pool if INIT could not (database down);
//! replace it if it passed its maximum age; check it if no round trip
//! succeeded within the interval, rebuilding it if the check fails. All
//! three are single-flight: one invocation does the work under the
//! maintenance lock while concurrent ones wait, then re-read the state and
//! find nothing left to do. The replacement for age is built in the
//! background, beside the pool in use, and no invocation waits for it
//! unless it is still not built a grace later ([`refresh_grace`]). Under
//! [`Lifecycle::run`](crate::Lifecycle::run) it starts once the invocation
//! that found the pool past its age has answered, and the environment is
//! held thawed for it before the next `/next` ([`Adapter::after_answer`]).

use futures_util::future::{self, BoxFuture, Either, Ready};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use lambda_runtime::Context;

use crate::config::Config;
use crate::db::Db;
use crate::deadline::{self, Deadline};
use crate::error::{Error, ErrorKind, Step};
use crate::health::{self, Checked};
use crate::liveness::{self, Liveness};
use crate::metrics::{Emf, Point};
use crate::pool::{Conn, Recipe, WarmPool};
use crate::random::Entropy;
use crate::retry::{self, Retrier};
use crate::statement::Statements;
use crate::stats::{bump, Counters, RefreshReason, Stats};
use crate::units::millis;

/// How long to wait, at random within these bounds, before trying again
/// after the server ran out of connection slots: long enough for other
/// environments to finish and release theirs.
const EXHAUSTED_BACKOFF: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(5));

/// How long closing waits for maintenance in progress: a share of the
/// ~500 ms Lambda gives a shutdown, the pool's own close taking the rest.
const CLOSE_LOCK_WAIT: Duration = Duration::from_millis(100);

/// How long closing waits for a replacement that was being built in the
/// background to close its connections, beside the pool's own close.
const CLOSE_BACKGROUND_WAIT: Duration = Duration::from_millis(300);

/// The longest the environment is held after an answer for the replacement
/// of a pool past its maximum age ([`Adapter::after_answer`]): a healthy
/// build (connect, TLS, authentication, both warmup phases) takes a few
/// milliseconds to tens of them, and a slower one goes on at the next thaw
/// rather than keep the environment from taking invocations.
const AFTER_ANSWER_WAIT: Duration = Duration::from_millis(250);

/// Sets up an [`Adapter`]: the statements to prepare, then
/// [`init`](Builder::init) or [`run`](Builder::run).
#[derive(Debug, Default)]
#[must_use]
pub struct Builder {
    statements: Vec<String>,
    config: Option<Config>,
}

impl Builder {
    /// Declares a statement the application runs. Warmup phase 2 prepares it
    /// on every connection: a missing table or column fails INIT with the
    /// server's message, and no invocation pays its prepare round trip.
    pub fn statement(mut self, sql: impl Into<String>) -> Self {
        self.statements.push(sql.into());
        self
    }

    /// Uses `config` instead of reading [`Config::from_env`] at init.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Reads the configuration, logs each of its
    /// [`warnings`](Config::warnings) at WARN, then builds and warms the
    /// pool: both phases on every connection, retrying transient failures.
    ///
    /// If the database stays unreachable, the adapter is returned unwarmed and
    /// the first invocation warms it within its own deadline, so that an
    /// outage at INIT does not wedge the environment.
    ///
    /// # Errors
    ///
    /// Bad configuration, and permanent warmup failures: bad credentials
    /// (28P01, 28000), unknown database (3D000), a declared statement naming
    /// a missing relation (42P01) or column (42703), and the like.
    ///
    /// # Example
    ///
    /// The manual path, for a runtime loop of your own: `init` once, during
    /// Lambda's INIT (its error reported with [`report_init_error`](crate::report_init_error),
    /// which [`Builder::run`] does for you), then [`Adapter::db`] in every
    /// invocation, with the invocation's context, so that its deadline bounds
    /// the gate and the statements.
    ///
    /// ```no_run
    /// use lambda_runtime::{service_fn, LambdaEvent};
    /// use runtime_adapter::{report_init_error, Adapter, Error};
    /// use serde_json::{json, Value};
    ///
    /// #[tokio::main]
    /// async fn main() -> Result<(), lambda_runtime::Error> {
    ///     let adapter = match Adapter::builder().statement("SELECT item FROM orders WHERE id = $1").init().await {
    ///         Ok(adapter) => adapter,
    ///         Err(error) => {
    ///             report_init_error(&error).await;
    ///             return Err(error.into());
    ///         }
    ///     };
    ///     lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| {
    ///         let adapter = adapter.clone();
    ///         async move {
    ///             let db = adapter.db(&event.context).await?;
    ///             let id = event.payload["id"].as_i64().unwrap_or_default();
    ///             let row = db.query_opt("SELECT item FROM orders WHERE id = $1", &[&id]).await?;
    ///             Ok::<_, Error>(json!({ "item": row.map(|r| r.get::<_, String>(0)) }))
    ///         }
    ///     }))
    ///     .await
    /// }
    /// ```
    pub async fn init(self) -> Result<Adapter, Error> {
        let started = Instant::now();
        let config = match self.config {
            // Changed in code after parsing: held to the same rules.
            Some(mut config) => {
                config.validate()?;
                config
            }
            None => Config::from_env()?,
        };
        // Parsing logs nothing; the adjustments it made are reported here,
        // once per environment, at INIT.
        for warning in config.warnings() {
            tracing::warn!(variables = warning.variables(), "{warning}");
        }
        let adapter = Adapter {
            shared: Arc::new(Shared {
                emf: Emf::new(&config),
                refresh_grace: refresh_grace(config.max_age),
                statements: Statements::new(self.statements, config.pooler_mode, config.statement_cache_size),
                config,
                counters: Arc::default(),
                liveness: Arc::default(),
                entropy: Arc::default(),
                current: RwLock::new(None),
                maintenance: tokio::sync::Mutex::new(()),
                background: Mutex::new(None),
                background_ids: AtomicU64::new(0),
                after_answer: AtomicBool::new(false),
                refresh_wanted: AtomicBool::new(false),
                built: Notify::new(),
            }),
        };
        let shared = &adapter.shared;
        let until = deadline::init_until(started);
        let attempts = shared.config.warmup_attempts;
        match shared.build_pool(attempts, until).await {
            Ok(pool) => drop(shared.install(Some(Arc::new(pool)))),
            Err(error) if matches!(error.kind(), ErrorKind::Transient | ErrorKind::TooManyConnections) => {
                if error.kind() == ErrorKind::TooManyConnections {
                    bump(&shared.counters.pool_exhausted);
                }
                tracing::warn!(%error, kind = ?error.kind(), "database unreachable at init; the first invocation will warm the pool");
            }
            Err(error) => return Err(error),
        }
        Ok(adapter)
    }
}

/// The environment's pool and its gate. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Adapter {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    emf: Emf,
    /// [`refresh_grace`] of the configured maximum age: how long past its
    /// age a pool serves while its replacement is built, and how long after
    /// a failed refresh the next is tried.
    refresh_grace: Duration,
    config: Config,
    statements: Statements,
    counters: Arc<Counters>,
    liveness: Arc<Liveness>,
    entropy: Arc<Entropy>,
    /// The warmed pool in use, if any. Replaced only under `maintenance`.
    current: RwLock<Option<Arc<WarmPool>>>,
    /// Makes warmups, refreshes, checks and rebuilds single-flight.
    maintenance: tokio::sync::Mutex<()>,
    /// The replacement for a pool past its maximum age, being built beside
    /// it, if any: one at a time.
    background: Mutex<Option<Background>>,
    /// Numbers background builds, so that a stopped one knows it was.
    background_ids: AtomicU64,
    /// The runtime calls [`Adapter::after_answer`] after each answer (set by
    /// [`Lifecycle::run`](crate::Lifecycle::run)): background builds start there, not
    /// in the gate.
    after_answer: AtomicBool,
    /// The gate found the pool past its maximum age; the build starts after
    /// the answer.
    refresh_wanted: AtomicBool,
    /// Woken when a background build has ended, put in place or not.
    built: Notify,
}

/// [`Adapter::ready_pool`]'s future: the pool at once, or the slow path's.
type ReadyPool<'a> = Either<Ready<Result<Arc<WarmPool>, Error>>, BoxFuture<'a, Result<Arc<WarmPool>, Error>>>;

/// How a max-age refresh went about it, for its log line.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    started: Instant,
    /// Built beside the pool in use, or with an invocation waiting.
    background: bool,
    attempts: u32,
}

/// A replacement for the pool in place, being built in the background.
struct Background {
    id: u64,
    task: JoinHandle<()>,
    /// Drives its connections, so that stopping it at shutdown can wait
    /// until each has sent Terminate.
    tasks: TaskTracker,
}

impl Background {
    /// After [`Shared::stop_background`]: waits, up to a bound, until the
    /// build has stopped and its connections have closed.
    async fn closed(self) {
        let stopped = async {
            // Cancelled, or finished just before: either way it is over.
            let _ = self.task.await;
            self.tasks.close();
            self.tasks.wait().await;
        };
        if tokio::time::timeout(CLOSE_BACKGROUND_WAIT, stopped).await.is_err() {
            tracing::warn!(
                wait_ms = millis(CLOSE_BACKGROUND_WAIT),
                "connections of a replacement built in the background did not finish closing in time"
            );
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Adapter {
    /// Starts setting up an adapter.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A warmed connection for the invocation described by `context`.
    ///
    /// Passes the gate first (warmup if INIT could not, refresh after the
    /// maximum age, health check after the interval), never past the
    /// invocation's deadline less a safety margin.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the database cannot be reached in the time
    /// the invocation has; the error of a permanent failure otherwise.
    pub async fn db(&self, context: &Context) -> Result<Db, Error> {
        self.db_until(self.gate_until(context)).await
    }

    /// The gate's deadline for the invocation described by `context`: its
    /// deadline less the safety margin.
    pub(crate) fn gate_until(&self, context: &Context) -> Deadline {
        deadline::gate_until(context, self.shared.config.deadline_margin)
    }

    /// [`db`](Self::db), within `until`.
    pub(crate) async fn db_until(&self, until: Deadline) -> Result<Db, Error> {
        let started = Instant::now();
        // The gate may run several times for one invocation (retries); a
        // skipped check is counted once per invocation.
        let skipped = AtomicBool::new(false);
        let conn = self.checkout_noting(until, &skipped).await;
        if skipped.load(Ordering::Relaxed) {
            bump(&self.shared.counters.health_checks_skipped);
        }
        let conn = conn?;
        self.shared.counters.checkout_took(started.elapsed());
        Ok(Db::new(conn, self.clone(), until))
    }

    /// A warmed connection, through the gate, retrying transient failures
    /// with backoff within `until`.
    pub(crate) async fn checkout(&self, until: Deadline) -> Result<Conn, Error> {
        self.checkout_noting(until, &AtomicBool::new(false)).await
    }

    /// As [`checkout`](Self::checkout), setting `skipped` when the gate
    /// found no health check due (and clearing it when one ran).
    async fn checkout_noting(&self, until: Deadline, skipped: &AtomicBool) -> Result<Conn, Error> {
        // A warm invocation's case, taken at once: no bound (a timer made
        // and dropped), no attempt's future.
        let mut fresh = self.fresh_pool(skipped);
        if let Some(conn) = fresh.as_ref().and_then(|pool| pool.checkout_now()) {
            return Ok(conn);
        }
        // Made at the first failure: most checkouts never need one.
        let mut retrier: Option<Retrier> = None;
        loop {
            // The generation the checkout was tried on, if it got that far.
            let mut tried = None;
            // A pool found fresh above serves the first attempt as it is,
            // without looking at it twice.
            let fresh = fresh.take();
            let attempt = async {
                let pool = match fresh {
                    Some(pool) => pool,
                    None => self.ready_pool(until, skipped).await?,
                };
                tried = Some(pool.generation());
                pool.checkout().await
            };
            match until.bound(Step::Checkout, attempt).await {
                Ok(conn) => return Ok(conn),
                // A concurrent invocation replaced the pool while this one
                // waited on it; the replacement is warm.
                Err(Error::PoolClosed) => continue,
                // Boxed, as a path taken only when the server is out of
                // slots: inline, its future (a second gate and checkout)
                // would double the size of every invocation's future.
                Err(error) if error.kind() == ErrorKind::TooManyConnections => {
                    return Box::pin(self.exhausted(error, tried, until, skipped)).await
                }
                Err(error) if error.is_transient() => {
                    self.shared.counters.failed_now();
                    retrier.get_or_insert_with(|| self.retrier(until)).backoff(error, Step::Checkout).await?;
                }
                Err(error) => {
                    self.shared.counters.failed_now();
                    return Err(error);
                }
            }
        }
    }

    /// The server refused a connection for lack of slots (53300): release
    /// this environment's own connections, wait a jittered 2–5 s (never past
    /// the deadline), and try once more.
    ///
    /// Only the pool the refusal came from (generation `failed`) is closed:
    /// one that a concurrent invocation has built since is left alone. When
    /// the refusal came while a pool was being built, there was none to close.
    async fn exhausted(
        &self,
        error: Error,
        failed: Option<u64>,
        until: Deadline,
        skipped: &AtomicBool,
    ) -> Result<Conn, Error> {
        let shared = &self.shared;
        bump(&shared.counters.pool_exhausted);
        shared.counters.failed_now();
        if let Some(failed) = failed {
            let _flight = shared.maintenance.lock().await;
            if shared.current().is_some_and(|pool| pool.generation() == failed) {
                shared.retire();
            }
        }
        let limit = |error: Error| match error {
            Error::Warmup { source, .. } | Error::Db(source) => Error::ConnectionLimit { source },
            other => other,
        };
        let delay = retry::jitter_between(EXHAUSTED_BACKOFF.0, EXHAUSTED_BACKOFF.1, shared.entropy.fraction());
        let out_of_time = until.passed_at(Instant::now() + delay);
        tracing::warn!(
            %error,
            delay_ms = millis(delay),
            retry = !out_of_time,
            "the server's connection limit was reached; released this environment's connections"
        );
        if out_of_time {
            return Err(limit(error));
        }
        tokio::time::sleep(delay).await;
        let attempt = async { self.ready_pool(until, skipped).await?.checkout().await };
        match until.bound(Step::Checkout, attempt).await {
            Ok(conn) => Ok(conn),
            Err(error) if error.kind() == ErrorKind::TooManyConnections => {
                bump(&shared.counters.pool_exhausted);
                Err(limit(error))
            }
            Err(error) => Err(error),
        }
    }

    /// A snapshot of the environment's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.shared.liveness.last_success())
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Whether the EMF records name each invocation (see `metrics`).
    pub(crate) fn names_invocations(&self) -> bool {
        self.shared.emf.names_invocations()
    }

    /// Writes the EMF records due at `point`, if any (see `metrics`). At the
    /// start and end of an invocation under
    /// [`Lifecycle::run`](crate::Lifecycle::run), what is due is taken now
    /// and written after the answer ([`after_answer`](Self::after_answer)).
    pub(crate) fn flush_metrics(&self, point: Point<'_>) {
        let shared = &self.shared;
        match point {
            Point::Start | Point::End(_) if shared.after_answer.load(Ordering::Relaxed) => {
                shared.emf.defer(&shared.counters, point, SystemTime::now());
            }
            _ => shared.emf.at(&shared.counters, point),
        }
    }

    /// A retry loop's pacing, within `until`.
    pub(crate) fn retrier(&self, until: Deadline) -> Retrier {
        let config = &self.shared.config;
        Retrier::new(
            config.retry_attempts,
            config.retry_base_delay,
            until,
            self.shared.counters.clone(),
            self.shared.entropy.clone(),
        )
    }

    pub(crate) fn statements(&self) -> &Statements {
        &self.shared.statements
    }

    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    pub(crate) fn liveness(&self) -> &Liveness {
        &self.shared.liveness
    }

    /// Whether a warmed pool is in place.
    #[must_use]
    pub fn is_warm(&self) -> bool {
        self.shared.current().is_some()
    }

    /// Closes the pool and waits (briefly) until every connection has sent
    /// Terminate. Invocations after this warm a new pool.
    ///
    /// Bounded for shutdown, which Lambda gives about 500 ms: a warmup,
    /// refresh or rebuild holding the maintenance lock (for up to a whole
    /// connect) is waited for only 100 ms; then the pool in
    /// place, if any, is closed without it. A pool that such a rebuild is
    /// still opening is not in place: it is dropped with the process.
    pub async fn close(&self) {
        let _flight = tokio::time::timeout(CLOSE_LOCK_WAIT, self.shared.maintenance.lock()).await.ok();
        // First: a background build that installs its pool does so holding
        // `background`, so once stopped none can be put in place after this.
        let background = self.shared.stop_background();
        let pool = self.shared.install(None);
        let background = async {
            if let Some(background) = background {
                background.closed().await;
            }
        };
        let pool = async {
            if let Some(pool) = pool {
                pool.close_and_wait().await;
            }
        };
        tokio::join!(background, pool);
    }

    /// SnapStart, before the snapshot: closes the pool (every connection
    /// sends Terminate), drops the AWS SDK clients and cached signing
    /// credentials (no connection or credential stays in memory)
    /// and drops what INIT recorded, which belongs to the publish, not to
    /// the environments restored from it.
    pub(crate) async fn before_snapshot(&self) {
        self.close().await;
        self.shared.config.credentials.forget();
        self.shared.emf.rebase(&self.shared.counters);
        tracing::info!("snapshot: pool closed");
    }

    /// SnapStart, after a restore: new randomness, clocks reset, and the
    /// pool rebuilt and re-warmed (credentials resolved again, the AWS SDK
    /// loaded afresh) before the first invocation, within 5 s, half of
    /// Lambda's limit for restore hooks. A database unreachable now, or
    /// not warmed in that time, is not fatal: the first invocation warms the
    /// pool, as after a normal INIT.
    ///
    /// # Errors
    ///
    /// A permanent warmup failure (bad credentials, missing relation, …).
    pub(crate) async fn after_restore(&self) -> Result<(), Error> {
        let shared = &self.shared;
        shared.entropy.reseed();
        shared.liveness.reset();
        let started = Instant::now();
        // Bounded even under SnapStart, whose publish-time INIT is not.
        let until = deadline::restore_until(started);
        let attempts = shared.config.warmup_attempts;
        let _flight = shared.maintenance.lock().await;
        match shared.build_pool(attempts, until).await {
            Ok(pool) => {
                shared.install(Some(Arc::new(pool)));
                tracing::info!(duration_ms = millis(started.elapsed()), "restore: pool re-warmed");
                Ok(())
            }
            Err(error) if matches!(error.kind(), ErrorKind::Transient | ErrorKind::TooManyConnections) => {
                tracing::warn!(%error, kind = ?error.kind(), "database unreachable after restore; the first invocation will warm the pool");
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "re-warming after restore failed");
                Err(error)
            }
        }
    }

    /// The pool to check out from: the one in place, at once, when it needs
    /// nothing first ([`fresh_pool`](Self::fresh_pool), with no future of
    /// its own); otherwise through the boxed slow path. A warm invocation
    /// usually does not get here: [`checkout_noting`](Self::checkout_noting)
    /// takes the connection parked in the lane first.
    fn ready_pool<'a>(&'a self, until: Deadline, skipped: &'a AtomicBool) -> ReadyPool<'a> {
        match self.fresh_pool(skipped) {
            Some(pool) => Either::Left(future::ready(Ok(pool))),
            None => Either::Right(self.maintain(until, skipped)),
        }
    }

    /// The pool in place, if it needs nothing first: no health check due
    /// (`skipped` is set) and not overdue for its refresh. One past its
    /// maximum age is still used, its replacement wanted
    /// ([`refresh_soon`](Self::refresh_soon)).
    fn fresh_pool(&self, skipped: &AtomicBool) -> Option<Arc<WarmPool>> {
        let shared = &self.shared;
        let pool = shared.current()?;
        let now = Instant::now();
        if pool.is_overdue(now, shared.refresh_grace) {
            return None;
        }
        if pool.is_expired(now) {
            self.refresh_soon(&pool);
        }
        if shared.liveness.check_due(now, shared.config.health_check_interval) {
            return None;
        }
        skipped.store(true, Ordering::Relaxed);
        tracing::debug!("health check skipped: a round trip succeeded within the interval");
        Some(pool)
    }

    /// The gate's slow path, under the maintenance lock: warm, refresh,
    /// check, rebuild. Boxed and type-erased: rare, and its future (a pool
    /// build, a health check, deadpool's checkout inside) would otherwise
    /// add kilobytes, and a deep type, to every invocation's future.
    fn maintain<'a>(&'a self, until: Deadline, skipped: &'a AtomicBool) -> BoxFuture<'a, Result<Arc<WarmPool>, Error>> {
        Box::pin(async move { self.maintain_inline(until, skipped).await })
    }

    async fn maintain_inline(&self, until: Deadline, skipped: &AtomicBool) -> Result<Arc<WarmPool>, Error> {
        let shared = &self.shared;
        let interval = shared.config.health_check_interval;
        let grace = shared.refresh_grace;
        let _flight = shared.maintenance.lock().await;
        // Whatever made this invocation wait may have done the work already.
        let Some(mut pool) = shared.current() else {
            let pool = Arc::new(shared.build_pool(1, until).await?);
            shared.install(Some(pool.clone()));
            return Ok(pool);
        };
        let now = Instant::now();
        if pool.is_overdue(now, grace) {
            pool = self.refresh(pool, until).await;
        } else if pool.is_expired(now) {
            self.refresh_soon(&pool);
        }
        if !shared.liveness.check_due(Instant::now(), interval) {
            skipped.store(true, Ordering::Relaxed);
            tracing::debug!("health check skipped: a round trip succeeded within the interval");
            return Ok(pool);
        }

        skipped.store(false, Ordering::Relaxed);
        bump(&shared.counters.health_checks_run);
        let started = Instant::now();
        match health::check(&pool, shared.config.health_check_timeout).await {
            Ok(Checked::Passed) => {
                shared.liveness.succeeded();
                tracing::info!(duration_ms = millis(started.elapsed()), "health check passed");
                Ok(pool)
            }
            Ok(Checked::Busy) => Ok(pool),
            Err(error) => {
                bump(&shared.counters.health_checks_failed);
                shared.counters.failed_now();
                tracing::warn!(%error, kind = ?error.kind(), duration_ms = millis(started.elapsed()), "health check failed; rebuilding the pool");
                self.rebuild(until).await
            }
        }
    }

    /// For a pool found past its maximum age (not its grace): its
    /// replacement is built in the background, started after this
    /// invocation's answer when the runtime calls
    /// [`after_answer`](Self::after_answer), else at once.
    fn refresh_soon(&self, pool: &WarmPool) {
        let shared = &self.shared;
        if shared.after_answer.load(Ordering::Relaxed) {
            shared.refresh_wanted.store(true, Ordering::Relaxed);
        } else {
            self.refresh_in_background(pool);
        }
    }

    /// From now on the runtime calls [`after_answer`](Self::after_answer)
    /// after each invocation has answered.
    pub(crate) fn answers_reported(&self) {
        self.shared.after_answer.store(true, Ordering::Relaxed);
    }

    /// Called by the runtime once an invocation's answer has reached Lambda,
    /// before it asks for the next: writes the metrics records taken at the
    /// end of invocations (see `metrics`), and, if the invocation found the
    /// pool past its maximum age, starts building the replacement now, when
    /// it takes no CPU from an invocation, and returns how to wait for it.
    ///
    /// Lambda freezes the environment only when the runtime asks for the
    /// next invocation, and the caller already has the answer: waiting here
    /// lets the build run to its end unfrozen, for the price of its few
    /// milliseconds of billed duration once per maximum age. The wait is
    /// bounded by [`AFTER_ANSWER_WAIT`], `DB_CONNECT_TIMEOUT_MS` and the
    /// invocation's deadline (`deadline_ms`) less `DB_DEADLINE_MARGIN_MS`; a
    /// build still running then goes on at the next thaw. Under Lambda Managed Instances
    /// (`AWS_LAMBDA_MAX_CONCURRENCY` above 1) nothing is frozen and other
    /// invocations are waiting for this worker: the build starts, unwaited.
    pub(crate) fn after_answer(&self, deadline_ms: u64) -> Option<BoxFuture<'static, ()>> {
        let shared = &self.shared;
        shared.emf.write_deferred();
        if !shared.refresh_wanted.load(Ordering::Relaxed) || !shared.refresh_wanted.swap(false, Ordering::Relaxed) {
            return None;
        }
        // Still the pool found past its age: not one a failed check or a
        // failover put in place meanwhile.
        let pool = shared.current().filter(|pool| pool.is_expired(Instant::now()))?;
        let id = self.refresh_in_background(&pool)?;
        if shared.config.max_concurrency.is_some_and(|c| c > 1) {
            return None;
        }
        let until = deadline::until_ms(deadline_ms, shared.config.deadline_margin);
        let bound = after_answer_wait(shared.config.connect_timeout, until, Instant::now());
        if bound.is_zero() {
            // The deadline less its margin has come: no time to wait.
            return None;
        }
        let shared = self.shared.clone();
        Some(Box::pin(async move {
            let built = shared.built.notified();
            // Created before this look: an end after it wakes `built`.
            if shared.background().as_ref().is_none_or(|b| b.id != id) {
                return;
            }
            let started = Instant::now();
            if tokio::time::timeout(bound, built).await.is_err() {
                tracing::info!(
                    wait_ms = millis(bound),
                    "replacement not built in the wait after the answer; it goes on at the next thaw"
                );
            } else {
                tracing::debug!(wait_ms = millis(started.elapsed()), "replacement built after the answer");
            }
        }))
    }

    /// Starts building a replacement for `old`, past its maximum age, beside
    /// it, unless one is being built already; invocations go on using `old`
    /// meanwhile. The replacement is put in place once both warmup phases
    /// passed on all its connections.
    ///
    /// Under [`Lifecycle::run`](crate::Lifecycle::run) this is called after the answer,
    /// which waits for it a bounded while ([`after_answer`](Self::after_answer)).
    /// Nothing runs while Lambda has the environment frozen: a build not
    /// finished then goes on at the next thaw. Its
    /// connect may then have timed out (its timer ran through the freeze) or
    /// been closed by the server (`authentication_timeout`): such failures
    /// are tried again, `DB_WARMUP_ATTEMPTS` in all, and not counted or
    /// logged as failures until the last one. An environment whose
    /// invocations are too sparse to finish a build this way refreshes
    /// synchronously once the pool is [`refresh_grace`] past its maximum
    /// age. Under Lambda Managed Instances environments are not frozen and
    /// the build simply runs.
    ///
    /// Returns the build's id, unless one was being built already.
    fn refresh_in_background(&self, old: &WarmPool) -> Option<u64> {
        let shared = &self.shared;
        let mut background = shared.background();
        if background.is_some() {
            return None;
        }
        let id = shared.background_ids.fetch_add(1, Ordering::Relaxed);
        let replaces = old.generation();
        let tasks = TaskTracker::new();
        let adapter = self.clone();
        let task = tokio::spawn({
            let tasks = tasks.clone();
            async move { adapter.replace_in_background(id, replaces, tasks).await }
        });
        tracing::debug!(generation = replaces, "pool past its maximum age; building a replacement in the background");
        *background = Some(Background { id, task, tasks });
        Some(id)
    }

    /// The background build [`refresh_in_background`](Self::refresh_in_background) started.
    async fn replace_in_background(&self, id: u64, replaces: u64, tasks: TaskTracker) {
        let shared = &self.shared;
        let started = Instant::now();
        let attempts = shared.config.warmup_attempts.max(1);
        let mut attempt = 0;
        let built = loop {
            attempt += 1;
            let build = WarmPool::build_in(shared.recipe(), tasks.clone(), true);
            match Box::pin(build).await {
                Ok(pool) => break Ok(pool),
                Err(error) if error.is_transient() && attempt < attempts => {
                    let delay = shared.config.warmup_retry_delay;
                    tracing::debug!(%error, attempt, delay_ms = millis(delay), "building a replacement in the background failed; trying again");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => break Err(error),
            }
        };
        let _flight = shared.maintenance.lock().await;
        // Held while the pool is put in place: a close that stops this
        // build either comes first (and this pool is not put in place) or
        // finds it in place.
        let mut background = shared.background();
        let mine = background.as_ref().is_some_and(|b| b.id == id);
        if mine {
            *background = None;
        }
        let old = shared.current().filter(|pool| mine && pool.generation() == replaces);
        let refresh = Refresh { started, background: true, attempts: attempt };
        match (built, old) {
            (Ok(new), Some(old)) => {
                new.report_failures();
                shared.refreshed(&old, Arc::new(new), refresh);
            }
            // Stopped, or the pool it was to replace is gone (rebuilt,
            // failed over, closed): not needed any more.
            (Ok(new), None) => new.close(),
            (Err(error), Some(old)) => shared.refresh_failed(&old, &error, refresh),
            (Err(_), None) => {}
        }
        shared.built.notify_waiters();
    }

    /// Replaces a pool [`refresh_grace`] past its maximum age, the
    /// invocation waiting: the fallback for when the background build could
    /// not finish in time (see [`refresh_in_background`](Self::refresh_in_background)),
    /// which it stops. Never fails: if no new pool can be built, the old one
    /// stays in use and the refresh is tried again after a tenth of the
    /// maximum age.
    async fn refresh(&self, old: Arc<WarmPool>, until: Deadline) -> Arc<WarmPool> {
        let shared = &self.shared;
        bump(&shared.counters.refresh_waits);
        drop(shared.stop_background());
        let refresh = Refresh { started: Instant::now(), background: false, attempts: 1 };
        let build = WarmPool::build(shared.recipe());
        match until.bound(Step::Refresh, build).await {
            Ok(new) => {
                let new = Arc::new(new);
                shared.refreshed(&old, new.clone(), refresh);
                new
            }
            Err(error) => {
                shared.refresh_failed(&old, &error, refresh);
                old
            }
        }
    }

    /// After a write reached a read-only server (25006) on a connection of
    /// pool `generation`: replaces that pool, single-flight, so that new
    /// connections (the address resolved again) reach the new writer. A
    /// concurrent invocation may have replaced it already: nothing to do.
    ///
    /// # Errors
    ///
    /// The new pool's warmup failure.
    pub(crate) async fn failover(&self, generation: Option<u64>, until: Deadline) -> Result<(), Error> {
        let shared = &self.shared;
        let _flight = shared.maintenance.lock().await;
        if shared.current().is_none_or(|pool| Some(pool.generation()) != generation) {
            return Ok(());
        }
        shared.retire();
        let started = Instant::now();
        let new = Arc::new(shared.build_pool(1, until).await?);
        shared.install(Some(new));
        shared.counters.refreshed(RefreshReason::Failover);
        tracing::warn!(
            reason = "read_only",
            duration_ms = millis(started.elapsed()),
            "a write reached a read-only server (failover?); pool replaced"
        );
        Ok(())
    }

    /// Replaces the pool in place, which failed its health check. Its
    /// connections are closed whether or not a new pool can be built.
    async fn rebuild(&self, until: Deadline) -> Result<Arc<WarmPool>, Error> {
        let shared = &self.shared;
        shared.retire();
        let started = Instant::now();
        let new = Arc::new(shared.build_pool(1, until).await?);
        shared.install(Some(new.clone()));
        shared.counters.refreshed(RefreshReason::FailedCheck);
        tracing::info!(reason = "failed_check", duration_ms = millis(started.elapsed()), "pool rebuilt");
        Ok(new)
    }
}

impl Shared {
    /// Builds and warms a pool: `attempts` tries, never past `until`.
    async fn build_pool(&self, attempts: u32, until: Deadline) -> Result<WarmPool, Error> {
        WarmPool::build_retrying(self.recipe(), attempts, until).await
    }

    /// What the pools are built from.
    fn recipe(&self) -> Recipe<'_> {
        Recipe {
            config: &self.config,
            statements: &self.statements,
            counters: &self.counters,
            liveness: &self.liveness,
        }
    }

    /// Puts `new`, built to replace `old` past its maximum age, in place.
    fn refreshed(&self, old: &WarmPool, new: Arc<WarmPool>, refresh: Refresh) {
        let age = old.age(Instant::now());
        self.install(Some(new));
        old.close();
        self.counters.refreshed(RefreshReason::MaxAge);
        tracing::info!(
            reason = "max_age",
            background = refresh.background,
            age_ms = millis(age),
            duration_ms = millis(refresh.started.elapsed()),
            attempts = refresh.attempts,
            "pool refreshed"
        );
    }

    /// No replacement for `old` could be built: it stays in use, and the
    /// refresh is tried again after a tenth of the maximum age.
    fn refresh_failed(&self, old: &WarmPool, error: &Error, refresh: Refresh) {
        bump(&self.counters.refresh_failures);
        self.counters.failed_now();
        let retry_in = self.refresh_grace;
        old.postpone_expiry(Instant::now(), retry_in);
        tracing::warn!(
            %error,
            background = refresh.background,
            attempts = refresh.attempts,
            retry_in_ms = millis(retry_in),
            "pool refresh failed; keeping the current pool"
        );
    }

    fn background(&self) -> MutexGuard<'_, Option<Background>> {
        self.background.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the pool in place out of use and closes it, and stops the
    /// replacement being built for it, if any: before a rebuild, a failover
    /// or a release of this environment's connections. Under `maintenance`.
    fn retire(&self) {
        drop(self.stop_background());
        if let Some(pool) = self.install(None) {
            pool.close();
        }
    }

    /// Stops the background build, if one is running: cancelled at its next
    /// await, its connections closing (with Terminate) in their own tasks.
    fn stop_background(&self) -> Option<Background> {
        let background = self.background().take()?;
        background.task.abort();
        self.built.notify_waiters();
        Some(background)
    }

    fn current(&self) -> Option<Arc<WarmPool>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `pool` in place and returns the one it replaces. A new pool gets
    /// its lifetime here: the maximum age less up to 10 % jitter, so that
    /// environments started together spread their refreshes out.
    fn install(&self, pool: Option<Arc<WarmPool>>) -> Option<Arc<WarmPool>> {
        if let Some(pool) = &pool {
            pool.set_lifetime(liveness::jittered_lifetime(self.config.max_age, self.entropy.fraction()));
        }
        std::mem::replace(&mut *self.current.write().unwrap_or_else(PoisonError::into_inner), pool)
    }
}

/// How long [`Adapter::after_answer`] waits at `now` for a build: at most
/// [`AFTER_ANSWER_WAIT`] and `connect_timeout`, and never past `until`.
fn after_answer_wait(connect_timeout: Duration, until: Deadline, now: Instant) -> Duration {
    let bound = AFTER_ANSWER_WAIT.min(connect_timeout);
    until.instant().map_or(bound, |until| until.saturating_duration_since(now).min(bound))
}

/// How far past its maximum age a pool may go on serving while its
/// replacement is built in the background: a tenth of the maximum age
/// (30 s at the default 5 min). Past it, the next invocation refreshes
/// synchronously.
fn refresh_grace(max_age: Duration) -> Duration {
    max_age / 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_after_an_answer_is_the_shortest_of_its_bound_the_connect_timeout_and_the_time_left() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let wait = |connect_ms, until| after_answer_wait(ms(connect_ms), until, now);
        assert_eq!(wait(5_000, Deadline::NONE), AFTER_ANSWER_WAIT);
        assert_eq!(wait(100, Deadline::NONE), ms(100));
        assert_eq!(wait(5_000, Deadline::at(now + ms(80))), ms(80));
        assert_eq!(wait(60, Deadline::at(now + ms(80))), ms(60));
        assert_eq!(wait(5_000, Deadline::at(now + ms(10_000))), AFTER_ANSWER_WAIT);
        assert_eq!(wait(5_000, Deadline::at(now)), Duration::ZERO, "the deadline less its margin has come");
        assert_eq!(wait(5_000, Deadline::at(now.checked_sub(ms(5)).unwrap_or(now))), Duration::ZERO);
    }
}
