//! Max-age refresh: past `DB_MAX_AGE_MS` the next invocation gets a freshly
//! built and warmed pool, and the old connection is closed cleanly.

use std::time::Duration;

use integration_tests::orders::{
    get_order, post_valid_order, postgres_watching_closes, status, OrdersEnv, FUNCTION_NAME,
};
use integration_tests::server_log::Log;

#[tokio::test]
async fn after_max_age_a_new_warmed_connection_replaces_the_old_one_which_closes_cleanly() {
    let max_age_ms = 1500;
    let pg = postgres_watching_closes().await;
    let env = OrdersEnv::start_with(
        pg,
        &[("DB_MAX_AGE_MS", &max_age_ms.to_string()), ("DB_HEALTH_CHECK_INTERVAL_MS", "1000")],
    )
    .await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    let old = env.pg.backend_pids(FUNCTION_NAME).await;
    assert_eq!(old.len(), 1);

    tokio::time::sleep(Duration::from_millis(max_age_ms + 100)).await;
    let mark = env.pg.log_mark();
    let found = env.api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 200, "the refreshing invocation succeeds: {:?}", found.outcome);

    let disconnected = env
        .pg
        .wait_for_log(mark, &format!("[{}] {FUNCTION_NAME} LOG:  disconnection", old[0]), Duration::from_secs(5))
        .await;
    assert!(disconnected, "the old connection closed:\n{}", env.pg.log_since(mark));

    let log = Log::new(env.pg.log_since(mark));
    let pids = log.function_pids();
    let new: Vec<i32> = pids.iter().copied().filter(|pid| *pid != old[0]).collect();
    assert_eq!(new.len(), 1, "one new connection:\n{}", log.text());
    let fresh = log.for_pid(new[0]).counts();
    assert_eq!(
        (fresh.connections, fresh.warmup_round_trips, fresh.parses, fresh.executes),
        (1, 1, 2, 1),
        "{}",
        log.text()
    );
    assert_eq!(fresh.health_checks, 0, "a fresh pool needs no check");
    assert_eq!(fresh.statements, 2, "phase 1's round trip and the handler's statement, nothing else:\n{}", log.text());
    let closed = log.for_pid(old[0]).counts();
    assert_eq!(closed.disconnections, 1);
    assert_eq!(closed.unclean_closes, 0, "Terminate was sent:\n{}", log.for_pid(old[0]).text());
    assert_eq!(closed.executes, 0, "the old connection served nothing after the refresh");
    assert_eq!(env.pg.backend_pids(FUNCTION_NAME).await, new);
}
