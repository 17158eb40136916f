//! The lifecycle layer in-process, around an axum `Router`, for what the
//! example functions cannot show: a panicking axum handler answered as
//! `RuntimeAdapter.HandlerPanicked`, an adapter error failing the
//! invocation with its type, and outside the layer a `Db` refused and an
//! adapter error answered as a plain 500 that names nothing. Also a service
//! (of either kind) that panics in `call` itself, before it has a future.

use std::collections::HashMap;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use integration_tests::{inproc, Postgres};
use lambda_runtime::tower::{Layer as _, ServiceExt as _};
use runtime_adapter::{Adapter, Config, Db, Error, Lifecycle};

async fn lifecycle(pg: &Postgres) -> Lifecycle {
    let vars: HashMap<&str, String> =
        [("DATABASE_URL", pg.database_url()), ("DB_METRICS", "off".to_owned())].into_iter().collect();
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("configuration");
    Adapter::builder().config(config).start().await.expect("init")
}

fn request(path: &str) -> http::Request<String> {
    let mut request = http::Request::get(path).body(String::new()).expect("request");
    request.extensions_mut().insert(inproc::context(Duration::from_secs(30)));
    request
}

async fn one(db: Db) -> Result<String, Error> {
    let row = db.query_one("SELECT 1", &[]).await?;
    Ok(row.get::<_, i32>(0).to_string())
}

async fn panics() -> &'static str {
    panic!("order 7 has no customer")
}

async fn fails() -> Result<&'static str, Error> {
    Err(Error::ConnectionClosed)
}

fn app() -> Router {
    Router::new().route("/one", get(one)).route("/panic", get(panics)).route("/fail", get(fails))
}

#[tokio::test]
async fn under_the_layer_a_panic_and_an_error_fail_the_invocation_with_their_types() {
    let pg = Postgres::start().await;
    let lifecycle = lifecycle(&pg).await;
    let service = lifecycle.layer().layer(app());

    let answered = service.clone().oneshot(request("/one")).await.expect("answered");
    assert_eq!(answered.status(), 200);

    let panicked = service.clone().oneshot(request("/panic")).await.expect_err("the invocation fails");
    assert_eq!(panicked.error_type, runtime_adapter::HANDLER_PANICKED);
    assert_eq!(panicked.error_message, "the handler panicked: order 7 has no customer");

    let failed = service.clone().oneshot(request("/fail")).await.expect_err("the invocation fails");
    assert_eq!(failed.error_type, "RuntimeAdapter.ConnectionClosed");

    let again = service.oneshot(request("/one")).await.expect("the same service goes on serving");
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn outside_the_layer_a_db_is_refused_and_errors_are_a_plain_500() {
    let app = app();
    let missing = app.clone().oneshot(request("/one")).await.expect("axum answers");
    assert_eq!(missing.status(), 500, "no adapter, no Db");
    let failed = app.oneshot(request("/fail")).await.expect("axum answers");
    assert_eq!(failed.status(), 500);
    let body = axum::body::to_bytes(failed.into_body(), 1024).await.expect("body");
    assert_eq!(&body[..], br#"{"error":"internal error"}"#, "the error's text stays out of the answer");
}

/// A service that panics in `call`, before it returns a future: a tower
/// service written by hand may, and the layer calls it outside the future.
#[derive(Clone)]
struct PanicsInCall;

impl lambda_runtime::tower::Service<lambda_runtime::LambdaEvent<serde_json::Value>> for PanicsInCall {
    type Response = serde_json::Value;
    type Error = Error;
    type Future = std::future::Ready<Result<serde_json::Value, Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: lambda_runtime::LambdaEvent<serde_json::Value>) -> Self::Future {
        panic!("no future for this event")
    }
}

impl lambda_runtime::tower::Service<http::Request<String>> for PanicsInCall {
    type Response = http::Response<String>;
    type Error = Error;
    type Future = std::future::Ready<Result<http::Response<String>, Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<String>) -> Self::Future {
        panic!("no future for this request")
    }
}

#[tokio::test]
async fn a_panic_in_the_services_call_itself_is_answered_and_the_service_goes_on() {
    let pg = Postgres::start().await;
    let lifecycle = lifecycle(&pg).await;

    let events = lifecycle.layer().layer(PanicsInCall);
    let event = lambda_runtime::LambdaEvent::new(serde_json::json!({}), inproc::context(Duration::from_secs(30)));
    let panicked = events.clone().oneshot(event.clone()).await.expect_err("the invocation fails");
    assert_eq!(panicked.error_type, runtime_adapter::HANDLER_PANICKED);
    assert_eq!(panicked.error_message, "the handler panicked: no future for this event");
    let again = events.oneshot(event).await.expect_err("a second event is answered the same way");
    assert_eq!(again.error_type, runtime_adapter::HANDLER_PANICKED);

    let requests = lifecycle.layer().layer(PanicsInCall);
    let panicked = requests.oneshot(request("/any")).await.expect_err("the invocation fails");
    assert_eq!(panicked.error_type, runtime_adapter::HANDLER_PANICKED);
    assert_eq!(panicked.error_message, "the handler panicked: no future for this request");

    // The adapter still serves a handler that works.
    let service = lifecycle.layer().layer(app());
    let answered = service.oneshot(request("/one")).await.expect("answered");
    assert_eq!(answered.status(), 200);
}
