//! `orders-axum`, the `orders` API as an axum `Router` on lambda_http under
//! the lifecycle layer, driven through the emulated Runtime API: the same
//! answers as `orders` for API Gateway v2 events, REST (v1) and ALB events
//! too, the same EMF records and server-side figures, the gate run only by
//! handlers that take a `Db`, SIGTERM closing every connection with
//! Terminate, and a database outage reaching Lambda with the adapter's
//! `errorType`.

use integration_tests::orders::{
    alb_request, body, check_an_outage_inside_the_handler, emf_duration, emf_records, emf_sum, get_order, post_order,
    post_valid_order, postgres, postgres_watching_closes, rest_request, status, v2_request, OrdersEnv, AXUM_BIN,
    FUNCTION_NAME, MIGRATION,
};
use integration_tests::server_log::{Counts, Log};
use serde_json::Value;

/// A REST API puts its stage in the path; the template sets this for
/// `orders-axum`, so that the router sees `/orders/…`.
const IGNORE_STAGE: (&str, &str) = ("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");

/// What a client sees of an answer: the status, the content type, and the
/// JSON body with `created_at` (a clock reading) checked and set aside.
fn seen(response: &Value) -> (i64, Value, Value) {
    let headers = &response["headers"];
    let content_type = headers.get("content-type").or_else(|| headers.get("Content-Type")).cloned();
    let mut body = body(response);
    if let Some(at) = body.get_mut("created_at") {
        assert!(at.as_str().is_some_and(|t| t.contains('T')), "RFC 3339 timestamp: {at}");
        *at = Value::String("<timestamp>".to_owned());
    }
    (status(response), content_type.unwrap_or(Value::Null), body)
}

