//! A Lambda fleet against one database (issue 19): many environments, each a
//! real function process with its own emulated Runtime API, driven the way
//! Lambda's frontend drives them.
//!
//! - **Routing.** An arrival goes to an idle environment (the one idle the
//!   shortest time). If none is idle, a new one starts (a cold start, the
//!   invocation queued at once and taken after INIT), up to the concurrency
//!   limit; past it the arrival is throttled (Lambda's 429).
//! - **Freezing.** An environment is frozen (SIGSTOP) when its runtime polls
//!   for the next event after answering, and thawed (SIGCONT) before an
//!   invocation is handed to it.
//! - **Reaping.** Environments idle past the reap time are ended: SIGTERM to
//!   a thawed process for most, SIGKILL for a seeded fraction, and another
//!   fraction left frozen for the rest of the run (a lost host: on loopback a
//!   killed process's sockets are closed by the kernel at once, so only a
//!   silent process keeps a server slot the way a vanished host does). At
//!   the end every environment still alive gets SIGTERM.
//! - **Load.** A seeded, bounded [`Schedule`] of arrivals.
//! - **Server truth.** A sampler reads `pg_stat_activity`, the server's
//!   session count and CPU (and PgBouncer's pools) every 200 ms; see
//!   [`server`].
//! - **Faults.** Actions (a restart…) run at chosen moments during the run,
//!   and are marked on its timeline.
//!
//! Modules: [`schedule`] (the arrivals), `environment` (one environment's
//! process, emulator and signals), [`server`] (sampling, server log),
//! [`report`] (records, summary, timeline, recovery).

pub mod environment;
pub mod report;
pub mod schedule;
pub mod server;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use environment::{Answer, Ending, Reap};
pub use report::{quantile as quantile_of, Bucket, Environment, FleetReport, Mark, Record, Summary};
pub use schedule::{Arrival, Phase, Schedule};
pub use server::{closes_by_application, connections_in_log, peak_sessions_in_log, Closes, PoolSample, Sample};

use environment::{Command, Event};

use crate::Postgres;

/// How often the server is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How often idle environments are looked at for reaping.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// What each invocation asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// The `orders` API: `POST /orders` for a share of arrivals (each a new
    /// order, item `fleet-<seed>-<index>`), `GET /orders/1` for the rest.
    Orders {
        /// Share of arrivals that write, 0 to 1.
        write_share: f64,
    },
    /// `GET /orders/1` only (what the benchmark's contenders serve).
    Reads,
}

/// A fleet run's settings.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The scenario's name, for reports.
    pub label: String,
    /// The function binary ([`crate::bin_path`]).
    pub program: PathBuf,
    /// Where the function connects; each environment's connections get
    /// `application_name=<app_prefix><id>` added (the adapter honours it).
    pub database_url: String,
    /// Prefix of each environment's `application_name`.
    pub app_prefix: String,
    /// The function's other environment variables.
    pub vars: Vec<(String, String)>,
    /// Most environments alive at once (reserved concurrency).
    pub concurrency_limit: usize,
    /// Idle this long, an environment is reaped.
    pub reap_after: Duration,
    /// Share of reaped environments SIGKILLed instead of SIGTERMed.
    pub kill_share: f64,
    /// Share of reaped environments lost (left frozen) instead.
    pub lose_share: f64,
    /// The function timeout (the deadline each invocation carries).
    pub function_timeout: Duration,
    /// The arrivals.
    pub schedule: Schedule,
    /// Seed of the arrivals, the workload and the reaping.
    pub seed: u64,
    /// What the invocations ask.
    pub workload: Workload,
    /// Where each environment's output goes (`env-<id>.log`).
    pub log_dir: PathBuf,
}

/// An action run during the fleet run, e.g. restarting the server.
pub struct Fault<'a> {
    /// When, since the run's start.
    pub at: Duration,
    /// Its name on the timeline.
    pub label: String,
    /// The action; the mark ends when it completes.
    pub action: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
}

impl std::fmt::Debug for Fault<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fault").field("at", &self.at).field("label", &self.label).finish_non_exhaustive()
    }
}

impl<'a> Fault<'a> {
    /// `action` at `at`, named `label`.
    pub fn new(at: Duration, label: &str, action: impl Future<Output = ()> + Send + 'a) -> Self {
        Self { at, label: label.to_owned(), action: Box::pin(action) }
    }
}

/// The server the fleet is measured against.
#[derive(Debug, Clone, Copy)]
pub struct Server<'a> {
    /// The database (sampled directly).
    pub pg: &'a Postgres,
    /// PgBouncer's port, when one is in front (its admin console is sampled;
    /// it needs `admin_users` or `stats_users` naming the `app` role).
    pub bouncer_port: Option<u16>,
}

