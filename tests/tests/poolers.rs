//! Behind a real PgBouncer in transaction mode: several environments share
//! two server connections with no prepared-statement errors in
//! `DB_POOLER_MODE=transaction`, the same workload breaks in `none` mode,
//! and warmup, health checks, refreshes and a 10,000-invocation load all
//! work through it.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::inproc::{adapter, context};
use integration_tests::orders::{
    emf_duration, emf_records, emf_sum, emf_values, get_order, orders_function, post_valid_order, postgres, status,
    FUNCTION_NAME, MIGRATION, STARTUP,
};
use integration_tests::pgbouncer::PgBouncer;
use integration_tests::server_log::Log;
use integration_tests::{FaultProxy, InvokeOptions, RuntimeApi};
use runtime_adapter::tokio_postgres::error::SqlState;
use runtime_adapter::{Adapter, Error};
use tokio::time::Instant;

const GET_ORDER: &str = "SELECT id, item, quantity, created_at FROM orders WHERE id = $1";
const INSERT_ORDER: &str = "INSERT INTO orders (item, quantity) VALUES ($1, $2) RETURNING id";

/// Environments, each with its own pool, sharing the pooler's two server
/// connections.
const ENVIRONMENTS: usize = 4;
const ROUNDS: usize = 25;

/// One environment's share of a mixed workload: writes, reads, and
/// transactions, each on a fresh invocation handle.
async fn workload(adapter: Adapter, label: usize) -> Result<usize, Error> {
    let mut written = 0;
    for round in 0..ROUNDS {
        let db = adapter.db(&context(Duration::from_secs(30))).await?;
        let item = format!("env{label}-{round}");
        let id: i64 = db.query_one(INSERT_ORDER, &[&item, &1i32]).await?.get(0);
        let row = db.idempotent().query_opt(GET_ORDER, &[&id]).await?;
        assert!(row.is_some(), "read back order {id}");
        db.transaction(|tx| {
            let item = item.clone();
            async move {
                tx.query_one(INSERT_ORDER, &[&format!("{item}-tx"), &2i32]).await?;
                tx.execute("UPDATE orders SET quantity = quantity + 1 WHERE id = $1", &[&id]).await
            }
        })
        .await?;
        written += 2;
    }
    Ok(written)
}

async fn run_environments(url: &str, mode: &str) -> Vec<Result<usize, Error>> {
    let env = [("DB_POOLER_MODE", mode), ("DB_POOL_SIZE", "2")];
    let mut adapters = Vec::new();
    for _ in 0..ENVIRONMENTS {
        match integration_tests::inproc::try_adapter(url, &env, &[GET_ORDER, INSERT_ORDER]).await {
            Ok(adapter) => adapters.push(adapter),
            Err(error) => return vec![Err(error)],
        }
    }
    let tasks: Vec<_> =
        adapters.into_iter().enumerate().map(|(label, adapter)| tokio::spawn(workload(adapter, label))).collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("workload task"));
    }
    results
}

