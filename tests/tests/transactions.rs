//! Transactions and deadlines, driven in-process against a real server:
//! 40001 reruns the whole closure once, a COMMIT cut in flight is reported
//! as such and not retried, a statement past the deadline is cancelled
//! on the server, and a transaction a raw client left open is rolled back
//! before the connection serves again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use integration_tests::inproc::{adapter, context};
use integration_tests::orders::postgres;
use integration_tests::server_log::Log;
use integration_tests::FaultProxy;
use runtime_adapter::{Error, ErrorKind, IsolationLevel};
use tokio::time::Instant;

const SCHEMA: &str = "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL);
                      INSERT INTO counters VALUES (1, 0);
                      CREATE TABLE journal (id bigserial PRIMARY KEY, note text NOT NULL);";

#[tokio::test]
async fn a_serialization_failure_reruns_the_whole_transaction_which_commits_once() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let other = pg.app_client().await;

    let attempts = AtomicU32::new(0);
    let result = db
        .transaction_with(IsolationLevel::RepeatableRead, |tx| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let other = &other;
            async move {
                let n: i32 = tx.query_one("SELECT n FROM counters WHERE id = 1", &[]).await?.get(0);
                tx.execute("INSERT INTO journal (note) VALUES ($1)", &[&format!("attempt {attempt}")]).await?;
                if attempt == 1 {
                    // A concurrent writer commits a change to the row this
                    // transaction has read: its own update must fail 40001.
                    other
                        .execute("UPDATE counters SET n = n + 100 WHERE id = 1", &[])
                        .await
                        .expect("concurrent update");
                }
                tx.execute("UPDATE counters SET n = $1 WHERE id = 1", &[&(n + 1)]).await?;
                Ok(n)
            }
        })
        .await;

    assert_eq!(attempts.load(Ordering::SeqCst), 2, "rerun once");
    assert_eq!(result.expect("committed on the second attempt"), 100, "the rerun saw the concurrent change");
    let n: i32 = other.query_one("SELECT n FROM counters WHERE id = 1", &[]).await.expect("n").get(0);
    assert_eq!(n, 101, "both changes, each once");
    let notes: Vec<String> =
        other.query("SELECT note FROM journal", &[]).await.expect("journal").iter().map(|r| r.get(0)).collect();
    assert_eq!(notes, ["attempt 2"], "the first attempt was rolled back whole");
    assert_eq!(adapter.stats().retry_attempts, 1);
}

#[tokio::test]
async fn a_handler_error_rolls_back_and_is_not_retried() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let attempts = AtomicU32::new(0);
    let result: Result<(), Error> = db
        .transaction(|tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.execute("INSERT INTO journal (note) VALUES ('kept?')", &[]).await?;
                tx.execute("INSERT INTO counters VALUES (1, 0)", &[]).await?; // duplicate key
                Ok(())
            }
        })
        .await;
    let error = result.expect_err("unique violation");
    assert_eq!(error.code(), Some(&runtime_adapter::tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
    // The server's DETAIL holds the row's values: kept out of the text that
    // reaches logs and Lambda, reachable through the source.
    let text = error.to_string();
    assert!(text.contains("duplicate key value violates unique constraint"), "{text}");
    assert!(!text.contains("(id)=(1)"), "no row values in the message: {text}");
    let source = std::error::Error::source(&error).expect("the driver's error");
    let driver = source.downcast_ref::<runtime_adapter::tokio_postgres::Error>().expect("a tokio-postgres error");
    let detail = driver.as_db_error().and_then(|db| db.detail()).expect("the server's detail");
    assert!(detail.contains("(id)=(1)"), "{detail}");
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a constraint violation is not retried");
    let count: i64 = db.query_one("SELECT count(*) FROM journal", &[]).await.expect("count").get(0);
    assert_eq!(count, 0, "rolled back");
}

#[tokio::test]
async fn a_commit_cut_in_flight_is_reported_as_outcome_unknown_and_not_retried() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let adapter = adapter(&proxy.url_for(&pg.database_url()), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");

    proxy.cut_after_server_sends(b"COMMIT");
    let attempts = AtomicU32::new(0);
    let result = db
        .transaction(|tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move { tx.execute("INSERT INTO journal (note) VALUES ('committed, unheard')", &[]).await }
        })
        .await;
    assert!(proxy.wait_cut(Duration::from_secs(5)).await, "the cut happened");
    match result {
        Err(Error::CommitOutcomeUnknown { .. }) => {}
        other => panic!("expected CommitOutcomeUnknown, got {other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "never retried");
    let client = pg.app_client().await;
    let count: i64 = client.query_one("SELECT count(*) FROM journal", &[]).await.expect("count").get(0);
    assert_eq!(count, 1, "the server did commit: the outcome really was unknown to the client");
}

#[tokio::test]
async fn a_connection_lost_mid_transaction_reruns_the_transaction() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let attempts = AtomicU32::new(0);
    let pg = &pg;
    let result = db
        .transaction(|tx| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tx.execute("INSERT INTO journal (note) VALUES ($1)", &[&format!("attempt {attempt}")]).await?;
                if attempt == 1 {
                    pg.kill_backends("runtime-adapter").await;
                }
                tx.execute("UPDATE counters SET n = n + 1 WHERE id = 1", &[]).await?;
                Ok(())
            }
        })
        .await;
    result.expect("committed on a new connection");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let client = pg.app_client().await;
    let notes: Vec<String> =
        client.query("SELECT note FROM journal", &[]).await.expect("journal").iter().map(|r| r.get(0)).collect();
    assert_eq!(notes, ["attempt 2"]);
}

