//! The warm path: one connection per environment, reused across invocations,
//! one statement per single-query invocation, no health check or prepare
//! inside the interval, and a warmup at INIT that prepared everything.

use integration_tests::orders::{get_order, post_valid_order, status, OrdersEnv};
use integration_tests::server_log::{Counts, Log};

#[tokio::test]
async fn one_connection_serves_many_invocations_with_one_statement_each() {
    let env = OrdersEnv::start(&[]).await;

    // INIT: one connection, phase 1 then phase 2 (both statements parsed),
    // all before the first poll for an event.
    let init = Log::new(env.pg.read_log());
    let init_counts = init.counts();
    assert_eq!(init_counts.connections, 1, "one connection at INIT:\n{}", init.text());
    assert_eq!(init_counts.warmup_round_trips, 1, "phase 1 ran once:\n{}", init.text());
    assert_eq!(init_counts.parses, 2, "phase 2 prepared both statements:\n{}", init.text());

    let mark = env.pg.log_mark();
    let created = env.api.invoke(post_valid_order("tea", 3)).await;
    assert_eq!(status(created.response()), 201, "{:?}", created.outcome);
    let invocations = 20;
    for _ in 1..invocations {
        let found = env.api.invoke(get_order("1")).await;
        assert_eq!(status(found.response()), 200, "{:?}", found.outcome);
    }

    let warm = Log::new(env.pg.log_since(mark));
    let Counts { connections, disconnections, parses, executes, statements, health_checks, warmup_round_trips, .. } =
        warm.counts();
    assert_eq!(connections, 0, "no new connection on the warm path:\n{}", warm.text());
    assert_eq!(disconnections, 0, "no connection closed on the warm path:\n{}", warm.text());
    assert_eq!(parses, 0, "no prepare on the warm path (phase 2 did it):\n{}", warm.text());
    assert_eq!(health_checks, 0, "no health check inside the interval:\n{}", warm.text());
    assert_eq!(warmup_round_trips, 0, "no warmup on the warm path:\n{}", warm.text());
    assert_eq!(executes, invocations, "one statement per invocation:\n{}", warm.text());
    assert_eq!(statements, invocations, "nothing else either (no BEGIN, SET, ROLLBACK…):\n{}", warm.text());
    assert_eq!(env.pg.connection_count("orders").await, 1);
}