fn is_prepared_statement_error(error: &Error) -> bool {
    let text = format!("{error}");
    matches!(error.code(), Some(code) if *code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::DUPLICATE_PSTATEMENT)
        || text.contains("prepared statement")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_mode_shares_two_server_connections_without_prepared_statement_errors() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let bouncer = PgBouncer::start(&pg, "transaction", 2).await;
    // Counts the connections the environments open to the pooler.
    let proxy = FaultProxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], bouncer.port()))).await;

    let results = run_environments(&proxy.url_for(&bouncer.database_url()), "transaction").await;
    for result in &results {
        assert!(result.is_ok(), "no errors in transaction mode: {result:?}");
    }
    // What is committed, row by row: each autocommit write once, each
    // transaction's insert once and its update applied (quantity 1 + 1).
    let client = pg.app_client().await;
    let rows = client.query("SELECT item, quantity FROM orders ORDER BY item", &[]).await.expect("orders");
    let committed: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected: Vec<(String, i32)> = (0..ENVIRONMENTS)
        .flat_map(|e| (0..ROUNDS).flat_map(move |r| [(format!("env{e}-{r}"), 2), (format!("env{e}-{r}-tx"), 2)]))
        .collect();
    expected.sort();
    assert_eq!(committed, expected, "every write committed once, every transaction whole");
    // The adapter's own bound: each environment opened its pool of 2 and
    // nothing more (the server side is the pooler's business).
    assert_eq!(proxy.accepted(), ENVIRONMENTS * 2, "DB_POOL_SIZE connections per environment, no reconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_behind_the_same_pooler_breaks_on_prepared_statements() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let bouncer = PgBouncer::start(&pg, "transaction", 2).await;

    let results = run_environments(&bouncer.database_url(), "none").await;
    let errors: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!errors.is_empty(), "named statements cannot survive transaction pooling");
    assert!(errors.iter().any(|e| is_prepared_statement_error(e)), "the failure transaction mode prevents: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_health_checks_and_refreshes_work_through_the_pooler() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let bouncer = PgBouncer::start(&pg, "transaction", 2).await;
    let adapter = adapter(
        &bouncer.database_url(),
        // A max age far enough from the interval that a slow phase on a
        // loaded machine cannot turn the expected check into a refresh.
        &[("DB_POOLER_MODE", "transaction"), ("DB_HEALTH_CHECK_INTERVAL_MS", "300"), ("DB_MAX_AGE_MS", "3000")],
        &[GET_ORDER, INSERT_ORDER],
    )
    .await;
    assert!(adapter.is_warm(), "warmed through the pooler");

    let mut phases = Vec::new();
    for pause_ms in [0, 400, 3100] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
        let id: i64 = db.query_one(INSERT_ORDER, &[&"tea", &1i32]).await.expect("insert").get(0);
        assert!(db.query_opt(GET_ORDER, &[&id]).await.expect("read").is_some());
        phases.push(adapter.stats());
    }
    assert_eq!(phases[0].health_checks_run, 0);
    assert_eq!(phases[1].health_checks_run, 1, "a check after the interval");
    assert_eq!(phases[2].refreshes_max_age, 1, "a refresh after the max age");
    assert_eq!(phases[2].warmups, 2);
    assert_eq!(phases[2].connect_failures, 0);

    // A schema problem still fails the warmup behind the pooler.
    let error = integration_tests::inproc::try_adapter(
        &bouncer.database_url(),
        &[("DB_POOLER_MODE", "transaction")],
        &["SELECT nope FROM orders"],
    )
    .await
    .expect_err("missing column");
    assert!(error.to_string().contains(r#"column "nope" does not exist"#), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_invocations_from_64_senders_through_the_pooler() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let bouncer = PgBouncer::start(&pg, "transaction", 4).await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let interval_ms = 1000;
    let pool_timeout_ms = 10_000;
    let mut function = orders_function(
        &pg,
        &[
            ("DATABASE_URL", &bouncer.database_url()),
            ("DB_POOLER_MODE", "transaction"),
            ("AWS_LAMBDA_MAX_CONCURRENCY", "16"),
            ("DB_HEALTH_CHECK_INTERVAL_MS", &interval_ms.to_string()),
            ("DB_POOL_TIMEOUT_MS", &pool_timeout_ms.to_string()),
            ("AWS_LAMBDA_LOG_LEVEL", "warn"),
            ("RUST_LOG", "warn"),
        ],
    )
    .spawn(&api);
    assert!(api.wait_next_polls(16, STARTUP).await, "{}", function.output());
    assert_eq!(status(api.invoke(post_valid_order("tea", 1)).await.response()), 201);

    let api = Arc::new(api);
    let bursts = 4;
    let per_burst = 2500;
    let senders = 64;
    let mut elapsed = Duration::ZERO;
    let mark = pg.log_mark();
    for _ in 0..bursts {
        // Longer than the interval: the next burst must check exactly once.
        tokio::time::sleep(Duration::from_millis(interval_ms + 200)).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..senders)
            .map(|sender| {
                let api = api.clone();
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    for n in (sender..per_burst).step_by(senders) {
                        let event = if n % 10 == 0 { post_valid_order("tea", 1) } else { get_order("1") };
                        let done = api.invoke_with(event, InvokeOptions::default()).await;
                        let ok = !done.outcome.is_error() && matches!(status(done.response()), 200 | 201);
                        if !ok {
                            failures.push(format!("{:?}", done.outcome));
                        }
                    }
                    failures
                })
            })
            .collect();
        for task in tasks {
            let failures = task.await.expect("sender");
            assert!(failures.is_empty(), "zero errors: {failures:?}");
        }
        elapsed += started.elapsed();
    }
    let total = bursts * per_burst;
    let throughput = total as f64 / elapsed.as_secs_f64();
    eprintln!("measured: {total} invocations, 64 senders, concurrency 16, through PgBouncer: {throughput:.0}/s");

    // SIGTERM writes what the aggregated records still held.
    function.terminate();
    assert!(function.wait_exit(Duration::from_secs(5)).await.is_some_and(|s| s.success()), "a clean exit");
    let records = emf_records(&function.output());
    let invocations = total as u64 + 1;
    assert_eq!(emf_sum(&records, "invocations"), invocations, "every invocation in some record");
    assert_eq!(emf_duration(&records, "CheckoutWait").0, invocations, "every checkout's wait, once");
    eprintln!("measured: {} EMF records for {invocations} invocations", records.len());
    let checks = emf_sum(&records, "HealthChecksRun");
    assert_eq!(checks, bursts as u64, "exactly one health check each time the interval expired");
    let slowest_wait =
        records.iter().flat_map(|r| emf_values(r, "CheckoutWait")).map(|(wait, _)| wait).fold(0.0, f64::max);
    // A pool as large as the concurrency: the only wait is behind the one
    // health check after the interval, itself bounded by its timeout.
    let check_timeout_ms = runtime_adapter::Config::default().health_check_timeout.as_millis() as f64;
    assert!(slowest_wait < check_timeout_ms, "no wait beyond one health check: {slowest_wait} ms");
    eprintln!("measured: slowest checkout wait {slowest_wait:.1} ms");
    let server_checks = Log::new(pg.log_since(mark)).counts().health_checks;
    assert_eq!(server_checks, bursts, "the server saw exactly the checks reported");
}

