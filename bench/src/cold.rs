//! Cold starts: a new process per sample, an invocation already queued, timed
//! from spawning the process to its INIT ending (first poll) and to its first
//! answer. The adapter's own breakdown of its warmup (connect, phase 1,
//! phase 2) is read from the `pool warmed` line it logs at INIT. The same
//! again on Lambda-sized CPU shares ([`crate::cgroup`]), with the CPU the
//! process had used when it answered.

use std::time::{Duration, Instant};

use integration_tests::orders::get_order;
use integration_tests::{Function, InvokeOptions, Postgres, RuntimeApi};

use crate::cgroup::{CpuCgroup, Share, Throttling, SHARES};
use crate::contenders::{check_found, Contender, ORDER_ID};
use crate::cpu::Cpu;
use crate::summary::Summary;

const STARTUP: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct ColdResult {
    pub(crate) contender: Contender,
    /// Spawn to the first `/next` poll.
    pub(crate) init: Summary,
    /// Spawn to the first answer.
    pub(crate) first_answer: Summary,
    /// The adapter's warmups as it logged them.
    pub(crate) warmups: Vec<Warmup>,
}

/// One `pool warmed` line: milliseconds per phase.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Warmup {
    pub(crate) connect: f64,
    pub(crate) phase1: f64,
    pub(crate) phase2: f64,
    pub(crate) total: f64,
}

impl Warmup {
    /// Every `pool warmed` line in `output`, in order. Reads `key=value`
    /// (text logs) and `"key":value` (JSON logs).
    pub(crate) fn parse_all(output: &str) -> Vec<Self> {
        output
            .lines()
            .filter(|line| line.contains("pool warmed"))
            .filter_map(|line| {
                Some(Self {
                    connect: field(line, "connect_ms")?,
                    phase1: field(line, "phase1_ms")?,
                    phase2: field(line, "phase2_ms")?,
                    total: field(line, "total_ms")?,
                })
            })
            .collect()
    }
}

/// The number after `key=` or `"key":` in `line`.
pub(crate) fn field(line: &str, key: &str) -> Option<f64> {
    let start = [format!("{key}="), format!("\"{key}\":")]
        .iter()
        .find_map(|pattern| line.find(pattern.as_str()).map(|at| at + pattern.len()))?;
    let value = line[start..].trim_start_matches('"');
    let end = value.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e')).unwrap_or(value.len());
    value[..end].parse().ok()
}

pub(crate) async fn run(pg: &Postgres, samples: usize) -> Vec<ColdResult> {
    let contenders = Contender::cold();
    let mut init: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    let mut first: Vec<Vec<Duration>> = vec![Vec::new(); contenders.len()];
    let mut warmups: Vec<Vec<Warmup>> = vec![Vec::new(); contenders.len()];
    // The contenders that idle at INIT run apart, after the others: a 2.5 s
    // idle left the machine slower for the cold starts after it (every
    // INIT in the round by about 1.3 ms, the first answer right after it
    // by 4 ms; BENCHMARKS.md, "The ninth pass").
    let (idle, busy): (Vec<usize>, Vec<usize>) = (0..contenders.len()).partition(|&i| contenders[i].idles_at_init());
    for group in [busy, idle] {
        for sample in 0..samples {
            for i in rotated(&group, sample) {
                let one = cold_start(pg, contenders[i], &format!("cold{sample}"), None).await;
                init[i].push(one.init);
                first[i].push(one.first_answer);
                warmups[i].extend(one.warmups);
            }
        }
    }
    contenders
        .into_iter()
        .enumerate()
        .map(|(i, contender)| ColdResult {
            contender,
            init: Summary::of(&init[i]),
            first_answer: Summary::of(&first[i]),
            warmups: std::mem::take(&mut warmups[i]),
        })
        .collect()
}

/// Cold starts of one contender on one Lambda-sized CPU share.
#[derive(Debug)]
pub(crate) struct QuotaResult {
    pub(crate) share: Share,
    pub(crate) contender: Contender,
    pub(crate) init: Summary,
    pub(crate) first_answer: Summary,
    /// CPU the function process had used when it answered (all its threads), ms.
    pub(crate) cpu_ms: Vec<f64>,
    /// Periods in which it ran, spawn → first answer (`nr_periods`).
    pub(crate) periods: Vec<f64>,
    /// Periods in which the quota stopped it, spawn → first answer.
    pub(crate) throttled_periods: Vec<f64>,
}

