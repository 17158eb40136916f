//! Warm invocations, interleaved: every contender running side by side,
//! invoked one at a time in a new random order each round, so that drift on
//! the machine hits all of them alike. Also what each one holds afterwards:
//! server connections and peak memory.
//!
//! After each invocation the driver pauses briefly. On Lambda every
//! environment has its own machine; here they share two cores, and work a
//! contender does after answering (sqlx's ping on release, a backend exiting
//! after connect-per-invocation's Terminate) would otherwise land on the
//! invocation of whichever contender comes next.

use std::time::Duration;

use integration_tests::Postgres;

use crate::contenders::{self, Contender, Running, FOOTPRINT_INVOCATIONS};
use crate::cpu::Cpu;
use crate::summary::Summary;

/// Quiet time after each invocation (see the module docs).
const PAUSE: Duration = Duration::from_millis(2);

/// The measured rounds are split into this many segments, each with every
/// contender started anew from a new copy of its binary: where a copy's
/// code lands in physical memory moved one binary's CPU per invocation by
/// 15–40 µs between copies (see `contenders::own_copy`), and a figure over
/// three copies is less a matter of that luck than a figure over one.
const SEGMENTS: usize = 3;

#[derive(Debug)]
pub(crate) struct WarmResult {
    pub(crate) contender: Contender,
    pub(crate) latency: Summary,
    /// Every measured latency, in the order taken (for the picture).
    pub(crate) samples: Vec<Duration>,
    /// The function process's CPU during the measured rounds.
    pub(crate) function_cpu: Cpu,
    /// Its server backends' CPU during the measured rounds; `None` when they
    /// do not outlive an invocation (connect per invocation).
    pub(crate) backend_cpu: Option<Cpu>,
    /// Server connections of this environment after the run (`pg_stat_activity`).
    pub(crate) connections: i64,
    /// `VmHWM` after [`FOOTPRINT_INVOCATIONS`] invocations.
    pub(crate) peak_rss_at_footprint: Option<u64>,
    /// `VmHWM` after `served` invocations.
    pub(crate) peak_rss: Option<u64>,
    pub(crate) served: usize,
}

pub(crate) async fn run(pg: &Postgres, warmup_rounds: usize, rounds: usize) -> Vec<WarmResult> {
    let contenders = Contender::warm();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); contenders.len()];
    let mut cpu = vec![(Cpu::default(), Some(Cpu::default())); contenders.len()];
    let mut running = Vec::new();
    for segment in 0..SEGMENTS {
        // The previous segment's processes stop first; the next ones run
        // from new copies.
        drop(running);
        contenders::fresh_copies();
        running = start(pg, &contenders).await;
        let share = rounds / SEGMENTS + usize::from(segment < rounds % SEGMENTS);
        let taken = measure(pg, &mut running, warmup_rounds, share).await;
        for ((all, cpu), (segment_samples, function, backend)) in samples.iter_mut().zip(&mut cpu).zip(taken) {
            all.extend(segment_samples);
            *cpu = (cpu.0.plus(function), cpu.1.zip(backend).map(|(a, b)| a.plus(b)));
        }
    }

    let mut results = Vec::new();
    for ((instance, samples), (function_cpu, backend_cpu)) in running.iter_mut().zip(samples).zip(cpu) {
        while instance.served < FOOTPRINT_INVOCATIONS {
            instance.invoke().await;
        }
        results.push(WarmResult {
            contender: instance.contender,
            latency: Summary::of(&samples),
            samples,
            function_cpu,
            backend_cpu,
            connections: pg.connection_count(&instance.name).await,
            peak_rss_at_footprint: instance.peak_rss_at_footprint,
            peak_rss: instance.peak_rss(),
            served: instance.served,
        });
    }
    results
}

/// Every contender started, each from a copy of its own, and checked to
/// answer as the adapter does.
async fn start(pg: &Postgres, contenders: &[Contender]) -> Vec<Running> {
    let mut running = Vec::new();
    for &contender in contenders {
        running.push(Running::start(contender, pg, None, "warm", &[]).await);
    }
    // Same request, same answer: the comparison is fair only if they all do the same work.
    let reference = running[0].invoke().await.response().clone();
    for instance in &mut running[1..] {
        let answer = instance.invoke().await.response().clone();
        assert_eq!(answer, reference, "{} answers differently from the adapter", instance.contender.label());
    }
    running
}

/// `rounds` interleaved rounds after `warmup_rounds`: each contender's
/// latencies, and its function's and server backends' CPU during the
/// measured rounds (`None` for backends that do not outlive an invocation:
/// connect per invocation).
async fn measure(
    pg: &Postgres,
    running: &mut [Running],
    warmup_rounds: usize,
    rounds: usize,
) -> Vec<(Vec<Duration>, Cpu, Option<Cpu>)> {
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); running.len()];
    let mut order: Vec<usize> = (0..running.len()).collect();
    let mut backends = Vec::new();
    let mut cpu_before = Vec::new();
    for round in 0..warmup_rounds + rounds {
        if round == warmup_rounds {
            for instance in running.iter() {
                let pids: Vec<u32> = pg.backend_pids(&instance.name).await.into_iter().map(|p| p as u32).collect();
                cpu_before.push((Cpu::of(&[instance.function.pid()]), Cpu::of(&pids)));
                backends.push(pids);
            }
        }
        fastrand::shuffle(&mut order);
        for &i in &order {
            let invocation = running[i].invoke().await;
            if round >= warmup_rounds {
                samples[i].push(invocation.latency);
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
    running
        .iter()
        .zip(samples)
        .zip(cpu_before.into_iter().zip(backends))
        .map(|((instance, samples), ((function, backend), pids))| {
            let lasting = !pids.is_empty() && instance.contender != Contender::ConnectPerInvocation;
            let backend = lasting.then(|| Cpu::of(&pids).since(backend));
            (samples, Cpu::of(&[instance.function.pid()]).since(function), backend)
        })
        .collect()
}
