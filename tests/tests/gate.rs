//! The gate driven in-process, what the server saw counted: a health check
//! follows the last successful round trip (not the environment's age); the
//! SnapStart hooks close the pool before the snapshot and re-warm it after a
//! restore, forgetting what the snapshot remembered; INIT fails on permanent
//! errors only; a full server is waited for once, within the deadline; a
//! permanent checkout error is not retried.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use integration_tests::inproc::{adapter, context, try_adapter, wait_stats};
use integration_tests::{FaultProxy, Postgres, APP_PASSWORD};
use runtime_adapter::tokio_postgres::error::SqlState;
use runtime_adapter::{Adapter, Config, Error, ErrorKind, Lifecycle};
use tokio::time::Instant;

/// `DB_HEALTH_CHECK_INTERVAL_MS` in the check test.
const INTERVAL: Duration = Duration::from_millis(1000);

/// What the wall clock of a success may differ by from the test's reading
/// of it on either side: the two are taken a few statements apart.
const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// The health checks the server ran since `mark`, from its statement log.
fn checks_on_server(pg: &Postgres, mark: usize) -> usize {
    pg.log_since(mark).lines().filter(|l| l.contains("LOG:  statement: /* runtime-adapter health check */")).count()
}

/// One invocation that reads a row; its `Db` is dropped at the end.
async fn invoke(adapter: &Adapter) {
    let db = adapter.db(&context(Duration::from_secs(20))).await.expect("db");
    let one: i32 = db.query_one("SELECT 1", &[]).await.expect("a round trip").get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_check_runs_only_when_no_round_trip_succeeded_within_the_interval() {
    let pg = Postgres::start().await;
    let interval = INTERVAL.as_millis().to_string();
    let adapter = adapter(&pg.database_url(), &[("DB_HEALTH_CHECK_INTERVAL_MS", interval.as_str())], &[]).await;
    let mark = pg.log_mark();

    // Past the interval since warmup's round trips: the gate checks, once.
    tokio::time::sleep(INTERVAL + Duration::from_millis(100)).await;
    let before = SystemTime::now();
    invoke(&adapter).await;
    let after = SystemTime::now();
    assert_eq!(
        (adapter.stats().health_checks_run, checks_on_server(&pg, mark)),
        (1, 1),
        "one check after the interval"
    );
    let last = adapter.stats().last_success.expect("a success is recorded");
    assert!(
        last + CLOCK_SLACK >= before && last <= after + CLOCK_SLACK,
        "the last success is this invocation's: {last:?} not within {before:?}..{after:?}"
    );

    // The environment is older than the interval, its last round trip is
    // not: no check.
    invoke(&adapter).await;
    assert_eq!((adapter.stats().health_checks_run, checks_on_server(&pg, mark)), (1, 1), "skipped within the interval");

    // Any round trip counts, not only a check: one more than half an
    // interval after the check, and the next invocation half an interval
    // later again is past the interval since the check but not since that
    // round trip.
    tokio::time::sleep(INTERVAL * 6 / 10).await;
    invoke(&adapter).await;
    tokio::time::sleep(INTERVAL * 6 / 10).await;
    invoke(&adapter).await;
    let stats = adapter.stats();
    assert_eq!((stats.health_checks_run, checks_on_server(&pg, mark)), (1, 1), "a query proves the database healthy");
    assert_eq!(stats.health_checks_skipped, 3);
    assert_eq!(stats.query_durations.count, 4, "each invocation's statement timed");
}

/// A lifecycle (shutdown installed, metrics off) against `url`, failing
/// fast when the server does not answer.
async fn lifecycle(url: &str) -> Lifecycle {
    let vars = [
        ("DATABASE_URL", url.to_owned()),
        ("DB_METRICS", "off".to_owned()),
        ("DB_CONNECT_TIMEOUT_MS", "500".to_owned()),
        ("DB_WARMUP_ATTEMPTS", "1".to_owned()),
    ];
    let config = Config::from_lookup(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
        .expect("configuration");
    Adapter::builder().config(config).start().await.expect("init")
}

/// Waits until the server has `n` sessions of the adapter; false after 5 s.
async fn sessions(pg: &Postgres, n: i64) -> bool {
    pg.wait_connection_count("runtime-adapter", n, Duration::from_secs(5)).await
}

/// Whether the server shows no session of the adapter (within 5 s), asked
/// from another thread while this one is blocked: nothing of the adapter's
/// runs meanwhile, as when the snapshot freezes the VM after the hook.
fn closed_while_frozen(pg: &Postgres) -> bool {
    std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(sessions(pg, 0))
        });
        asking.join().expect("no panic")
    })
}

