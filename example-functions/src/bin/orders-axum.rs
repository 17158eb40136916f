//! `orders-axum`: the `orders` API as an axum `Router` on `lambda_http`,
//! with runtime-adapter's lifecycle as a tower layer. Copy it as a starting
//! point for an HTTP function written the axum way.
//!
//! - `POST /orders` with `{"item": "...", "quantity": N}` → 201 and the order.
//! - `GET /orders/{id}` → 200 and the order, or 404.
//! - Bad input → 400 with `{"error": "..."}`; nothing is written. Another
//!   method on those paths → 405; any other path → 404.
//! - The same routes under `/axum` (`/axum/orders`, …): `template.yaml`
//!   puts this function behind the same HTTP API as `orders`, where a route
//!   has one integration.
//!
//! `lambda_http` accepts API Gateway HTTP API (v2), REST API (v1) and ALB
//! events alike. A handler gets a warmed [`Db`] by naming it as an
//! argument: the gate runs then, and only for handlers that take one (a 404,
//! a 405 or a malformed id never checks a connection out). A database
//! failure the adapter could not retry away (`?` on
//! `runtime_adapter::Error`) fails the invocation with the adapter's
//! `errorType`, as in `orders`, instead of answering 500.
//!
//! Schema: `example-functions/migrations/0001_orders.sql`.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use example_functions::order::NewOrder;
use example_functions::orders_api::{Order, GET_ORDER, INSERT_ORDER};
use lambda_http::tower::Layer as _;
use runtime_adapter::{Adapter, Db, Error};
use serde_json::json;

fn main() -> Result<(), lambda_http::Error> {
    // Honours AWS_LAMBDA_LOG_FORMAT and AWS_LAMBDA_LOG_LEVEL.
    lambda_http::tracing::init_default_subscriber();
    // One thread unless Lambda runs several invocations at once.
    runtime_adapter::tokio_runtime()?.block_on(serve())
}

async fn serve() -> Result<(), lambda_http::Error> {
    // INIT: the pool warmed (or the init error reported), graceful shutdown installed.
    let lifecycle = Adapter::builder().statement(GET_ORDER).statement(INSERT_ORDER).start().await?;
    // Each invocation: metrics, panics, the adapter's error types, the `Db` extractor.
    let service = lifecycle.layer().layer(app());
    // The loop, with the SnapStart hooks registered.
    lifecycle.run(lambda_http::runtime_concurrent(service)).await
}

fn app() -> Router {
    let orders = Router::new()
        .route("/orders", post(create).fallback(method_not_allowed))
        .route("/orders/{id}", get(find).fallback(method_not_allowed));
    Router::new().merge(orders.clone()).nest("/axum", orders).fallback(no_such_route)
}

async fn create(db: Db, body: Bytes) -> Result<Response, Error> {
    let new = match NewOrder::parse(&body) {
        Ok(new) => new,
        Err(invalid) => return Ok(error(StatusCode::BAD_REQUEST, &invalid.to_string())),
    };
    // Not retried once sent: a second attempt could insert the order twice.
    let row = db.query_one(INSERT_ORDER, &[&new.item, &new.quantity]).await?;
    Ok((StatusCode::CREATED, Json(Order::from_row(&row)?)).into_response())
}

// `OrderId` first: a malformed id is answered before the `Db` is checked out.
async fn find(OrderId(id): OrderId, db: Db) -> Result<Response, Error> {
    // A read: safe to retry on another connection if this one fails.
    match db.idempotent().query_opt(GET_ORDER, &[&id]).await? {
        Some(row) => Ok(Json(Order::from_row(&row)?).into_response()),
        None => Ok(error(StatusCode::NOT_FOUND, &format!("order {id} not found"))),
    }
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

async fn no_such_route() -> Response {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// The `{id}` of the path, a whole number; anything else is a 400.
struct OrderId(i64);

impl<S: Send + Sync> FromRequestParts<S> for OrderId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let invalid = || error(StatusCode::BAD_REQUEST, "id must be a whole number");
        let Path(id) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| invalid())?;
        id.parse().map(OrderId).map_err(|_| invalid())
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
