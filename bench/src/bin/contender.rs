//! `bench-contender`: the `orders` example's `GET /orders/{id}` (same API
//! Gateway v2 event, same query, same JSON response) served by one of the
//! strategies runtime-adapter is compared with, chosen by `BENCH_STRATEGY`:
//!
//! - `bare`: one tokio-postgres client opened at INIT, its statement prepared
//!   there, held across invocations; no check, no reconnect. The lower bound.
//! - `check-every-request`: the same client, with a `SELECT 1` before every
//!   invocation (reconnecting if it fails).
//! - `connect-per-invocation`: a new connection in every invocation, the
//!   query sent as text (prepared and run), the connection closed after.
//! - `deadpool-verified`: deadpool-postgres with `RecyclingMethod::Verified`,
//!   `prepare_cached`, the pool opened lazily as users usually do.
//! - `fixed-sleep`: sleeps `BENCH_FIXED_SLEEP_MS` (2500) at INIT, then
//!   connects and runs two verification queries; then serves like `bare`.
//! - `pool-of-5` (the seed's strategy, for the fleet, `scripts/fleet`):
//!   deadpool-postgres with `BENCH_POOL_SIZE` (5) connections, all opened at
//!   INIT, and a `SELECT 1` on the checked-out connection before every
//!   request; an INIT that cannot open them fails the environment.
//! - `sqlx` (cargo feature `sqlx`): an sqlx `PgPool` with its defaults
//!   (`test_before_acquire` on), opened at INIT.
//!
//! Every strategy runs under `lambda_runtime::run_concurrent`, like the
//! adapter, so `AWS_LAMBDA_MAX_CONCURRENCY` means the same to all; the pools
//! are then sized to it. And on the runtime the adapter's examples run on,
//! `runtime_adapter::tokio_runtime` (one thread unless that variable is
//! above 1), so that the libraries are compared, not runtimes; with
//! `BENCH_RUNTIME=multi-thread`, on `#[tokio::main]`'s runtime instead, the
//! one lambda_runtime's examples use. Connections carry `application_name` =
//! `AWS_LAMBDA_FUNCTION_NAME`, as the adapter's do.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use aws_lambda_events::http::HeaderValue;
use chrono::{DateTime, Utc};
use deadpool_postgres::{ManagerConfig, RecyclingMethod};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde::Serialize;
use serde_json::json;
use tokio::sync::RwLock;
use tokio_postgres::{Client, NoTls, Row, Statement};

/// The `orders` example's read, byte for byte.
const GET_ORDER: &str = "SELECT id, item, quantity, created_at FROM orders WHERE id = $1";
const CHECK: &str = "SELECT 1";
const DEFAULT_FIXED_SLEEP: Duration = Duration::from_millis(2500);
/// The seed's pool: five connections per environment.
const DEFAULT_SEED_POOL: usize = 5;

fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let runtime = match std::env::var("BENCH_RUNTIME").as_deref() {
        // What `#[tokio::main]` builds.
        Ok("multi-thread") => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        Ok(other) => return Err(format!("BENCH_RUNTIME: unknown runtime `{other}` (multi-thread or unset)").into()),
        Err(_) => runtime_adapter::tokio_runtime()?,
    };
    runtime.block_on(serve())
}

async fn serve() -> Result<(), Error> {
    let strategy = Arc::new(Strategy::init().await?);
    lambda_runtime::run_concurrent(service_fn(move |event: LambdaEvent<ApiGatewayV2httpRequest>| {
        let strategy = strategy.clone();
        async move { handle(&strategy, event).await }
    }))
    .await
}

/// What the `orders` example returns for a found order.
#[derive(Debug, Serialize)]
struct Order {
    id: i64,
    item: String,
    quantity: i32,
    created_at: DateTime<Utc>,
}

