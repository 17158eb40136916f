#![doc = include_str!("../../README.md")]
//!
//! # Layout
//!
//! - `config`: the settings, the one place that reads the environment
//!   (the address, credential source, TLS and AWS settings in
//!   `config::address`); the connection settings are derived from it at
//!   each pool build ([`Config::pg_config`]).
//! - `error`: the one error type, [`ConfigError`], and their
//!   classification by SQLSTATE and connection state.
//! - `credentials`: resolving the credentials (URL, Secrets Manager, RDS
//!   IAM tokens) at every pool build; the secret's shape in
//!   `credentials::secret`, token signing in `credentials::iam`, the AWS
//!   SDK's side in `credentials::aws`: all three only with the features
//!   `secrets-manager` or `iam-auth`.
//! - `tls`: libpq's `sslmode` on rustls, trust roots, certificate checks;
//!   its own error type.
//! - `adapter`: [`Adapter`] and its [`Builder`]; the gate every invocation
//!   passes (warmup, max-age refresh, health check), single-flight.
//! - `pool`: one generation of the deadpool pool, and the retry loop that
//!   builds one; every connection it opens passes both warmup phases; clean
//!   close (Terminate sent).
//! - `lease`: a checked-out connection and what is known of its session
//!   (requests in flight, open transaction, raw use); one released
//!   mid-request or mid-transaction is rolled back before reuse.
//! - `cancel`: cancel requests that wait for the server's close, as libpq's.
//! - `warmup`: phase 1 (round trip) and phase 2 (prepare), which the pool
//!   runs on every connection it opens.
//! - `liveness`: when a round trip last succeeded, so whether a health check
//!   is due; time is an argument, unit-tested on paused time.
//! - `health`: the check.
//! - `units`: durations as log fields.
//! - `deadline`: the time budget an invocation's deadline leaves the gate.
//! - `db`: [`Db`], the handle a handler receives; what is retried, and
//!   cancellation at the deadline.
//! - `transaction`: [`Db::transaction`], closures retried whole when safe.
//! - `statement`: how statements reach the server: named and cached, or
//!   unnamed for transaction-mode poolers (`DB_POOLER_MODE`).
//! - `lru`: the bounded, least-recently-used statement caches.
//! - `retry`: backoff with full jitter, bounded by attempts and deadline.
//! - `runtime`: [`Builder::run`], the short path for a `LambdaEvent`
//!   handler, and [`tokio_runtime`], the runtime that fits the environment
//!   (one thread unless Lambda runs several invocations at once).
//! - `report`: what Lambda receives when INIT or a handler fails: init
//!   errors posted to the Runtime API, the answer to a panic.
//! - `lifecycle`: [`Builder::start`], [`Lifecycle`] and [`LifecycleLayer`]:
//!   the whole lifecycle (gate, metrics, shutdown, SnapStart, init errors,
//!   error types, panics) for any Lambda service, `lambda_http`'s included,
//!   and what follows an answer before the runtime asks for the next
//!   invocation (a max-age replacement built). `Builder::run` is built on it.
//! - `axum` (feature `axum`): [`Db`] as an axum extractor (the gate runs when
//!   a handler asks for one), and [`Error`] as a response that fails the
//!   invocation with its `errorType`.
//! - `stats`: counters, percentiles in fixed memory, and their [`Stats`]
//!   snapshot.
//! - `metrics`: CloudWatch EMF records, aggregated over a window and written
//!   at the start or end of an invocation (after its answer, under
//!   [`Lifecycle::run`]) or at SIGTERM, never by a timer.
//! - `random`: the environment's jitter source, reseeded after a SnapStart
//!   restore.
//! - `snapstart`: the pool released before a SnapStart snapshot and re-warmed
//!   after restore.
//! - `shutdown`: SIGTERM/SIGINT: pool closed with Terminate, metrics flushed.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod adapter;
#[cfg(feature = "axum")]
mod axum;
mod cancel;
mod config;
mod credentials;
mod db;
mod deadline;
mod error;
mod health;
mod lease;
mod lifecycle;
mod liveness;
mod lru;
mod metrics;
mod pool;
mod random;
mod report;
mod retry;
mod runtime;
mod shutdown;
mod snapstart;
mod statement;
mod stats;
mod tls;
mod transaction;
mod units;
mod warmup;

// The public face: every public item, each at one path, the crate's root.
pub use adapter::{Adapter, Builder};
pub use config::{Config, ConfigWarning, PoolerMode};
pub use credentials::{CredentialSource, Credentials};
pub use db::{Db, Idempotent, RawClient};
pub use error::{ConfigError, CredentialsStep, Error, ErrorKind, Phase, Step};
pub use lifecycle::{Lifecycle, LifecycleFuture, LifecycleLayer, LifecycleService, ResponseBody, LAYER_MISSING};
pub use report::{report_init_error, HANDLER_PANICKED};
pub use runtime::tokio_runtime;
pub use stats::{Percentiles, Stats, WarmupTimings};
pub use tls::{SslMode, Tls, TlsCheck, TlsError};
pub use transaction::Tx;

pub use lambda_runtime::{Context, Diagnostic, LambdaEvent};
pub use tokio_postgres;
pub use tokio_postgres::types::ToSql;
pub use tokio_postgres::{IsolationLevel, Row};
