//! One generation of the connection pool: deadpool over tokio-postgres, where
//! every connection passes both warmup phases before the pool hands it out.
//!
//! A [`WarmPool`] exists only once all its connections have been opened and
//! warmed; the handler's [`Db`](crate::Db) handle is made from a connection
//! checked out of one, so no handler can reach an unwarmed connection.
//! Connections that deadpool opens later (to replace a closed one) go through
//! the same [`WarmingManager::create`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use deadpool::managed::{self, Metrics, PoolError, RecycleError, RecycleResult, TimeoutType, Timeouts};
use deadpool_postgres::{ClientWrapper, Connect, ManagerConfig, RecyclingMethod};
use futures_util::future::{try_join_all, BoxFuture, Either};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelTarget;
use crate::config::Config;
use crate::credentials::{self, Session};
use crate::deadline::Deadline;
use crate::error::{Error, Phase, Step};
use crate::lease::{Connection, Keeper, Lane, Lease};
use crate::liveness::{Expiry, Liveness};
use crate::statement::Statements;
use crate::stats::{bump, Counters, WarmupTimings};
use crate::units::millis;
use crate::warmup;

type Pool = managed::Pool<WarmingManager>;

/// How long closing a pool at shutdown waits for its connections to send
/// Terminate: they only write one message and close the socket, and Lambda
/// gives the whole shutdown about 500 ms.
const CLOSE_WAIT: Duration = Duration::from_millis(300);

/// Numbers pool generations, so that a connection's can be recognised.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// A connection checked out of a [`WarmPool`], for one invocation.
pub(crate) type Conn = Lease<WarmingManager>;

/// A pool whose connections all passed both warmup phases.
pub(crate) struct WarmPool {
    pool: Pool,
    /// The connection kept between sequential checkouts (a pool of one).
    lane: Arc<Lane<WarmingManager>>,
    /// The tasks driving this pool's connections; awaited on close so that
    /// each connection's Terminate has been written.
    tasks: TaskTracker,
    /// When the pool is due for a refresh.
    expiry: Expiry,
}

/// What every generation of the pool is built from.
#[derive(Clone, Copy)]
pub(crate) struct Recipe<'a> {
    pub(crate) config: &'a Config,
    pub(crate) statements: &'a Statements,
    pub(crate) counters: &'a Arc<Counters>,
    pub(crate) liveness: &'a Arc<Liveness>,
}

impl WarmPool {
    /// Opens and warms `config.pool_size` connections side by side. One
    /// attempt; [`WarmPool::build_retrying`] retries.
    pub(crate) async fn build(recipe: Recipe<'_>) -> Result<Self, Error> {
        Self::build_in(recipe, TaskTracker::new(), false).await
    }

