//! A Lambda-sized CPU share for a function process: a cgroup with a CFS
//! bandwidth quota, and a way to start a child inside it before it runs a
//! single instruction of its own.
//!
//! Lambda gives CPU in proportion to memory: 1,769 MB is one vCPU, so
//! 128 MB is 128/1769 of a core, about 7.2 ms of CPU per 100 ms.
//!
//! With cgroup v1 (the `cpu` controller mounted on its own, as on these
//! machines) membership is per thread: the driver moves the one thread that
//! is about to spawn into the cgroup, spawns (the child is created inside it,
//! so the exec, the dynamic loader and all of INIT are charged to the
//! quota), and moves the thread back. Rust's `Command` spawns with
//! `posix_spawn` (a vfork), so the driver's own CPU charged there is the
//! few microseconds of the vfork. With cgroup v2 a thread cannot leave its
//! process's cgroup, so the child is moved in right after it is spawned:
//! until then (the exec, well under a millisecond) it runs unthrottled.

use std::fmt;
use std::path::{Path, PathBuf};

/// The CFS period every share is stated in.
pub(crate) const PERIOD_US: u64 = 100_000;

/// A CPU share as Lambda sizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) label: &'static str,
    /// CPU time per [`PERIOD_US`].
    pub(crate) quota_us: u64,
}

/// 128 MB (7.2 ms per 100 ms: 128/1769 = 7.24 %), 512 MB (512/1769 =
/// 28.9 %) and one whole core (1,769 MB).
pub(crate) const SHARES: [Share; 3] = [
    Share { label: "128 MB", quota_us: 7_200 },
    Share { label: "512 MB", quota_us: 28_900 },
    Share { label: "full core", quota_us: PERIOD_US },
];

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:.1} ms per {} ms)", self.label, self.quota_us as f64 / 1000.0, PERIOD_US / 1000)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A cgroup of its own with a CPU quota; removed when dropped (once the
/// processes started in it are gone).
#[derive(Debug)]
pub(crate) struct CpuCgroup {
    dir: PathBuf,
    version: Version,
    /// v1: the `tasks` file of the cgroup the driver's threads live in.
    home_tasks: Option<PathBuf>,
}

/// Periods and throttling counted by the cgroup (`cpu.stat`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Throttling {
    /// Periods in which the cgroup had something to run.
    pub(crate) periods: u64,
    /// Periods in which the cgroup hit its quota.
    pub(crate) throttled_periods: u64,
}

impl Throttling {
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            periods: self.periods.saturating_sub(earlier.periods),
            throttled_periods: self.throttled_periods.saturating_sub(earlier.throttled_periods),
        }
    }
}

