//! Latency samples reduced to the figures the report shows.

use std::time::Duration;

/// Percentiles (nearest rank), mean and extremes of a set of latencies.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) p50: Duration,
    pub(crate) p95: Duration,
    pub(crate) p99: Duration,
    pub(crate) mean: Duration,
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Summary {
    pub(crate) fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            sorted[index]
        };
        let total: Duration = sorted.iter().sum();
        Self {
            n: sorted.len(),
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            mean: total / u32::try_from(sorted.len()).unwrap_or(u32::MAX),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Milliseconds with three decimals: loopback latencies differ in microseconds.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// The median of `values` (0 if empty).
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(sorted.len() - 1) / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&samples);
        assert_eq!((s.n, s.p50, s.p95, s.p99), (100, ms_(50), ms_(95), ms_(99)));
        assert_eq!((s.min, s.max, s.mean), (ms_(1), ms_(100), Duration::from_micros(50_500)));
    }

    fn ms_(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
