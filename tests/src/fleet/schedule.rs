//! The fleet's load: a seeded, bounded list of arrivals made of phases
//! (steady, burst, quiet, steady), each a Poisson process at its own rate,
//! a burst also starting with many arrivals at once.

use std::time::Duration;

/// One phase of the load.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Shown in reports and on the timeline.
    pub name: String,
    /// How long it lasts.
    pub duration: Duration,
    /// Mean arrivals per second over the phase (Poisson).
    pub rate: f64,
    /// Arrivals at the phase's start, spread evenly over `spread`: what makes
    /// a burst need many new environments at once.
    pub burst: usize,
    /// Over how long the `burst` arrivals come.
    pub spread: Duration,
}

impl Phase {
    /// A phase of `rate` arrivals per second.
    #[must_use]
    pub fn steady(name: &str, duration: Duration, rate: f64) -> Self {
        Self { name: name.to_owned(), duration, rate, burst: 0, spread: Duration::ZERO }
    }

    /// A phase that opens with `burst` arrivals within `spread`, then `rate`
    /// arrivals per second.
    #[must_use]
    pub fn burst(name: &str, duration: Duration, burst: usize, spread: Duration, rate: f64) -> Self {
        Self { name: name.to_owned(), duration, rate, burst, spread }
    }
}

/// The phases, in order.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The phases.
    pub phases: Vec<Phase>,
    /// No more arrivals than this, whatever the rates draw.
    pub max_arrivals: usize,
}

/// One invocation to make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Since the run's start.
    pub at: Duration,
    /// Index into [`Schedule::phases`].
    pub phase: usize,
}

impl Schedule {
    /// Total length.
    #[must_use]
    pub fn duration(&self) -> Duration {
        self.phases.iter().map(|p| p.duration).sum()
    }

    /// Start of each phase, since the run's start.
    #[must_use]
    pub fn phase_starts(&self) -> Vec<Duration> {
        let mut at = Duration::ZERO;
        self.phases
            .iter()
            .map(|p| {
                let start = at;
                at += p.duration;
                start
            })
            .collect()
    }

    /// The arrivals drawn with `seed`, in time order; the same seed gives the
    /// same list.
    #[must_use]
    pub fn arrivals(&self, seed: u64) -> Vec<Arrival> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut arrivals = Vec::new();
        for (index, (phase, start)) in self.phases.iter().zip(self.phase_starts()).enumerate() {
            for i in 0..phase.burst {
                let offset = phase.spread.mul_f64(i as f64 / phase.burst.max(1) as f64);
                arrivals.push(Arrival { at: start + offset, phase: index });
            }
            if phase.rate > 0.0 {
                let mut t = 0.0;
                loop {
                    // Exponential gaps: a Poisson process.
                    t += -(1.0 - rng.f64()).ln() / phase.rate;
                    if t >= phase.duration.as_secs_f64() {
                        break;
                    }
                    arrivals.push(Arrival { at: start + Duration::from_secs_f64(t), phase: index });
                }
            }
        }
        arrivals.sort_by_key(|a| a.at);
        arrivals.truncate(self.max_arrivals);
        arrivals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_arrivals_and_bounded() {
        let schedule = Schedule {
            phases: vec![
                Phase::steady("steady", Duration::from_secs(2), 50.0),
                Phase::burst("burst", Duration::from_secs(1), 30, Duration::from_millis(100), 10.0),
            ],
            max_arrivals: 80,
        };
        let a = schedule.arrivals(7);
        assert_eq!(a, schedule.arrivals(7));
        assert_ne!(a, schedule.arrivals(8));
        assert!(a.len() <= 80);
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        let burst: Vec<_> = a.iter().filter(|x| x.phase == 1 && x.at < Duration::from_millis(2100)).collect();
        assert!(burst.len() >= 30 || a.len() == 80, "the burst's arrivals come at its start: {}", burst.len());
    }
}
