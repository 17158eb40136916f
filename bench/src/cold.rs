//! Cold starts: a new process per sample, an invocation already queued, timed
//! from spawning the process to its INIT ending (first poll) and to its first
//! answer. The adapter's own breakdown of its warmup (connect, phase 1,
//! phase 2) is read from the `pool warmed` line it logs at INIT.

use std::time::{Duration, Instant};

use integration_tests::orders::get_order;
use integration_tests::{InvokeOptions, Postgres, RuntimeApi};

use crate::contenders::{check_found, Contender, ORDER_ID};
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
    // Interleaved: sample k of every contender before sample k+1 of any.
    for sample in 0..samples {
        for (i, &contender) in contenders.iter().enumerate() {
            let purpose = format!("cold{sample}");
            let api = RuntimeApi::start_for(&purpose).await;
            let pending = api.enqueue(get_order(ORDER_ID), InvokeOptions::default().timeout(STARTUP));
            let builder = contender.builder(pg.port(), &purpose);
            let spawned = Instant::now();
            let mut function = builder.spawn(&api);
            let polled = async {
                assert!(api.wait_next_polls(1, STARTUP).await, "{} never polled", contender.label());
                spawned.elapsed()
            };
            let answered = async {
                let invocation = pending.wait().await;
                (invocation, spawned.elapsed())
            };
            let (polled, (invocation, answered)) = tokio::join!(polled, answered);
            check_found(contender, &invocation);
            init[i].push(polled);
            first[i].push(answered);
            warmups[i].extend(Warmup::parse_all(&function.output()));
            function.kill();
            function.wait_exit(Duration::from_secs(5)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
