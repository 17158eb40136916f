//! `orders`: a small HTTP API behind API Gateway HTTP API (payload v2) on
//! top of runtime-adapter. Copy it as a starting point.
//!
//! - `POST /orders` with `{"item": "...", "quantity": N}` → 201 and the order.
//! - `GET /orders/{id}` → 200 and the order, or 404.
//! - Bad input → 400 with `{"error": "..."}`; nothing is written.
//! - A database failure the adapter could not retry away fails the
//!   invocation with the adapter's error: the handlers return
//!   `runtime_adapter::Error`, so Lambda's `errorType` is the adapter's own
//!   (`RuntimeAdapter.DatabaseUnavailable`, …), which alarms can tell apart.
//!
//! Schema: `example-functions/migrations/0001_orders.sql`.

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::{HeaderValue, Method};
use base64::Engine as _;
use example_functions::order::NewOrder;
use example_functions::orders_api::{Order, GET_ORDER, INSERT_ORDER};
use runtime_adapter::{Adapter, Db, Error, LambdaEvent};
use serde::Serialize;
use serde_json::json;

fn main() -> Result<(), lambda_runtime::Error> {
    // Honours AWS_LAMBDA_LOG_FORMAT and AWS_LAMBDA_LOG_LEVEL.
    lambda_runtime::tracing::init_default_subscriber();
    // One thread unless Lambda runs several invocations at once.
    runtime_adapter::tokio_runtime()?
        .block_on(Adapter::builder().statement(GET_ORDER).statement(INSERT_ORDER).run(handle))
}

async fn handle(db: Db, event: LambdaEvent<ApiGatewayV2httpRequest>) -> Result<ApiGatewayV2httpResponse, Error> {
    let request = event.payload;
    let method = &request.request_context.http.method;
    let path = request.raw_path.as_deref().unwrap_or_default().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();

    match (method, segments.as_slice()) {
        (&Method::POST, ["orders"]) => create(&db, &request).await,
        (&Method::GET, ["orders", id]) => {
            let id = request.path_parameters.get("id").map_or(*id, String::as_str);
            get(&db, id).await
        }
        (_, ["orders"] | ["orders", _]) => Ok(error(405, "method not allowed")),
        _ => Ok(error(404, "no such route")),
    }
}

async fn create(db: &Db, request: &ApiGatewayV2httpRequest) -> Result<ApiGatewayV2httpResponse, Error> {
    let new = match parse_new_order(request) {
        Ok(new) => new,
        Err(message) => return Ok(error(400, &message)),
    };
    // Not retried once sent: a second attempt could insert the order twice.
    let row = db.query_one(INSERT_ORDER, &[&new.item, &new.quantity]).await?;
    Ok(respond(201, &Order::from_row(&row)?))
}

async fn get(db: &Db, id: &str) -> Result<ApiGatewayV2httpResponse, Error> {
    let Ok(id) = id.parse::<i64>() else {
        return Ok(error(400, "id must be a whole number"));
    };
    // A read: safe to retry on another connection if this one fails.
    match db.idempotent().query_opt(GET_ORDER, &[&id]).await? {
        Some(row) => Ok(respond(200, &Order::from_row(&row)?)),
        None => Ok(error(404, &format!("order {id} not found"))),
    }
}

/// The order in the request's body (base64-decoded if API Gateway encoded
/// it), validated; the error message is fit for the client.
fn parse_new_order(request: &ApiGatewayV2httpRequest) -> Result<NewOrder, String> {
    let body = request.body.as_deref().ok_or("the body is missing")?;
    let bytes = if request.is_base64_encoded {
        base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| "the body is not valid base64")?
    } else {
        body.as_bytes().to_vec()
    };
    NewOrder::parse(&bytes).map_err(|e| e.to_string())
}

fn respond(status: i64, body: &impl Serialize) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = status;
    response.headers.insert("content-type", HeaderValue::from_static("application/json"));
    response.body = Some(Body::Text(serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned())));
    response
}

fn error(status: i64, message: &str) -> ApiGatewayV2httpResponse {
    respond(status, &json!({ "error": message }))
}