#[tokio::test]
async fn snap_start_hooks_close_the_pool_and_rewarm_it_or_leave_it_to_the_first_invocation() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let lifecycle = lifecycle(&proxy.url_for(&pg.database_url())).await;
    let adapter = lifecycle.adapter().clone();
    let hooks = lifecycle.snap_start();
    invoke(&adapter).await;
    assert!(sessions(&pg, 1).await, "one session before the snapshot");

    // Before the snapshot: no session left on the server.
    hooks.before_snapshot().await.expect("before snapshot");
    assert!(!adapter.is_warm());
    assert!(sessions(&pg, 0).await, "the pool's sessions closed before the snapshot");

    // A restore with the server up: warm again before any invocation.
    let restoring = SystemTime::now();
    hooks.after_restore().await.expect("after restore");
    assert!(adapter.is_warm(), "re-warmed by the hook");
    assert!(sessions(&pg, 1).await, "a new session, opened by the hook");
    let last = adapter.stats().last_success.expect("the warmup's success");
    assert!(last + CLOCK_SLACK >= restoring, "recorded after the restore: {last:?} < {restoring:?}");

    // A restore with the server silent: not fatal, and the success from
    // before the snapshot is forgotten.
    hooks.before_snapshot().await.expect("before snapshot");
    proxy.black_hole_new(true);
    hooks.after_restore().await.expect("an unreachable server is left to the first invocation");
    assert!(!adapter.is_warm());
    assert_eq!(adapter.stats().last_success, None, "the snapshot's clocks prove nothing");
    proxy.black_hole_new(false);
    proxy.release_silenced();
    invoke(&adapter).await;
    assert!(adapter.is_warm(), "warmed by the first invocation");

    // A restore whose credentials were revoked meanwhile: an error.
    hooks.before_snapshot().await.expect("before snapshot");
    pg.batch("ALTER ROLE app PASSWORD 'revoked'").await;
    let refused = hooks.after_restore().await;
    pg.batch(&format!("ALTER ROLE app PASSWORD '{APP_PASSWORD}'")).await;
    let error = refused.expect_err("bad credentials fail the restore");
    let error = error.downcast_ref::<Error>().unwrap_or_else(|| panic!("the adapter's error: {error}"));
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error}");
}

#[tokio::test]
async fn init_fails_on_a_permanent_error_and_the_adapter_shows_its_configuration_without_secrets() {
    let pg = Postgres::start().await;
    let error =
        try_adapter(&pg.database_url(), &[], &["SELECT nope FROM missing"]).await.expect_err("missing relation");
    assert_eq!(error.code(), Some(&SqlState::UNDEFINED_TABLE), "{error}");
    assert!(sessions(&pg, 0).await, "no session left by the failed INIT");

    let adapter = adapter(&pg.database_url(), &[("DB_POOL_SIZE", "3")], &[]).await;
    assert_eq!(adapter.config().pool_size, 3, "the configuration in use");
    let debug = format!("{adapter:?}");
    assert!(debug.contains("config: Config {"), "{debug}");
    assert!(!debug.contains(APP_PASSWORD), "no password in Debug: {debug}");
}

#[tokio::test]
async fn a_permanent_checkout_failure_is_not_retried() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let adapter = adapter(&proxy.url_for(&pg.database_url()), &[], &[]).await;
    // The pooled connection is gone, and a new one is refused for good.
    pg.batch("ALTER ROLE app PASSWORD 'revoked'").await;
    assert_eq!(pg.kill_backends("runtime-adapter").await.len(), 1);
    assert!(proxy.wait_connections(0, Duration::from_secs(5)).await, "the client closed the killed connection");
    let mark = pg.log_mark();
    let refused = adapter.db(&context(Duration::from_secs(20))).await.map(drop);
    pg.batch(&format!("ALTER ROLE app PASSWORD '{APP_PASSWORD}'")).await;
    let error = refused.expect_err("bad credentials");
    assert_eq!((error.kind(), error.code()), (ErrorKind::Permanent, Some(&SqlState::INVALID_PASSWORD)), "{error}");
    assert_eq!(adapter.stats().retry_attempts, 0, "not retried");
    let failed = pg.log_since(mark).matches("password authentication failed").count();
    assert_eq!(failed, 1, "one login tried");
    invoke(&adapter).await;
}

