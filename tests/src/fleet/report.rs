//! What a fleet run measured: every invocation, every environment, the
//! server samples, the marks (phases, faults), and the figures derived from
//! them: a summary, per-second buckets for the timeline, recovery times.

use std::collections::BTreeMap;
use std::time::Duration;

use super::environment::{Answer, Ending};
use super::server::Sample;

/// One invocation, as the caller saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its place in the arrival schedule.
    pub index: usize,
    /// Scheduled arrival, since the run's start.
    pub arrived: Duration,
    /// Arrival to answer (0 when throttled).
    pub latency: Duration,
    /// The answer.
    pub answer: Answer,
    /// Whether it paid a cold start.
    pub cold: bool,
    /// The environment that served it (`None` when throttled).
    pub env: Option<usize>,
}

/// One environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// `application_name` of its connections (with the adapter; a contender
    /// names them after the function).
    pub application_name: String,
    /// Its process.
    pub pid: u32,
    /// Started (cold start), since the run's start.
    pub started: Duration,
    /// Ended, since the run's start, and how.
    pub ended: Option<(Duration, Ending)>,
    /// Invocations it answered.
    pub invocations: usize,
}

/// A moment worth marking on the timeline: a phase or a fault.
#[derive(Debug, Clone)]
pub struct Mark {
    /// What.
    pub label: String,
    /// From, since the run's start.
    pub from: Duration,
    /// To (a phase's end, or the fault's action done).
    pub to: Duration,
    /// A fault (restart…) rather than a phase.
    pub fault: bool,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// The scenario.
    pub label: String,
    /// The schedule's seed.
    pub seed: u64,
    /// Every arrival, in arrival order.
    pub records: Vec<Record>,
    /// Every environment, by id.
    pub environments: Vec<Environment>,
    /// Server samples, in time order.
    pub samples: Vec<Sample>,
    /// Phases and faults.
    pub marks: Vec<Mark>,
    /// Wall time of the whole run.
    pub duration: Duration,
    /// The concurrency limit.
    pub concurrency_limit: usize,
    /// Connections of the `app` role the server authorized (its log), since the start.
    pub connects: Vec<Duration>,
    /// Connection attempts the server refused for want of slots (53300).
    pub refused: Vec<Duration>,
}

/// The figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Arrivals.
    pub invocations: usize,
    /// Answered with a response below 500.
    pub succeeded: usize,
    /// Failed (error, INIT failure, hang), not counting throttles.
    pub failed: usize,
    /// Refused at the concurrency limit.
    pub throttled: usize,
    /// Hung past the function timeout.
    pub timed_out: usize,
    /// Failures and throttles by label.
    pub failures_by_kind: BTreeMap<String, usize>,
    /// Environments started (cold starts).
    pub cold_starts: usize,
    /// Most environments alive at once (sampled).
    pub peak_envs: usize,
    /// Most `app` client backends on the server at once (sampled).
    pub peak_server_connections: i64,
    /// Warm latency percentiles.
    pub warm_p50: Duration,
    /// Warm 99th percentile.
    pub warm_p99: Duration,
    /// All answered invocations' 50th percentile (cold ones included).
    pub p50: Duration,
    /// All answered invocations' 99th percentile.
    pub p99: Duration,
    /// The slowest answer.
    pub max: Duration,
    /// Cold-start invocations' median.
    pub cold_p50: Duration,
    /// Environments ended by SIGTERM, and of those, how many exited cleanly.
    pub terminated: usize,
    /// … exited 0 within the shutdown limit.
    pub terminated_clean: usize,
    /// SIGKILLed by the reaper.
    pub killed: usize,
    /// Abandoned frozen.
    pub lost: usize,
    /// Connections the server authorized for `app`, over the run (its log).
    pub server_connects: usize,
    /// Connection attempts refused for want of slots (53300).
    pub server_refused: usize,
    /// Server CPU over the run (all processes).
    pub server_cpu: Duration,
}

