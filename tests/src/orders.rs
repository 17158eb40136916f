//! Fixtures for the `orders` example and its axum twin `orders-axum`: their
//! migration, API Gateway HTTP API (payload v2), REST API (v1) and ALB events
//! built from the fixtures in `example-functions/events`, and [`OrdersEnv`],
//! a throwaway PostgreSQL + Runtime API + running function.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server_log::Log;
use crate::{bin_path, FaultProxy, Function, FunctionBuilder, Postgres, RuntimeApi};

/// The example's schema.
pub const MIGRATION: &str = include_str!("../../example-functions/migrations/0001_orders.sql");

const POST_EVENT: &str = include_str!("../../example-functions/events/post-order.json");
const GET_EVENT: &str = include_str!("../../example-functions/events/get-order.json");
const REST_GET_EVENT: &str = include_str!("../../example-functions/events/rest-get-order.json");
const ALB_GET_EVENT: &str = include_str!("../../example-functions/events/alb-get-order.json");

/// The binary of the `orders` example.
pub const ORDERS_BIN: &str = "orders";
/// The binary of the `orders-axum` example: the same API on axum and
/// lambda_http. The tests run it under the same function name as `orders`,
/// so that the server log and the EMF records are read the same way.
pub const AXUM_BIN: &str = "orders-axum";

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

/// An API Gateway v2 request: `method` on `path`, with `body` if any.
#[must_use]
pub fn v2_request(method: &str, path: &str, body: Option<&str>) -> Value {
    let mut event: Value = serde_json::from_str(POST_EVENT).expect("post-order.json is JSON");
    event["routeKey"] = Value::String(format!("{method} {path}"));
    event["requestContext"]["routeKey"] = event["routeKey"].clone();
    event["rawPath"] = Value::String(path.to_owned());
    event["requestContext"]["http"]["method"] = Value::String(method.to_owned());
    event["requestContext"]["http"]["path"] = Value::String(path.to_owned());
    event["body"] = body.map_or(Value::Null, |b| Value::String(b.to_owned()));
    event
}

/// An API Gateway REST API (payload v1) request on the `prod` stage:
/// `method` on `path`, with `body` if any. lambda_http puts the stage in
/// front of the path unless `AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH` is set.
#[must_use]
pub fn rest_request(method: &str, path: &str, body: Option<&str>) -> Value {
    let mut event: Value = serde_json::from_str(REST_GET_EVENT).expect("rest-get-order.json is JSON");
    event["httpMethod"] = Value::String(method.to_owned());
    event["requestContext"]["httpMethod"] = Value::String(method.to_owned());
    event["path"] = Value::String(path.to_owned());
    event["requestContext"]["path"] = Value::String(format!("/prod{path}"));
    match path.strip_prefix("/orders/") {
        Some(id) => event["pathParameters"]["id"] = Value::String(id.to_owned()),
        None => event["pathParameters"] = Value::Null,
    }
    event["body"] = body.map_or(Value::Null, |b| Value::String(b.to_owned()));
    event
}

/// An Application Load Balancer request: `method` on `path`, with `body`.
#[must_use]
pub fn alb_request(method: &str, path: &str, body: &str) -> Value {
    let mut event: Value = serde_json::from_str(ALB_GET_EVENT).expect("alb-get-order.json is JSON");
    event["httpMethod"] = Value::String(method.to_owned());
    event["path"] = Value::String(path.to_owned());
    event["body"] = Value::String(body.to_owned());
    event
}

