//! Shared test-support harness for the workspace's integration tests.
//!
//! Modules:
//! - [`pgbouncer`]: a throwaway PgBouncer in front of a [`Postgres`], in a chosen pool mode.
//! - [`postgres`]: a throwaway PostgreSQL server per test ([`Postgres`]) with the `app`
//!   role/database, log access and fault injection (terminate/stop backends, stop/restart).
//! - [`runtime_api`]: an in-process emulation of the AWS Lambda Runtime API over real
//!   HTTP ([`RuntimeApi`]), used to invoke a function and observe its results.
//! - [`fleet`]: a Lambda fleet against one database: many environments, each a real
//!   function process frozen between invocations, routed, reaped and measured (issue 19).
//! - [`function`]: runs a Lambda function binary as a child process pointed at the
//!   emulator ([`Function`]) and captures its output; [`bin_path`] locates built binaries.
//! - [`inproc`]: the library driven in-process, with invocation contexts that carry a
//!   real deadline.
//! - [`orders`]: fixtures for the `orders` example function (events, environment).
//! - [`proxy`]: a loopback TCP proxy in front of the server that injects faults the server
//!   cannot ([`FaultProxy`]): silence, resets, a cut at a precise protocol moment.
//! - [`server_log`]: counting what the server logged per application.
//! - [`migrations`]: every migration of the examples, applied in order.
//! - [`worker`]: fixtures for the `orders-worker` example (SQS events, environment).
//! - [`cargo_lambda`]: `cargo lambda watch` as a child process, and `cargo lambda invoke`.
//! - [`certs`]: a test CA and server certificates made with rcgen, and a PostgreSQL with
//!   `ssl=on` serving them.
//! - [`container_credentials`]: an AWS container credentials endpoint that hands out a new
//!   key on every request.
//! - [`moto`]: moto's server (Secrets Manager) as a child process, and the environment
//!   that points the adapter at it; botocore's RDS IAM token for comparison.
//!
//! Everything is safe to use from parallel tests: each value owns its own temp dir, port
//! and processes, and nothing mutates the process environment.

pub mod cargo_lambda;
pub mod certs;
pub mod container_credentials;
pub mod fleet;
pub mod function;
pub mod inproc;
pub mod migrations;
#[cfg(feature = "aws")]
pub mod moto;
pub mod orders;
pub mod pgbouncer;
pub mod postgres;
pub mod proxy;
pub mod runtime_api;
pub mod server_log;
pub mod worker;

pub use function::{bin_path, Function, FunctionBuilder};
pub use postgres::{free_port, Postgres, PostgresBuilder, APP_DATABASE, APP_PASSWORD, APP_USER};
pub use proxy::FaultProxy;
pub use runtime_api::{InitError, Invocation, InvokeOptions, Outcome, PendingInvocation, RuntimeApi, Times};