impl CpuCgroup {
    /// A new cgroup named `name` (made unique with the driver's pid) with
    /// `share`'s quota. An error says what is missing: no writable `cpu`
    /// controller, not root.
    pub(crate) fn create(name: &str, share: Share) -> Result<Self, String> {
        let (mount, version) = cpu_controller().ok_or("no cgroup `cpu` controller is mounted")?;
        let dir = mount.join(format!("{name}-{}", std::process::id()));
        let created = Self {
            home_tasks: match version {
                Version::V1 => Some(mount.join(own_path(&mount)?.trim_start_matches('/')).join("tasks")),
                Version::V2 => None,
            },
            dir,
            version,
        };
        std::fs::create_dir(&created.dir)
            .map_err(|e| format!("cannot create {} (the benchmark must run as root): {e}", created.dir.display()))?;
        match version {
            Version::V1 => {
                write(&created.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(&created.dir.join("cpu.cfs_quota_us"), &share.quota_us.to_string())?;
                // No burst: Lambda's share is a plain quota.
                let burst = created.dir.join("cpu.cfs_burst_us");
                if burst.exists() {
                    write(&burst, "0")?;
                }
            }
            Version::V2 => write(&created.dir.join("cpu.max"), &format!("{} {PERIOD_US}", share.quota_us))?,
        }
        Ok(created)
    }

    /// Runs `spawn` so that the process it starts is in this cgroup (see
    /// the module docs); `pid` tells the process's id (for cgroup v2).
    /// Panics if the driver's thread cannot be moved back: a driver thread
    /// left under a quota would skew every later figure.
    pub(crate) fn spawn_inside<T>(&self, spawn: impl FnOnce() -> T, pid: impl Fn(&T) -> u32) -> T {
        let spawned = self.spawn_unchecked(spawn, &pid);
        // The figures mean nothing unless the child really is in the cgroup.
        let wanted = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let actual = std::fs::read_to_string(format!("/proc/{}/cgroup", pid(&spawned))).unwrap_or_default();
        let inside = actual.lines().any(|l| {
            let mut fields = l.splitn(3, ':').skip(1);
            let controllers = fields.next().unwrap_or_default();
            let in_hierarchy = self.version == Version::V2 || controllers.split(',').any(|c| c == "cpu");
            in_hierarchy && fields.next().is_some_and(|path| path.ends_with(&format!("/{wanted}")))
        });
        assert!(inside, "the child is not in {}: its /proc/<pid>/cgroup says\n{actual}", self.dir.display());
        spawned
    }

    fn spawn_unchecked<T>(&self, spawn: impl FnOnce() -> T, pid: impl Fn(&T) -> u32) -> T {
        match (self.version, &self.home_tasks) {
            (Version::V1, Some(home)) => {
                let tid = thread_id();
                write(&self.dir.join("tasks"), &tid).unwrap_or_else(|e| panic!("{e}"));
                let spawned = spawn();
                write(home, &tid).unwrap_or_else(|e| panic!("moving the driver's thread back: {e}"));
                spawned
            }
            _ => {
                let spawned = spawn();
                write(&self.dir.join("cgroup.procs"), &pid(&spawned).to_string()).unwrap_or_else(|e| panic!("{e}"));
                spawned
            }
        }
    }

    pub(crate) fn throttling(&self) -> Throttling {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok()).unwrap_or_default();
        Throttling { periods: value("nr_periods "), throttled_periods: value("nr_throttled ") }
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// How a process is put under a quota on this machine, for the report.
pub(crate) fn mechanism() -> String {
    match cpu_controller() {
        Some((mount, Version::V1)) => format!(
            "cgroup v1 `cpu` controller at {}: `cpu.cfs_quota_us` per `cpu.cfs_period_us` {PERIOD_US}, \
             `cpu.cfs_burst_us` 0; the driver's spawning thread joins the cgroup for the spawn, \
             so the child is in it from its first instruction",
            mount.display()
        ),
        Some((mount, Version::V2)) => format!(
            "cgroup v2 at {}: `cpu.max` = quota {PERIOD_US}; the child joins right after it is spawned \
             (its exec runs unthrottled)",
            mount.display()
        ),
        None => "no cgroup `cpu` controller".to_owned(),
    }
}

/// Where the `cpu` controller is mounted: a v1 hierarchy that has it, or
/// the v2 root when `cpu` is among its controllers.
fn cpu_controller() -> Option<(PathBuf, Version)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut v2 = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, target, kind, options, ..] = fields[..] else { continue };
        if kind == "cgroup" && options.split(',').any(|o| o == "cpu") {
            return Some((PathBuf::from(target), Version::V1));
        }
        if kind == "cgroup2" {
            let controllers = std::fs::read_to_string(Path::new(target).join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "cpu") {
                v2 = Some(PathBuf::from(target));
            }
        }
    }
    let root = v2?;
    // Children get the controller only when the parent delegates it.
    let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
    Some((root, Version::V2))
}

/// This thread's cgroup in the v1 hierarchy mounted at `mount`.
fn own_path(mount: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string("/proc/thread-self/cgroup").map_err(|e| format!("/proc/thread-self/cgroup: {e}"))?;
    text.lines()
        .find_map(|l| {
            // `<id>:<controllers>:<path>`; the path may hold colons.
            let mut fields = l.splitn(3, ':').skip(1);
            let controllers = fields.next()?;
            let path = fields.next()?;
            controllers.split(',').any(|c| c == "cpu").then(|| path.to_owned())
        })
        .ok_or_else(|| format!("this thread has no cgroup under {}", mount.display()))
}

/// The kernel's id of the calling thread: `/proc/thread-self` links to
/// `<pid>/task/<tid>`.
fn thread_id() -> String {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name().expect("<pid>/task/<tid>").to_string_lossy().into_owned()
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing `{value}` to {}: {e}", path.display()))
}