    /// As [`build`](Self::build), its connections driven by tasks of
    /// `tasks` (so that whoever gave it can wait for their Terminate even if
    /// this future is dropped halfway). With `quiet`, a failed connect is
    /// logged at DEBUG and not counted as a failure until
    /// [`report_failures`](Self::report_failures): for a replacement built
    /// in the background, whose attempt a freeze may have cut, and which is
    /// tried again rather than reported.
    pub(crate) async fn build_in(recipe: Recipe<'_>, tasks: TaskTracker, quiet: bool) -> Result<Self, Error> {
        let Recipe { config, statements, counters, liveness } = recipe;
        let started = Instant::now();
        // Once per build: a rotated secret is picked up by the next refresh.
        let pg = config.pg_config();
        let session = Box::pin(config.credentials.resolve(&pg)).await?;
        let connect = TrackedConnect { tasks: tasks.clone(), tls: config.tls.clone(), timeout: config.connect_timeout };
        let manager = WarmingManager {
            session,
            connect: connect.clone(),
            inner: deadpool_postgres::Manager::from_connect(
                pg,
                connect,
                // `Fast` only looks at whether the connection is closed: no
                // round trip per checkout. Health is the adapter's business.
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            ),
            statements: statements.clone(),
            phase_timeout: config.connect_timeout,
            counters: counters.clone(),
            liveness: liveness.clone(),
            timings: Mutex::default(),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            quiet: AtomicBool::new(quiet),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .wait_timeout(Some(config.pool_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Internal(format!("building the pool: {e}")))?;

        let lane = Arc::new(Lane::new(config.pool_size));
        let opened = try_join_all((0..config.pool_size).map(|_| checkout(&pool, &lane))).await;
        let warm = Self { pool, lane, tasks, expiry: Expiry::new(started, config.max_age) };
        match opened {
            Ok(conns) => drop(conns),
            Err(e) => {
                warm.close();
                return Err(e);
            }
        }
        let mut timings = *warm.pool.manager().timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        timings.total = started.elapsed();
        counters.warmed(timings);
        tracing::info!(
            pool_size = config.pool_size,
            connect_ms = millis(timings.connect),
            phase1_ms = millis(timings.round_trip),
            phase2_ms = millis(timings.prepare),
            total_ms = millis(timings.total),
            statements = statements.len(),
            "pool warmed"
        );
        Ok(warm)
    }

    /// Builds and warms a pool at INIT, retrying transient failures up to
    /// `DB_WARMUP_ATTEMPTS` times, `DB_WARMUP_RETRY_DELAY_MS` apart, and never
    /// past `until` when one is given. Permanent failures return at once.
    ///
    /// Inside an invocation the gate makes one attempt per call and its own
    /// retry loop (with backoff) spaces them.
    pub(crate) async fn build_retrying(recipe: Recipe<'_>, attempts: u32, until: Deadline) -> Result<Self, Error> {
        let Recipe { config, counters, .. } = recipe;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let build = Self::build(recipe);
            let result = until.bound(Step::Warmup, build).await;
            let error = match result {
                Ok(pool) => return Ok(pool),
                Err(error) => error,
            };
            bump(&counters.warmup_failures);
            counters.failed_now();
            let next = Instant::now() + config.warmup_retry_delay;
            let out_of_time = until.passed_at(next);
            if !error.is_transient() {
                tracing::error!(%error, attempt, kind = ?error.kind(), "warmup failed permanently");
                return Err(error);
            }
            if attempt >= attempts || out_of_time {
                tracing::warn!(%error, attempt, kind = ?error.kind(), "warmup failed; no attempt left");
                if attempts == 1 {
                    return Err(error);
                }
                return Err(Error::Unavailable { attempts: attempt, out_of_time, source: Box::new(error) });
            }
            tracing::warn!(
                %error,
                attempt,
                delay_ms = millis(config.warmup_retry_delay),
                kind = ?error.kind(),
                "warmup failed; retrying"
            );
            tokio::time::sleep_until(next).await;
        }
    }

    /// Counts and logs this pool's failed connects from now on (see
    /// [`build_in`](Self::build_in)'s `quiet`).
    pub(crate) fn report_failures(&self) {
        self.pool.manager().quiet.store(false, Ordering::Relaxed);
    }

    /// This pool's generation number.
    pub(crate) fn generation(&self) -> u64 {
        self.pool.manager().generation
    }

    /// A warmed connection, waiting at most `DB_POOL_TIMEOUT_MS` for one.
    pub(crate) fn checkout(&self) -> impl Future<Output = Result<Conn, Error>> + Send + '_ {
        checkout(&self.pool, &self.lane)
    }

    /// The connection parked in the lane by the last invocation, if it is
    /// there and reusable as it is: a checkout that needs no waiting.
    ///
    /// Nothing is parked in a pool of more than one connection: the lane
    /// is not entered then, so that concurrent checkouts do not count
    /// themselves in it twice.
    pub(crate) fn checkout_now(&self) -> Option<Conn> {
        if self.lane.is_closed() {
            return None;
        }
        let entry = self.lane.enter();
        entry.kept().map(|object| entry.lease(object))
    }