/// One second of the timeline.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    /// Second since the start.
    pub second: usize,
    /// Environments alive (the bucket's largest sample).
    pub envs_alive: usize,
    /// Invocations answered in this second (by completion).
    pub completed: usize,
    /// Failures (errors, INIT failures, hangs) completed in this second.
    pub failed: usize,
    /// Throttled arrivals.
    pub throttled: usize,
    /// Cold starts begun.
    pub cold_starts: usize,
    /// Server connections of `app` (largest sample; `None` if none answered).
    pub server_connections: Option<i64>,
    /// Connections the server authorized for `app` in this second (its log).
    pub connects: i64,
    /// Connection attempts refused for want of slots (53300) in this second.
    pub refused: i64,
    /// Server CPU used in this second.
    pub server_cpu: Duration,
    /// 99th percentile latency of answers completed in this second.
    pub p99: Option<Duration>,
    /// PgBouncer clients waiting (largest sample).
    pub cl_waiting: Option<i64>,
}

/// The `q` quantile (0..=1) of `values`, which it sorts.
#[must_use]
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let rank = ((values.len() as f64) * q).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

impl FleetReport {
    /// The figures.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let mut s = Summary { invocations: self.records.len(), ..Summary::default() };
        let (mut warm, mut all, mut cold) = (Vec::new(), Vec::new(), Vec::new());
        for r in &self.records {
            match &r.answer {
                a if a.is_success() => s.succeeded += 1,
                Answer::Throttled => s.throttled += 1,
                a => {
                    s.failed += 1;
                    s.timed_out += usize::from(*a == Answer::TimedOut);
                }
            }
            if !r.answer.is_success() {
                *s.failures_by_kind.entry(r.answer.label()).or_default() += 1;
            }
            if r.answer != Answer::Throttled && r.answer != Answer::TimedOut {
                all.push(r.latency);
                if r.cold {
                    cold.push(r.latency);
                } else {
                    warm.push(r.latency);
                }
            }
        }
        s.p50 = quantile(&mut all, 0.5);
        s.p99 = quantile(&mut all, 0.99);
        s.max = all.last().copied().unwrap_or_default();
        s.warm_p50 = quantile(&mut warm, 0.5);
        s.warm_p99 = quantile(&mut warm, 0.99);
        s.cold_p50 = quantile(&mut cold, 0.5);
        s.cold_starts = self.environments.len();
        for e in &self.environments {
            match e.ended {
                Some((_, Ending::Terminated { clean, .. })) => {
                    s.terminated += 1;
                    s.terminated_clean += usize::from(clean);
                }
                Some((_, Ending::Killed)) => s.killed += 1,
                Some((_, Ending::Lost)) => s.lost += 1,
                _ => {}
            }
        }
        s.peak_envs = self.samples.iter().map(|x| x.envs_alive).max().unwrap_or_default();
        s.peak_server_connections = self.samples.iter().filter_map(|x| x.server_connections).max().unwrap_or_default();
        s.server_connects = self.connects.len();
        s.server_refused = self.refused.len();
        s.server_cpu = Duration::from_secs_f64(
            counter_total(self.samples.iter().map(|x| x.server_cpu.map(|d| d.as_micros() as i64))) as f64 / 1e6,
        );
        s
    }

    /// Per-second buckets over the whole run.
    #[must_use]
    pub fn timeline(&self) -> Vec<Bucket> {
        let seconds = self.duration.as_secs() as usize + 1;
        let mut buckets: Vec<Bucket> = (0..seconds).map(|second| Bucket { second, ..Bucket::default() }).collect();
        let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); seconds];
        let at = |d: Duration| (d.as_secs() as usize).min(seconds - 1);
        for r in &self.records {
            if r.answer == Answer::Throttled {
                buckets[at(r.arrived)].throttled += 1;
                continue;
            }
            let done = at(r.arrived + r.latency);
            buckets[done].completed += 1;
            if !r.answer.is_success() {
                buckets[done].failed += 1;
            }
            if r.answer != Answer::TimedOut {
                latencies[done].push(r.latency);
            }
        }
        for e in &self.environments {
            buckets[at(e.started)].cold_starts += 1;
        }
        for &c in &self.connects {
            buckets[at(c)].connects += 1;
        }
        for &c in &self.refused {
            buckets[at(c)].refused += 1;
        }
        let mut previous: Option<&Sample> = None;
        for sample in &self.samples {
            let b = &mut buckets[at(sample.at)];
            b.envs_alive = b.envs_alive.max(sample.envs_alive);
            if let Some(c) = sample.server_connections {
                b.server_connections = Some(b.server_connections.unwrap_or(0).max(c));
            }
            if let Some(pool) = sample.pool {
                b.cl_waiting = Some(b.cl_waiting.unwrap_or(0).max(pool.cl_waiting));
            }
            if let Some(p) = previous {
                let cpu = counter_delta(
                    p.server_cpu.map(|d| d.as_micros() as i64),
                    sample.server_cpu.map(|d| d.as_micros() as i64),
                );
                b.server_cpu += Duration::from_micros(cpu.max(0) as u64);
            }
            if sample.server_cpu.is_some() {
                previous = Some(sample);
            }
        }
        for (b, mut l) in buckets.iter_mut().zip(latencies) {
            if !l.is_empty() {
                b.p99 = Some(quantile(&mut l, 0.99));
            }
        }
        buckets
    }

    /// Seconds from `fault`'s start until the fleet serves normally again:
    /// the first second from which on, for `settle` seconds, nothing failed
    /// and the second's p99 stayed within `normal_p99`. `None` if it never did.
    #[must_use]
    pub fn recovery(&self, fault: &Mark, normal_p99: Duration, settle: usize) -> Option<Duration> {
        let timeline = self.timeline();
        let from = fault.from.as_secs() as usize;
        let normal = |b: &Bucket| b.failed == 0 && b.p99.is_none_or(|p| p <= normal_p99) && b.completed > 0;
        (from..timeline.len().saturating_sub(settle)).find_map(|s| {
            timeline[s..s + settle].iter().all(normal).then(|| Duration::from_secs(s as u64).saturating_sub(fault.from))
        })
    }

    /// Failures (not throttles) among invocations that arrived in `[from, to)`.
    #[must_use]
    pub fn failures_between(&self, from: Duration, to: Duration) -> usize {
        self.records
            .iter()
            .filter(|r| r.arrived >= from && r.arrived < to)
            .filter(|r| !r.answer.is_success() && r.answer != Answer::Throttled)
            .count()
    }

    /// Environments that had served an invocation before the first failure
    /// (throttles aside): how many the server held when it ran out; `None`
    /// if nothing failed.
    #[must_use]
    pub fn envs_at_first_failure(&self) -> Option<usize> {
        let first = self
            .records
            .iter()
            .filter(|r| !r.answer.is_success() && r.answer != Answer::Throttled)
            .map(|r| r.arrived + r.latency)
            .min()?;
        let served: std::collections::BTreeSet<usize> = self
            .records
            .iter()
            .filter(|r| r.answer.is_success() && r.arrived + r.latency <= first)
            .filter_map(|r| r.env)
            .collect();
        Some(served.len())
    }
}

/// Sum of the increases of a cumulative counter that may reset (a restart).
fn counter_total(values: impl Iterator<Item = Option<i64>>) -> i64 {
    let mut total = 0;
    let mut last: Option<i64> = None;
    for v in values.flatten() {
        total += counter_delta(last, Some(v));
        last = Some(v);
    }
    total
}

fn counter_delta(before: Option<i64>, after: Option<i64>) -> i64 {
    match (before, after) {
        (Some(b), Some(a)) if a >= b => a - b,
        // Reset by a restart: the new count is all new.
        (Some(_), Some(a)) => a,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_counters() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&mut v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&mut v, 0.99), Duration::from_millis(99));
        assert_eq!(counter_total([Some(5), None, Some(8), Some(2), Some(4)].into_iter()), 3 + 2 + 2);
    }
}