/// The same requests, in API Gateway v2 events, for both functions: each
/// outcome `orders` gives (201, 200, 404, 400s, 405, 404 for a route).
fn script() -> Vec<Value> {
    let mut base64 = post_valid_order("tea", 1);
    // base64 of {"item":"tea","quantity":1}
    base64["body"] = Value::String("eyJpdGVtIjoidGVhIiwicXVhbnRpdHkiOjF9".to_owned());
    base64["isBase64Encoded"] = Value::Bool(true);
    vec![
        post_valid_order("coffee beans", 2),
        get_order("1"),
        get_order("999999"),
        base64,
        get_order("2"),
        post_order("not json"),
        post_order(""),
        post_order(r#"{"item": "tea"}"#),
        post_order(r#"{"item": "tea", "quantity": 0}"#),
        post_order(r#"{"item": "  ", "quantity": 2}"#),
        post_order(r#"{"item": "tea", "quantity": 2, "price": 3}"#),
        get_order("abc"),
        get_order("99999999999999999999"),
        get_order("-"),
        v2_request("DELETE", "/orders/1", None),
        v2_request("GET", "/orders", None),
        v2_request("GET", "/customers/1", None),
    ]
}

#[tokio::test]
async fn answers_are_identical_to_orders_for_the_same_requests() {
    let plain = OrdersEnv::start(&[]).await;
    let axum = OrdersEnv::start_axum(&[]).await;
    let mut statuses = Vec::new();
    for event in script() {
        let expected = plain.api.invoke(event.clone()).await;
        let answered = axum.api.invoke(event.clone()).await;
        let (expected, answered) = (seen(expected.response()), seen(answered.response()));
        assert_eq!(answered, expected, "for {event}");
        statuses.push(expected.0);
    }
    assert_eq!(statuses, [201, 200, 404, 201, 200, 400, 400, 400, 400, 400, 400, 400, 400, 400, 405, 405, 404]);
    assert_eq!(status(axum.api.invoke(v2_request("GET", "/axum/orders/1", None)).await.response()), 200);
}

#[tokio::test]
async fn rest_api_and_alb_events_are_served_too() {
    let env = OrdersEnv::start_axum(&[IGNORE_STAGE]).await;

    let created = env.api.invoke(rest_request("POST", "/orders", Some(r#"{"item": "tea", "quantity": 3}"#))).await;
    assert_eq!(status(created.response()), 201, "{:?}", created.outcome);
    let order = body(created.response());
    assert_eq!((order["item"].as_str(), order["quantity"].as_i64()), (Some("tea"), Some(3)));
    let id = order["id"].as_i64().expect("numeric id");

    let found = env.api.invoke(rest_request("GET", &format!("/orders/{id}"), None)).await;
    assert_eq!(status(found.response()), 200, "{:?}", found.outcome);
    assert_eq!(body(found.response()), order);
    // A REST API answer carries its headers in both maps.
    let headers = found.response()["multiValueHeaders"]["content-type"].clone();
    assert_eq!(headers, serde_json::json!(["application/json"]), "{}", found.response());
    let missing = env.api.invoke(rest_request("GET", "/orders/999999", None)).await;
    assert_eq!(status(missing.response()), 404);
    assert_eq!(body(missing.response())["error"], "order 999999 not found");

    let alb = env.api.invoke(alb_request("GET", &format!("/orders/{id}"), "")).await;
    assert_eq!(status(alb.response()), 200, "{:?}", alb.outcome);
    assert_eq!(body(alb.response()), order);
    assert_eq!(alb.response()["statusDescription"], "200 OK", "an ALB answer: {}", alb.response());
    let alb_created = env.api.invoke(alb_request("POST", "/orders", r#"{"item": "cocoa", "quantity": 1}"#)).await;
    assert_eq!(status(alb_created.response()), 201, "{:?}", alb_created.outcome);
    let alb_bad = env.api.invoke(alb_request("POST", "/orders", r#"{"item": "cocoa"}"#)).await;
    assert_eq!(status(alb_bad.response()), 400);
    assert!(body(alb_bad.response())["error"].as_str().is_some_and(|m| m.contains("missing field `quantity`")));
    assert_eq!(status(env.api.invoke(alb_request("PUT", "/orders/1", "")).await.response()), 405);
}

/// Invocations that reach the database, the same for both functions.
fn database_script() -> Vec<Value> {
    vec![post_valid_order("tea", 1), get_order("1"), get_order("404404"), post_valid_order("coffee", 2)]
}

#[tokio::test]
async fn the_emf_records_are_the_same_as_orders() {
    // A record per invocation, to compare them one by one.
    let settings = [("DB_METRICS_NAMESPACE", "Orders/Test"), ("DB_METRICS_INTERVAL_MS", "0")];
    let plain = OrdersEnv::start(&settings).await;
    let axum = OrdersEnv::start_axum(&settings).await;
    let script = database_script();
    for event in &script {
        plain.api.invoke(event.clone()).await;
        axum.api.invoke(event.clone()).await;
    }
    let expected = plain.emf_records_after_answers(script.len()).await;
    let got = axum.emf_records_after_answers(script.len()).await;
    assert_eq!(expected.len(), script.len(), "one record per invocation from orders");
    assert_eq!(got.len(), script.len(), "one record per invocation from orders-axum");
    for (i, (expected, got)) in expected.iter().zip(&got).enumerate() {
        let directive = |r: &Value| {
            let d = &r["_aws"]["CloudWatchMetrics"][0];
            let names: Vec<Value> =
                d["Metrics"].as_array().expect("metrics").iter().map(|m| m["Name"].clone()).collect();
            (d["Namespace"].clone(), d["Dimensions"].clone(), names)
        };
        assert_eq!(directive(got), directive(expected), "record {i}: namespace, dimensions, metric names");
        assert_eq!(got["function_name"], FUNCTION_NAME);
        assert!(got["function_request_id"].as_str().is_some(), "record {i}: {got}");
        for counter in ["ColdStart", "HealthChecksRun", "HealthChecksSkipped", "ConnectAttempts", "RetryAttempts"] {
            assert_eq!(got[counter], expected[counter], "record {i}: {counter}");
        }
        for duration in ["CheckoutWait", "QueryDuration"] {
            let count = |r: &Value| emf_duration(std::slice::from_ref(r), duration).0;
            assert_eq!(count(got), count(expected), "record {i}: values of {duration}");
        }
    }
}

#[tokio::test]
async fn a_handler_without_a_db_never_runs_the_gate() {
    // A health check is due at every gate: an eager gate would show one per
    // invocation in the server log.
    let env = OrdersEnv::start_axum(&[("DB_HEALTH_CHECK_INTERVAL_MS", "0"), ("DB_METRICS_INTERVAL_MS", "0")]).await;
    let mark = env.pg.log_mark();
    let no_database =
        [v2_request("GET", "/customers/1", None), v2_request("DELETE", "/orders/1", None), get_order("not-a-number")];
    for event in &no_database {
        let answer = env.api.invoke(event.clone()).await;
        assert!(matches!(status(answer.response()), 400 | 404 | 405), "{:?}", answer.outcome);
    }
    let quiet = Log::new(env.pg.log_since(mark));
    assert_eq!(quiet.counts(), Counts::default(), "nothing reached the server:\n{}", quiet.text());
    let records = env.emf_records_after_answers(no_database.len()).await;
    assert_eq!(records.len(), no_database.len(), "each invocation still has its record");
    for record in &records {
        assert!(record.get("CheckoutWait").is_none(), "no checkout: {record}");
        assert_eq!(record["HealthChecksRun"], 0, "{record}");
    }

    let found = env.api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 404, "{:?}", found.outcome);
    let used = Log::new(env.pg.log_since(mark)).counts();
    assert_eq!((used.health_checks, used.executes), (1, 1), "the handler with a Db passed the gate");
}

#[tokio::test]
async fn the_warm_path_is_one_connection_and_one_statement_per_invocation() {
    let env = OrdersEnv::start_axum(&[]).await;
    let init = Log::new(env.pg.read_log()).counts();
    assert_eq!((init.connections, init.warmup_round_trips, init.parses), (1, 1, 2), "INIT warmed one connection");

    let mark = env.pg.log_mark();
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 3)).await.response()), 201);
    let invocations = 20;
    for _ in 1..invocations {
        let found = env.api.invoke(get_order("1")).await;
        assert_eq!(status(found.response()), 200, "{:?}", found.outcome);
    }
    let warm = Log::new(env.pg.log_since(mark));
    let Counts { connections, disconnections, parses, executes, health_checks, warmup_round_trips, .. } = warm.counts();
    assert_eq!(connections, 0, "no new connection on the warm path:\n{}", warm.text());
    assert_eq!(disconnections, 0, "no connection closed on the warm path:\n{}", warm.text());
    assert_eq!((parses, health_checks, warmup_round_trips), (0, 0, 0), "{}", warm.text());
    assert_eq!(executes, invocations, "one statement per invocation:\n{}", warm.text());
    assert_eq!(env.pg.connection_count(FUNCTION_NAME).await, 1);
}

#[tokio::test]
async fn sigterm_closes_every_connection_with_terminate() {
    let pg = postgres_watching_closes().await;
    let mut env = OrdersEnv::start_bin_with(AXUM_BIN, pg, &[("AWS_LAMBDA_MAX_CONCURRENCY", "4")]).await;
    assert_eq!(env.api.extensions_registered(), 1, "the shutdown extension registered during INIT");
    assert_eq!(status(env.api.invoke(post_valid_order("tea", 1)).await.response()), 201);
    assert_eq!(env.pg.backend_pids(FUNCTION_NAME).await.len(), 4, "a pool of four");
    let (_, output) = env.terminate_and_check_closes().await;
    let records = emf_records(&output);
    assert_eq!(emf_sum(&records, "invocations"), 1, "the invocation's activity, written at SIGTERM: {output}");
    assert_eq!(emf_sum(&records, "ColdStart"), 1, "{output}");
}

#[tokio::test]
async fn a_database_outage_reaches_lambda_with_the_adapters_error_type() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let settings = [("DB_RETRY_ATTEMPTS", "1"), ("DB_WARMUP_ATTEMPTS", "1")];
    let (env, proxy) = OrdersEnv::start_behind_proxy(AXUM_BIN, pg, &settings).await;

    // Inside the handler: the gate passed, then `?` fails the invocation.
    check_an_outage_inside_the_handler(&env, &proxy).await;

    // At the gate: the server is down when the `Db` extractor runs.
    env.pg.stop().await;
    let down = env.api.invoke(get_order("1")).await;
    assert_eq!(
        down.outcome.error_type(),
        Some("RuntimeAdapter.DatabaseUnavailable"),
        "the gate's error keeps the adapter's type: {:?}",
        down.outcome
    );
    assert!(!down.outcome.error_message().unwrap_or_default().contains(integration_tests::APP_PASSWORD));
    // A route without the database is still answered while it is down.
    assert_eq!(status(env.api.invoke(v2_request("GET", "/customers/1", None)).await.response()), 404);
    env.pg.start_again().await;
    assert_eq!(status(env.api.invoke(get_order("1")).await.response()), 404, "served again after the outage");
}