impl Order {
    fn from_row(row: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            item: row.try_get("item")?,
            quantity: row.try_get("quantity")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

/// A client with the statement prepared on it.
struct Held {
    client: Client,
    statement: Statement,
}

impl Held {
    async fn open(config: &tokio_postgres::Config) -> Result<Self, tokio_postgres::Error> {
        let client = connect(config).await?;
        let statement = client.prepare(GET_ORDER).await?;
        Ok(Self { client, statement })
    }
}

enum Strategy {
    Bare(Held),
    CheckEveryRequest {
        config: tokio_postgres::Config,
        held: RwLock<Arc<Held>>,
    },
    ConnectPerInvocation(tokio_postgres::Config),
    DeadpoolVerified(deadpool_postgres::Pool),
    PoolOfFive(deadpool_postgres::Pool),
    #[cfg(feature = "sqlx")]
    Sqlx(sqlx::PgPool),
}

impl Strategy {
    /// INIT: reads the environment and does the strategy's start-up work.
    async fn init() -> Result<Self, Error> {
        let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
        let name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|_| "bench-contender".to_owned());
        let concurrency: Option<usize> =
            std::env::var("AWS_LAMBDA_MAX_CONCURRENCY").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 1);
        let mut config: tokio_postgres::Config = url.parse()?;
        config.application_name(&name);
        let strategy = std::env::var("BENCH_STRATEGY").map_err(|_| "BENCH_STRATEGY is not set")?;
        Ok(match strategy.as_str() {
            "bare" => Self::Bare(Held::open(&config).await?),
            "check-every-request" => {
                let held = RwLock::new(Arc::new(Held::open(&config).await?));
                Self::CheckEveryRequest { config, held }
            }
            "connect-per-invocation" => Self::ConnectPerInvocation(config),
            "deadpool-verified" => {
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    ManagerConfig { recycling_method: RecyclingMethod::Verified },
                );
                let mut pool = deadpool_postgres::Pool::builder(manager);
                if let Some(n) = concurrency {
                    pool = pool.max_size(n);
                }
                Self::DeadpoolVerified(pool.build()?)
            }
            "pool-of-5" => {
                let size =
                    std::env::var("BENCH_POOL_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SEED_POOL);
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    NoTls,
                    ManagerConfig { recycling_method: RecyclingMethod::Fast },
                );
                let pool = deadpool_postgres::Pool::builder(manager).max_size(size).build()?;
                // All of them at INIT, as the seed did.
                let mut held = Vec::with_capacity(size);
                for _ in 0..size {
                    held.push(pool.get().await?);
                }
                drop(held);
                Self::PoolOfFive(pool)
            }
            "fixed-sleep" => {
                let sleep = std::env::var("BENCH_FIXED_SLEEP_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(DEFAULT_FIXED_SLEEP, Duration::from_millis);
                tokio::time::sleep(sleep).await;
                let held = Held::open(&config).await?;
                for _ in 0..2 {
                    held.client.simple_query(CHECK).await?;
                }
                Self::Bare(held)
            }
            #[cfg(feature = "sqlx")]
            "sqlx" => {
                use std::str::FromStr as _;
                let options = sqlx::postgres::PgConnectOptions::from_str(&url)?.application_name(&name);
                let mut pool = sqlx::postgres::PgPoolOptions::new();
                if let Some(n) = concurrency {
                    pool = pool.max_connections(u32::try_from(n)?);
                }
                Self::Sqlx(pool.connect_with(options).await?)
            }
            other => return Err(format!("BENCH_STRATEGY: unknown strategy `{other}`").into()),
        })
    }

    /// The order `id`, if it exists.
    async fn get(&self, id: i64) -> Result<Option<Order>, Error> {
        let row = match self {
            Self::Bare(held) => held.client.query_opt(&held.statement, &[&id]).await?,
            Self::CheckEveryRequest { config, held } => {
                let mut current = held.read().await.clone();
                if current.client.simple_query(CHECK).await.is_err() {
                    let mut slot = held.write().await;
                    if slot.client.is_closed() || slot.client.simple_query(CHECK).await.is_err() {
                        *slot = Arc::new(Held::open(config).await?);
                    }
                    current = slot.clone();
                }
                current.client.query_opt(&current.statement, &[&id]).await?
            }
            Self::ConnectPerInvocation(config) => {
                let client = connect(config).await?;
                client.query_opt(GET_ORDER, &[&id]).await?
            }
            Self::DeadpoolVerified(pool) => {
                let client = pool.get().await?;
                let statement = client.prepare_cached(GET_ORDER).await?;
                client.query_opt(&statement, &[&id]).await?
            }
            Self::PoolOfFive(pool) => {
                let client = pool.get().await?;
                client.simple_query(CHECK).await?;
                let statement = client.prepare_cached(GET_ORDER).await?;
                client.query_opt(&statement, &[&id]).await?
            }
            #[cfg(feature = "sqlx")]
            Self::Sqlx(pool) => {
                use sqlx::Row as _;
                let row = sqlx::query(GET_ORDER).bind(id).fetch_optional(pool).await?;
                return Ok(match row {
                    Some(row) => Some(Order {
                        id: row.try_get("id")?,
                        item: row.try_get("item")?,
                        quantity: row.try_get("quantity")?,
                        created_at: row.try_get("created_at")?,
                    }),
                    None => None,
                });
            }
        };
        Ok(row.as_ref().map(Order::from_row).transpose()?)
    }
}

/// Opens a connection and drives it in a task; dropping the client sends
/// Terminate and ends the task.
async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            lambda_runtime::tracing::warn!(%error, "connection ended with an error");
        }
    });
    Ok(client)
}

/// `GET /orders/{id}`, answered as the `orders` example answers it.
async fn handle(
    strategy: &Strategy,
    event: LambdaEvent<ApiGatewayV2httpRequest>,
) -> Result<ApiGatewayV2httpResponse, Error> {
    let Some(id) = event.payload.path_parameters.get("id") else {
        return Ok(error(404, "no such route"));
    };
    let Ok(id) = id.parse::<i64>() else {
        return Ok(error(400, "id must be a whole number"));
    };
    match strategy.get(id).await? {
        Some(order) => Ok(respond(200, &order)),
        None => Ok(error(404, &format!("order {id} not found"))),
    }
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