/// Cold starts under each of [`SHARES`], for the adapter, the bare client
/// and sqlx defaults. Each sample gets a new cgroup, so that it starts with
/// a whole period's quota as a new environment would, whatever the sample
/// before it used. Interleaved ([`rotated`]): sample k of every share and
/// contender before sample k+1 of any. The server and the driver are not limited
/// (on Lambda the database is elsewhere). An error when no cgroup can be made.
pub(crate) async fn run_on_shares(pg: &Postgres, samples: usize) -> Result<Vec<QuotaResult>, String> {
    let contenders = Contender::cold_on_shares();
    let mut results: Vec<QuotaResult> = SHARES
        .iter()
        .flat_map(|&share| {
            contenders.iter().map(move |&contender| QuotaResult {
                share,
                contender,
                init: Summary::default(),
                first_answer: Summary::default(),
                cpu_ms: Vec::new(),
                periods: Vec::new(),
                throttled_periods: Vec::new(),
            })
        })
        .collect();
    let mut init: Vec<Vec<Duration>> = vec![Vec::new(); results.len()];
    let mut first: Vec<Vec<Duration>> = vec![Vec::new(); results.len()];
    let all: Vec<usize> = (0..results.len()).collect();
    for sample in 0..samples {
        for i in rotated(&all, sample) {
            let result = &mut results[i];
            let slug = result.share.label.replace(' ', "-");
            let cgroup = CpuCgroup::create(&format!("bench-cold-{slug}-{i}-{sample}"), result.share)?;
            let purpose = format!("quota{sample}");
            let one = cold_start(pg, result.contender, &purpose, Some(&cgroup)).await;
            init[i].push(one.init);
            first[i].push(one.first_answer);
            result.cpu_ms.push(one.cpu.on_cpu_ns as f64 / 1e6);
            result.periods.push(one.throttled.periods as f64);
            result.throttled_periods.push(one.throttled.throttled_periods as f64);
        }
    }
    for (i, result) in results.iter_mut().enumerate() {
        result.init = Summary::of(&init[i]);
        result.first_answer = Summary::of(&first[i]);
    }
    Ok(results)
}

/// `order` for sample `sample`: interleaved (sample k of every contender
/// before sample k+1 of any), each sample starting one further along, so
/// that no contender always comes right after the same one.
fn rotated(order: &[usize], sample: usize) -> impl Iterator<Item = usize> + '_ {
    let start = if order.is_empty() { 0 } else { sample % order.len() };
    order[start..].iter().chain(&order[..start]).copied()
}

/// One cold start, measured.
struct ColdStart {
    init: Duration,
    first_answer: Duration,
    warmups: Vec<Warmup>,
    /// The function process's CPU when it answered.
    cpu: Cpu,
    throttled: Throttling,
}

/// A new process of `contender` (in `cgroup` when given) with the
/// invocation already queued, timed from spawn; killed once it answered.
async fn cold_start(pg: &Postgres, contender: Contender, purpose: &str, cgroup: Option<&CpuCgroup>) -> ColdStart {
    let api = RuntimeApi::start_for(purpose).await;
    let pending = api.enqueue(get_order(ORDER_ID), InvokeOptions::default().timeout(STARTUP));
    let builder = contender.builder(pg.port(), purpose);
    let throttled_before = cgroup.map(CpuCgroup::throttling).unwrap_or_default();
    let spawned = Instant::now();
    let mut function = match cgroup {
        Some(cgroup) => cgroup.spawn_inside(|| builder.spawn(&api), Function::pid),
        None => builder.spawn(&api),
    };
    let polled = async {
        assert!(api.wait_next_polls(1, STARTUP).await, "{} never polled", contender.label());
        spawned.elapsed()
    };
    let answered = async {
        let invocation = pending.wait().await;
        let at = spawned.elapsed();
        (invocation, at, Cpu::of(&[function.pid()]))
    };
    let (init, (invocation, first_answer, cpu)) = tokio::join!(polled, answered);
    check_found(contender, &invocation);
    let throttled = cgroup.map(CpuCgroup::throttling).unwrap_or_default().since(throttled_before);
    let warmups = Warmup::parse_all(&function.output());
    function.kill();
    function.wait_exit(Duration::from_secs(5)).await;
    ColdStart { init, first_answer, warmups, cpu, throttled }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sample_starts_one_contender_further() {
        let order = [4, 7, 9];
        let rounds: Vec<Vec<usize>> = (0..4).map(|k| rotated(&order, k).collect()).collect();
        assert_eq!(rounds, [vec![4, 7, 9], vec![7, 9, 4], vec![9, 4, 7], vec![4, 7, 9]]);
        assert_eq!(rotated(&[], 3).count(), 0);
    }

    #[test]
    fn reads_the_pool_warmed_line_as_text_and_json() {
        let text = "2026-11-27T05:00:00Z  INFO runtime_adapter::pool: pool warmed pool_size=1 connect_ms=3.25 \
                    phase1_ms=0.1 phase2_ms=0.2 total_ms=3.6 statements=2";
        let json = r#"{"level":"INFO","fields":{"message":"pool warmed","connect_ms":3.25,"phase1_ms":0.1,"phase2_ms":0.2,"total_ms":3.6}}"#;
        for line in [text, json] {
            let all = Warmup::parse_all(line);
            assert_eq!(all.len(), 1, "{line}");
            assert_eq!((all[0].connect, all[0].phase1, all[0].phase2, all[0].total), (3.25, 0.1, 0.2, 3.6));
        }
        assert!(Warmup::parse_all("INFO health check passed duration_ms=1").is_empty());
    }
}
