//! The contenders, and one running instance of one: a function process
//! against its own emulated Runtime API.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use integration_tests::orders::get_order;
use integration_tests::{bin_path, Function, FunctionBuilder, Invocation, Postgres, RuntimeApi, APP_PASSWORD};
use integration_tests::{APP_DATABASE, APP_USER};
use serde_json::Value;

/// How long a function may take to reach its runtime loop (the fixed-sleep
/// contender sleeps 2.5 s first).
const STARTUP: Duration = Duration::from_secs(30);

/// The order every invocation reads (inserted by the driver).
pub(crate) const ORDER_ID: &str = "1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contender {
    /// The real `orders` binary on runtime-adapter.
    Adapter,
    /// The same with `DB_METRICS=off`: what recording the EMF metrics costs an invocation.
    AdapterMetricsOff,
    /// The `orders-axum` example: the same API as an axum Router on
    /// lambda_http under the lifecycle layer (cold starts only).
    AdapterAxum,
    Bare,
    /// The bare client on `#[tokio::main]`'s multi-thread runtime, as
    /// lambda_runtime's examples write `main`; every other contender runs on
    /// `runtime_adapter::tokio_runtime`'s (one thread here).
    BareMultiThread,
    DeadpoolVerified,
    CheckEveryRequest,
    ConnectPerInvocation,
    #[cfg_attr(not(feature = "sqlx"), allow(dead_code))]
    Sqlx,
    FixedSleep,
}

impl Contender {
    /// The strategies users pick, adapter first, bare second.
    pub(crate) fn strategies() -> Vec<Self> {
        let mut all = vec![
            Self::Adapter,
            Self::Bare,
            Self::DeadpoolVerified,
            Self::CheckEveryRequest,
            Self::ConnectPerInvocation,
        ];
        if cfg!(feature = "sqlx") {
            all.push(Self::Sqlx);
        }
        all
    }

    /// Compared on warm invocations: the strategies, the adapter without
    /// metrics, and the bare client on a multi-thread runtime.
    pub(crate) fn warm() -> Vec<Self> {
        let mut all = Self::strategies();
        all.insert(1, Self::AdapterMetricsOff);
        all.insert(3, Self::BareMultiThread);
        all
    }

    /// Compared on cold starts: the strategies, and `orders-axum` beside `orders`.
    pub(crate) fn cold() -> Vec<Self> {
        let mut all = Self::strategies();
        all.insert(1, Self::AdapterAxum);
        all.insert(3, Self::BareMultiThread);
        all.insert(4, Self::FixedSleep);
        all
    }

    /// Whether its INIT idles on purpose (the fixed sleep): the cold starts
    /// measure it apart from the others ([`crate::cold::run`]).
    pub(crate) fn idles_at_init(self) -> bool {
        matches!(self, Self::FixedSleep)
    }

    /// Compared on cold starts under Lambda-sized CPU shares: the adapter,
    /// the lower bound and sqlx defaults (issue 18).
    pub(crate) fn cold_on_shares() -> Vec<Self> {
        let mut all = vec![Self::Adapter, Self::Bare, Self::BareMultiThread];
        if cfg!(feature = "sqlx") {
            all.push(Self::Sqlx);
        }
        all
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Adapter => "runtime-adapter (`orders`)",
            Self::AdapterMetricsOff => "runtime-adapter, `DB_METRICS=off`",
            Self::AdapterAxum => "runtime-adapter, axum (`orders-axum`)",
            Self::Bare => "bare tokio-postgres client",
            Self::BareMultiThread => "bare client, `#[tokio::main]` (multi-thread)",
            Self::DeadpoolVerified => "deadpool-postgres `Verified`",
            Self::CheckEveryRequest => "`SELECT 1` before every request",
            Self::ConnectPerInvocation => "connect per invocation",
            Self::Sqlx => "sqlx `PgPool` (defaults)",
            Self::FixedSleep => "2.5 s sleep + 2 verification queries",
        }
    }

    /// `BENCH_STRATEGY` of `bench-contender`; `None` for the adapter.
    fn strategy(self) -> Option<&'static str> {
        match self {
            Self::Adapter | Self::AdapterMetricsOff | Self::AdapterAxum => None,
            Self::Bare | Self::BareMultiThread => Some("bare"),
            Self::DeadpoolVerified => Some("deadpool-verified"),
            Self::CheckEveryRequest => Some("check-every-request"),
            Self::ConnectPerInvocation => Some("connect-per-invocation"),
            Self::Sqlx => Some("sqlx"),
            Self::FixedSleep => Some("fixed-sleep"),
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Adapter => "adapter",
            Self::AdapterMetricsOff => "adapter-metrics-off",
            Self::AdapterAxum => "adapter-axum",
            Self::BareMultiThread => "bare-multi-thread",
            other => other.strategy().unwrap_or("adapter"),
        }
    }

    /// The process for this contender against the server at `port`; `purpose`
    /// makes its function name (and so its `application_name`) unique.
    pub(crate) fn builder(self, port: u16, purpose: &str) -> FunctionBuilder {
        let binary = match self {
            Self::Adapter | Self::AdapterMetricsOff => "orders",
            Self::AdapterAxum => "orders-axum",
            _ => "bench-contender",
        };
        let url = format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DATABASE}");
        let mut builder = Function::builder(own_copy(binary, self.slug()))
            .name(format!("bench-{}-{purpose}", self.slug()))
            .env("DATABASE_URL", url)
            .env("AWS_LAMBDA_LOG_LEVEL", "info");
        if let Some(strategy) = self.strategy() {
            builder = builder.env("BENCH_STRATEGY", strategy);
        }
        if self == Self::AdapterMetricsOff {
            builder = builder.env("DB_METRICS", "off");
        }
        if self == Self::BareMultiThread {
            builder = builder.env("BENCH_RUNTIME", "multi-thread");
        }
        builder
    }
}

