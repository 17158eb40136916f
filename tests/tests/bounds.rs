//! Every wait has a bound, taken from its setting: a connect that the server
//! (or something on the path) stalls at any step, a health check on a busy
//! pool. Each test prints the figure it measured.

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
