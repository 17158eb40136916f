//! The statement caches are bounded: 10,000 distinct SQL texts (dynamic SQL,
//! IN-lists) keep this process's memory and the server backend's within a
//! bound, read from `/proc` (the backend's from the server side, by its pid).
//! One test in its own binary, so that no other test shares the process.

use std::time::Duration;

use integration_tests::inproc::{adapter, context};
use integration_tests::orders::postgres;

const DISTINCT_TEXTS: usize = 10_000;

/// Private resident memory (`RssAnon`) of a process, in KiB.
fn rss_anon_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("RssAnon value")
}

/// Runs the distinct texts through one connection; returns the growth of
/// this process and of the server backend, in KiB.
async fn growth(cache_size: &str, mode: &str) -> (i64, i64) {
    let pg = postgres().await;
    let env = [("DB_POOL_SIZE", "1"), ("DB_STATEMENT_CACHE_SIZE", cache_size), ("DB_POOLER_MODE", mode)];
    let adapter = adapter(&pg.database_url(), &env, &[]).await;
    let backend = pg.backend_pids("runtime-adapter").await;
    assert_eq!(backend.len(), 1, "one connection");
    let backend = backend[0].to_string();
    let db = adapter.db(&context(Duration::from_secs(600))).await.expect("db");
    // Warm the code paths and allocator first.
    for i in 0..200 {
        db.idempotent().query_one(&format!("SELECT $1::int + {i}"), &[&1i32]).await.expect("warm-up query");
    }
    let (me_before, backend_before) = (rss_anon_kib("self"), rss_anon_kib(&backend));
    for i in 0..DISTINCT_TEXTS {
        let sql = format!("SELECT $1::int + {}", i + 1_000);
        let row = db.idempotent().query_one(&sql, &[&1i32]).await.expect("distinct query");
        assert_eq!(row.get::<_, i32>(0), i32::try_from(i + 1_001).expect("fits"));
    }
    let (me_after, backend_after) = (rss_anon_kib("self"), rss_anon_kib(&backend));
    assert_eq!(pg.backend_pids("runtime-adapter").await, [backend.parse::<i32>().expect("pid")], "same backend");
    (me_after as i64 - me_before as i64, backend_after as i64 - backend_before as i64)
}

#[tokio::test]
async fn distinct_sql_texts_keep_the_function_and_the_backend_within_a_bound() {
    // The default bound, and (for comparison, side by side) one large enough
    // to hold every text: what the caches cost without a bound.
    let (me, backend) = growth("100", "none").await;
    let (me_unbounded, backend_unbounded) = growth("1000000", "none").await;
    let (me_transaction, _) = growth("100", "transaction").await;
    eprintln!(
        "measured: {DISTINCT_TEXTS} distinct texts, growth in KiB (function, backend): \
         bounded 100 ({me}, {backend}), unbounded ({me_unbounded}, {backend_unbounded}), \
         transaction mode bounded 100 (function {me_transaction})"
    );
    // A backend holding 100 prepared statements is a few MiB; one holding
    // 10,000 is tens of MiB (the unbounded run shows it).
    assert!(backend < 6 * 1024, "the backend grew {backend} KiB");
    assert!(me < 3 * 1024, "the function grew {me} KiB");
    assert!(me_transaction < 3 * 1024, "the function grew {me_transaction} KiB in transaction mode");
    assert!(backend_unbounded > 4 * backend.max(1024), "the bound is what keeps the backend small");
}
