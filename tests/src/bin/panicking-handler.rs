//! A Lambda function for the tests only: a handler that panics when the
//! event asks it to, so that `tests/tests/error_types.rs` can read what
//! Lambda receives for a panic, and check that the environment then goes on
//! serving. The examples have no such trigger.
//!
//! Events: `{"panic": "..."}` panics with that message (a `String`
//! payload); `{"panic_static": true}` panics with a string literal (a
//! `&str` payload); anything else answers `{"one": 1}` from the database.
//!
//! It runs on `runtime_adapter::tokio_runtime`'s runtime, or with
//! `PANICKING_HANDLER_RUNTIME=multi-thread` on the one `#[tokio::main]`
//! builds: a panic must read the same on both.

use runtime_adapter::{Adapter, Db, LambdaEvent};
use serde_json::{json, Value};

const SELECT_ONE: &str = "SELECT 1::int4 AS one";

fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let runtime = match std::env::var("PANICKING_HANDLER_RUNTIME").as_deref() {
        Ok("multi-thread") => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        Ok(other) => return Err(format!("PANICKING_HANDLER_RUNTIME: unknown runtime `{other}`").into()),
        Err(_) => runtime_adapter::tokio_runtime()?,
    };
    runtime.block_on(Adapter::builder().statement(SELECT_ONE).run(handle))
}

async fn handle(db: Db, event: LambdaEvent<Value>) -> Result<Value, runtime_adapter::Error> {
    if let Some(message) = event.payload["panic"].as_str() {
        panic!("{message}");
    }
    if event.payload["panic_static"].as_bool() == Some(true) {
        panic!("a static panic message");
    }
    let row = db.query_one(SELECT_ONE, &[]).await?;
    Ok(json!({ "one": row.get::<_, i32>("one") }))
}