/// The contender's own copy of `binary`, made once per run (and once per
/// segment of the warm run, see [`fresh_copies`]): contenders that
/// run the same file share its pages in the page cache, and so each other's
/// code in the CPU caches, which contenders of different files do not. Five
/// strategies are one binary (`bench-contender`): run from it, the bare
/// client found its code warm from the four others run before it in each
/// round, 0.10 ms p50 and 100 µs of CPU per warm invocation faster than
/// from a copy of its own (BENCHMARKS.md, "The bench's shared binary"). On
/// Lambda every function runs alone in its environment.
///
/// Which physical pages a copy's code lands on is luck, and it shows:
/// byte-identical copies, side by side in one run, differed by 15–40 µs of
/// CPU per warm invocation (BENCHMARKS.md, "One binary, several copies").
/// [`fresh_copies`] makes the contenders started after it run from copies
/// made anew (new files, so that no process of the copies before still
/// runs the file written).
fn own_copy(binary: &str, slug: &str) -> PathBuf {
    static COPIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let source = bin_path(binary);
    let dir = source.parent().expect("a binary lives in target/<profile>").join("bench-copies");
    let copy = dir.join(format!("{slug}-{}", GENERATION.load(Ordering::Relaxed)));
    let mut copied = COPIED.lock().unwrap_or_else(PoisonError::into_inner);
    if !copied.contains(&copy) {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::copy(&source, &copy)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), copy.display()));
        copied.push(copy.clone());
    }
    copy
}

/// Bumped by [`fresh_copies`]; part of each copy's file name.
static GENERATION: AtomicUsize = AtomicUsize::new(0);

/// From now on contenders start from copies of their binaries made anew,
/// whose code lands on other physical pages (see [`own_copy`]).
pub(crate) fn fresh_copies() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// One contender's function process and its Runtime API.
pub(crate) struct Running {
    pub(crate) contender: Contender,
    pub(crate) name: String,
    pub(crate) api: RuntimeApi,
    pub(crate) function: Function,
    event: Value,
    /// Invocations served so far.
    pub(crate) served: usize,
    /// Peak resident memory when it had served [`FOOTPRINT_INVOCATIONS`].
    pub(crate) peak_rss_at_footprint: Option<u64>,
}

/// Invocations after which the peak memory of a function is read.
pub(crate) const FOOTPRINT_INVOCATIONS: usize = 1000;

impl Running {
    /// Starts `contender` against `pg` (or a proxy in front of it at
    /// `port`), with `env` on top, and waits until its INIT is over.
    pub(crate) async fn start(
        contender: Contender,
        pg: &Postgres,
        port: Option<u16>,
        purpose: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let name = format!("bench-{}-{purpose}", contender.slug());
        let api = RuntimeApi::start_for(&name).await;
        let mut builder = contender.builder(port.unwrap_or(pg.port()), purpose);
        for (key, value) in env {
            builder = builder.env(key, value);
        }
        let function = builder.spawn(&api);
        assert!(
            api.wait_next_polls(1, STARTUP).await,
            "{} never reached its runtime loop; its output:\n{}",
            contender.label(),
            function.output()
        );
        Self { contender, name, api, function, event: get_order(ORDER_ID), served: 0, peak_rss_at_footprint: None }
    }

    /// `GET /orders/1`, waited for; panics unless it answers 200.
    pub(crate) async fn invoke(&mut self) -> Invocation {
        let invocation = self.api.invoke(self.event.clone()).await;
        self.served += 1;
        check_found(self.contender, &invocation);
        if self.served == FOOTPRINT_INVOCATIONS {
            self.peak_rss_at_footprint = self.peak_rss();
        }
        invocation
    }

    /// Bytes of peak resident memory (`VmHWM`) of the function process.
    pub(crate) fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.function.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    }
}

/// Panics unless `invocation` answered 200 with the order.
pub(crate) fn check_found(contender: Contender, invocation: &Invocation) {
    let status = match &invocation.outcome {
        integration_tests::Outcome::Response(response) => response["statusCode"].as_i64(),
        integration_tests::Outcome::Error { .. } => None,
    };
    assert_eq!(status, Some(200), "{} did not answer 200: {:?}", contender.label(), invocation.outcome);
}