    /// A warmed connection within `bound`, or `None` if every connection
    /// of the pool stayed checked out by other invocations all that time.
    /// A connection that must be opened (the idle one was found closed) and
    /// does not open within `bound` is an error, like a pool that cannot
    /// give one for any other reason.
    pub(crate) async fn checkout_within(&self, bound: Duration) -> Result<Option<Conn>, Error> {
        let busy = || {
            // deadpool counts a connection once it is open, so a pool at its
            // full size with none to give has them all checked out.
            let status = self.pool.status();
            status.size >= status.max_size
        };
        match tokio::time::timeout(bound, self.checkout()).await {
            Ok(Ok(conn)) => Ok(Some(conn)),
            Ok(Err(Error::Timeout { .. })) | Err(_) if busy() => Ok(None),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(Error::Timeout { step: Step::HealthCheckConnect, after: bound }),
        }
    }

    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.expiry.age(now)
    }

    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        self.expiry.is_due(now)
    }

    /// Whether the pool is `grace` or more past its refresh.
    pub(crate) fn is_overdue(&self, now: Instant, grace: Duration) -> bool {
        self.expiry.is_overdue(now, grace)
    }

    /// Sets the age at which the pool is due for a refresh.
    pub(crate) fn set_lifetime(&self, lifetime: Duration) {
        self.expiry.set_lifetime(lifetime);
    }

    /// Moves the refresh `by` later, after a refresh that could not build a
    /// replacement.
    pub(crate) fn postpone_expiry(&self, now: Instant, by: Duration) {
        self.expiry.postpone(now, by);
    }

    /// Closes the pool: idle connections now, checked-out ones when their
    /// invocations return them. Each connection's task sends Terminate and
    /// closes its socket on its own; nothing here waits for that, so a
    /// silent peer cannot hold up the invocation that replaced the pool.
    pub(crate) fn close(&self) {
        self.pool.close();
        self.lane.close();
        self.tasks.close();
    }

    /// Closes the pool and waits, up to a bound, until every connection has
    /// sent Terminate and closed: for shutdown, before the process exits.
    pub(crate) async fn close_and_wait(&self) {
        self.close();
        if tokio::time::timeout(CLOSE_WAIT, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                wait_ms = millis(CLOSE_WAIT),
                "connections of the closed pool did not finish closing in time"
            );
        }
    }
}

/// A connection from the lane at once when one is kept there (the
/// sequential case), from deadpool otherwise, on a boxed path.
fn checkout<'a>(
    pool: &'a Pool,
    lane: &Arc<Lane<WarmingManager>>,
) -> impl Future<Output = Result<Conn, Error>> + Send + 'a {
    let entry = lane.enter();
    if let Some(object) = entry.kept() {
        return Either::Left(std::future::ready(Ok(entry.lease(object))));
    }
    Either::Right(Box::pin(async move { get(pool).await.map(|object| entry.lease(object)) }))
}

/// A connection from deadpool, waiting at most `DB_POOL_TIMEOUT_MS` for one.
async fn get(pool: &Pool) -> Result<managed::Object<WarmingManager>, Error> {
    // A free slot first, taken without waiting (a semaphore `try_acquire`,
    // no wait future or timer). Only when every slot is checked out does it
    // wait.
    let now = Timeouts { wait: Some(Duration::ZERO), ..pool.timeouts() };
    let got = match pool.timeout_get(&now).await {
        Err(PoolError::Timeout(TimeoutType::Wait)) => pool.get().await,
        got => got,
    };
    got.map_err(|e| match e {
        PoolError::Backend(e) => e,
        PoolError::Timeout(TimeoutType::Wait) => {
            Error::Timeout { step: Step::PoolWait, after: pool.timeouts().wait.unwrap_or_default() }
        }
        PoolError::Timeout(_) => Error::Timeout { step: Step::Connect, after: Duration::ZERO },
        PoolError::Closed => Error::PoolClosed,
        other => Error::Internal(other.to_string()),
    })
}

/// deadpool-postgres's manager, plus both warmup phases on each new connection.
pub(crate) struct WarmingManager {
    /// The credentials of this generation.
    session: Arc<Session>,
    /// Opens connections; `inner` only recycles them.
    connect: TrackedConnect,
    inner: deadpool_postgres::Manager,
    statements: Statements,
    phase_timeout: Duration,
    counters: Arc<Counters>,
    liveness: Arc<Liveness>,
    /// The slowest connection's timings in this generation.
    timings: Mutex<WarmupTimings>,
    /// Which pool generation this is.
    generation: u64,
    /// Failed connects are not counted or logged above DEBUG: a
    /// replacement still being built in the background.
    quiet: AtomicBool,
}

