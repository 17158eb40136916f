//! What Lambda receives when an invocation fails: the `errorType` and
//! `errorMessage` the emulated Runtime API records, for a database outage
//! inside a handler and a panic. The adapter's error types must survive the
//! handler's `?`, and a panic must read as one and leave the environment
//! serving. A batch the worker refuses keeps the worker's own type
//! (`orders_worker.rs`).

use integration_tests::orders::{
    check_an_outage_inside_the_handler, postgres, OrdersEnv, FUNCTION_NAME, MIGRATION, ORDERS_BIN, STARTUP,
};
use integration_tests::{bin_path, Function, RuntimeApi};
use serde_json::json;

#[tokio::test]
async fn a_database_outage_inside_the_handler_keeps_the_adapters_error_type() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    // One attempt: the lost connection is the outage the retries gave up on.
    let (env, proxy) = OrdersEnv::start_behind_proxy(ORDERS_BIN, pg, &[("DB_RETRY_ATTEMPTS", "1")]).await;

    check_an_outage_inside_the_handler(&env, &proxy).await;
}

#[tokio::test]
async fn a_panic_in_the_handler_is_reported_readably_and_the_environment_keeps_serving() {
    // On the runtime `runtime_adapter::tokio_runtime` builds (one thread).
    panics_are_reported_readably_and_the_environment_keeps_serving(None).await;
}

#[tokio::test]
async fn on_a_multi_thread_runtime_a_panic_is_reported_the_same_way() {
    // On `#[tokio::main]`'s runtime, as a user who keeps it has.
    panics_are_reported_readably_and_the_environment_keeps_serving(Some("multi-thread")).await;
}

/// Two panics (a `String` payload, then a `&str` one), then a normal
/// invocation, on the runtime `PANICKING_HANDLER_RUNTIME` names.
async fn panics_are_reported_readably_and_the_environment_keeps_serving(runtime: Option<&str>) {
    let pg = postgres().await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let mut function =
        Function::builder(bin_path("panicking-handler")).name(FUNCTION_NAME).env("DATABASE_URL", pg.database_url());
    if let Some(runtime) = runtime {
        function = function.env("PANICKING_HANDLER_RUNTIME", runtime);
    }
    let function = function.spawn(&api);
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

    // And it ran on the runtime asked for: a current-thread runtime has no
    // worker, and nothing here spawned a blocking thread.
    let workers = function.tokio_worker_threads();
    match runtime {
        None => assert_eq!(workers, 0, "tokio_runtime without AWS_LAMBDA_MAX_CONCURRENCY runs on the main thread"),
        Some(_) => assert!(workers >= 1, "a multi-thread runtime has worker threads"),
    }
}