#[tokio::test]
async fn a_closure_that_returned_ok_on_a_connection_lost_before_commit_is_rerun() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    // Two connections: the raw handle below keeps the lost one checked out.
    let adapter = adapter(&pg.database_url(), &[("DB_POOL_SIZE", "2")], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    // A handle on the same connection, to see it close from outside the Tx.
    let raw = db.client().await.expect("raw");
    let attempts = AtomicU32::new(0);
    let (pg, raw) = (&pg, &raw);
    let result = db
        .transaction(|tx| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tx.execute("INSERT INTO journal (note) VALUES ($1)", &[&format!("attempt {attempt}")]).await?;
                tx.execute("UPDATE counters SET n = n + 1 WHERE id = 1", &[]).await?;
                if attempt == 1 {
                    // Every statement succeeded; the connection is lost
                    // before COMMIT is sent, and the closure returns Ok.
                    pg.kill_backends("runtime-adapter").await;
                    let closed = async {
                        while !raw.is_closed() {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("the client saw the close");
                }
                Ok(())
            }
        })
        .await;
    result.expect("rerun and committed on a new connection");
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "rerun once: the server had rolled the first attempt back");
    let client = pg.app_client().await;
    let notes: Vec<String> =
        client.query("SELECT note FROM journal", &[]).await.expect("journal").iter().map(|r| r.get(0)).collect();
    assert_eq!(notes, ["attempt 2"]);
    let n: i32 = client.query_one("SELECT n FROM counters WHERE id = 1", &[]).await.expect("n").get(0);
    assert_eq!(n, 1, "the update once");
}

