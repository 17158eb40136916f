//! A small Lambda fleet against one PostgreSQL (issue 19): real `orders`
//! environments, frozen between invocations, a burst past the concurrency
//! limit, reaping by SIGTERM and SIGKILL mid-run. Checked against the
//! server's own record: the committed rows, the sessions it logged, how each
//! of them ended. `FLEET_SEED` repeats a run; the seed is printed.

use std::collections::BTreeMap;
use std::time::Duration;

use integration_tests::bin_path;
use integration_tests::fleet::{
    self, closes_by_application, order_item, peak_sessions_in_log, Answer, Ending, FleetConfig, Phase, Schedule,
    Server, Workload,
};
use integration_tests::orders::{postgres_watching_closes, ORDERS_BIN};

const LIMIT: usize = 8;
const POOL_SIZE: usize = 1;
const PREFIX: &str = "fleet-test-e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_loses_nothing_stays_within_its_budget_and_closes_with_terminate() {
    let seed = std::env::var("FLEET_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("fleet test: seed {seed} (FLEET_SEED={seed} repeats it)");
    let pg = postgres_watching_closes().await;
    pg.apply_sql_as_app("INSERT INTO orders (item, quantity) VALUES ('the first order', 1)").await;
    let logs = tempfile::tempdir().expect("a temp dir for the functions' logs");
    let s = Duration::from_secs;
    let schedule = Schedule {
        phases: vec![
            Phase::steady("steady", s(2), 10.0),
            // More at the same instant than the limit: some are throttled
            // however fast the environments answer (spread over 20 ms, 12
            // arrivals could all be served by 7 environments on a quiet
            // machine).
            Phase::burst("burst", s(3), 20, Duration::ZERO, 4.0),
            Phase::steady("quiet", s(3), 0.0),
            Phase::steady("steady again", s(2), 10.0),
        ],
        max_arrivals: 200,
    };
    let config = FleetConfig {
        label: "test".to_owned(),
        program: bin_path(ORDERS_BIN),
        database_url: pg.database_url(),
        app_prefix: PREFIX.to_owned(),
        vars: vec![("DB_POOL_SIZE".to_owned(), POOL_SIZE.to_string())],
        concurrency_limit: LIMIT,
        reap_after: Duration::from_millis(1500),
        kill_share: 0.3,
        lose_share: 0.0,
        function_timeout: s(10),
        schedule,
        seed,
        workload: Workload::Orders { write_share: 0.5 },
        log_dir: logs.path().to_owned(),
    };
    let report = fleet::run(config, Server { pg: &pg, bouncer_port: None }, Vec::new()).await;
    let summary = report.summary();
    eprintln!("measured: {summary:?}");

    // Nothing failed but the throttles, nothing hung.
    let failures: Vec<_> =
        report.records.iter().filter(|r| !r.answer.is_success() && r.answer != Answer::Throttled).collect();
    assert!(failures.is_empty(), "failed invocations: {failures:?}");
    assert!(summary.throttled > 0, "the burst went past the limit of {LIMIT}: {summary:?}");
    assert!(summary.peak_envs <= LIMIT, "never more environments than the limit: {summary:?}");

    // Nothing lost: every accepted write is committed exactly once, with its
    // id, and nothing else was written.
    let accepted: BTreeMap<i64, String> = report
        .records
        .iter()
        .filter_map(|r| match &r.answer {
            Answer::Response { status: 201, body } => {
                let order = integration_tests::orders::body(body);
                Some((order["id"].as_i64().expect("an id"), order["item"].as_str().expect("an item").to_owned()))
            }
            _ => None,
        })
        .collect();
    assert!(accepted.len() >= 10, "enough writes to mean something: {}", accepted.len());
    for item in accepted.values() {
        let index: usize = item.rsplit('-').next().and_then(|i| i.parse().ok()).expect("fleet-<seed>-<index>");
        assert_eq!(item, &order_item(seed, index));
    }
    let rows: BTreeMap<i64, String> = pg
        .app_client()
        .await
        .query("SELECT id, item FROM orders WHERE item LIKE 'fleet-%' ORDER BY id", &[])
        .await
        .expect("read the orders")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, accepted, "the committed rows are exactly the accepted writes");

    // No connection above the budget: the server's own log, replayed.
    let log = pg.read_log();
    let peak = peak_sessions_in_log(&log);
    assert!(peak <= LIMIT * POOL_SIZE, "at most {} sessions of app at once; the server had {peak}", LIMIT * POOL_SIZE);
    assert!(summary.peak_server_connections <= (LIMIT * POOL_SIZE) as i64, "{summary:?}");

    // Every environment that got SIGTERM closed its connections with Terminate.
    let closes = closes_by_application(&log, PREFIX);
    let terminated: Vec<_> =
        report.environments.iter().filter(|e| matches!(e.ended, Some((_, Ending::Terminated { .. })))).collect();
    let reaped_mid_run = terminated.iter().filter(|e| e.ended.is_some_and(|(at, _)| at < report.marks[3].from)).count();
    assert!(reaped_mid_run > 0, "the quiet spell reaped environments with SIGTERM: {:?}", report.environments);
    for env in &terminated {
        assert!(matches!(env.ended, Some((_, Ending::Terminated { clean: true, .. }))), "exited 0 in time: {env:?}");
        let c = closes.get(&env.application_name).copied().unwrap_or_default();
        assert!(c.backends >= POOL_SIZE, "{} had its connection: {c:?}", env.application_name);
        assert_eq!(c.disconnections, c.backends, "{} closed every session: {c:?}", env.application_name);
        assert_eq!(c.unclean, 0, "{} sent Terminate on every session: {c:?}", env.application_name);
    }
    // The same reading does see a client that leaves without Terminate.
    let killed: Vec<_> = report.environments.iter().filter(|e| matches!(e.ended, Some((_, Ending::Killed)))).collect();
    eprintln!(
        "measured: {} environments SIGTERMed ({reaped_mid_run} mid-run), {} SIGKILLed",
        terminated.len(),
        killed.len()
    );
    for env in &killed {
        let name = &env.application_name;
        let tag = format!("] {name} DEBUG:  unexpected EOF on client connection");
        assert!(pg.wait_for_log(0, &tag, Duration::from_secs(5)).await, "{name}, SIGKILLed, left without Terminate");
    }
}
