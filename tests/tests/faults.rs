//! Real server faults, through the real Lambda loop: killed backends, a
//! restarted server, exhausted connection slots, a write whose answer is
//! lost. The function must answer every invocation before its deadline and
//! never write twice.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::orders::{
    committed_orders, get_order, orders_function, post_valid_order, postgres, status, OrdersEnv, FUNCTION_NAME,
    MIGRATION, ORDERS_BIN, STARTUP,
};
use integration_tests::{InvokeOptions, RuntimeApi};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// One invocation of a stream: started, ended, succeeded, outcome.
type Run = (Instant, Instant, bool, String);

#[tokio::test]
async fn reads_keep_succeeding_when_backends_are_killed_inside_the_interval() {
    let env = OrdersEnv::start(&[]).await;
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    for round in 0..5 {
        let killed = env.pg.kill_backends(FUNCTION_NAME).await;
        assert_eq!(killed.len(), 1, "round {round}");
        let found = env.api.invoke(get_order("1")).await;
        assert_eq!(status(found.response()), 200, "round {round}: {:?}", found.outcome);
        let now = env.pg.backend_pids(FUNCTION_NAME).await;
        assert_eq!(now.len(), 1, "round {round}: one connection, not a leak");
        assert_ne!(now, killed, "round {round}: a new backend");
    }
}

