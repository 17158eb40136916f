//! Metrics in CloudWatch Embedded Metric Format: JSON records on stdout, each
//! holding what happened since the previous one, written at most once per
//! window of `DB_METRICS_INTERVAL_MS` (60 s by default).
//!
//! # Why aggregated
//!
//! A record per invocation costs about 1 KB of log ingestion, which at
//! CloudWatch Logs' price costs more than the invocation itself. So the
//! environment keeps what happened (counter deltas, and each duration as
//! distinct microsecond values with how often each occurred) and writes one
//! record per window, with EMF's `{"Values":[…],"Counts":[…]}` form for the
//! durations (a plain array when every value occurred once). The records stay exact: summed over the records, every counter
//! is what happened, and every duration metric has one value per occurrence
//! (a statement, a checkout, a warmup), rounded to the microsecond as before.
//!
//! # When a record is written
//!
//! Lambda freezes the process between invocations, so no timer could be
//! trusted to write anything: every decision is taken at a point where the
//! process is running ([`Point`]):
//! - **at the start of an invocation**, when the pending activity began in an
//!   earlier window: it is taken before the handler adds to it, stamped
//!   with its own time (after an idle gap, the previous invocations' record is
//!   not stamped with the next one's time), and written then, or after the
//!   answer under [`Lifecycle::run`](crate::Lifecycle::run) (below);
//! - **at the end of an invocation**: when the window of the oldest pending
//!   activity has passed, or when a duration metric would pass 100 distinct
//!   values (EMF's limit per metric and record) if the next invocation added
//!   as many as the largest number one added recently. A single invocation
//!   that adds more is split across several records, none over 100 values
//!   per metric. What is due is taken then; under
//!   [`Lifecycle::run`](crate::Lifecycle::run) it is written after the
//!   answer, before the runtime asks for the next invocation (when Lambda
//!   freezes the process), so no invocation waits for a record's text and
//!   write ([`Emf::defer`], [`Emf::write_deferred`]): before the answer it
//!   only swaps out the pending tallies; otherwise before the answer, the
//!   last point at which a frozen process is known to run;
//! - **at SIGTERM** (the shutdown extension makes Lambda send it): all that
//!   is pending, so nothing is lost when the environment ends;
//! - **before a SnapStart snapshot**: nothing may stay pending, or every
//!   restored copy would report it again. Only INIT has run then, and INIT's
//!   activity belongs to the publish: it is dropped ([`Emf::rebase`]).
//!
//! Windows are aligned to the clock (multiples of the interval since the
//! epoch), and a record's timestamp is its oldest activity: with the default
//! 60 s each record falls in one CloudWatch minute. `DB_METRICS_INTERVAL_MS=0`
//! writes a record after every invocation, with its `function_request_id`
//! and `xray_trace_id`, as before aggregation. An aggregated record instead
//! carries `invocations`, the number of invocations that ended in it (the
//! one written at SIGTERM included).
//!
//! Concurrent invocations (Lambda Managed Instances) share the pending
//! activity; a record takes it under one lock, so each count and value is
//! written exactly once, whichever invocation writes it.
//!
//! The records are written with the `_aws.CloudWatchMetrics` envelope, not
//! through the `metrics` facade: a library must not install a process-wide
//! recorder, as it must not install a tracing subscriber. The metric names
//! are an interface; the dashboard and alarms in `template.yaml` use them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::stats::{Counters, Pending};

/// The most values one metric may have in one record (EMF's limit).
pub(crate) const MAX_VALUES: usize = 100;

/// Reads a counter.
type Count = fn(&Counters) -> &AtomicU64;
/// Reads the pending values of a duration.
type Values = fn(&Pending) -> &Tally;

/// Counters, as deltas since the previous record.
const COUNTS: [(&str, Count); 8] = [
    ("HealthChecksRun", |c| &c.health_checks_run),
    ("HealthChecksSkipped", |c| &c.health_checks_skipped),
    ("PoolRefreshes", |c| &c.refreshes_max_age),
    ("PoolRebuilds", |c| &c.refreshes_failed_check),
    ("ConnectAttempts", |c| &c.connect_attempts),
    ("ConnectFailures", |c| &c.connect_failures),
    ("PoolExhausted", |c| &c.pool_exhausted),
    ("RetryAttempts", |c| &c.retry_attempts),
];

/// Durations, as the values recorded since the previous record.
const DURATIONS: [(&str, Values); 3] =
    [("WarmupDuration", |p| &p.warmups), ("CheckoutWait", |p| &p.checkouts), ("QueryDuration", |p| &p.queries)];

/// Durations of one kind since the previous record: each distinct value, in
/// microseconds, with how often it occurred.
///
/// Memory is bounded by time, not by the number of values: n distinct
/// microsecond values of one kind add up to at least n(n+1)/2 µs, so a
/// 15-minute invocation running statements back to back leaves at most
/// about 42,000 (about 1 MB; √C times that with C statements at once); a
/// record is written at the end of the invocation that passes 100.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally(BTreeMap<u64, u64>);

impl Tally {
    /// Counts one occurrence of `d`, rounded to the microsecond.
    pub(crate) fn add(&mut self, d: Duration) {
        let micros = u64::try_from(d.as_nanos().saturating_add(500) / 1000).unwrap_or(u64::MAX);
        *self.0.entry(micros).or_insert(0) += 1;
    }

