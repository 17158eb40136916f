//! Max-age refresh: past `DB_MAX_AGE_MS` the next invocation starts
//! building a replacement beside the pool and is served by the old one; the
//! replacement, warmed, takes over and the old connection is closed cleanly.
//! No invocation waits for it, unless it is not built a tenth of the maximum
//! age later (the synchronous fallback); a build that a freeze cut is tried
//! again, not reported. The build starts once the invocation that found the
//! pool past its age has answered, and the runtime asks for the next
//! invocation (when Lambda freezes the environment) only once it is in
//! place, or a bounded wait later.

use std::time::{Duration, Instant};

use integration_tests::orders::{
    get_order, post_valid_order, postgres, postgres_watching_closes, status, OrdersEnv, FUNCTION_NAME, ORDERS_BIN,
};
use integration_tests::server_log::Log;
use integration_tests::{FaultProxy, Postgres};

#[tokio::test]
async fn after_max_age_a_new_warmed_connection_replaces_the_old_one_which_closes_cleanly() {
    // Lifetime 2.7–3 s; the grace a tenth of the max age, 300 ms.
    let max_age_ms = 3000;
    let pg = postgres_watching_closes().await;
    let env = OrdersEnv::start_with(
        pg,
        &[("DB_MAX_AGE_MS", &max_age_ms.to_string()), ("DB_HEALTH_CHECK_INTERVAL_MS", "2500")],
    )
    .await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    let old = env.pg.backend_pids(FUNCTION_NAME).await;
    assert_eq!(old.len(), 1);

    // An invocation every 50 ms (no health check falls due) until the
    // server sees a new connection: the first invocation past the pool's
    // lifetime (the max age less up to 10 %) started the build. Then none
    // until the replacement is in place and the old connection has closed
    // (an invocation past the grace would refresh synchronously: on a
    // loaded machine a build can take longer than 300 ms).
    let mark = env.pg.log_mark();
    let give_up = Instant::now() + Duration::from_millis(max_age_ms * 2);
    let mut invocations = 0;
    while !env.pg.log_since(mark).contains("connection received") {
        assert!(Instant::now() < give_up, "no replacement was started:\n{}", env.function.output());
        let found = env.api.invoke(get_order("1")).await;
        assert_eq!(status(found.response()), 200, "every invocation succeeds: {:?}", found.outcome);
        invocations += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_old = format!("[{}] {FUNCTION_NAME} LOG:  disconnection", old[0]);
    let closed = env.pg.wait_for_log(mark, &closed_old, Duration::from_secs(10)).await;
    assert!(closed, "the old connection closed:\n{}", env.pg.log_since(mark));
    let next = env.api.invoke(get_order("1")).await;
    assert_eq!(status(next.response()), 200, "{:?}", next.outcome);
    invocations += 1;
    let refreshed = lines_with(&env.function.output(), "pool refreshed");
    assert_eq!(refreshed.len(), 1, "{refreshed:?}");
    assert!(refreshed[0].contains("background=true"), "built beside the pool, no invocation waiting: {}", refreshed[0]);

    let log = Log::new(env.pg.log_since(mark));
    let pids = log.function_pids();
    let new: Vec<i32> = pids.iter().copied().filter(|pid| *pid != old[0]).collect();
    assert_eq!(new.len(), 1, "one new connection:\n{}", log.text());
    let fresh = log.for_pid(new[0]).counts();
    assert_eq!((fresh.connections, fresh.warmup_round_trips, fresh.parses), (1, 1, 2), "{}", log.text());
    assert_eq!(fresh.health_checks, 0, "a fresh pool needs no check");
    assert!(fresh.executes >= 1, "the replacement serves:\n{}", log.text());
    assert_eq!(
        fresh.statements,
        1 + fresh.executes,
        "phase 1's round trip and the handler's statements, nothing else:\n{}",
        log.text()
    );
    let closed = log.for_pid(old[0]).counts();
    assert_eq!(closed.disconnections, 1);
    assert_eq!(closed.unclean_closes, 0, "Terminate was sent:\n{}", log.for_pid(old[0]).text());
    assert!(closed.executes >= 1, "the old connection served until the replacement was ready");
    assert_eq!(closed.executes + fresh.executes, invocations, "each invocation ran once, on one of the two");
    assert_eq!(env.pg.backend_pids(FUNCTION_NAME).await, new);
}

#[tokio::test]
async fn the_invocation_past_the_max_age_answers_and_the_replacement_is_in_place_before_the_runtime_asks_for_more() {
    let (env, proxy) =
        orders_behind_proxy(postgres_watching_closes().await, "2000", "1500", Duration::from_secs(5)).await;
    let old = env.pg.backend_pids(FUNCTION_NAME).await;
    let mark = env.pg.log_mark();
    // Invocations every 20 ms. After each answer, once the runtime has
    // asked for the next invocation, the process is stopped at once, as
    // Lambda freezes the environment then, and resumed, until one
    // invocation was followed by the replacement's connect.
    // The count before each invocation: the build must have connected
    // before the runtime asked for more.
    let give_up = Instant::now() + Duration::from_secs(6);
    loop {
        let step = invoke_until_idle(&env, &proxy, 1, proxy.accepted(), give_up).await;
        env.function.freeze();
        if step.connected {
            break;
        }
        env.function.thaw();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Frozen, the function sends and writes nothing: what its output and
    // the server show now was done before it asked for the next invocation.
    let refreshed = env.function.wait_for_output("pool refreshed", Duration::from_secs(3)).await;
    assert!(refreshed, "the replacement was in place before the next poll:\n{}", env.function.output());
    let output = env.function.output();
    let line = lines_with(&output, "pool refreshed").remove(0);
    assert!(line.contains("background=true") && line.contains("attempts=1"), "{line}");
    let log = Log::new(env.pg.log_since(mark));
    let new: Vec<i32> = log.function_pids().into_iter().filter(|pid| !old.contains(pid)).collect();
    assert_eq!(new.len(), 1, "one new connection:\n{}", log.text());
    let warmed = log.for_pid(new[0]).counts();
    assert_eq!((warmed.connections, warmed.warmup_round_trips, warmed.parses), (1, 1, 2), "{}", log.text());
    env.function.thaw();

    // Thawed, the next invocation runs on the replacement, and the old
    // session has closed cleanly.
    let served = env.api.invoke(get_order("1")).await;
    assert_eq!(status(served.response()), 200, "{:?}", served.outcome);
    let closed_old = format!("[{}] {FUNCTION_NAME} LOG:  disconnection", old[0]);
    assert!(env.pg.wait_for_log(mark, &closed_old, Duration::from_secs(5)).await, "{}", env.pg.log_since(mark));
    assert_eq!(env.pg.backend_pids(FUNCTION_NAME).await, new);
    assert_eq!(Log::new(env.pg.log_since(mark)).for_pid(old[0]).counts().unclean_closes, 0);
    let output = env.function.output();
    assert!(
        lines_with(&output, "refresh failed").is_empty() && lines_with(&output, "connect failed").is_empty(),
        "{output}"
    );
}

#[tokio::test]
async fn a_handler_that_panics_in_the_invocation_past_the_max_age_still_gets_the_replacement_built_before_the_next_poll(
) {
    use integration_tests::orders::STARTUP;
    use integration_tests::{bin_path, Function, RuntimeApi};
    use serde_json::json;

    let pg = postgres().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let function = Function::builder(bin_path("panicking-handler"))
        .name(FUNCTION_NAME)
        .env("DATABASE_URL", proxy.url_for(&pg.database_url()))
        .env("DB_MAX_AGE_MS", "2000")
        .env("DB_HEALTH_CHECK_INTERVAL_MS", "1500")
        .spawn(&api);
    assert!(api.wait_next_polls(1, STARTUP).await, "never reached the runtime loop:\n{}", function.output());
    let old = pg.backend_pids(FUNCTION_NAME).await;
    assert_eq!(old.len(), 1);

    // Every invocation passes the gate, then panics. After each answer the
    // process is stopped at its next poll, as Lambda freezes it, until an
    // invocation was followed by the replacement's connect (the proxy's
    // count before each invocation: it must come before that poll).
    let give_up = Instant::now() + Duration::from_secs(6);
    loop {
        assert!(Instant::now() < give_up, "no replacement was started:\n{}", function.output());
        let accepted = proxy.accepted();
        let panicked = api.invoke(json!({ "panic": "order 42 has no customer" })).await;
        assert_eq!(panicked.outcome.error_type(), Some("RuntimeAdapter.HandlerPanicked"), "{:?}", panicked.outcome);
        function.freeze_at_next_poll(&api).await;
        if proxy.accepted() > accepted {
            break;
        }
        function.thaw();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Still frozen: the replacement was put in place before the poll, the
    // panic notwithstanding.
    let refreshed = function.wait_for_output("pool refreshed", Duration::from_secs(3)).await;
    assert!(refreshed, "the replacement was in place before the next poll:\n{}", function.output());
    let line = lines_with(&function.output(), "pool refreshed").remove(0);
    assert!(line.contains("background=true") && line.contains("attempts=1"), "{line}");
    function.thaw();

    // The next invocation is served by the replacement alone.
    let served = api.invoke(json!({})).await;
    assert_eq!(served.response(), &json!({ "one": 1 }), "{:?}", served.outcome);
    assert!(pg.wait_connection_count(FUNCTION_NAME, 1, Duration::from_secs(5)).await, "the old session closed");
    let now = pg.backend_pids(FUNCTION_NAME).await;
    assert!(now.len() == 1 && now[0] != old[0], "the replacement's session only: {old:?} then {now:?}");
}

#[tokio::test]
async fn a_replacement_that_cannot_connect_holds_the_environment_after_the_answer_only_a_bounded_while() {
    // The connect timeout (2 s) is far above the wait after the answer
    // (250 ms): the runtime asks for the next invocation before it.
    let connect_timeout = Duration::from_secs(2);
    let (env, proxy) = orders_behind_proxy(postgres().await, "2000", "1500", connect_timeout).await;
    proxy.black_hole_new(true);
    let give_up = Instant::now() + Duration::from_secs(6);
    let Idle { latency: answered, held, .. } = loop {
        let step = invoke_until_idle(&env, &proxy, 1, proxy.accepted(), give_up).await;
        if step.connected {
            break step;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("measured: the invocation that started the replacement answered in {answered:?}; the next poll came {held:?} after");
    assert!(answered < connect_timeout / 2, "the answer did not wait for the connect: {answered:?}");
    // 250 ms, with room for a loaded machine; far from the connect timeout.
    assert!(held < connect_timeout / 2, "the next poll came long before the connect timed out: {held:?}");
    let output = env.function.output();
    assert_eq!(lines_with(&output, "replacement not built in the wait after the answer").len(), 1, "{output}");

    // The build goes on meanwhile: its silent connect times out and the
    // next attempt, answered, puts the replacement in place.
    proxy.black_hole_new(false);
    assert!(env.function.wait_for_output("pool refreshed", connect_timeout * 3).await, "{}", env.function.output());
    let output = env.function.output();
    let line = lines_with(&output, "pool refreshed").remove(0);
    assert!(line.contains("background=true") && line.contains("attempts=2"), "{line}");
    assert!(lines_with(&output, "refresh failed").is_empty(), "{output}");
    let served = env.api.invoke(get_order("1")).await;
    assert_eq!(status(served.response()), 200, "{:?}", served.outcome);
    proxy.release_silenced();
}

#[tokio::test]
async fn under_managed_instances_the_replacement_is_not_waited_for_after_the_answer() {
    // Several invocations at once, never frozen: the worker that answered
    // goes back to taking invocations while the build runs.
    let connect_timeout = Duration::from_secs(2);
    let pg = postgres().await;
    pg.apply_sql_as_app(integration_tests::orders::MIGRATION).await;
    let settings = [
        ("DB_MAX_AGE_MS", "2000"),
        ("DB_HEALTH_CHECK_INTERVAL_MS", "1500"),
        ("DB_CONNECT_TIMEOUT_MS", "2000"),
        ("AWS_LAMBDA_MAX_CONCURRENCY", "2"),
    ];
    let (env, proxy) = OrdersEnv::start_behind_proxy(ORDERS_BIN, pg, &settings).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    proxy.black_hole_new(true);
    // Both workers back at `/next` after each answer. The count before the
    // first invocation: a build not waited for may connect only after the
    // invocation that started it was looked at.
    let (accepted, give_up) = (proxy.accepted(), Instant::now() + Duration::from_secs(6));
    while !invoke_until_idle(&env, &proxy, 2, accepted, give_up).await.connected {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And while the connect is still silent.
    assert!(env.api.wait_waiting_polls(2, connect_timeout / 2).await, "{}", env.function.output());
    assert!(lines_with(&env.function.output(), "pool refreshed").is_empty(), "the connect is still silent");
    proxy.black_hole_new(false);
    assert!(env.function.wait_for_output("pool refreshed", connect_timeout * 3).await, "{}", env.function.output());
    // Seconds after the answer: a wait would have ended, and said so, by now.
    let output = env.function.output();
    assert!(lines_with(&output, "in the wait after the answer").is_empty(), "no worker waited:\n{output}");
    proxy.release_silenced();
}

/// What [`invoke_until_idle`] saw.
struct Idle {
    /// The invocation's, enqueue to answer.
    latency: Duration,
    /// From the answer (as the test saw it) until every worker was back.
    held: Duration,
    /// The proxy has accepted a connection since the count given: the
    /// replacement's build.
    connected: bool,
}

/// Sends `GET /orders/1`, which must succeed, and waits until all `workers`
/// of the function's runtime are back at `/next`, as Lambda waits before it
/// freezes the environment. `accepted`: the proxy's count to compare with.
/// Fails the test past `give_up`.
async fn invoke_until_idle(
    env: &OrdersEnv,
    proxy: &FaultProxy,
    workers: usize,
    accepted: usize,
    give_up: Instant,
) -> Idle {
    assert!(Instant::now() < give_up, "no replacement was started:\n{}", env.function.output());
    let served = env.api.invoke(get_order("1")).await;
    let answered = Instant::now();
    assert_eq!(status(served.response()), 200, "{:?}", served.outcome);
    let idle = env.api.wait_waiting_polls(workers, Duration::from_secs(5)).await;
    assert!(idle, "the runtime is back at /next within 5 s:\n{}", env.function.output());
    Idle { latency: served.latency, held: answered.elapsed(), connected: proxy.accepted() > accepted }
}

/// The function's log lines that contain `needle`.
fn lines_with(output: &str, needle: &str) -> Vec<String> {
    output.lines().filter(|line| line.contains(needle)).map(str::to_owned).collect()
}

/// `orders` behind the fault proxy, the migration applied, with a maximum
/// age, a health-check interval and a connect timeout, and one order
/// written: its pool warmed and in use.
async fn orders_behind_proxy(
    pg: Postgres,
    max_age_ms: &str,
    health_check_interval_ms: &str,
    connect_timeout: Duration,
) -> (OrdersEnv, FaultProxy) {
    pg.apply_sql_as_app(integration_tests::orders::MIGRATION).await;
    let timeout_ms = connect_timeout.as_millis().to_string();
    let settings = [
        ("DB_MAX_AGE_MS", max_age_ms),
        ("DB_HEALTH_CHECK_INTERVAL_MS", health_check_interval_ms),
        ("DB_CONNECT_TIMEOUT_MS", timeout_ms.as_str()),
    ];
    let (env, proxy) = OrdersEnv::start_behind_proxy(ORDERS_BIN, pg, &settings).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    (env, proxy)
}

/// Invokes `GET /orders/1` every 20 ms until the proxy has accepted more
/// than `accepted` connections (the background build started); returns the
/// invocations' latencies. Each must succeed.
async fn invoke_until_a_connect(env: &OrdersEnv, proxy: &FaultProxy, within: Duration) -> Vec<Duration> {
    let accepted = proxy.accepted();
    let give_up = Instant::now() + within;
    let mut latencies = Vec::new();
    while proxy.accepted() == accepted {
        assert!(Instant::now() < give_up, "no replacement was started within {within:?}:\n{}", env.function.output());
        let served = env.api.invoke(get_order("1")).await;
        assert_eq!(status(served.response()), 200, "{:?}", served.outcome);
        latencies.push(served.latency);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies
}

#[tokio::test]
async fn a_replacement_that_cannot_connect_holds_no_invocation_until_the_grace_then_one_waits_and_none_fails() {
    // Lifetime 9–10 s; grace a tenth: 1 s, room for the 250 ms looked at
    // below even on a loaded machine. A connect to the black hole takes the
    // whole DB_CONNECT_TIMEOUT_MS.
    let connect_timeout = Duration::from_millis(2000);
    let (env, proxy) = orders_behind_proxy(postgres().await, "10000", "9000", connect_timeout).await;
    let old = env.pg.backend_pids(FUNCTION_NAME).await;
    proxy.black_hole_new(true);

    invoke_until_a_connect(&env, &proxy, Duration::from_secs(12)).await;
    // Within the grace the old pool serves, nobody waiting for the stuck
    // connect: every answer comes long before a connect could time out.
    let within_grace = Instant::now() + Duration::from_millis(250);
    let mut served = 0;
    while Instant::now() < within_grace {
        let invocation = env.api.invoke(get_order("1")).await;
        assert_eq!(status(invocation.response()), 200, "{:?}", invocation.outcome);
        assert!(invocation.latency < connect_timeout / 2, "waited for the replacement: {:?}", invocation.latency);
        served += 1;
    }
    assert!(served > 0);

    // Past the grace one invocation refreshes synchronously: it waits for
    // the connect, which times out, keeps the old pool, and succeeds.
    let give_up = Instant::now() + Duration::from_secs(4);
    let waited = loop {
        let invocation = env.api.invoke(get_order("1")).await;
        assert_eq!(status(invocation.response()), 200, "a refresh never fails an invocation: {:?}", invocation.outcome);
        if invocation.latency >= connect_timeout {
            break invocation.latency;
        }
        assert!(Instant::now() < give_up, "no synchronous refresh after the grace:\n{}", env.function.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("measured: the fallback refresh held its invocation {waited:?} (connect timeout {connect_timeout:?})");
    let output = env.function.output();
    let failed = lines_with(&output, "pool refresh failed; keeping the current pool");
    assert_eq!(failed.len(), 1, "the fallback's failure is reported once:\n{output}");
    assert!(lines_with(&output, "pool refreshed").is_empty(), "{output}");
    assert_eq!(env.pg.backend_pids(FUNCTION_NAME).await, old, "the old pool serves on");
    proxy.black_hole_new(false);
    proxy.release_silenced();
}

#[tokio::test]
async fn a_background_build_cut_by_a_freeze_is_tried_again_at_the_thaw_and_not_reported() {
    let connect_timeout = Duration::from_millis(500);
    let (env, proxy) = orders_behind_proxy(postgres_watching_closes().await, "2000", "1500", connect_timeout).await;
    let old = env.pg.backend_pids(FUNCTION_NAME).await;

    // The replacement's first connect is accepted and left unanswered; the
    // environment is frozen, as Lambda freezes it after the answer, for
    // longer than the connect may take. No invocation comes at the thaw:
    // the build goes on by itself (an invocation would find the pool past
    // the grace and refresh synchronously, the other test's case).
    proxy.black_hole_new(true);
    invoke_until_a_connect(&env, &proxy, Duration::from_secs(4)).await;
    env.function.freeze();
    tokio::time::sleep(connect_timeout * 2).await;
    proxy.black_hole_new(false);
    env.function.thaw();

    // Thawed: the cut attempt times out at once and is tried again.
    assert!(env.function.wait_for_output("pool refreshed", Duration::from_secs(5)).await, "{}", env.function.output());
    let output = env.function.output();
    let refreshed = lines_with(&output, "pool refreshed");
    assert_eq!(refreshed.len(), 1, "{output}");
    assert!(
        refreshed[0].contains("background=true") && refreshed[0].contains("attempts=2"),
        "the cut attempt and one more: {}",
        refreshed[0]
    );
    assert!(lines_with(&output, "connect failed").is_empty(), "the cut connect is not reported:\n{output}");
    assert!(lines_with(&output, "refresh failed").is_empty(), "{output}");
    let served = env.api.invoke(get_order("1")).await;
    assert_eq!(status(served.response()), 200, "{:?}", served.outcome);
    let now = env.pg.backend_pids(FUNCTION_NAME).await;
    assert_eq!(now.len(), 1);
    assert!(!old.contains(&now[0]), "the replacement serves: {old:?} then {now:?}");
    proxy.release_silenced();
}

#[tokio::test]
async fn sigterm_while_a_replacement_is_being_built_exits_in_time_and_leaves_no_session_open() {
    let (mut env, proxy) =
        orders_behind_proxy(postgres_watching_closes().await, "2000", "1500", Duration::from_secs(5)).await;
    proxy.black_hole_new(true);
    invoke_until_a_connect(&env, &proxy, Duration::from_secs(4)).await;
    // The build waits on its unanswered connect (for up to 5 s) when
    // Lambda shuts the environment down.
    let (took, output) = env.terminate_and_check_closes().await;
    eprintln!("measured: exited {took:?} after SIGTERM with a replacement being built");
    assert!(lines_with(&output, "pool refreshed").is_empty(), "{output}");
    assert!(env.pg.backend_pids(FUNCTION_NAME).await.is_empty());
    proxy.release_silenced();
}

#[tokio::test]
async fn fifty_concurrent_invocations_past_the_max_age_start_one_build_and_none_waits_for_it() {
    use integration_tests::inproc::{adapter, context, wait_stats};
    use integration_tests::Postgres;

    let pg = Postgres::start().await;
    // Grace 1 s (room for the burst on a loaded machine); DB_POOL_SIZE 2,
    // so that the replacement opens two.
    let env = [("DB_MAX_AGE_MS", "10000"), ("DB_HEALTH_CHECK_INTERVAL_MS", "9900"), ("DB_POOL_SIZE", "2")];
    let adapter = adapter(&pg.database_url(), &env, &[]).await;
    let invoke = |adapter: runtime_adapter::Adapter| async move {
        let db = adapter.db(&context(Duration::from_secs(20))).await.expect("db");
        let one: i32 = db.query_one("SELECT 1", &[]).await.expect("a round trip").get(0);
        assert_eq!(one, 1);
    };
    let warmed = adapter.stats().connect_attempts;
    // Sequential invocations until one finds the pool expired and starts
    // the build (its connects counted as they begin) ...
    let give_up = Instant::now() + Duration::from_secs(12);
    while adapter.stats().connect_attempts == warmed {
        assert!(Instant::now() < give_up, "no refresh started");
        invoke(adapter.clone()).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... then fifty at once while it is being built.
    let burst = (0..50).map(|_| tokio::spawn(invoke(adapter.clone())));
    for invocation in futures_util::future::join_all(burst).await {
        invocation.expect("no invocation failed");
    }
    assert!(wait_stats(&adapter, Duration::from_secs(5), |s| s.refreshes_max_age == 1).await, "replaced");
    let stats = adapter.stats();
    assert_eq!(stats.refresh_waits, 0, "no invocation waited for the refresh");
    assert_eq!(stats.connect_attempts, warmed + 2, "one replacement of two connections, single-flight");
    assert_eq!((stats.refresh_failures, stats.health_checks_run), (0, 0));
}

#[tokio::test]
async fn a_handler_that_drops_the_call_which_started_a_refresh_leaves_the_build_to_finish_and_no_session_behind() {
    use futures_util::FutureExt as _;
    use integration_tests::inproc::{adapter, context, wait_stats};
    use integration_tests::Postgres;

    let pg = Postgres::start().await;
    // Grace 300 ms: the calls below come every 20 ms, so the first past the
    // lifetime starts a background build, not the synchronous fallback.
    let env = [("DB_MAX_AGE_MS", "3000"), ("DB_HEALTH_CHECK_INTERVAL_MS", "2900")];
    let adapter = adapter(&pg.database_url(), &env, &[]).await;
    let first = pg.backend_pids("runtime-adapter").await;
    assert_eq!(first.len(), 1);
    // Every call is polled once and dropped, as a handler's `select!` whose
    // other branch won, or a zero timeout, drops it; the one past the
    // pool's lifetime started the replacement and is gone before it answered.
    let warmed = adapter.stats().connect_attempts;
    let give_up = Instant::now() + Duration::from_secs(6);
    while adapter.stats().connect_attempts == warmed {
        assert!(Instant::now() < give_up, "no refresh started");
        drop(adapter.db(&context(Duration::from_secs(20))).now_or_never());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The build is the environment's, not the dropped call's: it finishes,
    // the old session closes, and only the replacement's stays open.
    assert!(wait_stats(&adapter, Duration::from_secs(5), |s| s.refreshes_max_age == 1).await, "replaced");
    assert!(pg.wait_connection_count("runtime-adapter", 1, Duration::from_secs(5)).await);
    let now = pg.backend_pids("runtime-adapter").await;
    assert!(now.len() == 1 && now[0] != first[0], "the replacement's session only: {first:?} then {now:?}");
    let db = adapter.db(&context(Duration::from_secs(20))).await.expect("the next invocation");
    let one: i32 = db.query_one("SELECT 1", &[]).await.expect("a round trip").get(0);
    assert_eq!((one, adapter.stats().refresh_waits), (1, 0));
}