/// The item a written order gets: unique per arrival, so that the rows tell
/// which invocation wrote them.
#[must_use]
pub fn order_item(seed: u64, index: usize) -> String {
    format!("fleet-{seed}-{index}")
}

fn payload(workload: Workload, seed: u64, index: usize, rng: &mut fastrand::Rng) -> Value {
    match workload {
        Workload::Orders { write_share } if rng.f64() < write_share => {
            crate::orders::post_valid_order(&order_item(seed, index), 1 + (index % 5) as i64)
        }
        _ => crate::orders::get_order("1"),
    }
}

struct Slot {
    commands: Option<mpsc::UnboundedSender<Command>>,
    busy: bool,
    idle_since: Option<Instant>,
}

/// Runs the fleet against `server` with `faults`, and reports.
///
/// # Panics
/// If an environment cannot be started (the binary is missing, the
/// emulator cannot bind).
pub async fn run(config: FleetConfig, server: Server<'_>, faults: Vec<Fault<'_>>) -> FleetReport {
    std::fs::create_dir_all(&config.log_dir)
        .unwrap_or_else(|e| panic!("create the fleet's log dir {}: {e}", config.log_dir.display()));
    let arrivals = config.schedule.arrivals(config.seed);
    let start = Instant::now();
    let started_at = std::time::SystemTime::now();
    let alive = Arc::new(AtomicUsize::new(0));
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    let (done_tx, done_rx) = watch::channel(false);

    let mut marks: Vec<Mark> = config
        .schedule
        .phases
        .iter()
        .zip(config.schedule.phase_starts())
        .map(|(p, from)| Mark { label: p.name.clone(), from, to: from + p.duration, fault: false })
        .collect();

    let router = route(&config, &arrivals, start, alive.clone(), pids.clone(), done_tx);
    let sampler = sample(server, start, alive, pids, done_rx.clone());
    let faults = inject(faults, start);
    let ((records, environments), samples, fault_marks) = tokio::join!(router, sampler, faults);
    marks.extend(fault_marks);
    let (connects, refused) = server::connections_in_log(&server.pg.read_log(), started_at);
    FleetReport {
        connects,
        refused,
        label: config.label.clone(),
        seed: config.seed,
        records,
        environments,
        samples,
        marks,
        duration: start.elapsed(),
        concurrency_limit: config.concurrency_limit,
    }
}

async fn inject(faults: Vec<Fault<'_>>, start: Instant) -> Vec<Mark> {
    let mut marks = Vec::new();
    for fault in faults {
        tokio::time::sleep_until(start + fault.at).await;
        let from = start.elapsed();
        fault.action.await;
        marks.push(Mark { label: fault.label, from, to: start.elapsed(), fault: true });
    }
    marks
}

async fn sample(
    server: Server<'_>,
    start: Instant,
    alive: Arc<AtomicUsize>,
    pids: Arc<Mutex<BTreeSet<u32>>>,
    mut done: watch::Receiver<bool>,
) -> Vec<Sample> {
    let mut sampler = server::Sampler::new(server.pg, server.bouncer_port);
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.wait_for(|d| *d) => break,
        }
        let mut s = Sample { at: start.elapsed(), envs_alive: alive.load(Ordering::Relaxed), ..Sample::default() };
        let live: Vec<u32> = lock(&pids).iter().copied().collect();
        s.envs_rss_kib = live.iter().filter_map(|&pid| server::resident_kib(pid)).sum();
        sampler.sample(&mut s).await;
        samples.push(s);
    }
    // One last look, after every environment ended.
    let mut s = Sample { at: start.elapsed(), envs_alive: alive.load(Ordering::Relaxed), ..Sample::default() };
    sampler.sample(&mut s).await;
    samples.push(s);
    samples
}

