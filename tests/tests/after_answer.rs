//! What follows an answer, in-process: [`Lifecycle::run`]'s hook after each
//! answer (the `AfterAnswerLayer`) builds the replacement for a pool past
//! its maximum age before the runtime asks for the next invocation, and
//! holds that poll a bounded while at most. `refresh.rs` shows the same
//! with the `orders` binary, frozen at each poll as Lambda freezes it; this
//! file runs the loop in the test's own process, so that
//! `scripts/mutants full lifecycle.rs after_answer` (and `adapter.rs`)
//! mutate the hook the tests exercise.
//!
//! The Lambda loop reads its Runtime API address and the function's name
//! from the process's environment, which this binary sets before each loop
//! it starts, one at a time, in its one test: a second test here would
//! share them.

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::orders::STARTUP;
use integration_tests::{inproc, FaultProxy, Postgres, RuntimeApi};
use lambda_runtime::tower::Layer as _;
use lambda_runtime::Runtime;
use runtime_adapter::{Adapter, Config, Lifecycle};
use serde_json::json;
use tokio::task::JoinHandle;

const FUNCTION_NAME: &str = "after-answer";
/// The pool's maximum age; it is refreshed in the background from its
/// (jittered) maximum age until a tenth of it later.
const MAX_AGE: Duration = Duration::from_secs(2);
/// The adapter's bound on the wait after an answer (`AFTER_ANSWER_WAIT`),
/// below `DB_CONNECT_TIMEOUT_MS` here.
const AFTER_ANSWER_WAIT: Duration = Duration::from_millis(250);

#[tokio::test]
async fn the_replacement_is_built_between_the_answer_and_the_next_poll_which_it_holds_a_bounded_while() {
    let pg = Postgres::builder().start().await;
    // On-demand Lambda (no AWS_LAMBDA_MAX_CONCURRENCY), then as `cargo lambda
    // watch` runs a function (1): the runtime asks for more once the
    // replacement is in place, or once the wait is over.
    for max_concurrency in [None, Some("1")] {
        let function = InProcess::start(&pg, max_concurrency).await;
        let (api, proxy, adapter) = (&function.api, &function.proxy, &function.adapter);

        // Past the maximum age: the invocation answers from the old pool,
        // and the replacement is in place when the runtime asks for more.
        // The test and the loop share this thread: nothing of the loop runs
        // between the poll and this look at the counters.
        let first = pg.backend_pids(FUNCTION_NAME).await;
        invoke_until_a_build(api, proxy).await;
        let stats = adapter.stats();
        assert_eq!(stats.refreshes_max_age, 1, "{max_concurrency:?}: in place before the next poll: {stats:?}");
        assert_eq!(stats.refresh_waits, 0, "{max_concurrency:?}: no invocation waited for it: {stats:?}");
        assert_eq!(proxy.accepted(), 2, "the first pool's connection and its replacement's");
        // The server's view: a new session serves the function, and the
        // first pool's is closed.
        assert!(
            pg.wait_connection_count(FUNCTION_NAME, 1, Duration::from_secs(5)).await,
            "{max_concurrency:?}: one session left: {:?}",
            pg.backend_pids(FUNCTION_NAME).await
        );
        let now = pg.backend_pids(FUNCTION_NAME).await;
        assert!(now.iter().all(|pid| !first.contains(pid)), "{max_concurrency:?}: {first:?} then {now:?}");

        // Past it again, with every new connection swallowed: the build
        // cannot finish, and the runtime asks for more once the wait is
        // over, not before and not much after.
        proxy.black_hole_new(true);
        let completion = invoke_until_a_build(api, proxy).await;
        let held = api.times().held_after_completions()[completion].expect("a poll after the answer");
        assert!(
            held >= AFTER_ANSWER_WAIT - Duration::from_millis(20) && held < AFTER_ANSWER_WAIT + Duration::from_secs(1),
            "{max_concurrency:?}: the poll after the answer was held {held:?}, not the {AFTER_ANSWER_WAIT:?} the wait allows"
        );
        let stats = adapter.stats();
        assert_eq!(stats.refreshes_max_age, 1, "{max_concurrency:?}: the swallowed build did not finish: {stats:?}");
        assert_eq!(stats.refresh_waits, 0, "{max_concurrency:?}: no invocation waited for it: {stats:?}");
        function.stop().await;
        assert!(
            pg.wait_connection_count(FUNCTION_NAME, 0, Duration::from_secs(5)).await,
            "{max_concurrency:?}: sessions left open after the pool closed: {:?}",
            pg.backend_pids(FUNCTION_NAME).await
        );
    }

    // Under Lambda Managed Instances nothing is frozen, and other
    // invocations would be waiting for this worker: the build starts after
    // the answer, unwaited. (The adapter is configured for 2 at once; the
    // loop runs one worker, so that each answer has one poll after it.)
    let function = InProcess::start(&pg, Some("2")).await;
    let (api, proxy, adapter) = (&function.api, &function.proxy, &function.adapter);
    proxy.black_hole_new(true);
    let completion = invoke_until_a_build(api, proxy).await;
    let held = api.times().held_after_completions()[completion].expect("a poll after the answer");
    // A wait would hold it the whole bound; anything shorter is the runtime's
    // own time to ask, however loaded the machine.
    assert!(
        held < AFTER_ANSWER_WAIT - Duration::from_millis(20),
        "Managed Instances: the poll after the answer was held {held:?}"
    );
    let stats = adapter.stats();
    assert_eq!((stats.refreshes_max_age, stats.refresh_waits), (0, 0), "{stats:?}");
    function.stop().await;
}

