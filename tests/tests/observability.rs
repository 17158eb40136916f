//! What the function reports: JSON logs, CloudWatch EMF records that agree
//! with what the server saw, slow statements without their parameters, and
//! a graceful shutdown that closes every connection with Terminate.

use std::time::Duration;

use integration_tests::orders::{
    get_order, post_valid_order, postgres_watching_closes, status, OrdersEnv, FUNCTION_NAME, ORDERS_BIN,
};
use integration_tests::server_log::Log;
use integration_tests::InvokeOptions;
use serde_json::Value;
use tokio::time::Instant;

/// Every stdout line that is an EMF record.
fn emf_records(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

/// The sum of a counter over the records; a record without it fails the
/// test (a renamed metric must not read as zero).
fn sum(records: &[Value], metric: &str) -> u64 {
    records.iter().map(|r| r[metric].as_u64().unwrap_or_else(|| panic!("a record without {metric}: {r}"))).sum()
}

#[tokio::test]
async fn with_json_selected_every_line_is_json_and_invocation_lines_carry_the_request() {
    let env = OrdersEnv::start(&[
        ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
        ("AWS_LAMBDA_LOG_LEVEL", "debug"),
        ("RUST_LOG", "debug"),
    ])
    .await;
    let created = env.api.invoke(post_valid_order("tea", 1)).await;
    assert_eq!(status(created.response()), 201);
    let found = env.api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 200);
    assert!(env.function.wait_for_output("function_request_id", Duration::from_secs(5)).await);

    let output = env.function.output();
    let mut lines = 0;
    for line in output.lines() {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(parsed.is_object(), "{line}");
        lines += 1;
    }
    assert!(lines > 5, "logs were written: {output}");
    assert!(output.contains(r#""message":"pool warmed""#), "structured warmup event: {output}");
    // Events inside an invocation carry its span: the request id and trace id.
    let in_span = output
        .lines()
        .filter(|l| l.contains(&found.request_id) && !l.contains("_aws"))
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .find(|v| v.to_string().contains("xrayTraceId"));
    assert!(in_span.is_some(), "a log line with the request id and trace id in its span:\n{output}");
}

#[tokio::test]
async fn emf_records_are_well_formed_and_agree_with_the_server() {
    let interval_ms = 400;
    let max_age_ms = 1500;
    let env = OrdersEnv::start(&[
        ("DB_HEALTH_CHECK_INTERVAL_MS", &interval_ms.to_string()),
        ("DB_MAX_AGE_MS", &max_age_ms.to_string()),
        ("DB_METRICS_NAMESPACE", "Orders/Test"),
    ])
    .await;

    // A scripted sequence: warm invocations inside the interval, one after
    // it (a check), one after the max age (a refresh).
    let mut invocations = 0;
    for _ in 0..3 {
        assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
        invocations += 1;
    }
    tokio::time::sleep(Duration::from_millis(interval_ms + 100)).await;
    assert_eq!(status(env.api.invoke(get_order("1")).await.response()), 200);
    invocations += 1;
    tokio::time::sleep(Duration::from_millis(max_age_ms + 100)).await;
    assert_eq!(status(env.api.invoke(get_order("1")).await.response()), 200);
    invocations += 1;
    let settled = async {
        while emf_records(&env.function.output()).len() < invocations {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled).await.expect("one record per invocation");

    let records = emf_records(&env.function.output());
    assert_eq!(records.len(), invocations, "one record per invocation");
    for record in &records {
        let directive = &record["_aws"]["CloudWatchMetrics"][0];
        assert!(record["_aws"]["Timestamp"].as_u64().is_some(), "{record}");
        assert_eq!(directive["Namespace"], "Orders/Test");
        assert_eq!(directive["Dimensions"], serde_json::json!([["function_name"]]));
        assert_eq!(record["function_name"], FUNCTION_NAME);
        assert!(record["function_request_id"].as_str().is_some(), "{record}");
        for metric in directive["Metrics"].as_array().expect("metrics") {
            let name = metric["Name"].as_str().expect("name");
            let unit = metric["Unit"].as_str().expect("unit");
            assert!(["Count", "Milliseconds"].contains(&unit), "{name}: {unit}");
            let value = &record[name];
            let numeric =
                value.is_number() || value.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_number));
            assert!(numeric, "{name} has a value: {record}");
        }
    }
    assert_eq!(sum(&records, "ColdStart"), 1);
    assert_eq!(records[0]["ColdStart"], 1, "the first record is the cold start");
    assert!(records[0]["WarmupDuration"].as_array().is_some(), "INIT's warmup is in the first record");
    for name in ["QueryDuration", "CheckoutWait"] {
        let values: usize = records.iter().map(|r| r[name].as_array().map_or(0, Vec::len)).sum();
        assert_eq!(values, invocations, "{name}: one value per invocation");
    }

    let server = Log::new(env.pg.read_log()).counts();
    assert_eq!(sum(&records, "HealthChecksRun"), server.health_checks as u64, "checks the server saw");
    assert_eq!(sum(&records, "HealthChecksRun"), 1);
    // Each invocation either ran the check or skipped it (the refreshed pool
    // had just proved itself).
    assert_eq!(sum(&records, "HealthChecksSkipped") + sum(&records, "HealthChecksRun"), invocations as u64);
    assert_eq!(sum(&records, "PoolRefreshes"), 1);
    assert_eq!(sum(&records, "ConnectAttempts"), server.connections as u64, "connections the server saw");
    assert_eq!(sum(&records, "ConnectFailures"), 0);
    assert_eq!(sum(&records, "PoolRebuilds") + sum(&records, "PoolExhausted") + sum(&records, "RetryAttempts"), 0);
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let env = OrdersEnv::start(&[("DB_METRICS", "off")]).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    assert_eq!(status(env.api.invoke(get_order("1")).await.response()), 200);
    assert!(emf_records(&env.function.output()).is_empty(), "{}", env.function.output());
}

#[tokio::test]
async fn a_slow_statement_is_logged_with_its_sql_and_without_its_parameters() {
    let env = OrdersEnv::start(&[("DB_SLOW_QUERY_MS", "1"), ("AWS_LAMBDA_LOG_FORMAT", "JSON")]).await;
    let item = "private-item-plugh-4711";
    // Slow enough for any machine: the insert waits on a lock held here.
    let blocker = env.pg.app_client().await;
    blocker.batch_execute("BEGIN; LOCK TABLE orders IN EXCLUSIVE MODE").await.expect("lock");
    let pending = env.api.enqueue(post_valid_order(item, 7), integration_tests::InvokeOptions::default());
    // Until the insert is seen waiting on that lock.
    let watcher = env.pg.app_client().await;
    let waiting = async {
        loop {
            let waiting: i64 = watcher
                .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'orders'::regclass", &[])
                .await
                .expect("pg_locks")
                .get(0);
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the insert waits on the lock");
    blocker.batch_execute("COMMIT").await.expect("unlock");
    assert_eq!(status(pending.wait().await.response()), 201);
    assert!(env.function.wait_for_output("slow statement", Duration::from_secs(5)).await);

    let output = env.function.output();
    let slow: Vec<Value> = output
        .lines()
        .filter(|l| l.contains("slow statement"))
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert!(!slow.is_empty());
    let insert = slow
        .iter()
        .find(|v| v.to_string().contains("INSERT INTO orders"))
        .unwrap_or_else(|| panic!("the INSERT was logged as slow: {slow:?}"));
    assert_eq!(insert["level"], "WARN", "{insert}");
    assert!(insert.to_string().contains("duration_ms"), "{insert}");
    assert!(!output.contains(item), "a parameter value leaked into the logs:\n{output}");
}

#[tokio::test]
async fn sigterm_closes_every_connection_with_terminate_within_500_ms() {
    let pg = postgres_watching_closes().await;
    let mut env = OrdersEnv::start_with(pg, &[("AWS_LAMBDA_MAX_CONCURRENCY", "4")]).await;
    assert_eq!(env.api.extensions_registered(), 1, "the shutdown extension registered during INIT");
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    assert_eq!(env.pg.backend_pids(FUNCTION_NAME).await.len(), 4, "a pool of four");
    let (took, output) = env.terminate_and_check_closes().await;
    eprintln!("measured: SIGTERM to exit with 4 connections closed: {took:?}");
    let last = emf_records(&output);
    assert!(last.len() >= 2, "a final metrics record after the invocation's: {output}");
}

#[tokio::test]
async fn sigterm_during_a_rebuild_still_exits_within_500_ms() {
    let pg = postgres_watching_closes().await;
    let (mut env, proxy) = OrdersEnv::start_behind_proxy(
        ORDERS_BIN,
        pg,
        &[
            ("DB_HEALTH_CHECK_INTERVAL_MS", "0"),
            ("DB_HEALTH_CHECK_TIMEOUT_MS", "300"),
            ("DB_CONNECT_TIMEOUT_MS", "5000"),
        ],
    )
    .await;
    // The pooled connection goes silent and new ones are never answered:
    // the next check fails, and the rebuild's connect holds the maintenance
    // lock for DB_CONNECT_TIMEOUT_MS.
    proxy.silence_all();
    proxy.black_hole_new(true);
    let _pending = env.api.enqueue(get_order("1"), InvokeOptions::default());
    assert!(
        env.function.wait_for_output("rebuilding the pool", Duration::from_secs(10)).await,
        "the check failed: {}",
        env.function.output()
    );

    let signalled = Instant::now();
    env.function.terminate();
    let exit = env.function.wait_exit(Duration::from_secs(10)).await.expect("the function exits");
    let took = signalled.elapsed();
    eprintln!("measured: SIGTERM during a rebuild to exit: {took:?}");
    assert!(exit.success(), "a clean exit: {exit:?}");
    assert!(took < Duration::from_millis(500), "within Lambda's shutdown window, lock held elsewhere: {took:?}");
    let output = env.function.output();
    assert!(output.contains("shutdown complete"), "{output}");
}