/// The lowest delay before the one retry after a refusal for lack of
/// connection slots (the adapter's 2-5 s).
const EXHAUSTED_MIN_DELAY: Duration = Duration::from_secs(2);

/// Waits until `done` holds for `adapter`'s counters; false after 10 s.
async fn until_stats(adapter: &Adapter, done: impl Fn(&runtime_adapter::Stats) -> bool) -> bool {
    wait_stats(adapter, Duration::from_secs(10), done).await
}

/// Waits until `adapter` has no pool in place; false after `within`.
async fn until_cold(adapter: &Adapter, within: Duration) -> bool {
    let give_up = Instant::now() + within;
    while adapter.is_warm() {
        if Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn a_full_server_is_waited_for_once_within_the_deadline() {
    // Two connections for the app role, both taken by other clients. A
    // role's limit answers 53300 as a full server does, and the harness's
    // own superuser sessions do not count against it.
    let pg = Postgres::start().await;
    pg.batch("ALTER ROLE app CONNECTION LIMIT 2").await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let url = proxy.url_for(&pg.database_url());
    let mut others = vec![pg.app_client().await, pg.app_client().await];

    // INIT: not an error, the first invocation will warm the pool.
    let env = [("DB_WARMUP_ATTEMPTS", "1")];
    let adapter = try_adapter(&url, &env, &[]).await.expect("a full server is not an INIT error");
    assert!(!adapter.is_warm());
    assert_eq!(adapter.stats().pool_exhausted, 1, "the refusal at INIT counted");

    // A deadline shorter than the wait: the limit, at once, not retried.
    let started = Instant::now();
    let error = adapter.db(&context(Duration::from_millis(2000))).await.map(drop).expect_err("no slot");
    let took = started.elapsed();
    assert!(matches!(error, Error::ConnectionLimit { .. }), "{error:?}");
    assert_eq!(error.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    assert!(took < EXHAUSTED_MIN_DELAY, "no wait that the deadline cannot hold: {took:?}");
    assert_eq!((adapter.stats().pool_exhausted, adapter.stats().retry_attempts), (2, 0));

    // Time enough: a slot freed during the wait is taken by the one retry.
    let waiting = tokio::spawn({
        let adapter = adapter.clone();
        async move { adapter.db(&context(Duration::from_secs(20))).await.map(drop) }
    });
    assert!(until_stats(&adapter, |s| s.pool_exhausted == 3).await, "the invocation was refused");
    drop(others.pop());
    waiting.await.expect("no panic").expect("the retry got the freed slot");
    assert!(adapter.is_warm());
    assert!(sessions(&pg, 1).await, "the adapter's session on the server");

    // The pool's connection is lost and its replacement refused: the pool
    // is released during the wait, and a new one warmed by the retry.
    assert_eq!(pg.kill_backends("runtime-adapter").await.len(), 1);
    assert!(proxy.wait_connections(0, Duration::from_secs(5)).await, "the client closed the killed connection");
    assert!(sessions(&pg, 0).await, "the killed backend has left its slot");
    others.push(pg.app_client().await);
    let waiting = tokio::spawn({
        let adapter = adapter.clone();
        async move { adapter.db(&context(Duration::from_secs(20))).await.map(drop) }
    });
    assert!(until_stats(&adapter, |s| s.pool_exhausted == 4).await, "the replacement was refused");
    assert!(until_cold(&adapter, EXHAUSTED_MIN_DELAY * 3 / 4).await, "the refused pool released during the wait");
    drop(others.pop());
    waiting.await.expect("no panic").expect("the retry warmed a new pool");
    assert!(adapter.is_warm());

    // Another environment, with the server full again: refused twice, the
    // limit is reported.
    let second = try_adapter(&url, &env, &[]).await.expect("init");
    let started = Instant::now();
    let error = second.db(&context(Duration::from_secs(20))).await.map(drop).expect_err("still full");
    assert!(started.elapsed() >= EXHAUSTED_MIN_DELAY, "waited before the retry");
    assert!(matches!(error, Error::ConnectionLimit { .. }), "{error:?}");
    assert_eq!(second.stats().pool_exhausted, 3, "INIT, the first try and the retry");

    // A third, whose retry fails otherwise: that error, not the limit.
    let third = try_adapter(&url, &env, &[]).await.expect("init");
    let waiting = tokio::spawn({
        let third = third.clone();
        async move { third.db(&context(Duration::from_secs(20))).await.map(drop) }
    });
    assert!(until_stats(&third, |s| s.pool_exhausted == 2).await, "refused");
    pg.batch("ALTER ROLE app PASSWORD 'revoked'").await;
    drop(others.pop());
    let error = waiting.await.expect("no panic").expect_err("bad credentials");
    pg.batch(&format!("ALTER ROLE app PASSWORD '{APP_PASSWORD}'")).await;
    assert_eq!(error.code(), Some(&SqlState::INVALID_PASSWORD), "{error:?}");
    assert!(!matches!(error, Error::ConnectionLimit { .. }), "{error:?}");
    assert_eq!(third.stats().pool_exhausted, 2, "the retry's refusal is not the limit");
}

/// Invokes every 50 ms (so that no health check falls due) until `done`
/// holds; false after `within`.
async fn invoke_until(adapter: &Adapter, within: Duration, done: impl Fn(&runtime_adapter::Stats) -> bool) -> bool {
    let give_up = Instant::now() + within;
    while !done(&adapter.stats()) {
        if Instant::now() >= give_up {
            return false;
        }
        invoke(adapter).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test]
async fn a_pool_past_its_max_age_is_replaced_and_a_failed_replacement_is_tried_again_after_a_tenth_of_it() {
    const MAX_AGE: Duration = Duration::from_millis(1000);
    /// Scheduling on a shared two-core machine, and the gate's own work.
    const SLACK: Duration = Duration::from_millis(700);
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let max_age = MAX_AGE.as_millis().to_string();
    let env = [
        ("DB_MAX_AGE_MS", max_age.as_str()),
        ("DB_HEALTH_CHECK_INTERVAL_MS", max_age.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "300"),
    ];
    let adapter = adapter(&proxy.url_for(&pg.database_url()), &env, &[]).await;
    let warmed = Instant::now();
    let first = pg.backend_pids("runtime-adapter").await;

    // Round trips every 50 ms keep the check from falling due: the age
    // alone replaces the pool, after its lifetime (the max age less up to
    // 10 %).
    assert!(invoke_until(&adapter, MAX_AGE + SLACK, |s| s.refreshes_max_age == 1).await, "refreshed at the max age");
    let lifetime = warmed.elapsed();
    eprintln!("measured: refreshed {lifetime:?} after INIT (DB_MAX_AGE_MS {MAX_AGE:?})");
    // Less the little INIT did after building the pool.
    assert!(lifetime + Duration::from_millis(50) >= MAX_AGE * 9 / 10, "not before the max age less 10 %: {lifetime:?}");
    assert_eq!(adapter.stats().health_checks_run, 0, "no check: every round trip proved the database");
    assert!(sessions(&pg, 1).await, "the old pool's session closed");
    let second = pg.backend_pids("runtime-adapter").await;
    assert!(second.iter().all(|pid| !first.contains(pid)), "a new session: {first:?} then {second:?}");

    // New connections now go unanswered: the replacement fails, the old
    // pool serves on, and the replacement is tried again a tenth of the
    // max age later, not a whole one.
    proxy.black_hole_new(true);
    assert!(invoke_until(&adapter, MAX_AGE + SLACK, |s| s.refresh_failures == 1).await, "the refresh failed");
    let failed = Instant::now();
    assert!(invoke_until(&adapter, MAX_AGE / 10 + SLACK, |s| s.refresh_failures == 2).await, "tried again");
    eprintln!("measured: refresh tried again {:?} after it failed (DB_MAX_AGE_MS {MAX_AGE:?})", failed.elapsed());
    assert_eq!(pg.backend_pids("runtime-adapter").await, second, "served by the old pool meanwhile");
    proxy.black_hole_new(false);
    proxy.release_silenced();
    assert!(
        invoke_until(&adapter, MAX_AGE / 10 + SLACK, |s| s.refreshes_max_age == 2).await,
        "replaced once reachable"
    );
}

#[tokio::test]
async fn the_sessions_are_closed_by_the_time_the_before_snapshot_hook_returns() {
    // Straight to the server: a proxy on this runtime would be frozen too.
    let pg = Postgres::start().await;
    let lifecycle = lifecycle(&pg.database_url()).await;
    invoke(lifecycle.adapter()).await;
    assert!(sessions(&pg, 1).await);
    lifecycle.snap_start().before_snapshot().await.expect("before snapshot");
    assert!(closed_while_frozen(&pg), "closed with nothing of the adapter run after the hook");
}

/// One handler's use of its `Db`, for the randomized checkout test: a
/// statement, then the handle held over `hold` before it is released.
async fn use_and_hold(adapter: &Adapter, hold: Duration) -> i32 {
    let db = adapter.db(&context(Duration::from_secs(20))).await.unwrap_or_else(|e| panic!("checkout: {e}"));
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await.expect("a round trip").get(0);
    if hold.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(hold).await;
    }
    pid
}

/// The fast lane of a pool of one (its connection kept between sequential
/// checkouts, out of deadpool) never leaves a checkout waiting for a
/// connection parked there: invocations overlapping in a random
/// interleaving, on two worker threads, each also running two checkouts at
/// once (a handler's `join!`), all get a connection well within
/// `DB_POOL_TIMEOUT_MS`, and the pool never opens more than its size; so do
/// releases raced by a checkout. Then sequential invocations run on the kept
/// connection. A pool of two (no lane) passes the same, and its sequential
/// invocations use both connections. `LANE_SEED` repeats a run; the seed is
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_checkouts_in_any_order_never_wait_for_the_kept_connection() {
    /// Rounds of a release raced by a checkout, and the spread of their
    /// offsets (spin-loop iterations after the racing checkout was let go).
    const RACE_ROUNDS: u32 = 10_000;
    const RACE_SPREAD: u32 = 1500;
    let seed = std::env::var("LANE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fast-lane checkout test: seed {seed} (LANE_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let pg = Postgres::start().await;
    for pool_size in [1_usize, 2] {
        let size = pool_size.to_string();
        let env =
            [("DB_POOL_SIZE", size.as_str()), ("DB_POOL_TIMEOUT_MS", "2000"), ("AWS_LAMBDA_FUNCTION_NAME", "lane")];
        let adapter = adapter(&pg.database_url(), &env, &[]).await;
        let ctx = || context(Duration::from_secs(20));
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let plan: Vec<(Duration, Duration, bool)> = (0..30)
                    .map(|_| {
                        let mut hold = || Duration::from_micros(rng.choice([0, 0, 50, 300, 1500]).expect("non-empty"));
                        let (first, second) = (hold(), hold());
                        (first, second, rng.bool())
                    })
                    .collect();
                let adapter = adapter.clone();
                tokio::spawn(async move {
                    for (first, second, both) in plan {
                        if both {
                            tokio::join!(use_and_hold(&adapter, first), use_and_hold(&adapter, second));
                        } else {
                            use_and_hold(&adapter, first).await;
                        }
                    }
                })
            })
            .collect();
        let started = Instant::now();
        for worker in workers {
            worker.await.unwrap_or_else(|e| panic!("seed {seed}, pool of {pool_size}: a worker failed: {e}"));
        }
        let took = started.elapsed();
        eprintln!("pool of {pool_size}: 6 × 30 overlapping invocations in {took:?}");
        assert!(took < Duration::from_secs(5), "seed {seed}, pool of {pool_size}: a checkout waited out its time");
        let stats = adapter.stats();
        assert_eq!(
            stats.connect_successes, pool_size as u64,
            "seed {seed}: the pool of {pool_size} opened only its own connections"
        );

        // Sequential invocations: a pool of one runs them all on its kept
        // connection; a larger one (no lane) on each of its connections in
        // turn, none left idle and unchecked.
        let mut pids: Vec<i32> = Vec::new();
        for _ in 0..20 {
            pids.push(use_and_hold(&adapter, Duration::ZERO).await);
        }
        let used: std::collections::BTreeSet<i32> = pids.iter().copied().collect();
        assert_eq!(
            used.len(),
            pool_size,
            "seed {seed}, pool of {pool_size}: the connections sequential invocations ran on: {pids:?}"
        );
        assert_eq!(pg.connection_count("lane").await, pool_size as i64, "seed {seed}: no session leaked or lost");

        // A release and a checkout racing: one invocation holds the only
        // connection (or one of two) and releases it while another's checkout
        // starts, at offsets swept around it. A checkout that looked for the
        // kept connection before it was parked, and then waited in deadpool,
        // would wait out `DB_POOL_TIMEOUT_MS` here: nothing else comes to
        // return it.
        let released = Arc::new(AtomicBool::new(false));
        let mut slowest = Duration::ZERO;
        for round in 0..RACE_ROUNDS {
            let holder = ctx();
            let held: Vec<_> = futures_util::future::join_all((0..pool_size).map(|_| adapter.db(&holder))).await;
            released.store(false, Ordering::SeqCst);
            let other = {
                let (adapter, released) = (adapter.clone(), released.clone());
                tokio::spawn(async move {
                    while !released.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                    let racer = context(Duration::from_secs(20));
                    let started = Instant::now();
                    let db = adapter.db(&racer).await;
                    (started.elapsed(), db.map(drop))
                })
            };
            let offset = rng.u32(0..RACE_SPREAD);
            released.store(true, Ordering::SeqCst);
            for _ in 0..offset {
                std::hint::spin_loop();
            }
            drop(held);
            let (waited, got) = other.await.expect("the racing checkout");
            got.unwrap_or_else(|e| panic!("seed {seed}, pool of {pool_size}, round {round}, offset {offset}: {e}"));
            slowest = slowest.max(waited);
        }
        eprintln!("pool of {pool_size}: {RACE_ROUNDS} releases raced by a checkout, slowest checkout {slowest:?}");
        assert!(
            slowest < Duration::from_secs(1),
            "seed {seed}, pool of {pool_size}: a checkout waited for a parked connection"
        );

        adapter.close().await;
        assert!(
            pg.wait_connection_count("lane", 0, Duration::from_secs(5)).await,
            "seed {seed}, pool of {pool_size}: closing the adapter ends its sessions, the kept one too"
        );
    }
}

/// A handler that gives up on a checkout (a `timeout` around `db()`) while
/// the pool's only connection is held elsewhere leaves nothing behind: the
/// held connection, once released, serves the next invocations on the same
/// session, none waits, and the server sees one session throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_given_up_while_it_waits_leaves_the_pool_as_it_was() {
    let pg = Postgres::start().await;
    let env = [("DB_POOL_TIMEOUT_MS", "5000"), ("AWS_LAMBDA_FUNCTION_NAME", "given-up")];
    let adapter = adapter(&pg.database_url(), &env, &[]).await;
    let held = adapter.db(&context(Duration::from_secs(20))).await.expect("the only connection");
    let pid: i32 = held.query_one("SELECT pg_backend_pid()", &[]).await.expect("a round trip").get(0);

    let context = context(Duration::from_secs(20));
    let gave_up = tokio::time::timeout(Duration::from_millis(100), adapter.db(&context)).await;
    assert!(gave_up.is_err(), "the checkout waited for the held connection");
    drop(held);

    for _ in 0..5 {
        let started = Instant::now();
        let next = use_and_hold(&adapter, Duration::ZERO).await;
        assert!(started.elapsed() < Duration::from_secs(1), "a later invocation waited");
        assert_eq!(next, pid, "later invocations run on the released session");
    }
    assert_eq!(pg.connection_count("given-up").await, 1, "one session, none opened or leaked");
    assert_eq!(adapter.stats().connect_attempts, 1);
}
