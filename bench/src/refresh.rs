//! Refresh cost: an adapter whose pool reaches its maximum age every second,
//! invoked at a steady pace; the invocations that replaced the pool against
//! the others. It connects through the counting proxy ([`crate::wire`]),
//! which tells which invocation opened a connection without reading the
//! function's growing output after each one; the hop it adds is in both
//! kinds of invocation and in the connect the target is stated in. Run
//! twice: with the function left running between invocations, and frozen
//! between them as Lambda freezes an environment ([`Between`]).

use std::time::{Duration, Instant};

use integration_tests::Postgres;

use crate::cold::{field, Warmup};
use crate::contenders::{Contender, Running};
use crate::summary::Summary;
use crate::wire::CountingProxy;

/// `DB_MAX_AGE_MS`: short, so that a run of seconds sees tens of refreshes
/// (a p50 of ten is a coin toss against a p99).
pub(crate) const MAX_AGE_MS: &str = "250";
/// `DB_HEALTH_CHECK_INTERVAL_MS` must be shorter than the maximum age; at the
/// pace below a round trip succeeds every few milliseconds, so no check runs.
const HEALTH_CHECK_INTERVAL_MS: &str = "200";
const PACE: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub(crate) struct RefreshResult {
    pub(crate) normal: Summary,
    pub(crate) refreshing: Summary,
    /// The invocation after each refreshing one (when it did not refresh
    /// too): where a build still running after its invocation answered
    /// lands. Not among `normal`, whose p99 the target is stated against.
    pub(crate) after: Summary,
    /// The new pools' warmups, as the adapter logged them.
    pub(crate) warmups: Vec<Warmup>,
    /// The adapter's own `duration_ms` of each refresh.
    pub(crate) durations_ms: Vec<f64>,
    /// Refreshes built in the background, and those an invocation waited
    /// for (the synchronous fallback), as the adapter logged them.
    pub(crate) background: usize,
    pub(crate) waited: usize,
    /// Every invocation in order (for the picture).
    pub(crate) timeline: Vec<Point>,
    /// From each answer reaching the Runtime API to the function's next
    /// `/next` poll (when Lambda would freeze it, and could send it the next
    /// invocation): after normal invocations and after refreshing ones.
    pub(crate) held_normal: Summary,
    pub(crate) held_refreshing: Summary,
}

/// One invocation of the refresh run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    /// When it was sent, since the first.
    pub(crate) at: Duration,
    pub(crate) latency: Duration,
    /// A connection was opened between it being sent and the next one
    /// being sent: it started the pool's replacement (built in the
    /// background, or with it waiting).
    pub(crate) refreshed: bool,
}

/// How the run treats the function between invocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Between {
    /// Left running; the next invocation sent [`PACE`] after the answer,
    /// whether or not the function has asked for it (the queue's wait is in
    /// its latency).
    Running,
    /// As Lambda treats an environment: sent nothing until it has polled
    /// `/next`, and stopped (`SIGSTOP`) from that poll, for [`PACE`], until
    /// its next invocation (`SIGCONT`).
    Frozen,
}

pub(crate) async fn run(pg: &Postgres, duration: Duration, between: Between) -> RefreshResult {
    let env = [("DB_MAX_AGE_MS", MAX_AGE_MS), ("DB_HEALTH_CHECK_INTERVAL_MS", HEALTH_CHECK_INTERVAL_MS)];
    let proxy = CountingProxy::start(pg.port()).await;
    let mut instance = Running::start(Contender::Adapter, pg, Some(proxy.port()), "refresh", &env).await;
    // Each invocation's latency and the proxy's connection count when it
    // was sent. The replacement is built in the background: its connection
    // may open in the pause after the invocation that started it, so an
    // invocation counts as refreshing when a connection opened between it
    // being sent and the next one being sent.
    let mut sent = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let before = proxy.counts();
        let at = started.elapsed();
        let invocation = instance.invoke().await;
        sent.push((at, invocation.latency, before));
        if between == Between::Frozen {
            instance.function.freeze_at_next_poll(&instance.api).await;
            tokio::time::sleep(PACE).await;
            instance.function.thaw();
        } else {
            tokio::time::sleep(PACE).await;
        }
    }
    let last = proxy.counts();
    // The run's own invocations are the last completions the API saw.
    let times = instance.api.times();
    let held = times.held_after_completions();
    let held = &held[held.len() - sent.len()..];
    let (mut held_normal, mut held_refreshing) = (Vec::new(), Vec::new());
    let mut normal = Vec::new();
    let mut refreshing = Vec::new();
    let mut after = Vec::new();
    let mut timeline = Vec::new();
    let mut previous_refreshed = false;
    for (k, &(at, latency, before)) in sent.iter().enumerate() {
        let next = sent.get(k + 1).map_or(last, |&(_, _, next)| next);
        let refreshed = next.since(before).connections > 0;
        if let Some(held) = held[k] {
            if refreshed { &mut held_refreshing } else { &mut held_normal }.push(held);
        }
        if refreshed {
            refreshing.push(latency);
        } else if previous_refreshed {
            after.push(latency);
        } else {
            normal.push(latency);
        }
        previous_refreshed = refreshed;
        timeline.push(Point { at, latency, refreshed });
    }
    let output = instance.function.output();
    let lines = refreshed_lines(&output);
    RefreshResult {
        background: lines.iter().filter(|line| is_true(line, "background")).count(),
        waited: lines.iter().filter(|line| !is_true(line, "background")).count(),
        normal: Summary::of(&normal),
        refreshing: Summary::of(&refreshing),
        after: Summary::of(&after),
        // The first warmup is INIT's.
        warmups: Warmup::parse_all(&output).into_iter().skip(1).collect(),
        durations_ms: refreshed_lines(&output).iter().filter_map(|line| field(line, "duration_ms")).collect(),
        timeline,
        held_normal: Summary::of(&held_normal),
        held_refreshing: Summary::of(&held_refreshing),
    }
}

/// Whether `key` is `true` on a log line, in text or JSON.
fn is_true(line: &str, key: &str) -> bool {
    line.contains(&format!("{key}=true")) || line.contains(&format!("\"{key}\":true"))
}

fn refreshed_lines(output: &str) -> Vec<&str> {
    output.lines().filter(|line| line.contains("pool refreshed")).collect()
}