impl managed::Manager for WarmingManager {
    type Type = Connection;
    type Error = Error;

    /// Boxed: a connect is rare (once per environment, per refresh) and its
    /// future large; inline, it would sit in deadpool's checkout future, and
    /// so in every invocation's, which is copied whole when it moves.
    fn create(&self) -> impl Future<Output = Result<Connection, Error>> + Send {
        Box::pin(self.open_warmed())
    }

    /// A connection whose state allows reuse and whose socket is open is
    /// handed out at once (`RecyclingMethod::Fast` sends nothing); one that
    /// raw calls used is rolled back first, on a path boxed as `create`'s.
    fn recycle(&self, conn: &mut Connection, metrics: &Metrics) -> impl Future<Output = RecycleResult<Error>> + Send {
        if conn.reusable_as_is() {
            return Either::Left(std::future::ready(Ok(())));
        }
        Either::Right(Box::pin(self.recycle_checked(conn, metrics)))
    }

    fn detach(&self, conn: &mut Connection) {
        self.inner.detach(conn.client_mut());
    }
}

/// The generation of the pool `object` came from, if that pool still exists.
pub(crate) fn generation_of(object: &managed::Object<WarmingManager>) -> Option<u64> {
    managed::Object::pool(object).map(|pool| pool.manager().generation)
}

impl Keeper for WarmingManager {
    fn abandoned(&self) {
        bump(&self.counters.abandoned_sessions);
    }

    fn track(&self, work: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        self.connect.tasks.spawn(work)
    }
}

impl WarmingManager {
    /// Opens a connection and runs both warmup phases on it.
    async fn open_warmed(&self) -> Result<Connection, Error> {
        bump(&self.counters.connect_attempts);
        let started = Instant::now();
        // Boxed: the TLS and AWS futures inside are deep types.
        let (client, cancel_target) = match Box::pin(self.open()).await {
            Ok(opened) => opened,
            Err(error) if self.quiet.load(Ordering::Relaxed) => {
                tracing::debug!(error = %error, kind = ?error.kind(), "connect failed (a replacement built in the background)");
                return Err(error);
            }
            Err(error) => {
                bump(&self.counters.connect_failures);
                self.counters.failed_now();
                tracing::warn!(error = %error, kind = ?error.kind(), "connect failed");
                return Err(error);
            }
        };
        bump(&self.counters.connect_successes);
        let connect = started.elapsed();

        // Both phases go out together: tokio-postgres pipelines them on the
        // connection, phase 1 first, so the warmup costs about one round trip
        // after the connect instead of two. The connection is handed out only
        // if both passed; phase 1's failure is the one reported.
        let phase = Instant::now();
        let phase1 = async {
            let result = warmup::round_trip(&client, self.phase_timeout).await;
            (result, phase.elapsed())
        };
        let phase2 = async {
            let result = warmup::prepare(&client, &self.statements, self.phase_timeout).await;
            (result, phase.elapsed())
        };
        let ((phase1, round_trip), (phase2, prepare)) = tokio::join!(phase1, phase2);
        phase1?;
        self.liveness.succeeded();
        let prepared = phase2?;

        let mut timings = self.timings.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        timings.connect = timings.connect.max(connect);
        timings.round_trip = timings.round_trip.max(round_trip);
        timings.prepare = timings.prepare.max(prepare);
        tracing::debug!(
            connect_ms = millis(connect),
            phase1_ms = millis(round_trip),
            phase2_ms = millis(prepare),
            "connection warmed"
        );
        Ok(Connection::new(client, cancel_target, self.statements.cache(prepared), self.connect.tls.connector()))
    }

