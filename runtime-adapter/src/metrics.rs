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

use std::io::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::stats::{Counters, Pending, Stats};

/// Reads a counter from a snapshot.
type Count = fn(&Stats) -> u64;
/// Reads the pending values of a duration.
type Values = fn(&Pending) -> &[Duration];

/// Counters, as deltas since the previous record.
const COUNTS: [(&str, Count); 8] = [
    ("HealthChecksRun", |s| s.health_checks_run),
    ("HealthChecksSkipped", |s| s.health_checks_skipped),
    ("PoolRefreshes", |s| s.refreshes_max_age),
    ("PoolRebuilds", |s| s.refreshes_failed_check),
    ("ConnectAttempts", |s| s.connect_attempts),
    ("ConnectFailures", |s| s.connect_failures),
    ("PoolExhausted", |s| s.pool_exhausted),
    ("RetryAttempts", |s| s.retry_attempts),
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
#[derive(Debug)]
pub(crate) struct Emf {
    enabled: bool,
    namespace: String,
    function_name: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The counters as of the previous record.
    reported: Stats,
    /// Whether the next record is the environment's first.
    cold: bool,
}

impl Emf {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            enabled: config.metrics,
            namespace: config.metrics_namespace.clone(),
            function_name: config.function_name.clone(),
            state: Mutex::new(State { reported: Stats::default(), cold: true }),
        }
    }

    /// Starts the next record from `now`, dropping what happened before
    /// (the publish-time INIT of a SnapStart snapshot). The next record
    /// still counts as the environment's cold start.
    pub(crate) fn rebase(&self, counters: &Counters, now: Stats) {
        drop(counters.take_pending());
        self.state.lock().unwrap_or_else(PoisonError::into_inner).reported = now;
    }

    /// Writes the record for everything since the previous one to stdout.
    pub(crate) fn flush(&self, counters: &Counters, now: Stats, invocation: Option<Invocation<'_>>) {
        let Some(record) = self.record(counters, now, invocation) else { return };
        let mut line = record.to_string();
        line.push('\n');
        // One write under stdout's lock: log lines cannot interleave with it.
        if let Err(error) = std::io::stdout().lock().write_all(line.as_bytes()) {
            tracing::warn!(%error, "could not write the metrics record");
        }
    }

    /// The record for everything since the previous one; `None` when
    /// metrics are off.
    pub(crate) fn record(&self, counters: &Counters, now: Stats, invocation: Option<Invocation<'_>>) -> Option<Value> {
        if !self.enabled {
            return None;
        }
        let pending = counters.take_pending();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let cold = std::mem::replace(&mut state.cold, false);
        let before = std::mem::replace(&mut state.reported, now.clone());
        drop(state);

        let mut declared = vec![json!({ "Name": "ColdStart", "Unit": "Count" })];
        let mut record = Map::new();
        record.insert("function_name".to_owned(), json!(self.function_name));
        record.insert("ColdStart".to_owned(), json!(u64::from(cold)));
        for (name, read) in COUNTS {
            declared.push(json!({ "Name": name, "Unit": "Count" }));
            record.insert(name.to_owned(), json!(read(&now).saturating_sub(read(&before))));
        }
        for (name, read) in DURATIONS {
            let values: Vec<f64> = read(&pending).iter().map(|d| (d.as_secs_f64() * 1e6).round() / 1e3).collect();
            // Every declared metric needs a value: an empty one is left out.
            if !values.is_empty() {
                declared.push(json!({ "Name": name, "Unit": "Milliseconds" }));
                record.insert(name.to_owned(), json!(values));
            }
        }
        if let Some(invocation) = invocation {
            record.insert("function_request_id".to_owned(), json!(invocation.request_id));
            if let Some(trace) = invocation.xray_trace_id {
                record.insert("xray_trace_id".to_owned(), json!(trace));
            }
        }
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        record.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["function_name"]],
                    "Metrics": declared,
                }],
            }),
        );
        Some(Value::Object(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{bump, WarmupTimings};

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
        let first = emf.record(&counters, counters.snapshot(None), None).expect("on");
        assert_eq!(first["ColdStart"], 1);
        assert_eq!(first["ConnectAttempts"], 1);
        assert_eq!(first["WarmupDuration"], json!([5.25]));
        assert_eq!(first["function_name"], "orders");

        bump(&counters.health_checks_skipped);
        counters.query_took(Duration::from_micros(1500));
        let second = emf
            .record(
                &counters,
                counters.snapshot(None),
                Some(Invocation { request_id: "r-2", xray_trace_id: Some("Root=1") }),
            )
            .expect("on");
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
    fn switched_off_writes_nothing() {
        let config = Config { metrics: false, ..Config::default() };
        let counters = Counters::default();
        assert!(Emf::new(&config).record(&counters, counters.snapshot(None), None).is_none());
    }
}
