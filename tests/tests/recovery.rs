//! Recovery from what operators do to warm environments: a migration, a
//! `DISCARD ALL`, a failover that turns the writer into a reader, and
//! PostgreSQL restarted behind PgBouncer. Outcomes are read from another
//! session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::inproc::{adapter, context};
use integration_tests::orders::postgres;
use integration_tests::pgbouncer::PgBouncer;
use integration_tests::{FaultProxy, Postgres};
use runtime_adapter::{Adapter, Error, ErrorKind};
use tokio::time::Instant;

const SCHEMA: &str = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);
                      INSERT INTO items VALUES (1, 'tea'), (2, 'cake');
                      CREATE TABLE journal (note text PRIMARY KEY);";
const SELECT_ITEM: &str = "SELECT * FROM items WHERE id = $1";
const INSERT_ITEM: &str = "INSERT INTO items (id, name) VALUES ($1, $2) RETURNING *";
const INSERT_NOTE: &str = "INSERT INTO journal (note) VALUES ($1)";

async fn schema(pg: &Postgres) {
    pg.apply_sql_as_app(SCHEMA).await;
}

/// The names another session sees in `items`, with the count of columns.
async fn committed_items(pg: &Postgres) -> Vec<(i32, String)> {
    let client = pg.app_client().await;
    let rows = client.query("SELECT id, name FROM items ORDER BY id", &[]).await.expect("items");
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

async fn committed_notes(pg: &Postgres) -> Vec<String> {
    let client = pg.app_client().await;
    let rows = client.query("SELECT note FROM journal ORDER BY note", &[]).await.expect("journal");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test]
async fn a_column_added_under_a_warm_environment_costs_no_failed_call() {
    for mode in ["none", "transaction"] {
        let pg = postgres().await;
        schema(&pg).await;
        let env = [("DB_POOLER_MODE", mode), ("DB_POOL_SIZE", "1")];
        let adapter = adapter(&pg.database_url(), &env, &[SELECT_ITEM, INSERT_ITEM]).await;
        let undeclared = "SELECT * FROM items ORDER BY id";
        {
            let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
            assert_eq!(db.query_one(SELECT_ITEM, &[&1i32]).await.expect("before").len(), 2);
            assert_eq!(db.query(undeclared, &[]).await.expect("before")[0].len(), 2);
        }
        pg.apply_sql_as_app("ALTER TABLE items ADD COLUMN price int NOT NULL DEFAULT 3").await;

        let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
        let row = db.query_one(SELECT_ITEM, &[&1i32]).await.unwrap_or_else(|e| panic!("{mode}: declared: {e}"));
        assert_eq!(row.len(), 3, "{mode}: the new column is there");
        let rows = db.query(undeclared, &[]).await.unwrap_or_else(|e| panic!("{mode}: undeclared: {e}"));
        assert_eq!(rows[0].len(), 3, "{mode}");
        // A write whose cached plan went stale runs once, not twice.
        let inserted = db.query_one(INSERT_ITEM, &[&3i32, &"scone"]).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(inserted.len(), 3, "{mode}");
        // Inside a transaction too: the transaction reruns once.
        db.transaction(|tx| async move {
            tx.query_one(SELECT_ITEM, &[&2i32]).await?;
            tx.query_one(INSERT_ITEM, &[&4i32, &"bun"]).await
        })
        .await
        .unwrap_or_else(|e| panic!("{mode}: transaction: {e}"));
        pg.apply_sql_as_app("ALTER TABLE items ADD COLUMN origin text").await;
        db.transaction(|tx| async move { tx.query_one(INSERT_ITEM, &[&5i32, &"pie"]).await })
            .await
            .unwrap_or_else(|e| panic!("{mode}: transaction after a second migration: {e}"));
        assert_eq!(
            committed_items(&pg).await,
            [(1, "tea"), (2, "cake"), (3, "scone"), (4, "bun"), (5, "pie")].map(|(i, n)| (i, n.to_owned())),
            "{mode}: each write committed once"
        );
        assert_eq!(adapter.stats().connect_attempts, 1, "{mode}: the same connection throughout");
    }
}

#[tokio::test]
async fn statements_dropped_by_discard_all_are_prepared_again() {
    let pg = postgres().await;
    schema(&pg).await;
    let adapter = adapter(&pg.database_url(), &[("DB_POOL_SIZE", "1")], &[SELECT_ITEM, INSERT_ITEM]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    db.query_one(SELECT_ITEM, &[&1i32]).await.expect("warm");
    for reset in ["DISCARD ALL", "DEALLOCATE ALL"] {
        db.client().await.expect("raw").batch_execute(reset).await.expect(reset);
        let row = db.query_one(SELECT_ITEM, &[&1i32]).await.unwrap_or_else(|e| panic!("after {reset}: {e}"));
        assert_eq!(row.get::<_, String>(1), "tea");
    }
    db.query_one(INSERT_ITEM, &[&3i32, &"scone"]).await.expect("a declared write after DEALLOCATE ALL");
    assert_eq!(committed_items(&pg).await.len(), 3, "the write committed once");
}

/// Two servers with the same schema, and a proxy in front of the first
/// standing for the cluster's writer endpoint.
struct Cluster {
    old: Postgres,
    new: Postgres,
    endpoint: FaultProxy,
}

impl Cluster {
    async fn start() -> Self {
        let (old, new) = tokio::join!(postgres(), postgres());
        schema(&old).await;
        schema(&new).await;
        let endpoint = FaultProxy::for_postgres(&old).await;
        Self { old, new, endpoint }
    }

    fn url(&self) -> String {
        self.endpoint.url_for(&self.old.database_url())
    }

    /// The writer comes back as a reader (existing sessions included), and
    /// the endpoint now leads to the new writer.
    async fn fail_over(&self) {
        self.old.batch("ALTER SYSTEM SET default_transaction_read_only = on").await;
        self.old.batch("SELECT pg_reload_conf()").await;
        let probe = self.old.app_client().await;
        let read_only: String = probe.query_one("SHOW default_transaction_read_only", &[]).await.expect("show").get(0);
        assert_eq!(read_only, "on", "the old writer is a reader now");
        self.endpoint.set_upstream(SocketAddr::from(([127, 0, 0, 1], self.new.port())));
    }
}

#[tokio::test]
async fn after_a_failover_writes_land_on_the_new_writer_at_once() {
    let cluster = Cluster::start().await;
    for mode in ["none", "transaction"] {
        let env = [("DB_POOLER_MODE", mode), ("DB_POOL_SIZE", "2")];
        let single = adapter(&cluster.url(), &env, &[INSERT_NOTE]).await;
        let transactional = adapter(&cluster.url(), &env, &[INSERT_NOTE]).await;
        let before = format!("{mode} before");
        single
            .db(&context(Duration::from_secs(30)))
            .await
            .expect("db")
            .execute(INSERT_NOTE, &[&before])
            .await
            .expect("w");
        assert!(committed_notes(&cluster.old).await.contains(&before));

        cluster.fail_over().await;
        // The next invocation of each environment writes to the new writer.
        let db = single.db(&context(Duration::from_secs(30))).await.expect("db");
        let note = format!("{mode} autocommit after");
        db.execute(INSERT_NOTE, &[&note]).await.unwrap_or_else(|e| panic!("{mode}: autocommit: {e}"));
        let db = transactional.db(&context(Duration::from_secs(30))).await.expect("db");
        let tx_note = format!("{mode} transaction after");
        db.transaction(|tx| {
            let tx_note = tx_note.clone();
            async move { tx.execute(INSERT_NOTE, &[&tx_note]).await }
        })
        .await
        .unwrap_or_else(|e| panic!("{mode}: transaction: {e}"));

        let on_new = committed_notes(&cluster.new).await;
        assert!(on_new.contains(&note) && on_new.contains(&tx_note), "{mode}: on the new writer: {on_new:?}");
        let on_old = committed_notes(&cluster.old).await;
        assert!(!on_old.contains(&note) && !on_old.contains(&tx_note), "{mode}: nothing on the reader: {on_old:?}");
        for adapter in [&single, &transactional] {
            assert_eq!(adapter.stats().refreshes_failover, 1, "{mode}: one pool replacement per environment");
        }
        // Undo, for the next mode.
        cluster.old.batch("ALTER SYSTEM RESET default_transaction_read_only").await;
        cluster.old.batch("SELECT pg_reload_conf()").await;
        cluster.endpoint.set_upstream(SocketAddr::from(([127, 0, 0, 1], cluster.old.port())));
    }
}

#[tokio::test]
async fn postgres_restarted_behind_pgbouncer_fails_no_read_and_reports_every_write() {
    const ENVIRONMENTS: usize = 4;
    let pg = postgres().await;
    schema(&pg).await;
    // PgBouncer answers every client 08P01 for `server_login_retry` after a
    // failed server login (15 s by default, longer than most functions'
    // timeouts): the README recommends 1 s in front of Lambda.
    let bouncer = PgBouncer::start_with(&pg, "transaction", 4, &[("server_login_retry", "1")]).await;
    // Attempts enough that the deadline, not their count, ends retries.
    let env = [
        ("DB_POOLER_MODE", "transaction"),
        ("DB_POOL_SIZE", "1"),
        ("DB_RETRY_BASE_DELAY_MS", "50"),
        ("DB_RETRY_ATTEMPTS", "30"),
    ];
    let mut adapters = Vec::new();
    for _ in 0..ENVIRONMENTS {
        adapters.push(adapter(&bouncer.database_url(), &env, &[SELECT_ITEM, INSERT_NOTE]).await);
    }
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = adapters
        .into_iter()
        .enumerate()
        .map(|(e, adapter): (usize, Adapter)| {
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut i = 0;
                while !stopped.load(std::sync::atomic::Ordering::Acquire) {
                    let started = Instant::now();
                    let note = format!("env{e}-{i}");
                    // A failed checkout fails the read too.
                    match adapter.db(&context(Duration::from_secs(10))).await {
                        Ok(db) => {
                            let read = db.idempotent().query_opt(SELECT_ITEM, &[&1i32]).await.map(|_| ());
                            let write = db.execute(INSERT_NOTE, &[&note]).await.map(|_| ());
                            outcomes.push((note, started.elapsed(), read, Some(write)));
                        }
                        Err(error) => outcomes.push((note, started.elapsed(), Err(error), None)),
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                outcomes
            })
        })
        .collect();
    // Let them run, then restart the server with about a second down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.start_again().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stopped.store(true, std::sync::atomic::Ordering::Release);

    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.expect("worker"));
    }
    let committed = committed_notes(&pg).await;
    let (mut invocations, mut unknown, mut refused) = (0, 0, 0);
    {
        for (note, took, read, write) in outcomes {
            invocations += 1;
            if let Err(error) = read {
                panic!("a read failed with time left ({took:?}): {error}\n{}", bouncer.log());
            }
            let landed = committed.binary_search(&note).is_ok();
            match write.expect("a write after a successful read") {
                Ok(()) => assert!(landed, "acknowledged {note} is not committed"),
                Err(Error::OutcomeUnknown { .. }) => unknown += 1,
                Err(error) => {
                    assert!(!landed, "{note} failed ({error}) yet is committed");
                    assert!(
                        error.kind() != ErrorKind::Permanent || matches!(error, Error::Unavailable { .. }),
                        "{error}"
                    );
                    refused += 1;
                }
            }
        }
    }
    eprintln!(
        "measured: PostgreSQL restarted behind PgBouncer under {ENVIRONMENTS} environments: {invocations} invocations, \
         0 failed reads, {unknown} writes reported with unknown outcome, {refused} refused before running"
    );
    assert!(invocations > 20, "the environments kept working: {invocations}");
}

