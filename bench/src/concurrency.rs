//! Concurrency: `AWS_LAMBDA_MAX_CONCURRENCY=16` (Lambda Managed Instances),
//! 64 senders each sending its next invocation as soon as the previous one
//! answered, a fixed number of invocations in all. Every contender runs at
//! once, but only one is driven at a time, in chunks taken in turn (in a new
//! random order each turn), so that drift hits all of them alike.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::orders::get_order;
use integration_tests::{InvokeOptions, Postgres, RuntimeApi};

use crate::contenders::{Contender, Running, ORDER_ID};
use crate::summary::Summary;

pub(crate) const MAX_CONCURRENCY: usize = 16;
pub(crate) const SENDERS: usize = 64;
/// Invocations sent before the measured ones (connections opened, statements cached).
const WARMUP: usize = 256;
/// Turns each contender's invocations are split into.
const CHUNKS: usize = 5;

#[derive(Debug)]
pub(crate) struct ConcurrencyResult {
    pub(crate) contender: Contender,
    pub(crate) invocations: usize,
    pub(crate) errors: usize,
    pub(crate) elapsed: Duration,
    pub(crate) latency: Summary,
    /// Server connections of the environment afterwards.
    pub(crate) connections: i64,
}

impl ConcurrencyResult {
    pub(crate) fn throughput(&self) -> f64 {
        self.invocations as f64 / self.elapsed.as_secs_f64()
    }
}

/// The contenders compared under concurrency: the pools, the shared client,
/// and the per-request check (connect-per-invocation is left out: 16
/// SCRAM handshakes at a time measure the server's CPU, nothing else); and
/// the adapter without its per-invocation metrics record.
fn contenders() -> Vec<Contender> {
    let mut all: Vec<Contender> =
        Contender::strategies().into_iter().filter(|c| *c != Contender::ConnectPerInvocation).collect();
    all.insert(1, Contender::AdapterMetricsOff);
    all
}

pub(crate) async fn run(pg: &Postgres, invocations: usize) -> Vec<ConcurrencyResult> {
    let concurrency = MAX_CONCURRENCY.to_string();
    let env = [("AWS_LAMBDA_MAX_CONCURRENCY", concurrency.as_str())];
    let mut running = Vec::new();
    for contender in contenders() {
        let instance = Running::start(contender, pg, None, "c16", &env).await;
        assert!(
            instance.api.wait_waiting_polls(MAX_CONCURRENCY, Duration::from_secs(10)).await,
            "{} did not start {MAX_CONCURRENCY} workers",
            contender.label()
        );
        drive(&instance.api, WARMUP).await;
        running.push(instance);
    }

    let chunk = invocations.div_ceil(CHUNKS);
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::with_capacity(chunk * CHUNKS); running.len()];
    let mut errors = vec![0; running.len()];
    let mut elapsed = vec![Duration::ZERO; running.len()];
    let mut order: Vec<usize> = (0..running.len()).collect();
    for _ in 0..CHUNKS {
        fastrand::shuffle(&mut order);
        for &i in &order {
            let started = Instant::now();
            let (l, e) = drive(&running[i].api, chunk).await;
            elapsed[i] += started.elapsed();
            latencies[i].extend(l);
            errors[i] += e;
        }
    }

    let mut results = Vec::new();
    for (i, instance) in running.iter().enumerate() {
        results.push(ConcurrencyResult {
            contender: instance.contender,
            invocations: latencies[i].len(),
            errors: errors[i],
            elapsed: elapsed[i],
            latency: Summary::of(&latencies[i]),
            connections: pg.connection_count(&instance.name).await,
        });
    }
    results
}

/// Sends `total` invocations from [`SENDERS`] tasks; their latencies and the
/// number that did not answer 200.
async fn drive(api: &RuntimeApi, total: usize) -> (Vec<Duration>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let api = api.clone();
        let next = next.clone();
        senders.push(tokio::spawn(async move {
            let event = get_order(ORDER_ID);
            let mut latencies = Vec::new();
            let mut errors = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let invocation = api.enqueue(event.clone(), InvokeOptions::default()).wait().await;
                let ok = matches!(&invocation.outcome,
                    integration_tests::Outcome::Response(r) if r["statusCode"].as_i64() == Some(200));
                errors += usize::from(!ok);
                latencies.push(invocation.latency);
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for sender in senders {
        let (l, e) = sender.await.expect("a sender task panicked");
        latencies.extend(l);
        errors += e;
    }
    (latencies, errors)
}