    /// deadpool-postgres's recycle (a closed socket is not reused) and the
    /// session's own checks.
    async fn recycle_checked(&self, conn: &mut Connection, metrics: &Metrics) -> RecycleResult<Error> {
        managed::Manager::recycle(&self.inner, conn.client_mut(), metrics).await.map_err(|e| match e {
            RecycleError::Message(m) => RecycleError::Message(m),
            RecycleError::Backend(e) => RecycleError::Backend(Error::Db(e)),
        })?;
        // A checkout that was not idle is taken out of the pool when it is
        // released (`Conn`'s drop); this is the last line of defence.
        if !conn.state().is_idle() {
            return Err(RecycleError::message("the session was left mid-request or mid-transaction"));
        }
        // Raw calls may have left a transaction open: end it before reuse.
        if conn.state().take_raw() {
            let rollback = tokio::time::timeout(self.phase_timeout, conn.simple_query("ROLLBACK")).await;
            if !matches!(rollback, Ok(Ok(_))) {
                return Err(RecycleError::message("rolling back after raw use failed"));
            }
        }
        Ok(())
    }

    /// Opens one connection with this generation's credentials (a fresh IAM
    /// token each time). If it fails to authenticate (28P01, 28000), the
    /// credentials are resolved once more and the connection tried again:
    /// the secret may have been rotated since the pool was built.
    async fn open(&self) -> Result<(ClientWrapper, Option<CancelTarget>), Error> {
        let pg = self.session.connection_config().await?;
        let error = match self.connect.open(&pg).await? {
            Ok((client, task)) => return Ok((ClientWrapper::new(client, task), CancelTarget::of(&pg))),
            Err(error) => error,
        };
        if !credentials::is_auth_failure(&error) || !self.session.renew().await {
            return Err(self.connect_error(error));
        }
        bump(&self.counters.connect_attempts);
        let pg = self.session.connection_config().await?;
        match self.connect.open(&pg).await? {
            Ok((client, task)) => Ok((ClientWrapper::new(client, task), CancelTarget::of(&pg))),
            Err(error) => Err(self.connect_error(error)),
        }
    }

    /// A failed connect, with a certificate check that failed named.
    fn connect_error(&self, source: tokio_postgres::Error) -> Error {
        match crate::tls::failed_check(&source) {
            Some(check) => Error::Tls { check, mode: self.connect.tls.effective_mode(), source },
            None => Error::Warmup { phase: Phase::Connect, statement: None, source },
        }
    }
}

/// Opens connections, with the configured TLS, and drives each in a task of
/// the pool's [`TaskTracker`].
///
/// deadpool-postgres aborts the task whose handle it is given when it drops a
/// client, which would cut the socket before tokio-postgres writes Terminate.
/// So it gets the handle of an already finished task, and the connection's
/// own task runs until tokio-postgres, seeing its client dropped, has sent
/// Terminate and closed the socket.
#[derive(Clone)]
struct TrackedConnect {
    tasks: TaskTracker,
    tls: crate::tls::Tls,
    /// `DB_CONNECT_TIMEOUT_MS`, over the whole connect.
    timeout: Duration,
}

impl TrackedConnect {
    /// Opens one connection within `DB_CONNECT_TIMEOUT_MS`: TCP, the
    /// SSLRequest, the TLS handshake, the startup message and the whole
    /// authentication exchange. tokio-postgres's own `connect_timeout`
    /// bounds only the TCP connect, and a server (or a middlebox) that
    /// accepts and then stays silent, or stalls mid-handshake, would
    /// otherwise hold the warmup, and the gate's single-flight lock, for
    /// as long as the kernel keeps the socket. The outer error is the
    /// timeout; the inner one the server's or the client's.
    async fn open(
        &self,
        pg: &tokio_postgres::Config,
    ) -> Result<Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>, Error> {
        let connect = pg.connect(self.tls.connector());
        let (client, connection) = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => return Ok(Err(error)),
            Err(_) => return Err(Error::Timeout { step: Step::Connect, after: self.timeout }),
        };
        self.tasks.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
        Ok(Ok((client, tokio::spawn(std::future::ready(())))))
    }
}

impl Connect for TrackedConnect {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> BoxFuture<'_, Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>> {
        // Never called: `WarmingManager::create` opens connections through
        // `open`, bounded and with the resolved credentials; deadpool's
        // manager only recycles. (Its error type has no timeout to report.)
        let pg = pg.clone();
        Box::pin(async move {
            let (client, connection) = pg.connect(self.tls.connector()).await?;
            self.tasks.spawn(async move { drop(connection.await) });
            Ok((client, tokio::spawn(std::future::ready(()))))
        })
    }
}
