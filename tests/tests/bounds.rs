//! Every wait has a bound, taken from its setting: a connect that the server
//! (or something on the path) stalls at any step, a health check whose
//! checkout hangs or waits on a busy pool. Each test prints the figure it
//! measured.

use std::time::Duration;

use integration_tests::certs::{tls_postgres, TestCa};
use integration_tests::inproc::{context, try_adapter};
use integration_tests::{FaultProxy, Postgres, APP_DATABASE, APP_PASSWORD, APP_USER};
use runtime_adapter::Adapter;
use tokio::time::Instant;

/// `DB_CONNECT_TIMEOUT_MS` in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What a bound may overrun by on a shared two-core machine: scheduling,
/// and the work before and after the bounded step (reading the
/// configuration, building the TLS connector, closing the socket).
const SLACK: Duration = Duration::from_millis(1500);

fn proxied_url(proxy: &FaultProxy, sslmode: &str) -> String {
    format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{APP_DATABASE}?sslmode={sslmode}", proxy.port())
}

/// INIT against `url`, one warmup attempt, the connect bounded by
/// [`CONNECT_TIMEOUT`]; how long it took. The server unreachable is
/// transient: INIT returns an adapter that is not warm yet.
async fn init_through(url: &str) -> (Adapter, Duration) {
    let timeout = CONNECT_TIMEOUT.as_millis().to_string();
    let env = [("DB_CONNECT_TIMEOUT_MS", timeout.as_str()), ("DB_WARMUP_ATTEMPTS", "1")];
    let started = Instant::now();
    let adapter = try_adapter(url, &env, &[]).await.expect("a stalled server is transient, not an INIT error");
    (adapter, started.elapsed())
}

fn assert_bounded(step: &str, took: Duration) {
    eprintln!(
        "measured: connect stalled {step}: INIT gave up after {took:?} (DB_CONNECT_TIMEOUT_MS {CONNECT_TIMEOUT:?})"
    );
    assert!(took >= CONNECT_TIMEOUT, "{step}: gave up after {took:?}, before the bound: something else ended it");
    assert!(took < CONNECT_TIMEOUT + SLACK, "{step}: {took:?}, beyond DB_CONNECT_TIMEOUT_MS + {SLACK:?}");
}

#[tokio::test]
async fn a_server_silent_after_accept_is_given_up_on_after_the_connect_timeout() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    proxy.black_hole_new(true);
    let (adapter, took) = init_through(&proxied_url(&proxy, "prefer")).await;
    assert!(proxy.accepted() >= 1, "the TCP connect succeeded");
    assert!(!adapter.is_warm());
    assert_bounded("after accept", took);

    // Once the server answers, the first invocation warms the pool.
    proxy.black_hole_new(false);
    proxy.release_silenced();
    let db = adapter.db(&context(Duration::from_secs(20))).await.expect("warmed by the invocation");
    db.query_one("SELECT 1", &[]).await.expect("a round trip");
}

#[tokio::test]
async fn a_tls_handshake_stalled_by_the_server_is_given_up_on_after_the_connect_timeout() {
    let ca = TestCa::new("bounds CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    // A TLS record of version 1.2 (TLS 1.3 sends that too): the ServerHello,
    // the server's first record once it accepted the SSLRequest.
    proxy.stall_after_server_sends(&[0x16, 0x03, 0x03]);
    let (adapter, took) = init_through(&proxied_url(&proxy, "require")).await;
    assert!(proxy.wait_cut(Duration::ZERO).await, "the stall fired mid-handshake");
    assert!(!adapter.is_warm());
    assert_bounded("mid-TLS", took);
}

#[tokio::test]
async fn authentication_stalled_mid_scram_is_given_up_on_after_the_connect_timeout() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    // The client's first SCRAM message reaches the server; its challenge never comes back.
    proxy.stall_when_client_sends(b"SCRAM-SHA-256");
    let mark = pg.log_mark();
    let (adapter, took) = init_through(&proxied_url(&proxy, "disable")).await;
    assert!(proxy.wait_cut(Duration::ZERO).await, "the stall fired mid-SCRAM");
    assert!(!adapter.is_warm());
    assert!(!pg.log_since(mark).contains("connection authorized"), "no session was opened");
    assert_bounded("mid-SCRAM", took);
}

/// `DB_HEALTH_CHECK_TIMEOUT_MS` in these tests.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(300);

