//! Graceful shutdown: on SIGTERM or SIGINT the pool is closed (every
//! connection sends Terminate) and everything the metrics still hold is
//! written (with aggregated records, up to a window of invocations that
//! would otherwise be lost), well within the ~500 ms Lambda allows, then the
//! process exits.
//!
//! Lambda sends the runtime SIGTERM only when an extension is registered, so
//! a no-op internal extension is registered first, the mechanism of
//! `lambda_runtime`'s `graceful-shutdown` feature. That feature's own
//! handler is not used because it prints plain-text lines to stderr, which
//! would break `AWS_LAMBDA_LOG_FORMAT=JSON`; everything here goes through
//! `tracing`. If the registration fails (a local emulator without the
//! Extensions API), the signals are still handled, and Lambda would simply
//! not send SIGTERM.

use lambda_extension::Extension;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::adapter::Adapter;
use crate::metrics::Point;
use crate::units::millis;

/// Internal extension names must be unique within a function.
const EXTENSION_NAME: &str = "runtime-adapter-graceful-shutdown";

/// Registers the extension, so that Lambda sends SIGTERM. Must run during
/// INIT, before the runtime loop starts; it needs nothing of the adapter, so
/// it runs beside the pool's warmup (its round trip to the Extensions API
/// would otherwise add to INIT).
pub(crate) async fn register_extension() {
    // Outside Lambda (a service driven in-process) there is no Extensions
    // API, and lambda_extension's client panics without its address.
    if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_none() {
        tracing::debug!("no AWS_LAMBDA_RUNTIME_API: the shutdown extension is not registered");
    } else {
        register().await;
    }
}

/// Registers the no-op extension, so that Lambda sends SIGTERM.
async fn register() {
    match Extension::new().with_events(&[]).with_extension_name(EXTENSION_NAME).register().await {
        Ok(extension) => {
            tokio::spawn(async move {
                // It subscribes to nothing: this waits until the process ends.
                if let Err(error) = extension.run().await {
                    tracing::debug!(%error, "the shutdown extension stopped");
                }
            });
        }
        Err(error) => {
            tracing::warn!(%error, "could not register the shutdown extension; Lambda will not send SIGTERM");
        }
    }
}

/// Waits for SIGTERM or SIGINT in a task, then closes the pool and exits.
pub(crate) fn listen(adapter: Adapter) {
    let (mut terminate, mut interrupt) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "could not listen for shutdown signals");
            return;
        }
    };
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        let started = Instant::now();
        tracing::info!(signal = name, "shutting down: closing the pool");
        adapter.close().await;
        adapter.flush_metrics(Point::Shutdown);
        tracing::info!(signal = name, duration_ms = millis(started.elapsed()), "shutdown complete");
        std::process::exit(0);
    });
}