/// A function run in this process: its Runtime API, the proxy in front of
/// its database, its adapter and its Lambda loop.
struct InProcess {
    api: RuntimeApi,
    proxy: FaultProxy,
    adapter: Adapter,
    runtime: JoinHandle<Result<(), lambda_runtime::Error>>,
}

impl InProcess {
    /// The adapter's INIT through a new proxy to `pg`, with
    /// `AWS_LAMBDA_MAX_CONCURRENCY` in its configuration as given, and the
    /// Lambda loop started and polling.
    async fn start(pg: &Postgres, max_concurrency: Option<&str>) -> Self {
        let proxy = FaultProxy::for_postgres(pg).await;
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let lifecycle = start(&api, &proxy.url_for(&pg.database_url()), max_concurrency).await;
        let adapter = lifecycle.adapter().clone();
        let service = lifecycle.layer().layer(inproc::select_one(adapter.clone()));
        let runtime = tokio::spawn(lifecycle.run(Runtime::new(service)));
        assert!(api.wait_next_polls(1, STARTUP).await, "the loop never polled");
        Self { api, proxy, adapter, runtime }
    }

    /// Stops the loop, lets the swallowed connections go, and closes the pool.
    async fn stop(self) {
        self.runtime.abort();
        let _ = self.runtime.await;
        self.proxy.black_hole_new(false);
        self.proxy.release_silenced();
        self.adapter.close().await;
    }
}

/// Invokes every 20 ms until the proxy has accepted a connection after an
/// answer (the replacement's build started), each answer checked; waits
/// for the runtime's next poll; returns that invocation's index among the
/// completions.
async fn invoke_until_a_build(api: &RuntimeApi, proxy: &FaultProxy) -> usize {
    let accepted = proxy.accepted();
    let give_up = tokio::time::Instant::now() + MAX_AGE * 2;
    loop {
        let polls = api.next_polls();
        let served = api.invoke(json!({})).await;
        assert_eq!(served.response(), &json!({ "one": 1 }), "{:?}", served.outcome);
        assert!(api.wait_next_polls(polls + 1, Duration::from_secs(5)).await, "no poll after the answer");
        if proxy.accepted() > accepted {
            return api.completed() - 1;
        }
        assert!(tokio::time::Instant::now() < give_up, "no replacement was built within {:?}", MAX_AGE * 2);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The adapter's INIT for `database_url`, with the Lambda loop's
/// environment pointing at `api`.
async fn start(api: &RuntimeApi, database_url: &str, max_concurrency: Option<&str>) -> Lifecycle {
    for (name, value) in api.lambda_env(FUNCTION_NAME) {
        // The only test of this binary, which starts one loop at a time.
        std::env::set_var(name, value);
    }
    let mut vars: HashMap<&str, String> = [
        ("DATABASE_URL", database_url.to_owned()),
        ("DB_MAX_AGE_MS", MAX_AGE.as_millis().to_string()),
        ("DB_CONNECT_TIMEOUT_MS", "2000".to_owned()),
        ("DB_HEALTH_CHECK_INTERVAL_MS", "1500".to_owned()),
        ("DB_METRICS", "off".to_owned()),
        ("AWS_LAMBDA_FUNCTION_NAME", FUNCTION_NAME.to_owned()),
    ]
    .into_iter()
    .collect();
    if let Some(max_concurrency) = max_concurrency {
        vars.insert("AWS_LAMBDA_MAX_CONCURRENCY", max_concurrency.to_owned());
        // The adapter's pool is sized to it; one connection keeps the
        // proxy's count of connections the same in every case.
        vars.insert("DB_POOL_SIZE", "1".to_owned());
    }
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("configuration");
    Adapter::builder().config(config).start().await.expect("init")
}
