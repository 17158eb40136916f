//! SnapStart: the pool is warmed at INIT (publish), closed cleanly before
//! the snapshot, and rebuilt and re-warmed after each restore before the
//! first invocation; a failing restore is survived or reported.

use std::time::Duration;

use integration_tests::orders::{
    emf_duration, emf_records, emf_sum, get_order, orders_function, post_valid_order, postgres_watching_closes, status,
    FUNCTION_NAME, STARTUP,
};
use integration_tests::server_log::Log;
use integration_tests::{FaultProxy, Function, Postgres, RuntimeApi};
use tokio::time::Instant;

const SNAP_START: (&str, &str) = ("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start");

/// Starts `orders` under SnapStart and waits until it sits at the snapshot
/// point (`/restore/next`).
async fn at_snapshot(pg: &Postgres, env: &[(&str, &str)]) -> (RuntimeApi, Function) {
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let mut all = vec![SNAP_START];
    all.extend_from_slice(env);
    let function = orders_function(pg, &all).spawn(&api);
    assert!(api.wait_restore_polls(1, STARTUP).await, "reached the snapshot point: {}", function.output());
    assert_eq!(api.next_polls(), 0, "no invocation before the restore");
    (api, function)
}

#[tokio::test]
async fn the_pool_is_closed_before_the_snapshot_and_rewarmed_before_the_first_invocation() {
    let pg = postgres_watching_closes().await;
    let (api, mut function) = at_snapshot(&pg, &[("AWS_LAMBDA_MAX_CONCURRENCY", "2")]).await;

    // INIT warmed as usual (both phases), then closed everything cleanly.
    let init = Log::new(pg.read_log());
    let init_pids = init.function_pids();
    assert_eq!(init_pids.len(), 2, "INIT warmed a pool of two:\n{}", init.text());
    assert_eq!(init.counts().parses, 4, "phase 2 ran at INIT on both connections");
    let closed = async {
        while pg.connection_count(FUNCTION_NAME).await > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), closed).await.is_err() {
        panic!("connections remain at the snapshot point:\n{}\n{}", function.output(), pg.read_log());
    }
    for pid in &init_pids {
        let lines = Log::new(pg.read_log()).for_pid(*pid);
        assert_eq!(lines.counts().disconnections, 1, "{}", lines.text());
        assert_eq!(lines.counts().unclean_closes, 0, "backend {pid} got Terminate:\n{}", lines.text());
    }

    let mark = pg.log_mark();
    let restored = Instant::now();
    api.restore();
    assert!(api.wait_next_polls(1, STARTUP).await, "polling after restore: {}", function.output());
    let rewarmed = Log::new(pg.log_since(mark));
    let new_pids = rewarmed.function_pids();
    assert_eq!(new_pids.len(), 2, "re-warmed before the first poll:\n{}", rewarmed.text());
    assert!(new_pids.iter().all(|pid| !init_pids.contains(pid)));
    assert_eq!((rewarmed.counts().warmup_round_trips, rewarmed.counts().parses), (2, 4), "both phases again");

    let mark = pg.log_mark();
    let created = api.invoke(post_valid_order("tea", 1)).await;
    assert_eq!(status(created.response()), 201, "{:?}", created.outcome);
    let first = Log::new(pg.log_since(mark)).counts();
    assert_eq!((first.connections, first.parses), (0, 0), "the first invocation opens nothing and prepares nothing");
    eprintln!("measured: restore to first answer {:?}", restored.elapsed());
    assert!(emf_records(&function.output()).is_empty(), "the publish wrote no metrics: INIT's were dropped");
    for _ in 0..4 {
        assert_eq!(status(api.invoke(get_order("1")).await.response()), 200);
    }

    // SIGTERM writes what the aggregated records held: the restored
    // environment's activity alone, nothing from before the snapshot (which
    // every restored copy would otherwise report again).
    function.terminate();
    assert!(function.wait_exit(Duration::from_secs(5)).await.is_some_and(|s| s.success()), "a clean exit");
    let records = emf_records(&function.output());
    assert_eq!(emf_sum(&records, "invocations"), 5, "{records:?}");
    assert_eq!(emf_sum(&records, "ColdStart"), 1, "the restored environment's cold start");
    assert_eq!(emf_duration(&records, "WarmupDuration").0, 1, "the restore's warmup, not INIT's: {records:?}");
    assert_eq!(emf_sum(&records, "ConnectAttempts"), 2, "the restore's two connections, not INIT's: {records:?}");
    assert_eq!(emf_duration(&records, "QueryDuration").0, 5);
}