#[tokio::test]
async fn a_commit_cut_by_a_server_crash_behind_pgbouncer_is_reported_as_outcome_unknown() {
    let pg = postgres().await;
    schema(&pg).await;
    // PgBouncer reaches the server through the fault proxy, which cuts the
    // server connection right after the server has answered COMMIT:
    // PgBouncer tells its client 08P01 "server conn crashed?".
    let link = FaultProxy::for_postgres(&pg).await;
    let bouncer = PgBouncer::start_via(link.port(), "transaction", 2, &[]).await;
    let adapter = adapter(&bouncer.database_url(), &[("DB_POOLER_MODE", "transaction")], &[INSERT_NOTE]).await;
    let db = adapter.db(&context(Duration::from_secs(30))).await.expect("db");
    link.cut_after_server_sends(b"COMMIT");
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let result = db
        .transaction(|tx| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { tx.execute(INSERT_NOTE, &[&"committed, unheard"]).await }
        })
        .await;
    assert!(link.wait_cut(Duration::from_secs(5)).await, "the cut happened");
    match result {
        Err(Error::CommitOutcomeUnknown { source }) => {
            eprintln!("measured: COMMIT cut behind PgBouncer: CommitOutcomeUnknown from {source}");
        }
        other => panic!("expected CommitOutcomeUnknown, got {other:?}\n{}", bouncer.log()),
    }
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 1, "never rerun");
    assert_eq!(committed_notes(&pg).await, ["committed, unheard"], "the server did commit: unknown was the truth");
}
