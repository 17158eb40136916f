//! Metrics in CloudWatch Embedded Metric Format: one JSON record on stdout
//! after each invocation, holding what happened since the previous record.
//!
//! With one invocation at a time (the default) that is exactly the
//! invocation's own work; the first record also carries INIT's (the cold
//! start, the warmup). With concurrent invocations the environment's activity
//! is split across their records, and the sums stay exact, which is what
//! CloudWatch aggregates.
//!
//! The records are written with the `_aws.CloudWatchMetrics` envelope, not
//! through the `metrics` facade: a library must not install a process-wide
//! recorder, as it must not install a tracing subscriber. The metric names
//! are an interface; the dashboard and alarms in `template.yaml` use them.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::stats::{Counters, Pending};

/// Reads a counter.
type Count = fn(&Counters) -> &AtomicU64;
/// Reads the pending values of a duration.
type Values = fn(&Pending) -> &[Duration];

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

/// The invocation a record belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Invocation<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) xray_trace_id: Option<&'a str>,
}

/// Writes the environment's EMF records.
///
/// A record is on every invocation's path, so its text is assembled
/// directly, with the parts that never change (the namespace, the function
/// name, the counters' declarations) prepared once.
#[derive(Debug)]
pub(crate) struct Emf {
    enabled: bool,
    /// `"Namespace":…,"Dimensions":[["function_name"]]`.
    directive: String,
    /// `"function_name":…`.
    dimension: String,
    /// The counters' declarations, always present.
    declared_counts: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The counters as of the previous record.
    reported: [u64; COUNTS.len()],
    /// Whether the next record is the environment's first.
    cold: bool,
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
            directive: format!(r#""Namespace":{},"Dimensions":[["function_name"]]"#, quote(&config.metrics_namespace)),
            dimension: format!(r#""function_name":{}"#, quote(&config.function_name)),
            declared_counts,
            state: Mutex::new(State { reported: [0; COUNTS.len()], cold: true }),
        }
    }