#[tokio::test]
async fn a_database_unreachable_at_restore_defers_the_warmup_to_the_first_invocation() {
    let pg = postgres_watching_closes().await;
    let (api, function) = at_snapshot(&pg, &[("DB_WARMUP_ATTEMPTS", "2"), ("DB_WARMUP_RETRY_DELAY_MS", "100")]).await;
    pg.stop().await;
    api.restore();
    assert!(api.wait_next_polls(1, STARTUP).await, "no crash: the runtime polls: {}", function.output());
    assert!(api.restore_errors().is_empty(), "a transient failure is not a restore error");

    pg.start_again().await;
    let found = api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 404, "the first invocation warms the pool: {:?}", found.outcome);
}

/// How long re-warming after a restore may take before it defers to the
/// first invocation (the adapter's budget), and what this machine may add.
const RESTORE_BUDGET: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_database_black_holed_at_restore_is_given_up_on_well_within_the_hook_limit() {
    let pg = postgres_watching_closes().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let url = proxy.url_for(&pg.database_url());
    // The defaults: three warmup attempts, each connect bounded by 5 s.
    let (api, function) = at_snapshot(&pg, &[("DATABASE_URL", url.as_str())]).await;
    // Connections are accepted and never answered, as through a route that
    // went dark while the snapshot waited.
    proxy.black_hole_new(true);
    let restored = Instant::now();
    api.restore();
    assert!(api.wait_next_polls(1, STARTUP).await, "the runtime polls: {}", function.output());
    let took = restored.elapsed();
    eprintln!("measured: restore hook against a black-holed database: {took:?} (budget {RESTORE_BUDGET:?}, Lambda's limit 10 s)");
    assert!(proxy.accepted() >= 2, "re-warming tried to connect after the restore");
    assert!(api.restore_errors().is_empty(), "deferred, not failed: {}", function.output());
    assert!(took < RESTORE_BUDGET + SLACK, "{took:?}: past the restore budget");

    proxy.black_hole_new(false);
    proxy.release_silenced();
    let found = api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 404, "the first invocation warms the pool: {:?}", found.outcome);
}

#[tokio::test]
async fn a_permanent_failure_at_restore_is_reported_with_its_cause() {
    let pg = postgres_watching_closes().await;
    let (api, mut function) = at_snapshot(&pg, &[]).await;
    // The schema changed while the snapshot waited.
    pg.apply_sql_as_app("ALTER TABLE orders RENAME COLUMN quantity TO amount").await;
    api.restore();
    let exit = function.wait_exit(STARTUP).await.expect("the function exits after a restore error");
    assert!(!exit.success());
    let errors = api.restore_errors();
    assert_eq!(errors.len(), 1, "reported through /restore/error: {}", function.output());
    let message = errors[0].error_message().expect("a message").to_owned();
    assert!(message.contains(r#"column "quantity" does not exist"#), "{message}");
    assert_eq!(api.next_polls(), 0, "the handler never ran");
}

#[tokio::test]
async fn without_snapstart_nothing_changes() {
    let pg = postgres_watching_closes().await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let function = orders_function(&pg, &[]).spawn(&api);
    assert!(api.wait_next_polls(1, STARTUP).await, "{}", function.output());
    assert_eq!(api.restore_polls(), 0, "no restore lifecycle");
    assert_eq!(pg.connection_count(FUNCTION_NAME).await, 1, "the INIT pool stays open");
}

#[tokio::test]
async fn a_server_restarted_during_the_snapshot_does_not_matter() {
    let pg = postgres_watching_closes().await;
    let (api, function) = at_snapshot(&pg, &[]).await;
    pg.restart().await;
    api.restore();
    assert!(api.wait_next_polls(1, STARTUP).await, "{}", function.output());
    let mark = pg.log_mark();
    let created = api.invoke(post_valid_order("tea", 1)).await;
    assert_eq!(status(created.response()), 201, "{:?}", created.outcome);
    let first = Log::new(pg.log_since(mark)).counts();
    assert_eq!((first.connections, first.parses), (0, 0), "warmed after restore, before the first invocation");
}

#[tokio::test]
async fn a_missing_table_fails_the_publish_init_with_its_name() {
    let pg = Postgres::start().await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let error = orders_function(&pg, &[SNAP_START]).spawn(&api).expect_init_error(&api, STARTUP).await;
    let message = error.error_message().expect("a message");
    assert!(message.contains(r#"relation "orders" does not exist"#), "{message}");
    assert_eq!(api.restore_polls(), 0, "no snapshot of a failed INIT");
}