/// Waits, polling the adapter's counters, until `done` holds; false after `within`.
async fn until_stats(adapter: &Adapter, within: Duration, done: impl Fn(&runtime_adapter::Stats) -> bool) -> bool {
    let give_up = Instant::now() + within;
    while !done(&adapter.stats()) {
        if Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn a_check_whose_checkout_must_open_a_connection_is_bounded_by_the_health_check_timeout() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let timeout = HEALTH_TIMEOUT.as_millis().to_string();
    let env = [
        ("DB_HEALTH_CHECK_INTERVAL_MS", "0"),
        ("DB_HEALTH_CHECK_TIMEOUT_MS", timeout.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "3000"),
    ];
    let adapter = try_adapter(&proxied_url(&proxy, "disable"), &env, &[]).await.expect("init");
    assert!(adapter.is_warm() && proxy.connections() == 1);

    // The pooled connection is closed by the server, and new connections
    // are accepted and never answered: the check's checkout must open one.
    proxy.black_hole_new(true);
    assert_eq!(pg.kill_backends("runtime-adapter").await.len(), 1);
    assert!(proxy.wait_connections(0, Duration::from_secs(5)).await, "the client closed the killed connection");

    let started = Instant::now();
    let invocation = tokio::spawn({
        let adapter = adapter.clone();
        async move { adapter.db(&context(Duration::from_secs(20))).await.map(drop) }
    });
    // The check's connection, then the rebuild's once the check gave up.
    assert!(proxy.wait_connections(2, Duration::from_secs(10)).await, "the check failed and the pool is rebuilt");
    let took = started.elapsed();
    proxy.black_hole_new(false);
    proxy.release_silenced();
    invocation.await.expect("no panic").expect("the invocation gets a connection once the server answers");
    eprintln!("measured: health check whose checkout hung gave up after {took:?} (DB_HEALTH_CHECK_TIMEOUT_MS {HEALTH_TIMEOUT:?})");
    assert_eq!(adapter.stats().health_checks_failed, 1);
    assert!(took >= HEALTH_TIMEOUT, "{took:?}: ended before the bound, by something else");
    assert!(took < HEALTH_TIMEOUT + SLACK, "{took:?}: the checkout was not bounded by the check's timeout");
}

#[tokio::test]
async fn a_busy_pool_is_not_rebuilt_because_its_check_waited() {
    let pg = Postgres::start().await;
    let timeout = HEALTH_TIMEOUT.as_millis().to_string();
    let env = [
        ("DB_HEALTH_CHECK_INTERVAL_MS", "0"),
        ("DB_HEALTH_CHECK_TIMEOUT_MS", timeout.as_str()),
        ("DB_POOL_TIMEOUT_MS", "1000"),
    ];
    let adapter = try_adapter(&pg.database_url(), &env, &[]).await.expect("init");
    let holder = adapter.db(&context(Duration::from_secs(20))).await.expect("the one connection");
    let pid: i32 = holder.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);

    let started = Instant::now();
    let waiter = tokio::spawn({
        let adapter = adapter.clone();
        async move {
            let db = adapter.db(&context(Duration::from_secs(20))).await.expect("a connection once it is free");
            let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
            (pid, started.elapsed())
        }
    });
    // Held past DB_POOL_TIMEOUT_MS: the waiter's own checkout timed out and
    // is retried (or, were the check's wait taken for a failure, the pool
    // would have been rebuilt).
    let retried =
        until_stats(&adapter, Duration::from_secs(10), |s| s.retry_attempts >= 1 || s.health_checks_failed >= 1).await;
    drop(holder);
    let (waiter_pid, waited) = waiter.await.expect("no panic");
    let stats = adapter.stats();
    eprintln!(
        "measured: invocation on a busy pool waited {waited:?}; checks run {}, failed {}, rebuilds {}",
        stats.health_checks_run, stats.health_checks_failed, stats.refreshes_failed_check
    );
    assert!(retried, "the waiter's checkout waited out DB_POOL_TIMEOUT_MS");
    assert_eq!((stats.health_checks_failed, stats.refreshes_failed_check), (0, 0), "a busy pool is not a broken one");
    assert_eq!(waiter_pid, pid, "the same connection, not a rebuilt pool's");
}

#[tokio::test]
async fn health_checks_skipped_counts_invocations_not_checkout_attempts() {
    let pg = Postgres::start().await;
    // The default interval (30 s): every gate pass skips the check.
    let adapter = try_adapter(&pg.database_url(), &[("DB_POOL_TIMEOUT_MS", "300")], &[]).await.expect("init");
    let holder = adapter.db(&context(Duration::from_secs(20))).await.expect("the one connection");
    let waiter = tokio::spawn({
        let adapter = adapter.clone();
        async move { adapter.db(&context(Duration::from_secs(20))).await.map(drop) }
    });
    let retried = until_stats(&adapter, Duration::from_secs(10), |s| s.retry_attempts >= 2).await;
    drop(holder);
    waiter.await.expect("no panic").expect("a connection once it is free");
    let stats = adapter.stats();
    eprintln!(
        "measured: 2 invocations, {} checkout retries, HealthChecksSkipped {}",
        stats.retry_attempts, stats.health_checks_skipped
    );
    assert!(retried, "the second invocation's gate ran several times");
    assert_eq!(stats.health_checks_skipped, 2, "one per invocation");
}
