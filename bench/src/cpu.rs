//! Where the time goes: CPU time and times scheduled, summed over a
//! process's threads, from `/proc/<pid>/task/*/schedstat` (nanoseconds on
//! CPU, nanoseconds waiting for one, timeslices run). Read before and after
//! a run, for the function processes and their server backends.

/// Totals over every thread of one or more processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cpu {
    pub(crate) on_cpu_ns: u64,
    /// Times a thread was put on a CPU: each wake-up of a parked worker counts.
    pub(crate) slices: u64,
}

impl Cpu {
    /// The sum over `pids` (a pid that is gone counts as nothing).
    pub(crate) fn of(pids: &[u32]) -> Self {
        let mut total = Self::default();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
                let fields: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
                if let [on_cpu, _waiting, slices] = fields[..] {
                    total.on_cpu_ns += on_cpu;
                    total.slices += slices;
                }
            }
        }
        total
    }

    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(earlier.on_cpu_ns),
            slices: self.slices.saturating_sub(earlier.slices),
        }
    }

    pub(crate) fn plus(self, other: Self) -> Self {
        Self { on_cpu_ns: self.on_cpu_ns + other.on_cpu_ns, slices: self.slices + other.slices }
    }
}
