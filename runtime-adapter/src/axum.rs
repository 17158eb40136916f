//! axum integration (feature `axum`): [`Db`] as an extractor, and
//! [`Error`] as a response that fails the invocation.
//!
//! Under [`LifecycleLayer`](crate::LifecycleLayer), a handler that takes a
//! `Db` argument gets a warmed connection: the extractor runs the gate
//! (warmup if INIT could not, refresh, health check) with the invocation's
//! deadline when the handler is called, and not at all for a handler
//! that takes none. A handler returning `Result<_, runtime_adapter::Error>`
//! can use `?`: the error fails the invocation with its `errorType`
//! (`RuntimeAdapter.DatabaseUnavailable`, …), as a `LambdaEvent` handler's
//! would, so that Lambda's error metrics and alarms see it. Outside the
//! layer the response is a plain 500 without the error's text.

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use lambda_runtime::{Context, Diagnostic};

use crate::adapter::Adapter;
use crate::db::Db;
use crate::error::Error;
use crate::lifecycle::{gate, Failed, LAYER_MISSING};

impl<S: Send + Sync> FromRequestParts<S> for Db {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Response> {
        let Some(adapter) = parts.extensions.get::<Adapter>().cloned() else {
            tracing::error!(error_type = LAYER_MISSING, "a handler asked for a Db outside the lifecycle layer");
            return Err(failure(Diagnostic {
                error_type: LAYER_MISSING.to_owned(),
                error_message: "the service is not wrapped in runtime_adapter's LifecycleLayer".to_owned(),
            }));
        };
        // lambda_http puts the invocation's context there; without one (a
        // request from elsewhere) there is no deadline to keep.
        let context = parts.extensions.get::<Context>().cloned().unwrap_or_default();
        gate(&adapter, adapter.gate_until(&context)).await.map_err(IntoResponse::into_response)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        failure(Diagnostic::from(self))
    }
}

/// A 500 that [`LifecycleLayer`](crate::LifecycleLayer) turns into the
/// invocation's error.
fn failure(diagnostic: Diagnostic) -> Response {
    let mut response = (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"internal error"}"#).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.extensions_mut().insert(Failed(diagnostic));
    response
}
