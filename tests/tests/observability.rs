//! What the function reports: JSON logs, CloudWatch EMF records that agree
//! with what the server saw (aggregated over a window, or one per
//! invocation), what they cost in log bytes, slow statements without their
//! parameters, and a graceful shutdown that closes every connection with
//! Terminate and writes what the metrics still held.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::orders::STARTUP;
use integration_tests::orders::{
    check_emf_record, emf_bytes, emf_duration, emf_records, emf_sum, emf_values, get_order, post_valid_order,
    postgres_watching_closes, status, OrdersEnv, FUNCTION_NAME, ORDERS_BIN,
};
use integration_tests::server_log::Log;
use integration_tests::{bin_path, Function, InvokeOptions, RuntimeApi};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The sum of a counter over the records that carry counters (those with
/// `ColdStart`); such a record without it fails the test (a renamed metric
/// must not read as zero).
fn sum(records: &[Value], metric: &str) -> u64 {
    let with_counters: Vec<&Value> = records.iter().filter(|r| r.get("ColdStart").is_some()).collect();
    assert!(!with_counters.is_empty(), "no record with counters");
    with_counters.iter().map(|r| r[metric].as_u64().unwrap_or_else(|| panic!("a record without {metric}: {r}"))).sum()
}

/// Sends SIGTERM and waits for the exit; the function's output then holds
/// every record.
async fn terminate(env: &mut OrdersEnv) -> String {
    env.function.terminate();
    let exit = env.function.wait_exit(Duration::from_secs(5)).await.expect("the function exits");
    assert!(exit.success(), "a clean exit: {exit:?}");
    env.function.output()
}

#[tokio::test]
async fn with_json_selected_every_line_is_json_and_invocation_lines_carry_the_request() {
    let env = OrdersEnv::start(&[
        ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
        ("AWS_LAMBDA_LOG_LEVEL", "debug"),
        ("RUST_LOG", "debug"),
        // A record per invocation: among the lines that must be JSON, and
        // the sign that the second invocation is done.
        ("DB_METRICS_INTERVAL_MS", "0"),
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
    let mut env = OrdersEnv::start(&[
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
    // The records are aggregated: the window (60 s by default) has not
    // passed, and SIGTERM writes what is pending.
    let output = terminate(&mut env).await;
    let records = emf_records(&output);
    assert!(!records.is_empty() && records.len() <= 2, "one record for the window (two across a minute): {output}");
    let invocations = invocations as u64;
    for record in &records {
        check_emf_record(record, "Orders/Test");
        assert!(record.get("function_request_id").is_none(), "a record of several invocations names none: {record}");
    }
    assert_eq!(emf_sum(&records, "invocations"), invocations);
    assert_eq!(sum(&records, "ColdStart"), 1);
    assert_eq!(records[0]["ColdStart"], 1, "the first record is the cold start");
    assert_eq!(emf_duration(&records, "WarmupDuration").0, 2, "INIT's warmup and the refresh's");
    for name in ["QueryDuration", "CheckoutWait"] {
        assert_eq!(emf_duration(&records, name).0, invocations, "{name}: one value per invocation");
    }

    let server = Log::new(env.pg.read_log()).counts();
    assert_eq!(sum(&records, "HealthChecksRun"), server.health_checks as u64, "checks the server saw");
    assert_eq!(sum(&records, "HealthChecksRun"), 1);
    // Each invocation either ran the check or skipped it (the refreshed pool
    // had just proved itself).
    assert_eq!(sum(&records, "HealthChecksSkipped") + sum(&records, "HealthChecksRun"), invocations);
    assert_eq!(sum(&records, "PoolRefreshes"), 1);
    assert_eq!(sum(&records, "ConnectAttempts"), server.connections as u64, "connections the server saw");
    assert_eq!(sum(&records, "ConnectFailures"), 0);
    assert_eq!(sum(&records, "PoolRebuilds") + sum(&records, "PoolExhausted") + sum(&records, "RetryAttempts"), 0);
}

/// Waits until `function` is back at `/next` after the answer to
/// `request_id`, stops it there as Lambda freezes it, and checks that the
/// invocation's own record (`DB_METRICS_INTERVAL_MS=0`) is on stdout while
/// it is stopped: written after the answer, before the runtime asked for
/// more. Then lets it go on.
async fn record_before_the_next_poll(function: &Function, api: &RuntimeApi, request_id: &str) {
    function.freeze_at_next_poll(api).await;
    let needle = format!(r#""function_request_id":"{request_id}""#);
    let written = function.wait_for_output(&needle, Duration::from_secs(5)).await;
    function.thaw();
    assert!(written, "the record of {request_id} before the next poll:\n{}", function.output());
}

#[tokio::test]
async fn with_an_interval_of_zero_each_invocation_has_its_own_record() {
    let env = OrdersEnv::start(&[("DB_METRICS_INTERVAL_MS", "0")]).await;
    let mut request_ids = Vec::new();
    for event in [post_valid_order("tea", 1), get_order("1"), get_order("2")] {
        let done = env.api.invoke(event).await;
        assert!(matches!(status(done.response()), 201 | 200 | 404), "{:?}", done.outcome);
        record_before_the_next_poll(&env.function, &env.api, &done.request_id).await;
        request_ids.push(done.request_id);
    }
    let records = emf_records(&env.function.output());
    assert_eq!(records.len(), request_ids.len(), "one record per invocation");
    for (record, request_id) in records.iter().zip(&request_ids) {
        check_emf_record(record, "RuntimeAdapter");
        assert_eq!(record["function_request_id"], request_id.as_str(), "{record}");
        assert!(record.get("invocations").is_none(), "the request id says which: {record}");
        assert_eq!(emf_duration(std::slice::from_ref(record), "QueryDuration").0, 1, "{record}");
    }
    assert_eq!(records[0]["ColdStart"], 1);
    assert_eq!(sum(&records, "ColdStart"), 1);
}

/// A handler that panics after the gate: Lambda receives the panic's error
/// type, and the invocation still has its record, with its checkout, before
/// the next poll; so does the one after it, which runs a statement.
#[tokio::test]
async fn a_handler_that_panics_still_has_its_record_written_before_the_next_poll() {
    let pg = integration_tests::orders::postgres().await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let function = Function::builder(bin_path("panicking-handler"))
        .name(FUNCTION_NAME)
        .env("DATABASE_URL", pg.database_url())
        .env("DB_METRICS_INTERVAL_MS", "0")
        .spawn(&api);
    assert!(api.wait_next_polls(1, STARTUP).await, "never reached the runtime loop:\n{}", function.output());
    let events = [json!({ "panic": "order 42 has no customer" }), json!({}), json!({ "panic_static": true })];
    let mut request_ids = Vec::new();
    for event in events {
        let panics = event.get("panic").is_some() || event.get("panic_static").is_some();
        let done = api.invoke(event).await;
        let expected = panics.then_some(runtime_adapter::HANDLER_PANICKED);
        assert_eq!(done.outcome.error_type(), expected, "{:?}", done.outcome);
        record_before_the_next_poll(&function, &api, &done.request_id).await;
        request_ids.push(done.request_id);
    }
    let records = emf_records(&function.output());
    assert_eq!(records.len(), request_ids.len(), "one record per invocation");
    for ((record, request_id), statements) in records.iter().zip(&request_ids).zip([0, 1, 0]) {
        check_emf_record(record, "RuntimeAdapter");
        assert_eq!(record["function_request_id"], request_id.as_str(), "{record}");
        assert_eq!(emf_duration(std::slice::from_ref(record), "CheckoutWait").0, 1, "the gate ran: {record}");
        assert_eq!(emf_duration(std::slice::from_ref(record), "QueryDuration").0, statements, "{record}");
    }
}

/// No timer writes a record (a frozen environment would run none): a
/// window that passed while the function sat idle is taken by the next
/// invocation before its handler, stamped with its own time, and written
/// after that invocation's answer, before the function asks for the next
/// one; that invocation's activity waits for its own window, or for
/// SIGTERM.
#[tokio::test]
async fn a_passed_window_is_written_by_the_next_invocation_not_by_a_timer() {
    let mut env = OrdersEnv::start(&[("DB_METRICS_INTERVAL_MS", "1000")]).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    // Usually nothing yet (INIT alone if it fell in an earlier second than
    // the invocation's start; INIT and the invocation if its end fell in
    // the next second, written after the answer and before the next poll).
    assert!(env.api.wait_waiting_polls(1, Duration::from_secs(10)).await, "{}", env.function.output());
    let early = emf_records(&env.function.output()).len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(emf_records(&env.function.output()).len(), early, "nothing written while idle");

    let second_started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let second = env.api.invoke(get_order("1")).await;
    assert_eq!(status(second.response()), 200);
    env.function.freeze_at_next_poll(&env.api).await;
    let written = env.function.wait_for_output(r#""invocations":1"#, Duration::from_secs(5)).await;
    env.function.thaw();
    assert!(written, "the first invocation's window, before the next poll:\n{}", env.function.output());
    let records = emf_records(&env.function.output());
    assert_eq!(emf_sum(&records, "invocations"), 1, "the first invocation's window, written by now: {records:?}");
    assert_eq!(emf_duration(&records, "QueryDuration").0, 1, "the first's statement, not the second's");
    let first = records.iter().find(|r| r["invocations"] == 1).expect("the first invocation's record");
    let stamped = first["_aws"]["Timestamp"].as_u64().expect("timestamp");
    assert!(u128::from(stamped) < second_started.as_millis(), "stamped with its own time: {first}");

    let output = terminate(&mut env).await;
    let records = emf_records(&output);
    assert_eq!(emf_sum(&records, "invocations"), 2, "the second invocation's, at SIGTERM: {output}");
    assert_eq!(emf_duration(&records, "QueryDuration").0, 2);
    assert_eq!(sum(&records, "ColdStart"), 1);
}

/// K invocations, some at once, then SIGTERM: summed over every record, the
/// counters and the durations' counts are what happened, no metric has more
/// than 100 values in a record, and nothing is lost at shutdown. Also the
/// cost: log bytes and function CPU per invocation. `EMF_BYTES_BIN`
/// measures another build of `orders` the same way (an earlier commit's, a
/// release build), `EMF_BYTES_INTERVAL_MS` another `DB_METRICS_INTERVAL_MS`;
/// either skips the checks, which are for this build's defaults.
#[tokio::test]
async fn aggregated_records_are_exact_and_cost_a_few_bytes_per_invocation() {
    let pg = integration_tests::orders::postgres().await;
    pg.apply_sql_as_app(integration_tests::orders::MIGRATION).await;
    let bin = std::env::var("EMF_BYTES_BIN").ok();
    let interval = std::env::var("EMF_BYTES_INTERVAL_MS").ok();
    let concurrency = 4;
    let mut settings =
        vec![("AWS_LAMBDA_MAX_CONCURRENCY", "4"), ("AWS_LAMBDA_LOG_LEVEL", "warn"), ("RUST_LOG", "warn")];
    if let Some(interval) = &interval {
        settings.push(("DB_METRICS_INTERVAL_MS", interval.as_str()));
    }
    let mut env = match &bin {
        Some(path) => {
            let api = integration_tests::RuntimeApi::start_for(FUNCTION_NAME).await;
            let mut builder =
                integration_tests::Function::builder(path).name(FUNCTION_NAME).env("DATABASE_URL", pg.database_url());
            for (key, value) in &settings {
                builder = builder.env(key, value);
            }
            let function = builder.spawn(&api);
            assert!(api.wait_next_polls(1, Duration::from_secs(30)).await, "{}", function.output());
            OrdersEnv { pg, api, function }
        }
        None => OrdersEnv::start_with(pg, &settings).await,
    };
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    let cpu_before = cpu_time(env.function.pid());
    let started = Instant::now();
    let warm: u64 = 1000;
    let api = Arc::new(env.api);
    let senders: Vec<_> = (0..concurrency)
        .map(|sender| {
            let api = api.clone();
            tokio::spawn(async move {
                for n in (sender..warm).step_by(concurrency as usize) {
                    let event = if n % 10 == 0 { post_valid_order("tea", 1) } else { get_order("1") };
                    let done = api.invoke(event).await;
                    assert!(matches!(status(done.response()), 200 | 201), "{:?}", done.outcome);
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }
    let took = started.elapsed();
    let cpu = cpu_time(env.function.pid()) - cpu_before;
    env.api = Arc::into_inner(api).expect("the senders are done");
    let invocations = warm + 1;
    let output = terminate(&mut env).await;
    let records = emf_records(&output);
    let bytes = emf_bytes(&output);
    eprintln!(
        "measured: {} ({}): {invocations} invocations (concurrency {concurrency}) in {took:?}, {} EMF records, {bytes} bytes: {:.1} bytes per invocation; function CPU {:.1} µs per warm invocation",
        bin.as_deref().unwrap_or("orders from this build"),
        interval.as_deref().map_or("default settings".to_owned(), |ms| format!("DB_METRICS_INTERVAL_MS={ms}")),
        records.len(),
        bytes as f64 / invocations as f64,
        cpu.as_secs_f64() * 1e6 / warm as f64,
    );
    if bin.is_some() || interval.is_some() {
        return;
    }
    for record in &records {
        check_emf_record(record, "RuntimeAdapter");
    }
    let server = Log::new(env.pg.read_log()).counts();
    assert_eq!(emf_sum(&records, "invocations"), invocations, "every invocation, in some record");
    assert_eq!(sum(&records, "ColdStart"), 1);
    assert_eq!(emf_duration(&records, "QueryDuration").0, invocations, "one statement per invocation");
    assert_eq!(emf_duration(&records, "CheckoutWait").0, invocations, "one checkout per invocation");
    assert_eq!(emf_duration(&records, "WarmupDuration").0, 1, "INIT's");
    assert_eq!(sum(&records, "HealthChecksSkipped") + sum(&records, "HealthChecksRun"), invocations);
    assert_eq!(sum(&records, "HealthChecksRun"), server.health_checks as u64, "checks the server saw");
    assert_eq!(sum(&records, "ConnectAttempts"), server.connections as u64, "connections the server saw");
    assert_eq!(sum(&records, "RetryAttempts") + sum(&records, "ConnectFailures"), 0);
    let queries: f64 = records.iter().flat_map(|r| emf_values(r, "QueryDuration")).map(|(v, n)| v * n as f64).sum();
    assert!(queries > 0.0, "the statements' durations sum to something");
    assert!(
        bytes as f64 / (invocations as f64) < 100.0,
        "a record per window or per 100 values, not per invocation: {bytes} bytes"
    );
}

/// The CPU time the process's live threads have used so far (the first
/// field of each `/proc/PID/task/*/schedstat`, in nanoseconds).
fn cpu_time(pid: u32) -> Duration {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task");
    let nanos = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
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
    let records = emf_records(&output);
    assert_eq!(emf_sum(&records, "invocations"), 1, "the invocation's activity, written at SIGTERM: {output}");
    assert_eq!(emf_duration(&records, "QueryDuration").0, 1, "{output}");
    assert_eq!(sum(&records, "ColdStart"), 1, "{output}");
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