/// Every line of `output` that is an EMF record, parsed.
#[must_use]
pub fn emf_records(output: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

/// The bytes of `output`'s EMF record lines, newlines included: what
/// CloudWatch Logs would ingest for the metrics.
#[must_use]
pub fn emf_bytes(output: &str) -> usize {
    output
        .lines()
        .filter(|line| serde_json::from_str::<Value>(line).is_ok_and(|v| v.get("_aws").is_some()))
        .map(|line| line.len() + 1)
        .sum()
}

/// The values of the duration metric `name` in one EMF record, each with
/// how often it occurred: EMF's `{"Values":[…],"Counts":[…]}` form, or a
/// plain array (each value once). Empty when the record has none.
#[must_use]
pub fn emf_values(record: &Value, name: &str) -> Vec<(f64, u64)> {
    let number = |v: &Value| v.as_f64().unwrap_or_else(|| panic!("{name}: not a number in {record}"));
    match record.get(name) {
        None => Vec::new(),
        Some(Value::Array(values)) => values.iter().map(|v| (number(v), 1)).collect(),
        Some(metric) => {
            let values = metric["Values"].as_array().unwrap_or_else(|| panic!("{name}: no Values in {record}"));
            let counts = metric["Counts"].as_array().unwrap_or_else(|| panic!("{name}: no Counts in {record}"));
            assert_eq!(values.len(), counts.len(), "{name}: as many counts as values: {record}");
            let count = |c: &Value| c.as_u64().unwrap_or_else(|| panic!("{name}: a count in {record}"));
            values.iter().zip(counts).map(|(v, c)| (number(v), count(c))).collect()
        }
    }
}

/// What CloudWatch computes from `records` for the duration `name`: how
/// many values (occurrences), and their sum.
#[must_use]
pub fn emf_duration(records: &[Value], name: &str) -> (u64, f64) {
    records.iter().flat_map(|r| emf_values(r, name)).fold((0, 0.0), |(n, sum), (v, c)| (n + c, sum + v * c as f64))
}

/// What CloudWatch computes from `records` for the counter `name`: its
/// sum. Only the records that carry it count (a record that continues the
/// previous one's values carries no counters).
#[must_use]
pub fn emf_sum(records: &[Value], name: &str) -> u64 {
    records
        .iter()
        .filter_map(|r| r.get(name))
        .map(|v| v.as_u64().unwrap_or_else(|| panic!("{name} is not a count: {v}")))
        .sum()
}

/// Checks what CloudWatch requires of a record: every declared metric has
/// a value, a number or a distribution of 1 to 100 values (EMF's limit),
/// with its `Timestamp`, namespace `namespace` and the `function_name`
/// dimension.
pub fn check_emf_record(record: &Value, namespace: &str) {
    let directive = &record["_aws"]["CloudWatchMetrics"][0];
    assert!(record["_aws"]["Timestamp"].as_u64().is_some(), "{record}");
    assert_eq!(directive["Namespace"], namespace, "{record}");
    assert_eq!(directive["Dimensions"], serde_json::json!([["function_name"]]), "{record}");
    assert_eq!(record["function_name"], FUNCTION_NAME, "{record}");
    for metric in directive["Metrics"].as_array().expect("metrics") {
        let name = metric["Name"].as_str().expect("name");
        let unit = metric["Unit"].as_str().expect("unit");
        assert!(["Count", "Milliseconds"].contains(&unit), "{name}: {unit}");
        let value = record.get(name).unwrap_or_else(|| panic!("{name} has no value: {record}"));
        if !value.is_number() {
            let values = emf_values(record, name);
            assert!((1..=100).contains(&values.len()), "{name}: {} values: {record}", values.len());
            assert!(values.iter().all(|(_, count)| *count >= 1), "{name}: {record}");
        }
    }
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
    /// The EMF records on the function's stdout, at least `n`, once it has
    /// asked for its next invocation after the last answer: a record due at
    /// an invocation's end is written after the answer and before that
    /// poll (when Lambda would freeze the process).
    pub async fn emf_records_after_answers(&self, n: usize) -> Vec<Value> {
        self.function.wait_back_at_next(&self.api).await;
        let written =
            self.function.wait_for_output_where(Duration::from_secs(5), |output| emf_records(output).len() >= n).await;
        let records = emf_records(&self.function.output());
        assert!(written, "{n} EMF records expected, {} on stdout:\n{}", records.len(), self.function.output());
        records
    }

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
        Self::start_bin_with(ORDERS_BIN, pg, env).await
    }

    /// As [`OrdersEnv::start`], running `orders-axum` instead.
    pub async fn start_axum(env: &[(&str, &str)]) -> Self {
        let pg = postgres().await;
        pg.apply_sql_as_app(MIGRATION).await;
        Self::start_bin_with(AXUM_BIN, pg, env).await
    }

    /// As [`OrdersEnv::start_with`], running the binary `bin`
    /// ([`ORDERS_BIN`] or [`AXUM_BIN`]).
    pub async fn start_bin_with(bin: &str, pg: Postgres, env: &[(&str, &str)]) -> Self {
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let function = function_for(bin, &pg, env).spawn(&api);
        let env = Self { pg, api, function };
        assert!(
            env.api.wait_next_polls(1, STARTUP).await,
            "{bin} never polled for an event; its output:\n{}",
            env.function.output()
        );
        env
    }

    /// As [`OrdersEnv::start_bin_with`], with the function reaching `pg`
    /// through a [`FaultProxy`] (its `DATABASE_URL` points at the proxy).
    pub async fn start_behind_proxy(bin: &str, pg: Postgres, env: &[(&str, &str)]) -> (Self, FaultProxy) {
        let proxy = FaultProxy::for_postgres(&pg).await;
        let url = proxy.url_for(&pg.database_url());
        let mut settings = vec![("DATABASE_URL", url.as_str())];
        settings.extend_from_slice(env);
        (Self::start_bin_with(bin, pg, &settings).await, proxy)
    }

    /// Sends SIGTERM, as Lambda does at shutdown, and checks what Lambda's
    /// shutdown contract and the server need: a clean exit within 500 ms and
    /// every backend of the function (taken before the signal) closed with
    /// the Terminate message, as the server logged it. Needs a server from
    /// [`postgres_watching_closes`]. Returns how long the exit took and the
    /// function's whole output.
    pub async fn terminate_and_check_closes(&mut self) -> (Duration, String) {
        let pids = self.pg.backend_pids(FUNCTION_NAME).await;
        assert!(!pids.is_empty(), "the function holds connections before SIGTERM");
        let signalled = Instant::now();
        self.function.terminate();
        let exit = self.function.wait_exit(Duration::from_secs(5)).await.expect("the function exits");
        let took = signalled.elapsed();
        assert!(exit.success(), "a clean exit: {exit:?}");
        assert!(took < Duration::from_millis(500), "within Lambda's shutdown window: {took:?}");
        for pid in pids {
            let tag = format!("[{pid}] {FUNCTION_NAME} LOG:  disconnection");
            assert!(self.pg.wait_for_log(0, &tag, Duration::from_secs(5)).await, "backend {pid} closed");
            let lines = Log::new(self.pg.read_log()).for_pid(pid);
            assert_eq!(lines.counts().unclean_closes, 0, "backend {pid} got Terminate:\n{}", lines.text());
        }
        let output = self.function.output();
        assert!(output.contains("shutdown complete"), "{output}");
        (took, output)
    }
}