    /// Distinct values.
    pub(crate) fn distinct(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Occurrences, all values together.
    #[cfg(test)]
    pub(crate) fn occurrences(&self) -> u64 {
        self.0.values().sum()
    }
}

/// The invocation a per-invocation record belongs to
/// (`DB_METRICS_INTERVAL_MS=0`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Invocation<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) xray_trace_id: Option<&'a str>,
}

/// Where the metrics are looked at: the points at which the process is
/// known to run, since a frozen one runs no timer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Point<'a> {
    /// An invocation is about to run its handler.
    Start,
    /// An invocation's handler is done; its answer is not sent yet.
    End(Invocation<'a>),
    /// SIGTERM or SIGINT: the process is about to exit.
    Shutdown,
}

/// Writes the environment's EMF records.
///
/// Recording (a counter, a value in a [`Tally`]) is all an invocation pays,
/// plus a check under one lock at its start and end; a record's text is
/// assembled only when one is due, with the parts that never change (the
/// namespace, the function name, the counters' declarations) prepared once.
#[derive(Debug)]
pub(crate) struct Emf {
    enabled: bool,
    /// The window in milliseconds; 0 writes a record after every invocation.
    interval_ms: u64,
    /// `"Namespace":…,"Dimensions":[["function_name"]]`.
    directive: String,
    /// `"function_name":…`.
    dimension: String,
    /// The counters' declarations, in a record's first part.
    declared_counts: String,
    state: Mutex<State>,
    /// Whether [`State::deferred`] may hold records: read without the lock
    /// after every answer, written under it.
    has_deferred: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// The counters as of the previous record.
    reported: [u64; COUNTS.len()],
    /// Whether the next record is the environment's first.
    cold: bool,
    /// When the oldest activity not yet written began (ms since the epoch):
    /// INIT, or the start of the first invocation since the previous record.
    since: Option<u64>,
    /// Invocations ended since the previous record.
    invocations: u64,
    /// Distinct values of each duration at the previous end of an invocation.
    seen: [usize; DURATIONS.len()],
    /// The most distinct values one duration gained between two ends of
    /// invocations, since the previous record, and before it.
    growth: usize,
    growth_before: usize,
    /// Records taken at the start or end of an invocation, to be written
    /// after its answer ([`Emf::defer`]).
    deferred: Vec<Deferred>,
}

/// A record taken at the end of an invocation and not written yet.
#[derive(Debug)]
struct Deferred {
    taken: Taken,
    /// The invocation it names (`DB_METRICS_INTERVAL_MS=0`): request id and
    /// trace id.
    invocation: Option<(String, Option<String>)>,
}

impl Deferred {
    fn invocation(&self) -> Option<Invocation<'_>> {
        self.invocation.as_ref().map(|(request_id, xray_trace_id)| Invocation {
            request_id: request_id.as_str(),
            xray_trace_id: xray_trace_id.as_deref(),
        })
    }
}

/// What one flush took from the counters, to be written.
#[derive(Debug)]
struct Taken {
    timestamp: u64,
    cold: bool,
    deltas: [u64; COUNTS.len()],
    /// The durations' tallies as they were taken: turned into the record's
    /// arrays only when it is rendered, so that an invocation that takes a
    /// record to write after its answer only swaps them out before the
    /// answer (and the old tallies are freed after it).
    durations: Pending,
    invocations: u64,
}