#[tokio::test]
async fn a_statement_still_running_at_the_deadline_is_cancelled_on_the_server() {
    let pg = postgres().await;
    let adapter = adapter(&pg.database_url(), &[("DB_DEADLINE_MARGIN_MS", "500")], &[]).await;
    let timeout = Duration::from_millis(2000);
    let db = adapter.db(&context(timeout)).await.expect("db");
    let pids = pg.backend_pids("runtime-adapter").await;
    assert_eq!(pids.len(), 1, "one connection");
    let pid = pids[0];
    let client = pg.superuser().await;
    // What the adapter's backend is doing, as the server reports it.
    let activity = || async {
        let row = client
            .query_one("SELECT state, query FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .expect("pg_stat_activity");
        (row.get::<_, String>(0), row.get::<_, String>(1))
    };
    let mark = pg.log_mark();

    let started = Instant::now();
    let statement = db.query("SELECT pg_sleep(30)", &[]);
    // First the server shows the statement running on that backend...
    let seen_running = async {
        loop {
            let (state, query) = activity().await;
            if state == "active" && query.contains("pg_sleep") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (result, ()) = tokio::join!(statement, seen_running);
    let took = started.elapsed();
    match result {
        Err(Error::DeadlineExceeded { .. }) => {}
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert!(took < timeout, "stopped before the deadline: {took:?}");
    assert!(took >= Duration::from_millis(1400), "ran until the margin: {took:?}");
    eprintln!("measured: pg_sleep(30) with a 2 s deadline stopped after {took:?}");

    // ...then the same backend logs the cancel and is idle again, long
    // before the 30 s would have run out.
    assert!(
        pg.wait_for_log(mark, "canceling statement due to user request", Duration::from_secs(2)).await,
        "the server cancelled the statement"
    );
    let cancelled = Log::new(pg.log_since(mark)).for_pid(pid);
    assert!(cancelled.text().contains("canceling statement due to user request"), "on the adapter's backend {pid}");
    // The server reports the backend idle just before its ReadyForQuery,
    // after the error the client has already seen: awaited, not assumed.
    let idle = async {
        loop {
            if activity().await.0 == "idle" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), idle).await.expect("the backend is idle again");

    // The connection, back in the pool, serves the next invocation.
    drop(db);
    let next = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let one: i32 = next.query_one("SELECT 1", &[]).await.expect("still usable").get(0);
    assert_eq!(one, 1);
    assert_eq!(adapter.stats().connect_attempts, 1, "the same connection");
}

#[tokio::test]
async fn each_isolation_level_is_the_one_the_server_runs_the_transaction_at() {
    let pg = postgres().await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    for (level, name) in [
        (IsolationLevel::Serializable, "serializable"),
        (IsolationLevel::RepeatableRead, "repeatable read"),
        (IsolationLevel::ReadUncommitted, "read uncommitted"),
        (IsolationLevel::ReadCommitted, "read committed"),
    ] {
        let shown: String =
            db.transaction_with(level, |tx| async move {
                Ok(tx.query_one("SHOW transaction_isolation", &[]).await?.get(0))
            })
            .await
            .unwrap_or_else(|e| panic!("{level:?}: {e}"));
        assert_eq!(shown, name, "{level:?}: the level the server reports inside the transaction");
    }
}

#[tokio::test]
async fn a_tx_returns_the_rows_the_server_returned_and_its_debug_shows_only_the_deadline() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let (found, missing, debug) = db
        .transaction(|tx| async move {
            let found = tx.query_opt("SELECT n FROM counters WHERE id = 1", &[]).await?.map(|row| row.get::<_, i32>(0));
            let missing =
                tx.query_opt("SELECT n FROM counters WHERE id = 2", &[]).await?.map(|row| row.get::<_, i32>(0));
            Ok((found, missing, format!("{tx:?}")))
        })
        .await
        .expect("transaction");
    assert_eq!((found, missing), (Some(0), None), "query_opt: the one row, then none");
    assert!(debug.starts_with("Tx { until: Deadline(Some("), "{debug}");
    assert!(debug.ends_with(", .. }"), "nothing but the deadline: {debug}");
}

#[tokio::test]
async fn a_serialization_failure_at_commit_reruns_the_transaction() {
    let pg = postgres().await;
    pg.apply_sql_as_app(
        "CREATE TABLE duty (doctor text PRIMARY KEY, on_call bool NOT NULL);
         INSERT INTO duty VALUES ('alice', true), ('bob', true);",
    )
    .await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let other = pg.app_client().await;
    let attempts = AtomicU32::new(0);
    let first_returned_ok = std::sync::atomic::AtomicBool::new(false);
    let (other, first_returned_ok_ref) = (&other, &first_returned_ok);
    let result = db
        .transaction_with(IsolationLevel::Serializable, |tx| {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let on_call: i64 = tx.query_one("SELECT count(*) FROM duty WHERE on_call", &[]).await?.get(0);
                if attempt == 1 {
                    // Write skew: both read two doctors on call and each
                    // takes one off. The other commits first; this
                    // transaction's statements all succeed, and only its
                    // COMMIT can fail (40001).
                    tx.execute("UPDATE duty SET on_call = false WHERE doctor = 'alice'", &[]).await?;
                    other
                        .batch_execute(
                            "BEGIN ISOLATION LEVEL SERIALIZABLE;
                             SELECT count(*) FROM duty WHERE on_call;
                             UPDATE duty SET on_call = false WHERE doctor = 'bob';
                             COMMIT",
                        )
                        .await
                        .expect("the other transaction commits first");
                    first_returned_ok_ref.store(true, Ordering::SeqCst);
                }
                Ok(on_call)
            }
        })
        .await;
    assert!(first_returned_ok.load(Ordering::SeqCst), "the first attempt's closure returned Ok");
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "rerun once, after the COMMIT failed");
    assert_eq!(result.expect("committed on the second attempt"), 1, "the rerun saw the other's commit");
    let rows = other.query("SELECT doctor, on_call FROM duty ORDER BY doctor", &[]).await.expect("duty");
    let duty: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(duty, [("alice".to_owned(), true), ("bob".to_owned(), false)], "the first attempt's update rolled back");
    assert_eq!(adapter.stats().retry_attempts, 1);
}

#[tokio::test]
async fn a_deferred_constraint_failing_at_commit_is_the_servers_error_and_not_retried() {
    let pg = postgres().await;
    pg.apply_sql_as_app(
        "CREATE TABLE codes (code text UNIQUE DEFERRABLE INITIALLY DEFERRED); INSERT INTO codes VALUES ('a');",
    )
    .await;
    let adapter = adapter(&pg.database_url(), &[], &[]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let attempts = AtomicU32::new(0);
    let result = db
        .transaction(|tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                tx.execute("INSERT INTO codes VALUES ('b')", &[]).await?;
                // Checked at COMMIT, not here.
                tx.execute("INSERT INTO codes VALUES ('a')", &[]).await
            }
        })
        .await;
    match result {
        Err(error @ Error::Db(_)) => {
            assert_eq!(error.code(), Some(&runtime_adapter::tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
        }
        other => panic!("expected the server's unique violation, got {other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a constraint violation at COMMIT is not retried");
    let client = pg.app_client().await;
    let codes: Vec<String> = client
        .query("SELECT code FROM codes ORDER BY code", &[])
        .await
        .expect("codes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(codes, ["a"], "nothing of the transaction committed");
    // The server ended the transaction: the connection serves on.
    let one: i32 = db.query_one("SELECT 1", &[]).await.expect("the connection is reused").get(0);
    assert_eq!(one, 1);
    let stats = adapter.stats();
    assert_eq!((stats.connect_attempts, stats.abandoned_sessions), (1, 0), "the same connection, nothing abandoned");
}

#[tokio::test]
async fn a_transaction_a_raw_client_left_open_is_rolled_back_before_the_next_invocation() {
    let pg = postgres().await;
    pg.apply_sql_as_app(SCHEMA).await;
    let adapter = adapter(&pg.database_url(), &[("DB_POOL_SIZE", "1")], &[]).await;
    let committed = || async {
        let client = pg.app_client().await;
        let rows = client.query("SELECT note FROM journal ORDER BY id", &[]).await.expect("journal");
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
    };

    // A handler opens a transaction through the raw client and returns
    // without ending it: what the adapter cannot see.
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    let raw = db.client().await.expect("raw");
    raw.batch_execute("BEGIN; INSERT INTO journal (note) VALUES ('left open')").await.expect("begin");
    drop(raw);
    drop(db);

    // The next invocation, on the same connection: its write is its own
    // and committed, not swallowed by the transaction left open.
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    db.execute("INSERT INTO journal (note) VALUES ('next')", &[]).await.expect("insert");
    drop(db);
    assert_eq!(committed().await, ["next"], "the left-open insert rolled back, the next one committed");
    let stats = adapter.stats();
    assert_eq!(
        (stats.connect_attempts, stats.abandoned_sessions),
        (1, 0),
        "rolled back at the next checkout and reused, not replaced; raw use is not an abandoned session"
    );
}
