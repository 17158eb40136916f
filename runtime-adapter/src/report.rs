//! What Lambda receives when INIT or a handler fails: an init error posted
//! to the Runtime API (`/runtime/init/error`) with the adapter's
//! `errorType`, and the answer to a handler that panicked.

use std::any::Any;

use lambda_runtime::Diagnostic;
use lambda_runtime_api_client::body::Body;
use lambda_runtime_api_client::{build_request, PooledClient};

use crate::error::Error;

/// The `errorType` Lambda receives when the handler panicked; the
/// `errorMessage` is `the handler panicked: ` and the panic's message.
pub const HANDLER_PANICKED: &str = "RuntimeAdapter.HandlerPanicked";

/// The answer to a handler that panicked: [`HANDLER_PANICKED`], with the
/// panic's message when it is a string (as `panic!` makes it).
pub(crate) fn panicked(payload: &(dyn Any + Send)) -> Diagnostic {
    let message =
        payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    tracing::error!(error_type = HANDLER_PANICKED, panic = message, "the handler panicked");
    Diagnostic {
        error_type: HANDLER_PANICKED.to_owned(),
        error_message: match message {
            Some(message) => format!("the handler panicked: {message}"),
            None => "the handler panicked (with a payload that is not a string)".to_owned(),
        },
    }
}

/// Reports `error` to Lambda's `/runtime/init/error`, so that Lambda records
/// an init failure with its message instead of an unexplained exit.
///
/// For code that calls [`Builder::init`](crate::Builder::init) itself;
/// [`Builder::run`](crate::Builder::run) does this
/// already. Does nothing outside Lambda (no `AWS_LAMBDA_RUNTIME_API`).
pub async fn report_init_error(error: &Error) {
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        return;
    }
    let body = serde_json::json!({
        "errorType": error.error_type(),
        "errorMessage": error.to_string(),
    });
    let request = build_request()
        .method(http::Method::POST)
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", error.error_type())
        .body(Body::from(body.to_string()));
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            tracing::error!(error = %e, "could not build the init error report");
            return;
        }
    };
    match PooledClient::builder().build().call(request).await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => tracing::error!(status = %response.status(), "the Runtime API refused the init error report"),
        Err(e) => tracing::error!(error = %e, "could not report the init error"),
    }
}