async fn route(
    config: &FleetConfig,
    arrivals: &[Arrival],
    start: Instant,
    alive: Arc<AtomicUsize>,
    pids: Arc<Mutex<BTreeSet<u32>>>,
    done: watch::Sender<bool>,
) -> (Vec<Record>, Vec<Environment>) {
    let mut rng = fastrand::Rng::with_seed(config.seed ^ 0x5eed_f1ee7);
    let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
    let mut records: Vec<Option<Record>> = vec![None; arrivals.len()];
    let mut environments: Vec<Environment> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut in_flight = 0usize;
    let mut ending = 0usize;
    let mut next = 0usize;
    let mut reap_tick = tokio::time::interval(REAP_EVERY);
    let mut finishing = false;
    // Senders of lost environments: dropping them at the end lets their tasks kill them.
    let mut lost = Vec::new();

    loop {
        let next_at = arrivals.get(next).map(|a| start + a.at);
        tokio::select! {
            biased;
            Some(event) = events.recv() => match event {
                Event::Answered { env, index, answer, latency, cold, usable } => {
                    in_flight -= 1;
                    records[index] = Some(Record { index, arrived: arrivals[index].at, latency, answer, cold, env: Some(env) });
                    environments[env].invocations += 1;
                    let slot = &mut slots[env];
                    slot.busy = false;
                    if usable {
                        slot.idle_since = Some(Instant::now());
                    } else {
                        // It is ending on its own (INIT failed, hang); Ended follows.
                        slot.commands = None;
                        ending += 1;
                    }
                }
                Event::Ended { env, ending: how } => {
                    ending -= 1;
                    environments[env].ended = Some((start.elapsed(), how));
                    lock(&pids).remove(&environments[env].pid);
                    alive.fetch_sub(1, Ordering::Relaxed);
                }
            },
            _ = sleep_until_opt(next_at), if next_at.is_some() => {
                let index = next;
                next += 1;
                let arrived = start + arrivals[index].at;
                let payload = payload(config.workload, config.seed, index, &mut rng);
                // The idle environment idle the shortest time.
                let idle = slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.commands.is_some() && !s.busy)
                    .max_by_key(|(_, s)| s.idle_since)
                    .map(|(i, _)| i);
                let env = match idle {
                    Some(env) => Some(env),
                    None if alive.load(Ordering::Relaxed) < config.concurrency_limit => {
                        let env = slots.len();
                        let application_name = format!("{}{env}", config.app_prefix);
                        let mut vars = config.vars.clone();
                        let separator = if config.database_url.contains('?') { '&' } else { '?' };
                        vars.push((
                            "DATABASE_URL".to_owned(),
                            format!("{}{separator}application_name={application_name}", config.database_url),
                        ));
                        let log = config.log_dir.join(format!("env-{env}.log"));
                        let (commands, pid) = environment::start(
                            env,
                            config.program.clone(),
                            vars,
                            log,
                            config.function_timeout,
                            events_tx.clone(),
                        )
                        .await;
                        alive.fetch_add(1, Ordering::Relaxed);
                        lock(&pids).insert(pid);
                        environments.push(Environment {
                            application_name,
                            pid,
                            started: start.elapsed(),
                            ended: None,
                            invocations: 0,
                        });
                        slots.push(Slot { commands: Some(commands), busy: false, idle_since: None });
                        Some(env)
                    }
                    None => None,
                };
                match env {
                    Some(env) => {
                        let slot = &mut slots[env];
                        slot.busy = true;
                        slot.idle_since = None;
                        in_flight += 1;
                        let command = Command::Invoke { payload, arrived, index };
                        slot.commands.as_ref().expect("a live environment").send(command).expect("the environment's task runs");
                    }
                    None => {
                        records[index] = Some(Record {
                            index,
                            arrived: arrivals[index].at,
                            latency: Duration::ZERO,
                            answer: Answer::Throttled,
                            cold: false,
                            env: None,
                        });
                    }
                }
            },
            _ = reap_tick.tick() => {
                let now = Instant::now();
                for slot in &mut slots {
                    let expired = slot.idle_since.is_some_and(|t| now.duration_since(t) >= config.reap_after);
                    if slot.commands.is_none() || slot.busy || !(expired || finishing) {
                        continue;
                    }
                    let draw = rng.f64();
                    let how = if finishing {
                        Reap::Terminate
                    } else if draw < config.lose_share {
                        Reap::Lose
                    } else if draw < config.lose_share + config.kill_share {
                        Reap::Kill
                    } else {
                        Reap::Terminate
                    };
                    let commands = slot.commands.take().expect("checked above");
                    let _ = commands.send(Command::Reap(how));
                    if how == Reap::Lose {
                        // Kept frozen: the task waits for this sender to go.
                        lost.push(commands);
                    }
                    slot.idle_since = None;
                    ending += 1;
                }
            },
        }
        if next == arrivals.len() && in_flight == 0 {
            finishing = true;
            if ending == 0 && slots.iter().all(|s| s.commands.is_none()) {
                break;
            }
        }
    }
    let _ = done.send(true);
    drop(lost);
    let records = records.into_iter().map(|r| r.expect("every arrival recorded")).collect();
    (records, environments)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