#[tokio::test]
async fn a_pooler_out_of_client_slots_at_init_is_waited_out_instead_of_failing_init() {
    let pg = postgres().await;
    let bouncer = PgBouncer::start_with(&pg, "transaction", 2, &[("max_client_conn", "2")]).await;
    // Other clients take every client slot (the harness may hold one).
    let mut holders = Vec::new();
    loop {
        match runtime_adapter::tokio_postgres::connect(&bouncer.database_url(), runtime_adapter::tokio_postgres::NoTls)
            .await
        {
            Ok((client, connection)) => holders.push((client, tokio::spawn(connection))),
            Err(error) => {
                assert_eq!(error.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{error}");
                break;
            }
        }
        assert!(holders.len() <= 2, "max_client_conn is 2");
    }

    // PgBouncer refuses the next with 08P01 "no more connections allowed
    // (max_client_conn)": out of slots, which passes, not a protocol error.
    let env = [("DB_POOLER_MODE", "transaction"), ("DB_WARMUP_ATTEMPTS", "1")];
    let adapter = integration_tests::inproc::try_adapter(&bouncer.database_url(), &env, &[])
        .await
        .expect("INIT goes on unwarmed instead of failing");
    assert!(!adapter.is_warm());
    assert_eq!(adapter.stats().pool_exhausted, 1, "counted as the pooler's connection limit");
    assert!(bouncer.log().contains("no more connections allowed"), "{}", bouncer.log());

    // While it is taken, an invocation gets the pooler's limit, named with
    // its knob, after the adapter's one wait.
    let error = adapter.db(&context(Duration::from_secs(20))).await.expect_err("no slot");
    assert_eq!(error.error_type(), "RuntimeAdapter.ConnectionLimit", "{error}");
    assert!(error.to_string().contains("max_client_conn"), "{error}");

    // Once the slot is free the next invocation warms the pool.
    for (client, driver) in holders {
        drop(client);
        driver.await.expect("driver").expect("the holder closed cleanly");
    }
    let db = adapter.db(&context(Duration::from_secs(20))).await.expect("warmed by the first invocation");
    let one: i32 = db.query_one("SELECT 1", &[]).await.expect("a round trip").get(0);
    assert_eq!(one, 1);
}
