//! Fixtures for the `orders-worker` example: SQS events built from
//! `example-functions/events/sqs-orders.json`, reading its partial batch
//! response, and [`WorkerEnv`], a throwaway PostgreSQL with every migration
//! applied + Runtime API + running function.

use serde_json::Value;

use crate::orders::{postgres, STARTUP};
use crate::{bin_path, migrations, Function, FunctionBuilder, Postgres, RuntimeApi};

/// The function name the tests give `orders-worker` (its connections'
/// `application_name`).
pub const FUNCTION_NAME: &str = "orders-worker";

/// The fixture `cargo lambda invoke` and the tests use: three records, the
/// third with an empty `item`.
pub const SQS_EVENT: &str = include_str!("../../example-functions/events/sqs-orders.json");

/// An SQS event with one record per `(message id, body)`, each a copy of the
/// fixture's first record with those two fields replaced.
#[must_use]
pub fn batch(messages: &[(&str, &str)]) -> Value {
    let mut event: Value = serde_json::from_str(SQS_EVENT).expect("sqs-orders.json is JSON");
    let template = event["Records"][0].clone();
    let records = messages
        .iter()
        .map(|(id, body)| {
            let mut record = template.clone();
            record["messageId"] = Value::String((*id).to_owned());
            record["receiptHandle"] = Value::String(format!("receipt-{id}"));
            record["body"] = Value::String((*body).to_owned());
            record
        })
        .collect();
    event["Records"] = Value::Array(records);
    event
}

/// The JSON body of a valid order.
#[must_use]
pub fn order(item: &str, quantity: i64) -> String {
    serde_json::json!({ "item": item, "quantity": quantity }).to_string()
}

/// The message ids a partial batch response (`{"batchItemFailures": [...]}`)
/// reports as failed, in order. Panics if `response` has not that shape.
#[must_use]
pub fn failed_ids(response: &Value) -> Vec<String> {
    let failures =
        response["batchItemFailures"].as_array().unwrap_or_else(|| panic!("not a batch response: {response}"));
    failures
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap_or_else(|| panic!("no itemIdentifier in {f}")).to_owned())
        .collect()
}

/// Every order in the table: `(message_id, item, quantity)`, by message id.
/// The worker writes every order with its message id, so a row without one
/// fails the caller's test.
pub async fn orders_by_message(pg: &Postgres) -> Vec<(String, String, i32)> {
    let client = pg.app_client().await;
    let rows = client
        .query("SELECT message_id, item, quantity FROM orders ORDER BY message_id", &[])
        .await
        .expect("read orders");
    rows.iter()
        .map(|row| {
            let item: String = row.get(1);
            let id: Option<String> = row.get(0);
            (id.unwrap_or_else(|| panic!("an order without a message id: {item}")), item, row.get(2))
        })
        .collect()
}

/// A throwaway PostgreSQL with every migration applied, a Runtime API
/// emulator, and `orders-worker` running against both.
#[derive(Debug)]
pub struct WorkerEnv {
    /// The database.
    pub pg: Postgres,
    /// The emulated Runtime API.
    pub api: RuntimeApi,
    /// The running function.
    pub function: Function,
}

impl WorkerEnv {
    /// Starts everything with `env` given to the function, then waits until
    /// the function polls for its first event (its INIT is over).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let pg = postgres().await;
        migrations::apply_all(&pg).await;
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let function = worker_function(&pg, env).spawn(&api);
        let env = Self { pg, api, function };
        assert!(
            env.api.wait_next_polls(1, STARTUP).await,
            "orders-worker never polled for an event; its output:\n{}",
            env.function.output()
        );
        env
    }
}

/// The `orders-worker` binary configured for `pg`, with `env` on top.
#[must_use]
pub fn worker_function(pg: &Postgres, env: &[(&str, &str)]) -> FunctionBuilder {
    let mut builder =
        Function::builder(bin_path("orders-worker")).name(FUNCTION_NAME).env("DATABASE_URL", pg.database_url());
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder
}