impl Emf {
    pub(crate) fn new(config: &Config) -> Self {
        let quote = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        let mut declared_counts = String::from(r#"{"Name":"ColdStart","Unit":"Count"}"#);
        for (name, _) in COUNTS {
            let _ = write!(declared_counts, r#",{{"Name":"{name}","Unit":"Count"}}"#);
        }
        Self {
            enabled: config.metrics,
            interval_ms: u64::try_from(config.metrics_interval.as_millis()).unwrap_or(u64::MAX),
            directive: format!(r#""Namespace":{},"Dimensions":[["function_name"]]"#, quote(&config.metrics_namespace)),
            dimension: format!(r#""function_name":{}"#, quote(&config.function_name)),
            declared_counts,
            // INIT is the first activity.
            state: Mutex::new(State {
                reported: [0; COUNTS.len()],
                cold: true,
                since: Some(epoch_millis(SystemTime::now())),
                invocations: 0,
                seen: [0; DURATIONS.len()],
                growth: 0,
                growth_before: 0,
                deferred: Vec::new(),
            }),
            has_deferred: AtomicBool::new(false),
        }
    }

    /// Drops everything pending and starts afresh from now (the publish-time
    /// INIT of a SnapStart snapshot, which belongs to the publish). The next
    /// record still counts as the environment's cold start.
    pub(crate) fn rebase(&self, counters: &Counters) {
        let mut state = self.lock();
        drop(counters.take_pending());
        state.reported = read(counters);
        state.since = None;
        state.invocations = 0;
        state.seen = [0; DURATIONS.len()];
        (state.growth, state.growth_before) = (0, 0);
        drop(self.take_deferred(&mut state));
    }

    /// Whether records are written per invocation, naming it (its request
    /// and trace ids); an aggregated record names none.
    pub(crate) fn names_invocations(&self) -> bool {
        self.enabled && self.interval_ms == 0
    }

    /// Writes to stdout the records due at `point`, if any.
    pub(crate) fn at(&self, counters: &Counters, point: Point<'_>) {
        write(self.records_at(counters, point, SystemTime::now()));
    }

    /// At the start or end of an invocation whose answer is still to be
    /// sent: takes what is due at `point`, `now`, as [`at`](Self::at) would,
    /// and keeps it for [`write_deferred`](Self::write_deferred) after the
    /// answer. Taken here, under the same lock, so that each count and value
    /// is in exactly one record whoever writes it; a record kept is written
    /// at SIGTERM if no answer comes first. Not for [`Point::Shutdown`].
    pub(crate) fn defer(&self, counters: &Counters, point: Point<'_>, now: SystemTime) {
        if !self.enabled {
            return;
        }
        let now = epoch_millis(now);
        let mut state = self.lock();
        if self.due(&mut state, counters, point, now) {
            self.keep(state, counters, point, now);
        }
    }

    /// [`defer`](Self::defer) once a record is due.
    #[cold]
    #[inline(never)]
    fn keep(&self, mut state: MutexGuard<'_, State>, counters: &Counters, point: Point<'_>, now: u64) {
        if let Some(taken) = Self::take_due(&mut state, counters, point, now) {
            let invocation = self
                .named(point)
                .map(|invocation| (invocation.request_id.to_owned(), invocation.xray_trace_id.map(str::to_owned)));
            state.deferred.push(Deferred { taken, invocation });
            self.has_deferred.store(true, Ordering::Relaxed);
        }
    }

    /// The invocation a record taken at `point` names: the one ending
    /// there, when records are written per invocation.
    fn named<'a>(&self, point: Point<'a>) -> Option<Invocation<'a>> {
        match point {
            Point::End(invocation) if self.names_invocations() => Some(invocation),
            _ => None,
        }
    }

    /// Writes to stdout the records [`defer`](Self::defer) kept, if
    /// any: after an answer.
    pub(crate) fn write_deferred(&self) {
        if self.has_deferred.load(Ordering::Relaxed) {
            write(self.deferred_records());
        }
    }

    /// The records [`defer`](Self::defer) kept, taken.
    #[cold]
    #[inline(never)]
    fn deferred_records(&self) -> Vec<String> {
        let deferred = self.take_deferred(&mut self.lock());
        self.render_deferred(&deferred)
    }

    /// The kept records, taken out of `state` (the state's lock held).
    fn take_deferred(&self, state: &mut State) -> Vec<Deferred> {
        self.has_deferred.store(false, Ordering::Relaxed);
        std::mem::take(&mut state.deferred)
    }

    fn render_deferred(&self, deferred: &[Deferred]) -> Vec<String> {
        deferred.iter().flat_map(|d| self.render(&d.taken, d.invocation())).collect()
    }

    /// The records (JSON objects) due at `point`, `now`: usually none. At
    /// [`Point::Shutdown`], those [`defer`](Self::defer) kept first.
    pub(crate) fn records_at(&self, counters: &Counters, point: Point<'_>, now: SystemTime) -> Vec<String> {
        if !self.enabled {
            return Vec::new();
        }
        let now = epoch_millis(now);
        let mut state = self.lock();
        if !self.due(&mut state, counters, point, now) {
            return Vec::new();
        }
        self.due_records(state, counters, point, now)
    }

    /// [`records_at`](Self::records_at) once records are due.
    #[cold]
    #[inline(never)]
    fn due_records(
        &self,
        mut state: MutexGuard<'_, State>,
        counters: &Counters,
        point: Point<'_>,
        now: u64,
    ) -> Vec<String> {
        let deferred = match point {
            Point::Shutdown => self.take_deferred(&mut state),
            _ => Vec::new(),
        };
        let taken = Self::take_due(&mut state, counters, point, now);
        drop(state);
        let invocation = self.named(point);
        let mut records = self.render_deferred(&deferred);
        if let Some(taken) = taken {
            records.extend(self.render(&taken, invocation));
        }
        records
    }

    /// Whether a record is due at `point`, at `now` (ms since the epoch),
    /// noting the point in `state` (the state's lock held): usually not.
    fn due(&self, state: &mut State, counters: &Counters, point: Point<'_>, now: u64) -> bool {
        let per_invocation = self.names_invocations();
        let passed = |since: Option<u64>| {
            !per_invocation && since.is_some_and(|s| s / self.interval_ms != now / self.interval_ms)
        };
        match point {
            Point::Start => {
                let due = passed(state.since);
                if !due {
                    state.since.get_or_insert(now);
                }
                due
            }
            Point::End(_) => {
                state.invocations += 1;
                let due = per_invocation || passed(state.since) || Self::values_due(state, counters);
                state.since.get_or_insert(now);
                due
            }
            Point::Shutdown => true,
        }
    }

    /// What is due at `point`, taken from the counters (the state's lock
    /// held): two flushes at once must each take a disjoint share, or a
    /// count read by one and stored after the other's later read would be
    /// written twice.
    fn take_due(state: &mut State, counters: &Counters, point: Point<'_>, now: u64) -> Option<Taken> {
        let taken = Self::take(state, counters, now);
        if let Point::Start = point {
            // The invocation starting now opens the next record.
            state.since = Some(now);
        }
        taken
    }

    /// Whether a duration would pass [`MAX_VALUES`] if the next invocation
    /// added as many distinct values as the most one added recently.
    fn values_due(state: &mut State, counters: &Counters) -> bool {
        let distinct = counters.pending_distinct();
        for (now, before) in distinct.iter().zip(state.seen) {
            state.growth = state.growth.max(now.saturating_sub(before));
        }
        state.seen = distinct;
        let next = state.growth.max(state.growth_before);
        distinct.iter().any(|n| n + next > MAX_VALUES)
    }

    /// Takes everything pending; `None` if nothing happened since the
    /// previous record.
    fn take(state: &mut State, counters: &Counters, now: u64) -> Option<Taken> {
        let counts = read(counters);
        let pending = counters.take_pending();
        let before = std::mem::replace(&mut state.reported, counts);
        let cold = std::mem::replace(&mut state.cold, false);
        let since = state.since.take();
        let invocations = std::mem::take(&mut state.invocations);
        state.seen = [0; DURATIONS.len()];
        state.growth_before = std::mem::take(&mut state.growth);
        let mut deltas = [0; COUNTS.len()];
        for (i, delta) in deltas.iter_mut().enumerate() {
            *delta = counts[i].saturating_sub(before[i]);
        }
        let idle = since.is_none() && !cold && invocations == 0;
        if idle && deltas.iter().all(|&d| d == 0) && DURATIONS.iter().all(|(_, values)| values(&pending).is_empty()) {
            return None;
        }
        Some(Taken { timestamp: since.unwrap_or(now), cold, deltas, durations: pending, invocations })
    }

    /// The records for `taken`: the first with the counters and up to
    /// [`MAX_VALUES`] values of each duration, then as many as the longest
    /// duration needs for the rest, with only its values.
    fn render(&self, taken: &Taken, invocation: Option<Invocation<'_>>) -> Vec<String> {
        let durations =
            DURATIONS.map(|(_, values)| values(&taken.durations).0.iter().map(|(&v, &n)| (v, n)).collect::<Vec<_>>());
        let parts = durations.iter().map(|values| values.len().div_ceil(MAX_VALUES)).max().unwrap_or(0).max(1);
        (0..parts)
            .map(|part| {
                let chunks: Vec<(&str, &[(u64, u64)])> = DURATIONS
                    .iter()
                    .zip(&durations)
                    .filter_map(|((name, _), values)| values.chunks(MAX_VALUES).nth(part).map(|chunk| (*name, chunk)))
                    .collect();
                self.render_part(taken, part == 0, &chunks, invocation)
            })
            .collect()
    }

    fn render_part(
        &self,
        taken: &Taken,
        first: bool,
        chunks: &[(&str, &[(u64, u64)])],
        invocation: Option<Invocation<'_>>,
    ) -> String {
        let mut record = String::with_capacity(1024 + chunks.iter().map(|(_, c)| c.len() * 12).sum::<usize>());
        let _ = write!(
            record,
            r#"{{"_aws":{{"Timestamp":{},"CloudWatchMetrics":[{{{},"Metrics":["#,
            taken.timestamp, self.directive
        );
        let mut declared = 0;
        if first {
            record.push_str(&self.declared_counts);
            declared += 1;
        }
        // Every declared metric needs a value: an empty duration is left out.
        for (name, _) in chunks {
            let comma = if declared == 0 { "" } else { "," };
            let _ = write!(record, r#"{comma}{{"Name":"{name}","Unit":"Milliseconds"}}"#);
            declared += 1;
        }
        let _ = write!(record, r#"]}}]}},{}"#, self.dimension);
        if first {
            let _ = write!(record, r#","ColdStart":{}"#, u8::from(taken.cold));
            for ((name, _), delta) in COUNTS.iter().zip(taken.deltas) {
                let _ = write!(record, r#","{name}":{delta}"#);
            }
        }
        for (name, chunk) in chunks {
            // Values that each occurred once are a plain array, as before
            // aggregation: the counts would only add bytes.
            let once = chunk.iter().all(|(_, count)| *count == 1);
            let _ = write!(record, r#","{name}":{}"#, if once { "[" } else { r#"{"Values":["# });
            for (i, (micros, _)) in chunk.iter().enumerate() {
                if i > 0 {
                    record.push(',');
                }
                push_millis(&mut record, *micros);
            }
            if once {
                record.push(']');
                continue;
            }
            record.push_str(r#"],"Counts":["#);
            for (i, (_, count)) in chunk.iter().enumerate() {
                let _ = write!(record, "{}{count}", if i == 0 { "" } else { "," });
            }
            record.push_str("]}");
        }
        if first {
            match invocation {
                None => {
                    let _ = write!(record, r#","invocations":{}"#, taken.invocations);
                }
                Some(invocation) => {
                    let quote = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
                    let _ = write!(record, r#","function_request_id":{}"#, quote(invocation.request_id));
                    if let Some(trace) = invocation.xray_trace_id {
                        let _ = write!(record, r#","xray_trace_id":{}"#, quote(trace));
                    }
                }
            }
        }
        record.push('}');
        record
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Writes `records` to stdout, one per line, in one write under stdout's
/// lock: log lines cannot interleave with them.
fn write(records: Vec<String>) {
    if records.is_empty() {
        return;
    }
    let mut text = String::with_capacity(records.iter().map(|r| r.len() + 1).sum());
    for record in records {
        text.push_str(&record);
        text.push('\n');
    }
    if let Err(error) = std::io::stdout().lock().write_all(text.as_bytes()) {
        tracing::warn!(%error, "could not write the metrics record");
    }
}

fn read(counters: &Counters) -> [u64; COUNTS.len()] {
    COUNTS.map(|(_, count)| count(counters).load(Ordering::Relaxed))
}

fn epoch_millis(time: SystemTime) -> u64 {
    u64::try_from(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// `micros` as milliseconds, with no more decimals than it needs (1500 → `1.5`).
fn push_millis(out: &mut String, micros: u64) {
    let (whole, fraction) = (micros / 1000, micros % 1000);
    let _ = match fraction {
        0 => write!(out, "{whole}"),
        f if f % 100 == 0 => write!(out, "{whole}.{}", f / 100),
        f if f % 10 == 0 => write!(out, "{whole}.{:02}", f / 10),
        f => write!(out, "{whole}.{f:03}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{bump, WarmupTimings};
    use serde_json::{json, Value};

    fn parse(record: &str) -> Value {
        serde_json::from_str(record).unwrap_or_else(|e| panic!("not JSON ({e}): {record}"))
    }

    fn emf_every(interval: Duration) -> Emf {
        let config = Config { function_name: "orders".to_owned(), metrics_interval: interval, ..Config::default() };
        Emf::new(&config)
    }

    /// Counters and minute-long windows that start, as INIT did, at 0 s on
    /// the tests' clock (`Emf::new` took the real one: rebased).
    fn minute_windows() -> (Counters, Emf) {
        let counters = Counters::default();
        let emf = emf_every(Duration::from_secs(60));
        emf.rebase(&counters);
        (counters, emf)
    }

    fn at(secs: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(secs)
    }

    const INVOCATION: Invocation<'static> = Invocation { request_id: "r-1", xray_trace_id: Some("Root=1") };

    /// The values and counts of `name` in `record`: the
    /// `{"Values":…,"Counts":…}` form, or a plain array of values once each.
    fn values(record: &Value, name: &str) -> Vec<(f64, u64)> {
        let Some(metric) = record.get(name) else { return Vec::new() };
        if let Some(once) = metric.as_array() {
            return once.iter().map(|v| (v.as_f64().expect("a number"), 1)).collect();
        }
        let values = metric["Values"].as_array().unwrap_or_else(|| panic!("{name}: Values in {record}"));
        let counts = metric["Counts"].as_array().unwrap_or_else(|| panic!("{name}: Counts in {record}"));
        assert_eq!(values.len(), counts.len(), "{record}");
        values.iter().zip(counts).map(|(v, c)| (v.as_f64().expect("a number"), c.as_u64().expect("a count"))).collect()
    }

    /// What CloudWatch would compute from `records`: the sum of a counter.
    fn sum(records: &[Value], name: &str) -> u64 {
        records.iter().filter_map(|r| r.get(name)).map(|v| v.as_u64().expect("a count")).sum()
    }

    /// Every record's declared metrics have values, and no metric has more
    /// than EMF's 100.
    fn well_formed(record: &Value) {
        let declared = record["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().expect("metrics");
        for metric in declared {
            let name = metric["Name"].as_str().expect("name");
            assert!(record.get(name).is_some(), "{name} has a value: {record}");
            if !record[name].is_number() {
                let n = values(record, name).len();
                assert!((1..=MAX_VALUES).contains(&n), "{name}: {n} values: {record}");
            }
        }
    }

    #[test]
    fn per_invocation_records_carry_deltas_and_declare_only_metrics_with_values() {
        let counters = Counters::default();
        let emf = emf_every(Duration::ZERO);
        bump(&counters.connect_attempts);
        counters.warmed(WarmupTimings { total: Duration::from_micros(5250), ..WarmupTimings::default() });
        assert!(emf.records_at(&counters, Point::Start, at(10.0)).is_empty());
        let first = emf.records_at(&counters, Point::End(INVOCATION), at(10.1));
        let [first] = first.as_slice() else { panic!("one record: {first:?}") };
        let first = parse(first);
        well_formed(&first);
        assert_eq!(first["ColdStart"], 1);
        assert_eq!(first["ConnectAttempts"], 1);
        assert_eq!(first["WarmupDuration"], json!([5.25]), "once: a plain array, as before aggregation");
        assert_eq!(first["function_name"], "orders");
        assert_eq!(first["function_request_id"], "r-1");
        assert_eq!(first["xray_trace_id"], "Root=1");
        assert!(first.get("invocations").is_none(), "the request id says which one");

        bump(&counters.health_checks_skipped);
        counters.query_took(Duration::from_micros(1500));
        counters.query_took(Duration::from_nanos(1_499_600));
        counters.query_took(Duration::from_micros(2));
        let second = emf.records_at(&counters, Point::End(INVOCATION), at(10.2));
        let second = parse(&second[0]);
        well_formed(&second);
        assert_eq!(second["ColdStart"], 0);
        assert_eq!(second["ConnectAttempts"], 0, "a delta, not a total");
        assert_eq!(second["HealthChecksSkipped"], 1);
        assert_eq!(second["QueryDuration"], json!({"Values": [0.002, 1.5], "Counts": [1, 2]}), "grouped by µs");
        assert!(second.get("WarmupDuration").is_none(), "no warmup in this record: {second}");
    }

    #[test]
    fn a_window_becomes_one_record_stamped_with_its_oldest_activity() {
        let (counters, emf) = minute_windows();
        assert!(emf.records_at(&counters, Point::Start, at(60.5)).is_empty());
        for i in 0..50 {
            let t = 60.5 + f64::from(i);
            assert!(emf.records_at(&counters, Point::Start, at(t)).is_empty());
            bump(&counters.health_checks_skipped);
            counters.checkout_took(Duration::from_micros(20));
            counters.query_took(Duration::from_micros(700));
            assert!(emf.records_at(&counters, Point::End(INVOCATION), at(t + 0.001)).is_empty(), "at {t}");
        }
        // The next minute: the first invocation's start writes the window's
        // record, before its own activity.
        let written = emf.records_at(&counters, Point::Start, at(120.2));
        let [record] = written.as_slice() else { panic!("one record: {written:?}") };
        let record = parse(record);
        well_formed(&record);
        assert_eq!(record["_aws"]["Timestamp"], 60_500, "its oldest activity, in its own minute");
        assert_eq!(record["invocations"], 50);
        assert_eq!(record["HealthChecksSkipped"], 50);
        assert_eq!(record["ColdStart"], 1);
        assert_eq!(values(&record, "CheckoutWait"), [(0.02, 50)]);
        assert_eq!(values(&record, "QueryDuration"), [(0.7, 50)]);
        assert!(record.get("function_request_id").is_none(), "a record of many invocations names none");

        // That invocation's activity is in the next record, stamped with its start.
        counters.query_took(Duration::from_micros(900));
        assert!(emf.records_at(&counters, Point::End(INVOCATION), at(120.3)).is_empty());
        let last = emf.records_at(&counters, Point::Shutdown, at(500.0));
        let last = parse(&last[0]);
        assert_eq!(last["_aws"]["Timestamp"], 120_200);
        assert_eq!((last["invocations"].as_u64(), last["ColdStart"].as_u64()), (Some(1), Some(0)));
        assert_eq!(values(&last, "QueryDuration"), [(0.9, 1)]);
        assert!(emf.records_at(&counters, Point::Shutdown, at(501.0)).is_empty(), "nothing left to write");
    }

    #[test]
    fn a_record_is_written_before_a_metric_passes_100_values() {
        let (counters, emf) = minute_windows();
        let mut records = Vec::new();
        let mut micros = 1000;
        // Two new distinct values per invocation, all within one window.
        for i in 0..120 {
            let t = 0.1 + f64::from(i) * 0.01;
            records.extend(emf.records_at(&counters, Point::Start, at(t)));
            for _ in 0..2 {
                counters.query_took(Duration::from_micros(micros));
                micros += 1;
            }
            records.extend(emf.records_at(&counters, Point::End(INVOCATION), at(t + 0.005)));
        }
        records.extend(emf.records_at(&counters, Point::Shutdown, at(2.0)));
        let records: Vec<Value> = records.iter().map(|r| parse(r)).collect();
        let counts: Vec<usize> = records.iter().map(|r| values(r, "QueryDuration").len()).collect();
        eprintln!("measured: 240 distinct values in records of {counts:?}");
        assert_eq!(counts, [100, 100, 40], "full records, none past 100");
        records.iter().for_each(well_formed);
        assert_eq!(sum(&records, "invocations"), 120);
    }

    #[test]
    fn one_invocation_with_more_than_100_values_is_split_and_exact() {
        let (counters, emf) = minute_windows();
        assert!(emf.records_at(&counters, Point::Start, at(1.0)).is_empty());
        bump(&counters.retry_attempts);
        for i in 0..250u64 {
            counters.query_took(Duration::from_micros(100 + i));
            counters.query_took(Duration::from_micros(100 + i));
            counters.checkout_took(Duration::from_micros(5 + i % 3));
        }
        let records: Vec<Value> =
            emf.records_at(&counters, Point::End(INVOCATION), at(1.5)).iter().map(|r| parse(r)).collect();
        assert_eq!(records.len(), 3, "{records:?}");
        records.iter().for_each(well_formed);
        let queries: Vec<(f64, u64)> = records.iter().flat_map(|r| values(r, "QueryDuration")).collect();
        assert_eq!(queries.len(), 250);
        assert_eq!(queries.iter().map(|(_, n)| n).sum::<u64>(), 500, "every statement, once");
        let total: f64 = queries.iter().map(|(v, n)| v * *n as f64).sum();
        assert!((total - 2.0 * (100..350).sum::<u64>() as f64 / 1000.0).abs() < 1e-6, "the sum: {total}");
        assert_eq!(records.iter().flat_map(|r| values(r, "CheckoutWait")).map(|(_, n)| n).sum::<u64>(), 250);
        assert_eq!(sum(&records, "RetryAttempts"), 1, "counters once, in the first part");
        assert_eq!(sum(&records, "ColdStart"), 1);
    }

    #[test]
    fn rebase_drops_what_init_recorded_and_keeps_the_cold_start() {
        let counters = Counters::default();
        let emf = emf_every(Duration::from_secs(60));
        bump(&counters.connect_attempts);
        counters.warmed(WarmupTimings { total: Duration::from_millis(3), ..WarmupTimings::default() });
        emf.rebase(&counters);
        assert!(emf.records_at(&counters, Point::Shutdown, at(5.0)).len() == 1, "the cold start is still to come");
        let emf = emf_every(Duration::from_secs(60));
        bump(&counters.connect_attempts);
        emf.rebase(&counters);
        counters.warmed(WarmupTimings { total: Duration::from_millis(4), ..WarmupTimings::default() });
        let record = parse(&emf.records_at(&counters, Point::Shutdown, at(6.0))[0]);
        assert_eq!((record["ConnectAttempts"].as_u64(), record["ColdStart"].as_u64()), (Some(0), Some(1)));
        assert_eq!(values(&record, "WarmupDuration"), [(4.0, 1)], "only what came after");
    }

    #[test]
    fn concurrent_invocations_report_every_count_and_value_exactly_once() {
        concurrent_invocations(None);
    }

    /// As above, with the records due at an invocation's start or end taken
    /// then and written after its answer (`Lifecycle::run`), by whichever invocation
    /// answers next, or at SIGTERM: `EMF_SEED` (printed) picks, for each
    /// answer, whether it writes what was kept.
    #[test]
    fn records_kept_for_after_the_answer_are_each_written_exactly_once() {
        let seed = std::env::var("EMF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() % 1_000_003)
                .unwrap_or(1)
        });
        eprintln!("EMF_SEED={seed}");
        concurrent_invocations(Some(seed));
    }

    /// THREADS × ROUNDS invocations on as many threads; with `deferred`, its
    /// seed.
    fn concurrent_invocations(deferred: Option<u64>) {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 5_000;
        let counters = Counters::default();
        // Short windows on the real clock, and the values trigger too.
        let emf = emf_every(Duration::from_millis(5));
        let records = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (counters, emf, records) = (&counters, &emf, &records);
                scope.spawn(move || {
                    // xorshift64, one stream per thread.
                    let mut state = deferred.map(|seed| (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ thread);
                    for round in 0..ROUNDS {
                        let written = if state.is_some() {
                            emf.defer(counters, Point::Start, SystemTime::now());
                            Vec::new()
                        } else {
                            emf.records_at(counters, Point::Start, SystemTime::now())
                        };
                        bump(&counters.connect_attempts);
                        counters.query_took(Duration::from_micros(thread * ROUNDS + round));
                        let mut more = match state.as_mut() {
                            None => emf.records_at(counters, Point::End(INVOCATION), SystemTime::now()),
                            Some(state) => {
                                emf.defer(counters, Point::End(INVOCATION), SystemTime::now());
                                *state ^= *state << 13;
                                *state ^= *state >> 7;
                                *state ^= *state << 17;
                                if *state % 2 == 0 {
                                    emf.deferred_records()
                                } else {
                                    Vec::new()
                                }
                            }
                        };
                        more.extend(written);
                        records.lock().expect("lock").extend(more);
                    }
                });
            }
        });
        let mut records = records.into_inner().expect("lock");
        records.extend(emf.records_at(&counters, Point::Shutdown, SystemTime::now()));
        let records: Vec<Value> = records.iter().map(|r| parse(r)).collect();
        records.iter().for_each(well_formed);
        let values: Vec<(f64, u64)> = records.iter().flat_map(|r| values(r, "QueryDuration")).collect();
        eprintln!("measured: {} records for {} invocations", records.len(), THREADS * ROUNDS);
        assert_eq!(sum(&records, "ConnectAttempts"), THREADS * ROUNDS, "the records' deltas sum to the counter");
        assert_eq!(sum(&records, "invocations"), THREADS * ROUNDS);
        assert_eq!(sum(&records, "ColdStart"), 1);
        assert_eq!(values.len() as u64, THREADS * ROUNDS, "each distinct value once");
        assert!(values.iter().all(|(_, n)| *n == 1));
    }

    #[test]
    fn a_record_kept_at_an_end_is_the_one_written_there_and_sigterm_writes_it_first() {
        let scenario = |emf: &Emf, counters: &Counters, keep: bool| {
            let mut records = Vec::new();
            for i in 0..120 {
                let t = 0.1 + f64::from(i) * 0.01;
                records.extend(emf.records_at(counters, Point::Start, at(t)));
                counters.query_took(Duration::from_micros(1000 + u64::try_from(i).expect("small")));
                if keep {
                    emf.defer(counters, Point::End(INVOCATION), at(t + 0.005));
                    if i % 7 != 0 {
                        records.extend(emf.deferred_records());
                    }
                } else {
                    records.extend(emf.records_at(counters, Point::End(INVOCATION), at(t + 0.005)));
                }
            }
            let before_sigterm = records.len();
            records.extend(emf.records_at(counters, Point::Shutdown, at(2.0)));
            (records, before_sigterm)
        };
        let (counters, emf) = minute_windows();
        let (written, written_early) = scenario(&emf, &counters, false);
        let (counters, emf) = minute_windows();
        let (kept, kept_early) = scenario(&emf, &counters, true);
        assert!(written_early > 0, "the values limit wrote a record before SIGTERM: {written:?}");
        assert_eq!(kept, written, "the same records, in the same order");
        assert_eq!(kept_early, written_early, "written after the next answer, not left for SIGTERM");

        // Per-invocation records keep the invocation's ids.
        let counters = Counters::default();
        let emf = emf_every(Duration::ZERO);
        emf.defer(&counters, Point::End(INVOCATION), at(10.1));
        emf.defer(&counters, Point::End(Invocation { request_id: "r-2", xray_trace_id: None }), at(10.2));
        bump(&counters.connect_attempts);
        let records: Vec<Value> =
            emf.records_at(&counters, Point::Shutdown, at(11.0)).iter().map(|r| parse(r)).collect();
        let ids: Vec<&Value> = records.iter().map(|r| &r["function_request_id"]).collect();
        assert_eq!(ids, [&json!("r-1"), &json!("r-2"), &Value::Null], "kept first, then SIGTERM's: {records:?}");
        assert_eq!(records[0]["xray_trace_id"], "Root=1");
        assert_eq!(records[2]["ConnectAttempts"], 1);

        // A snapshot drops what is kept with the rest of INIT's activity.
        let counters = Counters::default();
        let emf = emf_every(Duration::ZERO);
        emf.defer(&counters, Point::End(INVOCATION), at(1.0));
        emf.rebase(&counters);
        assert!(emf.deferred_records().is_empty());
    }

    /// Under `Lifecycle::run`, a window that passed is taken at the next
    /// invocation's start, as it would be written there, and written after
    /// that invocation's answer: the same record, without the invocation's
    /// own activity, and nothing written before its handler.
    #[test]
    fn a_passed_window_taken_at_a_start_is_kept_for_after_the_answer() {
        let activity = |counters: &Counters, micros: u64| {
            bump(&counters.health_checks_skipped);
            counters.query_took(Duration::from_micros(micros));
        };
        let (counters, emf) = minute_windows();
        assert!(emf.records_at(&counters, Point::Start, at(60.5)).is_empty());
        activity(&counters, 700);
        assert!(emf.records_at(&counters, Point::End(INVOCATION), at(60.6)).is_empty());
        let written = emf.records_at(&counters, Point::Start, at(120.2));

        let (counters, emf) = minute_windows();
        emf.defer(&counters, Point::Start, at(60.5));
        activity(&counters, 700);
        emf.defer(&counters, Point::End(INVOCATION), at(60.6));
        assert!(emf.deferred_records().is_empty(), "nothing due within the window");
        emf.defer(&counters, Point::Start, at(120.2));
        activity(&counters, 900);
        emf.defer(&counters, Point::End(INVOCATION), at(120.3));
        let kept = emf.deferred_records();
        assert_eq!(kept, written, "the record the start would have written");
        let record = parse(&kept[0]);
        assert_eq!(record["_aws"]["Timestamp"], 60_500);
        assert_eq!(values(&record, "QueryDuration"), [(0.7, 1)], "not the invocation's own statement");
        let rest: Vec<Value> = emf.records_at(&counters, Point::Shutdown, at(121.0)).iter().map(|r| parse(r)).collect();
        assert_eq!(rest.iter().flat_map(|r| values(r, "QueryDuration")).collect::<Vec<_>>(), [(0.9, 1)]);
    }

    /// A statement outside any invocation (a task of the application's own
    /// between invocations, say) changes no counter; its duration is still
    /// written, at SIGTERM at the latest.
    #[test]
    fn a_duration_alone_is_not_dropped_as_idle() {
        let (counters, emf) = minute_windows();
        assert_eq!(emf.records_at(&counters, Point::Shutdown, at(1.0)).len(), 1, "INIT's record");
        counters.query_took(Duration::from_micros(1200));
        let written = emf.records_at(&counters, Point::Shutdown, at(2.0));
        let [record] = written.as_slice() else { panic!("one record: {written:?}") };
        assert_eq!(values(&parse(record), "QueryDuration"), [(1.2, 1)]);
        assert!(emf.records_at(&counters, Point::Shutdown, at(3.0)).is_empty(), "then nothing is left");
    }

    #[test]
    fn switched_off_writes_nothing() {
        let config = Config { metrics: false, ..Config::default() };
        let counters = Counters::default();
        bump(&counters.connect_attempts);
        assert!(Emf::new(&config).records_at(&counters, Point::Shutdown, SystemTime::now()).is_empty());
    }

    #[test]
    fn milliseconds_are_written_with_the_decimals_they_need() {
        for (micros, text) in [(0, "0"), (1500, "1.5"), (1520, "1.52"), (1523, "1.523"), (7, "0.007"), (60_000, "60")] {
            let mut out = String::new();
            push_millis(&mut out, micros);
            assert_eq!(out, text);
        }
    }
}