/// An order id whose 8 bytes (big-endian, as tokio-postgres binds an `int8`)
/// appear in nothing else the function sends: a [`FaultProxy`] trigger on
/// them fires on the handler's own statement only.
pub const CUT_ID: i64 = 0x0102_0304_0506_0708;

/// The connection is lost inside the handler, after the gate passed: a GET
/// for [`CUT_ID`] has its statement cut by `proxy`. Checks what Lambda
/// receives, the adapter's `DatabaseUnavailable` through the handler's `?`
/// after the single attempt `DB_RETRY_ATTEMPTS=1` allows, and that the next
/// invocation is served.
pub async fn check_an_outage_inside_the_handler(env: &OrdersEnv, proxy: &FaultProxy) {
    proxy.cut_when_client_sends(&CUT_ID.to_be_bytes());
    let lost = env.api.invoke(get_order(&CUT_ID.to_string())).await;
    assert!(proxy.wait_cut(Duration::from_secs(5)).await, "the cut happened inside the handler");
    assert_eq!(lost.outcome.error_type(), Some("RuntimeAdapter.DatabaseUnavailable"), "{:?}", lost.outcome);
    let message = lost.outcome.error_message().expect("a message");
    assert!(message.starts_with("database unavailable after 1 attempt(s)"), "{message}");
    let next = env.api.invoke(get_order("1")).await;
    assert_eq!(status(next.response()), 404, "served again: {:?}", next.outcome);
}

/// The orders another session sees as committed, as `(item, quantity)` in
/// id order: what a test compares with what it sent, rather than a count.
pub async fn committed_orders(pg: &Postgres) -> Vec<(String, i32)> {
    let client = pg.app_client().await;
    let rows = client.query("SELECT item, quantity FROM orders ORDER BY id", &[]).await.expect("read the orders");
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
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
    function_for(ORDERS_BIN, pg, env)
}

/// The binary `bin` ([`ORDERS_BIN`] or [`AXUM_BIN`]) as function
/// [`FUNCTION_NAME`], configured for `pg`, with `env` on top.
#[must_use]
pub fn function_for(bin: &str, pg: &Postgres, env: &[(&str, &str)]) -> FunctionBuilder {
    let mut builder = Function::builder(bin_path(bin)).name(FUNCTION_NAME).env("DATABASE_URL", pg.database_url());
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    builder
}
