//! Health checks: skipped inside the interval, run once after it
//! (single-flight under concurrency), and a failed or dead connection
//! replaced by a warmed one before the handler runs.

use std::time::{Duration, Instant};

use integration_tests::orders::{get_order, post_valid_order, status, OrdersEnv, FUNCTION_NAME};
use integration_tests::server_log::Log;
use integration_tests::InvokeOptions;

/// Short enough for a test to wait out, shorter than the max age.
const INTERVAL_MS: u64 = 400;

/// Waits until no round trip can have succeeded within the interval.
async fn let_interval_pass() {
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS + 100)).await;
}

/// A killed backend closes its client, so deadpool's `Fast` recycle replaces
/// it at any checkout, health check or not (`faults.rs` shows the same inside
/// the interval): this test is about the replacement being warmed before the
/// handler runs. A health check is what catches a connection that is open
/// but silent: see the half-open test below, which fails without one.
#[tokio::test]
async fn a_killed_backend_is_replaced_by_a_warmed_connection_before_the_handler_runs() {
    let env = OrdersEnv::start(&[("DB_HEALTH_CHECK_INTERVAL_MS", &INTERVAL_MS.to_string())]).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);

    let killed = env.pg.kill_backends(FUNCTION_NAME).await;
    assert_eq!(killed.len(), 1, "one backend to kill");
    let_interval_pass().await;

    let mark = env.pg.log_mark();
    let found = env.api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 200, "{:?}", found.outcome);

    let log = Log::new(env.pg.log_since(mark));
    let pids = log.function_pids();
    assert_eq!(pids.len(), 1, "one new backend served the invocation:\n{}", log.text());
    assert_ne!(pids[0], killed[0]);
    // The new connection passed both phases before the handler's statement.
    let new = log.for_pid(pids[0]);
    let counts = new.counts();
    assert_eq!((counts.connections, counts.warmup_round_trips, counts.parses), (1, 1, 2), "{}", new.text());
    assert_eq!(counts.executes, 1, "{}", new.text());
    let text = new.text();
    let warmed_at = text.find("runtime-adapter warmup").expect("phase 1 logged");
    let executed_at = text.find("execute ").expect("handler's statement logged");
    assert!(warmed_at < executed_at, "warmup before the handler:\n{text}");
}

#[tokio::test]
async fn a_half_open_connection_fails_the_check_in_time_and_the_pool_is_rebuilt() {
    let timeout_ms = 300;
    let env = OrdersEnv::start(&[
        ("DB_HEALTH_CHECK_INTERVAL_MS", &INTERVAL_MS.to_string()),
        ("DB_HEALTH_CHECK_TIMEOUT_MS", &timeout_ms.to_string()),
    ])
    .await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);

    // A stopped backend keeps its socket open but never answers: the
    // connection looks alive and goes silent, as after a Lambda freeze.
    let silent = env.pg.backend_pids(FUNCTION_NAME).await;
    assert_eq!(silent.len(), 1);
    env.pg.stop_backend(silent[0]);
    let_interval_pass().await;

    let started = Instant::now();
    let found = env.api.invoke(get_order("1")).await;
    let took = started.elapsed();
    assert_eq!(status(found.response()), 200, "{:?}", found.outcome);
    // The check's timeout plus one connect and warmup on loopback, with
    // slack for a shared machine.
    let bound = Duration::from_millis(timeout_ms + 500);
    assert!(took < bound, "the check must give up after its timeout, took {took:?} (bound {bound:?})");
    eprintln!("measured: half-open connection, invocation answered in {took:?} (check timeout {timeout_ms} ms)");
    assert!(env.function.output().contains("health check failed; rebuilding the pool"), "{}", env.function.output());
    let now = env.pg.backend_pids(FUNCTION_NAME).await;
    assert!(now.iter().any(|pid| *pid != silent[0]), "a new backend serves the function: {now:?}");
    env.pg.cont_backend(silent[0]);
}

#[tokio::test]
async fn fifty_concurrent_invocations_after_the_interval_run_exactly_one_check() {
    let concurrency = 50;
    let env = OrdersEnv::start(&[
        ("AWS_LAMBDA_MAX_CONCURRENCY", &concurrency.to_string()),
        ("DB_HEALTH_CHECK_INTERVAL_MS", "2000"),
    ])
    .await;
    assert!(env.api.wait_waiting_polls(concurrency, Duration::from_secs(10)).await, "all workers poll");
    // `orders` runs on `runtime_adapter::tokio_runtime`: with several
    // invocations at once, a multi-thread runtime, so that they run in parallel.
    assert!(env.function.tokio_worker_threads() >= 1, "Lambda Managed Instances get worker threads");
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let mark = env.pg.log_mark();
    let pending: Vec<_> = (0..concurrency).map(|_| env.api.enqueue(get_order("1"), InvokeOptions::default())).collect();
    for invocation in pending {
        let done = invocation.wait().await;
        assert_eq!(status(done.response()), 200, "{:?}", done.outcome);
    }

    let log = Log::new(env.pg.log_since(mark));
    let counts = log.counts();
    assert_eq!(counts.health_checks, 1, "exactly one health check:\n{}", log.text());
    assert_eq!(counts.executes, concurrency, "every invocation ran its statement");
    assert_eq!(counts.connections, 0, "the pool of {concurrency} served them all");
}
