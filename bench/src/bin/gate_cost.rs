//! What the gate costs an invocation whose handler never touches the
//! database: eager (the handler takes a `Db` it does not use, as a layer
//! that ran the gate before every handler would make it) against lazy (it
//! takes none). Through the real `LifecycleLayer` and an axum `Router`,
//! in-process, against a throwaway PostgreSQL on loopback; metrics off, so
//! that only the gate differs.
//!
//! Three passes, alternating the two routes: back to back with a health
//! check not due (the warm path: a pool checkout and return), paced with a
//! 5 ms pause after each (cold caches, as an idle Lambda environment), and
//! back to back with `DB_HEALTH_CHECK_INTERVAL_MS=0` (a check due at every
//! gate, as after an idle gap longer than the interval).
//!
//! `cargo run --release --locked -p bench --bin gate-cost`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use http::Request;
use integration_tests::{inproc, Postgres};
use lambda_runtime::tower::{Layer as _, ServiceExt as _};
use runtime_adapter::{Adapter, Config, Db};

const BACK_TO_BACK: usize = 5000;
const PACED: usize = 500;
const PAUSE: Duration = Duration::from_millis(5);

async fn without_db() -> &'static str {
    "{}"
}

async fn with_unused_db(_db: Db) -> &'static str {
    "{}"
}

#[tokio::main]
async fn main() {
    let pg = Postgres::start().await;
    for (label, interval, n, pause) in [
        ("back to back, check not due", "30000", BACK_TO_BACK, None),
        ("5 ms pause after each, check not due", "30000", PACED, Some(PAUSE)),
        ("back to back, check due at every gate", "0", BACK_TO_BACK, None),
    ] {
        let vars: HashMap<&str, String> = [
            ("DATABASE_URL", pg.database_url()),
            ("DB_METRICS", "off".to_owned()),
            ("DB_HEALTH_CHECK_INTERVAL_MS", interval.to_owned()),
        ]
        .into_iter()
        .collect();
        let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("configuration");
        let lifecycle = Adapter::builder().config(config).start().await.expect("init");
        let app = Router::new().route("/lazy", get(without_db)).route("/eager", get(with_unused_db));
        let service = lifecycle.layer().layer(app);

        let mut lazy = Vec::with_capacity(n);
        let mut eager = Vec::with_capacity(n);
        for _ in 0..n {
            for (path, samples) in [("/lazy", &mut lazy), ("/eager", &mut eager)] {
                let mut request = Request::get(path).body(String::new()).expect("request");
                request.extensions_mut().insert(inproc::context(Duration::from_secs(30)));
                let started = Instant::now();
                let response = service.clone().oneshot(request).await.expect("answered");
                samples.push(started.elapsed());
                assert!(response.status().is_success(), "{path}: {}", response.status());
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        let stats = lifecycle.adapter().stats();
        let (lazy, eager) = (micros(&mut lazy), micros(&mut eager));
        println!(
            "| {label} | {n} | {:.1} | {:.1} | {:+.1} | {:.1} | {:.1} | {} |",
            lazy.0,
            eager.0,
            eager.0 - lazy.0,
            lazy.1,
            eager.1,
            stats.health_checks_run
        );
        lifecycle.adapter().close().await;
    }
}

/// p50 and p99, in µs.
fn micros(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}