#[tokio::test]
async fn a_server_restart_during_a_stream_fails_only_while_down_and_recovers_within_a_backoff_step() {
    let env = Arc::new(OrdersEnv::start(&[]).await);
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    let timeout = Duration::from_secs(3);

    // Invocations one after another, recording when each ran and how it ended.
    let log: Arc<Mutex<Vec<Run>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stream = {
        let (env, log, stop) = (env.clone(), log.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let done = env.api.invoke_with(get_order("1"), InvokeOptions::default().function_timeout(timeout));
                let done = tokio::select! {
                    done = done => done,
                    () = stop.notified() => return,
                };
                let ok = !done.outcome.is_error() && status(done.response()) == 200;
                log.lock().await.push((started, Instant::now(), ok, format!("{:?}", done.outcome)));
            }
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let down_from = Instant::now();
    env.pg.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.pg.start_again().await;
    let up_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.notify_one();
    stream.await.expect("stream task");

    let log = log.lock().await;
    assert!(log.len() > 5, "a stream of invocations ran: {}", log.len());
    for (started, ended, ok, outcome) in log.iter() {
        assert!(*ended - *started < timeout, "every answer before the deadline: {:?} {outcome}", *ended - *started);
        if !ok {
            assert!(*started < up_at && *ended > down_from, "errors only while the server was down: {outcome}");
        }
    }
    // The invocation running when the server came back retries within one
    // backoff step; everything started after that succeeds.
    for (started, _, ok, outcome) in log.iter().filter(|(started, ..)| *started > up_at) {
        assert!(*ok, "after the restart ({:?} later): {outcome}", *started - up_at);
    }
    let first_success_after =
        log.iter().filter(|(_, ended, ok, _)| *ok && *ended > up_at).map(|(_, ended, ..)| *ended).min();
    let recovery = first_success_after.expect("a success after the restart") - up_at;
    // The invocation running when the server came back is at worst in the
    // longest pause its retries allow (full jitter's ceiling before the last
    // attempt); then one connect and warmup, with slack for a shared machine.
    let defaults = runtime_adapter::Config::default();
    let longest_pause = defaults.retry_base_delay * 2u32.pow(defaults.retry_attempts.saturating_sub(2));
    let bound = longest_pause + Duration::from_millis(600);
    assert!(recovery < bound, "recovered within one backoff step: {recovery:?} (bound {bound:?})");
    let errors = log.iter().filter(|(_, _, ok, _)| !ok).count();
    let slowest = log.iter().map(|(started, ended, ..)| *ended - *started).max().unwrap_or_default();
    eprintln!(
        "measured: restart, {} invocations, {errors} errors, slowest answer {slowest:?}, first success {recovery:?} after the server was back",
        log.len()
    );
}

#[tokio::test]
async fn exhausted_connection_slots_give_a_clear_error_in_time_and_recover_when_freed() {
    // Five slots, three of them reserved for superusers: two for everyone else.
    let pg = integration_tests::Postgres::builder()
        .setting("log_min_duration_statement", "0")
        .max_connections(5)
        .start()
        .await;
    pg.apply_sql_as_app(MIGRATION).await;
    // The two slots taken by hogs. Sessions the harness opened before (the
    // migration's, its superuser probes, which also take unreserved slots)
    // end asynchronously after their clients drop: a hog refused with 53300
    // meanwhile is tried again until they are gone.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut hogs = Vec::new();
    while hogs.len() < 2 {
        match pg.app_config().connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                hogs.push(client);
            }
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS)
                    && tokio::time::Instant::now() < give_up =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("taking a slot as app: {e}\n{}", pg.log_tail()),
        }
    }

    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let function = orders_function(&pg, &[]).spawn(&api);
    assert!(api.wait_next_polls(1, STARTUP).await, "a full server is not an init error: {}", function.output());
    assert!(api.init_errors().is_empty());

    // Not enough time left to wait out the backoff: the error comes at once.
    let timeout = Duration::from_secs(2);
    let refused = api.invoke_with(get_order("1"), InvokeOptions::default().function_timeout(timeout)).await;
    assert_eq!(refused.outcome.error_type(), Some("RuntimeAdapter.ConnectionLimit"), "{:?}", refused.outcome);
    let message = refused.outcome.error_message().expect("a message");
    for knob in
        ["connection limit was reached", "53300", "DB_POOL_SIZE", "reserved concurrency", "RDS Proxy", "PgBouncer"]
    {
        assert!(message.contains(knob), "names {knob}: {message}");
    }
    // At once: no 2–5 s backoff fits before the deadline, so none is waited.
    assert!(refused.latency < Duration::from_millis(1000), "no backoff waited: {:?}", refused.latency);
    eprintln!("measured: 53300 with a 2 s timeout answered in {:?}", refused.latency);

    // Enough time: the adapter waits 2–5 s and tries once more; slots freed
    // meanwhile let it through.
    let pending = api.enqueue(get_order("1"), InvokeOptions::default().function_timeout(Duration::from_secs(20)));
    let released = "released this environment's connections";
    let waiting = async {
        while function.output().matches(released).count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("the adapter released and waits");
    hogs.clear();
    let served = pending.wait().await;
    assert_eq!(status(served.response()), 404, "served after the wait: {:?}", served.outcome);
    assert!(served.latency >= Duration::from_secs(2), "it waited the backoff: {:?}", served.latency);
    eprintln!("measured: 53300 then slots freed, served after {:?}", served.latency);
    assert_eq!(pg.connection_count(FUNCTION_NAME).await, 1, "no connection leaked");
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_after_commit_is_not_applied_twice() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let (env, proxy) = OrdersEnv::start_behind_proxy(ORDERS_BIN, pg, &[]).await;

    // The server commits the INSERT (autocommit); its answer never arrives.
    proxy.cut_after_server_sends(b"INSERT 0 1");
    let lost = env.api.invoke(post_valid_order("tea", 1)).await;
    assert!(proxy.wait_cut(Duration::from_secs(5)).await, "the cut happened");
    assert!(lost.outcome.is_error(), "the handler reports the failure: {:?}", lost.outcome);
    assert_eq!(committed_orders(&env.pg).await, [("tea".to_owned(), 1)], "written once, not retried");

    let next = env.api.invoke(post_valid_order("coffee", 2)).await;
    assert_eq!(status(next.response()), 201, "the next invocation gets a new connection: {:?}", next.outcome);
    assert_eq!(committed_orders(&env.pg).await, [("tea".to_owned(), 1), ("coffee".to_owned(), 2)]);
}
