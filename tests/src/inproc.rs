//! The library driven in-process, for behaviour below the Lambda loop
//! (transactions, cancellation): an [`Adapter`] configured like a function
//! would be, and invocation [`Context`]s with a real deadline.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::tower::Service;
use lambda_runtime::LambdaEvent;
use runtime_adapter::{Adapter, Config, Context, Error, Stats};
use serde_json::{json, Value};

/// An adapter warmed against `database_url` with `env` as its environment
/// and `statements` declared.
pub async fn adapter(database_url: &str, env: &[(&str, &str)], statements: &[&str]) -> Adapter {
    try_adapter(database_url, env, statements).await.expect("adapter init")
}

/// An invocation context whose deadline is `timeout` from now.
#[must_use]
pub fn context(timeout: Duration) -> Context {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    let mut context = Context::default();
    context.request_id = "in-process".to_owned();
    context.deadline = u64::try_from((now + timeout).as_millis()).expect("deadline fits u64");
    context
}

/// As [`adapter`], returning the init error instead of panicking on it.
///
/// # Errors
///
/// The adapter's init error.
pub async fn try_adapter(
    database_url: &str,
    env: &[(&str, &str)],
    statements: &[&str],
) -> Result<Adapter, runtime_adapter::Error> {
    let mut vars: HashMap<String, String> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    vars.insert("DATABASE_URL".to_owned(), database_url.to_owned());
    let config = Config::from_lookup(|name| vars.get(name).cloned())?;
    let mut builder = Adapter::builder().config(config);
    for sql in statements {
        builder = builder.statement(*sql);
    }
    builder.init().await
}

/// Waits, polling every 10 ms, until `done` holds for the adapter's
/// counters; false after `within`.
pub async fn wait_stats(adapter: &Adapter, within: Duration, done: impl Fn(&Stats) -> bool) -> bool {
    let give_up = tokio::time::Instant::now() + within;
    while !done(&adapter.stats()) {
        if tokio::time::Instant::now() >= give_up {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// A `LambdaEvent` handler for a Lambda loop run in-process: a [`Db`] from
/// `adapter` for each event, `SELECT 1` on it, answered as `{"one": 1}`.
///
/// [`Db`]: runtime_adapter::Db
pub fn select_one(
    adapter: Adapter,
) -> impl Service<LambdaEvent<Value>, Response = Value, Error = Error, Future: Send> + Clone + Send + 'static {
    lambda_runtime::service_fn(move |event: LambdaEvent<Value>| {
        let adapter = adapter.clone();
        async move {
            let db = adapter.db(&event.context).await?;
            let row = db.query_one("SELECT 1", &[]).await?;
            Ok::<_, Error>(json!({ "one": row.get::<_, i32>(0) }))
        }
    })
}
