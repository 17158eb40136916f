//! What Lambda receives when an invocation fails: the `errorType` and
//! `errorMessage` the emulated Runtime API records, for a database outage
//! inside a handler, a request the function refuses, and a panic. The
//! adapter's error types must survive the handler's `?`, and a panic must
//! read as one and leave the environment serving.

use std::time::Duration;

use integration_tests::orders::{get_order, postgres, status, OrdersEnv, FUNCTION_NAME, MIGRATION, STARTUP};
use integration_tests::worker::{batch, order, WorkerEnv};
use integration_tests::{bin_path, FaultProxy, Function, RuntimeApi};
use serde_json::json;

/// An order id whose 8 bytes (big-endian, as tokio-postgres binds an
/// `int8`) appear in nothing else the function sends.
const CUT_ID: i64 = 0x0102_0304_0506_0708;

#[tokio::test]
async fn a_database_outage_inside_the_handler_keeps_the_adapters_error_type() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let url = proxy.url_for(&pg.database_url());
    // One attempt: the lost connection is the outage the retries gave up on.
    let env = OrdersEnv::start_with(pg, &[("DATABASE_URL", &url), ("DB_RETRY_ATTEMPTS", "1")]).await;

    // The gate passes (the connection is fine); the handler's own statement,
    // which carries this id, loses its connection.
    proxy.cut_when_client_sends(&CUT_ID.to_be_bytes());
    let lost = env.api.invoke(get_order(&CUT_ID.to_string())).await;
    assert!(proxy.wait_cut(Duration::from_secs(5)).await, "the cut happened inside the handler");
    assert_eq!(lost.outcome.error_type(), Some("RuntimeAdapter.DatabaseUnavailable"), "{:?}", lost.outcome);
    let message = lost.outcome.error_message().expect("a message");
    assert!(message.starts_with("database unavailable after 1 attempt(s)"), "{message}");

    let next = env.api.invoke(get_order("1")).await;
    assert_eq!(status(next.response()), 404, "served again: {:?}", next.outcome);
}

#[tokio::test]
async fn a_batch_the_worker_refuses_has_the_workers_own_error_type() {
    let env = WorkerEnv::start(&[]).await;
    let mut event = batch(&[("m-1", &order("tea", 1)), ("m-2", &order("coffee", 2))]);
    event["Records"][0].as_object_mut().expect("a record is an object").remove("messageId");
    let refused = env.api.invoke(event).await;
    assert_eq!(refused.outcome.error_type(), Some("OrdersWorker.InvalidBatch"), "{:?}", refused.outcome);
    assert_eq!(refused.outcome.error_message(), Some("record 0 of the batch has no messageId"));
}

#[tokio::test]
async fn a_panic_in_the_handler_is_reported_readably_and_the_environment_keeps_serving() {
    let pg = postgres().await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let function = Function::builder(bin_path("panicking-handler"))
        .name(FUNCTION_NAME)
        .env("DATABASE_URL", pg.database_url())
        .spawn(&api);
    assert!(api.wait_next_polls(1, STARTUP).await, "never reached the runtime loop:\n{}", function.output());

    let panicked = api.invoke(json!({ "panic": "order 42 has no customer" })).await;
    assert_eq!(panicked.outcome.error_type(), Some("RuntimeAdapter.HandlerPanicked"), "{:?}", panicked.outcome);
    assert_eq!(panicked.outcome.error_message(), Some("the handler panicked: order 42 has no customer"));

    let literal = api.invoke(json!({ "panic_static": true })).await;
    assert_eq!(literal.outcome.error_type(), Some("RuntimeAdapter.HandlerPanicked"), "{:?}", literal.outcome);
    assert_eq!(literal.outcome.error_message(), Some("the handler panicked: a static panic message"));

    // The same process, its pool intact, answers the next invocation.
    let served = api.invoke(json!({})).await;
    assert_eq!(served.response(), &json!({ "one": 1 }), "{:?}", served.outcome);
    assert_eq!(pg.connection_count(FUNCTION_NAME).await, 1, "one pooled connection, not a leak");
}
