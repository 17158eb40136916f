//! The deadline cancel fits inside `DB_DEADLINE_MARGIN_MS`: even when the
//! cancel request's target answers slowly (or never), the handler gets its
//! error while there is still time to answer Lambda.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::inproc::{adapter, context};
use integration_tests::orders::postgres;
use integration_tests::FaultProxy;
use runtime_adapter::Error;
use tokio::time::Instant;

#[tokio::test]
async fn a_slow_cancel_target_does_not_push_the_answer_past_the_deadline() {
    let pg = postgres().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let margin = Duration::from_millis(400);
    let margin_ms = margin.as_millis().to_string();
    let adapter = adapter(&proxy.url_for(&pg.database_url()), &[("DB_DEADLINE_MARGIN_MS", &margin_ms)], &[]).await;
    let timeout = Duration::from_millis(1500);
    let started = Instant::now();
    let db = adapter.db(&context(timeout)).await.expect("db");

    // New connections through the proxy, the cancel request's included,
    // now reach a peer that accepts and never answers.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    proxy.set_upstream(black_hole.local_addr().expect("addr"));
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });

    let result = db.query("SELECT pg_sleep(30)", &[]).await;
    let took = started.elapsed();
    match result {
        Err(Error::DeadlineExceeded { .. }) => {}
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    // The statement stops at the deadline less the margin; the cancel and
    // the wait for the statement's answer get half the margin.
    let bound = timeout - margin + margin / 2;
    eprintln!("measured: answer after {took:?} (deadline {timeout:?}, margin {margin:?}, bound {bound:?})");
    assert!(took >= timeout - margin - Duration::from_millis(50), "ran until the margin: {took:?}");
    assert!(took <= bound + Duration::from_millis(150), "the cancel overran half the margin: {took:?}");
    assert!(took < timeout, "answered before the deadline: {took:?}");
    proxy.set_upstream(SocketAddr::from(([127, 0, 0, 1], pg.port())));
}
