//! Fixtures for the `orders` example: its migration, API Gateway HTTP API
//! (payload v2) events built from the fixtures in `example-functions/events`,
//! and [`OrdersEnv`], a throwaway PostgreSQL + Runtime API + running function.

use std::time::Duration;

use serde_json::Value;

use crate::{bin_path, Function, FunctionBuilder, Postgres, RuntimeApi};

/// The example's schema.
pub const MIGRATION: &str = include_str!("../../example-functions/migrations/0001_orders.sql");

const POST_EVENT: &str = include_str!("../../example-functions/events/post-order.json");
const GET_EVENT: &str = include_str!("../../example-functions/events/get-order.json");

/// The function name the tests give `orders`; the adapter uses it as the
/// connections' `application_name`, which is how tests find its backends.
pub const FUNCTION_NAME: &str = "orders";

/// How long a test waits for the function to reach the runtime loop.
pub const STARTUP: Duration = Duration::from_secs(30);

/// `POST /orders` with `body` as the raw request body.
#[must_use]
pub fn post_order(body: &str) -> Value {
    let mut event: Value = serde_json::from_str(POST_EVENT).expect("post-order.json is JSON");
    event["body"] = Value::String(body.to_owned());
    event
}

/// `POST /orders` for a valid order.
#[must_use]
pub fn post_valid_order(item: &str, quantity: i64) -> Value {
    post_order(&serde_json::json!({ "item": item, "quantity": quantity }).to_string())
}

/// `GET /orders/{id}` with `id` as the raw path parameter.
#[must_use]
pub fn get_order(id: &str) -> Value {
    let mut event: Value = serde_json::from_str(GET_EVENT).expect("get-order.json is JSON");
    event["rawPath"] = Value::String(format!("/orders/{id}"));
    event["requestContext"]["http"]["path"] = Value::String(format!("/orders/{id}"));
    event["pathParameters"]["id"] = Value::String(id.to_owned());
    event
}

/// The status code of an API Gateway v2 response.
#[must_use]
pub fn status(response: &Value) -> i64 {
    response["statusCode"].as_i64().unwrap_or_else(|| panic!("no statusCode in {response}"))
}

/// The parsed JSON body of an API Gateway v2 response.
#[must_use]
pub fn body(response: &Value) -> Value {
    let text = response["body"].as_str().unwrap_or_else(|| panic!("no body in {response}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text}"))
}

/// A throwaway PostgreSQL with the `orders` schema, a Runtime API emulator,
/// and the `orders` binary running against both.
#[derive(Debug)]
pub struct OrdersEnv {
    /// The database.
    pub pg: Postgres,
    /// The emulated Runtime API.
    pub api: RuntimeApi,
    /// The running function.
    pub function: Function,
}

impl OrdersEnv {
    /// Starts everything with the migration applied and `env` given to the
    /// function, then waits until the function polls for its first event
    /// (its INIT, warmup included, is over).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let pg = postgres().await;
        pg.apply_sql_as_app(MIGRATION).await;
        Self::start_with(pg, env).await
    }

    /// As [`OrdersEnv::start`], on a database the caller prepared.
    pub async fn start_with(pg: Postgres, env: &[(&str, &str)]) -> Self {
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let function = orders_function(&pg, env).spawn(&api);
        let env = Self { pg, api, function };
        assert!(
            env.api.wait_next_polls(1, STARTUP).await,
            "orders never polled for an event; its output:\n{}",
            env.function.output()
        );
        env
    }
}

/// A throwaway PostgreSQL that logs every protocol step, so that tests can
/// count what the function did (see [`crate::server_log`]).
pub async fn postgres() -> Postgres {
    Postgres::builder().setting("log_min_duration_statement", "0").start().await
}

/// As [`postgres`], also logging clients that leave without the Terminate
/// message (at `debug1` the server logs "unexpected EOF on client
/// connection"), with the `orders` schema applied.
pub async fn postgres_watching_closes() -> Postgres {
    let pg = Postgres::builder()
        .setting("log_min_duration_statement", "0")
        .setting("log_min_messages", "debug1")
        .start()
        .await;
    pg.apply_sql_as_app(MIGRATION).await;
    pg
}

/// The `orders` binary configured for `pg`, with `env` on top.
#[must_use]
pub fn orders_function(pg: &Postgres, env: &[(&str, &str)]) -> FunctionBuilder {
    let mut builder = Function::builder(bin_path("orders")).name(FUNCTION_NAME).env("DATABASE_URL", pg.database_url());
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder
}