    /// Starts the next record from now, dropping what happened before (the
    /// publish-time INIT of a SnapStart snapshot). The next record still
    /// counts as the environment's cold start.
    pub(crate) fn rebase(&self, counters: &Counters) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        drop(counters.take_pending());
        state.reported = read(counters);
    }

    /// Writes the record for everything since the previous one to stdout.
    pub(crate) fn flush(&self, counters: &Counters, invocation: Option<Invocation<'_>>) {
        let Some(mut line) = self.record(counters, invocation) else { return };
        line.push('\n');
        // One write under stdout's lock: log lines cannot interleave with it.
        if let Err(error) = std::io::stdout().lock().write_all(line.as_bytes()) {
            tracing::warn!(%error, "could not write the metrics record");
        }
    }

    /// The record (a JSON object) for everything since the previous one;
    /// `None` when metrics are off.
    pub(crate) fn record(&self, counters: &Counters, invocation: Option<Invocation<'_>>) -> Option<String> {
        if !self.enabled {
            return None;
        }
        // Read under the record's lock: two invocations flushing at once
        // must each take a disjoint share, or a count read by one and
        // stored after the other's later read would be reported twice.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = read(counters);
        let pending = counters.take_pending();
        let cold = std::mem::replace(&mut state.cold, false);
        let before = std::mem::replace(&mut state.reported, now);
        drop(state);

        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let mut record = String::with_capacity(1024);
        let _ = write!(
            record,
            r#"{{"_aws":{{"Timestamp":{timestamp},"CloudWatchMetrics":[{{{},"Metrics":[{}"#,
            self.directive, self.declared_counts
        );
        // Every declared metric needs a value: an empty duration is left out.
        for (name, values) in DURATIONS {
            if !values(&pending).is_empty() {
                let _ = write!(record, r#",{{"Name":"{name}","Unit":"Milliseconds"}}"#);
            }
        }
        let _ = write!(record, r#"]}}]}},{},"ColdStart":{}"#, self.dimension, u8::from(cold));
        for (i, (name, _)) in COUNTS.iter().enumerate() {
            let _ = write!(record, r#","{name}":{}"#, now[i].saturating_sub(before[i]));
        }
        for (name, values) in DURATIONS {
            let values = values(&pending);
            if values.is_empty() {
                continue;
            }
            let _ = write!(record, r#","{name}":["#);
            for (i, d) in values.iter().enumerate() {
                let ms = (d.as_secs_f64() * 1e6).round() / 1e3;
                let _ = write!(record, "{}{ms}", if i == 0 { "" } else { "," });
            }
            record.push(']');
        }
        if let Some(invocation) = invocation {
            let quote = |text: &str| serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
            let _ = write!(record, r#","function_request_id":{}"#, quote(invocation.request_id));
            if let Some(trace) = invocation.xray_trace_id {
                let _ = write!(record, r#","xray_trace_id":{}"#, quote(trace));
            }
        }
        record.push('}');
        Some(record)
    }
}

fn read(counters: &Counters) -> [u64; COUNTS.len()] {
    COUNTS.map(|(_, count)| count(counters).load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{bump, WarmupTimings};
    use serde_json::{json, Value};

    fn parse(record: String) -> Value {
        serde_json::from_str(&record).unwrap_or_else(|e| panic!("not JSON ({e}): {record}"))
    }

    fn emf() -> Emf {
        let config = Config { function_name: "orders".to_owned(), ..Config::default() };
        Emf::new(&config)
    }

    #[test]
    fn records_carry_deltas_and_declare_only_metrics_with_values() {
        let counters = Counters::default();
        let emf = emf();
        bump(&counters.connect_attempts);
        counters.warmed(WarmupTimings { total: Duration::from_micros(5250), ..WarmupTimings::default() });
        let first = parse(emf.record(&counters, None).expect("on"));
        assert_eq!(first["ColdStart"], 1);
        assert_eq!(first["ConnectAttempts"], 1);
        assert_eq!(first["WarmupDuration"], json!([5.25]));
        assert_eq!(first["function_name"], "orders");

        bump(&counters.health_checks_skipped);
        counters.query_took(Duration::from_micros(1500));
        let second = parse(
            emf.record(&counters, Some(Invocation { request_id: "r-2", xray_trace_id: Some("Root=1") })).expect("on"),
        );
        assert_eq!(second["ColdStart"], 0);
        assert_eq!(second["ConnectAttempts"], 0, "a delta, not a total");
        assert_eq!(second["HealthChecksSkipped"], 1);
        assert_eq!(second["QueryDuration"], json!([1.5]));
        assert_eq!(second["function_request_id"], "r-2");
        let declared: Vec<&str> = second["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .map(|m| m["Name"].as_str().expect("name"))
            .collect();
        assert!(!declared.contains(&"WarmupDuration"), "no warmup in this record: {declared:?}");
        for name in declared {
            assert!(second.get(name).is_some(), "{name} has a value");
        }
    }

    #[test]
    fn concurrent_flushes_report_every_count_exactly_once() {
        const THREADS: u64 = 4;
        const ROUNDS: u64 = 5_000;
        let counters = Counters::default();
        let emf = emf();
        let reported = std::sync::atomic::AtomicU64::new(0);
        let sum = |record: String| parse(record)["ConnectAttempts"].as_u64().expect("a count");
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    for _ in 0..ROUNDS {
                        bump(&counters.connect_attempts);
                        let delta = sum(emf.record(&counters, None).expect("on"));
                        reported.fetch_add(delta, Ordering::Relaxed);
                    }
                });
            }
        });
        let rest = sum(emf.record(&counters, None).expect("on"));
        let total = reported.load(Ordering::Relaxed) + rest;
        eprintln!("measured: {total} counted in records for {} bumps", THREADS * ROUNDS);
        assert_eq!(total, THREADS * ROUNDS, "the records' deltas sum to the counter");
    }

    #[test]
    fn switched_off_writes_nothing() {
        let config = Config { metrics: false, ..Config::default() };
        let counters = Counters::default();
        assert!(Emf::new(&config).record(&counters, None).is_none());
    }
}
