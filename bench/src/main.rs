//! `bench`: runtime-adapter side by side with the strategies users would
//! otherwise pick, in one run against one throwaway PostgreSQL on loopback
//! (`scripts/bench`; issue 7). Prints a Markdown report; `--out FILE` also
//! writes it there; `--quick` makes every loop shorter; `--cold N` takes N
//! cold-start samples of each contender; `--svg DIR` is where the pictures
//! go (`bench/` by default, beside BENCHMARKS.md).
//!
//! Every contender is a real Lambda function binary in its own process,
//! driving `lambda_runtime`'s loop against its own emulated Runtime API:
//! the adapter is the `orders` example itself, the others are
//! `bench-contender` with `BENCH_STRATEGY` set.
//!
//! # Layout
//!
//! - [`contenders`]: the contenders and a running instance of one.
//! - [`baseline`]: what a loopback round trip and a connect cost by themselves.
//! - [`library`]: the adapter's gate and query in-process, against a bare client's.
//! - [`warm`]: warm latency, interleaved; CPU per invocation; connections held and peak memory after.
//! - [`round_trips`]: round trips per invocation (through [`wire`]) and statements executed.
//! - [`wire`]: the protocol-reading proxy that counts round trips.
//! - [`cold`]: process start to first answer, also on Lambda-sized CPU
//!   shares; the adapter's warmup breakdown.
//! - [`cgroup`]: a CPU quota for a function process, from its first instruction.
//! - [`refresh`]: the invocation that replaces a pool past its maximum age.
//! - [`budget`]: connections per environment, environments per 100 slots.
//! - [`concurrency`]: 16 concurrent invocations per environment, 64 senders.
//! - [`cpu`]: CPU time and wake-ups of processes, from `/proc`.
//! - [`footprint`]: binary sizes.
//! - [`summary`]: percentiles. [`report`]: the Markdown and the targets.
//! - [`pictures`]: the warm-latency distributions and the refresh run, as SVG.

mod baseline;
mod budget;
mod cgroup;
mod cold;
mod concurrency;
mod contenders;
mod cpu;
mod footprint;
mod library;
mod palette;
mod pictures;
mod refresh;
mod report;
mod round_trips;
mod summary;
mod warm;
mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use integration_tests::orders::MIGRATION;
use integration_tests::Postgres;

/// Loop sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warmup_rounds: usize,
    rounds: usize,
    round_trip_invocations: usize,
    cold_samples: usize,
    /// Cold starts of each contender on each CPU share (issue 18 measured
    /// medians of 5, which moved 0.90–1.24× between runs of one build).
    share_samples: usize,
    refresh_for: Duration,
    concurrent_invocations: usize,
    baseline_round_trips: usize,
    baseline_connects: usize,
    library_iterations: usize,
}

const FULL: Plan = Plan {
    warmup_rounds: 200,
    rounds: 3000,
    round_trip_invocations: 200,
    // 40 and 15: the medians of 15 and 5 moved by up to 0.9 ms (INIT) and
    // 0.34× (the 128 MB share) between runs of one build.
    cold_samples: 40,
    share_samples: 15,
    refresh_for: Duration::from_secs(10),
    concurrent_invocations: 5000,
    baseline_round_trips: 2000,
    baseline_connects: 50,
    library_iterations: 5000,
};

const QUICK: Plan = Plan {
    warmup_rounds: 50,
    rounds: 300,
    round_trip_invocations: 50,
    cold_samples: 2,
    share_samples: 5,
    refresh_for: Duration::from_secs(4),
    concurrent_invocations: 1000,
    baseline_round_trips: 300,
    baseline_connects: 10,
    library_iterations: 1000,
};

#[tokio::main]
async fn main() {
    let mut quick = false;
    let mut cold_samples: Option<usize> = None;
    let mut out: Option<PathBuf> = None;
    let mut svg_dir = PathBuf::from("bench");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = Some(args.next().unwrap_or_else(|| usage("--out needs a file")).into()),
            "--svg" => svg_dir = args.next().unwrap_or_else(|| usage("--svg needs a directory")).into(),
            "--cold" => {
                let n = args.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0);
                cold_samples = Some(n.unwrap_or_else(|| usage("--cold needs a number of samples, at least 1")));
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    let mut plan = if quick { QUICK } else { FULL };
    if let Some(n) = cold_samples {
        plan.cold_samples = n;
    }
    let started = Instant::now();
    let load_before = load_average();

    progress("starting a throwaway PostgreSQL with pg_stat_statements");
    let pg = Postgres::builder()
        .setting("shared_preload_libraries", "pg_stat_statements")
        // The harness logs every statement for the tests; a benchmark should not pay for that.
        .setting("log_statement", "none")
        .start()
        .await;
    pg.apply_sql_as_app(MIGRATION).await;
    pg.apply_sql_as_app("INSERT INTO orders (item, quantity) VALUES ('coffee beans', 2)").await;
    round_trips::install(&pg).await;

    progress("loopback baseline");
    let baseline = baseline::run(&pg, plan.baseline_round_trips, plan.baseline_connects).await;
    progress("the library's own cost, in-process");
    let library = library::run(&pg, plan.library_iterations).await;
    progress(&format!("warm latency: {} interleaved rounds", plan.rounds));
    let warm = warm::run(&pg, plan.warmup_rounds, plan.rounds).await;
    progress("round trips per invocation");
    let round_trips = round_trips::run(&pg, plan.round_trip_invocations).await;
    progress(&format!("cold starts: {} samples each", plan.cold_samples));
    let cold = cold::run(&pg, plan.cold_samples).await;
    progress(&format!("cold starts on Lambda-sized CPU shares: {} samples each", plan.share_samples));
    let cold_on_shares = cold::run_on_shares(&pg, plan.share_samples).await;
    progress("refresh cost");
    let refresh = refresh::run(&pg, plan.refresh_for, refresh::Between::Running).await;
    progress("refresh cost, frozen between invocations");
    let refresh_frozen = refresh::run(&pg, plan.refresh_for, refresh::Between::Frozen).await;
    progress("connection budget");
    let budget = budget::run(&pg).await;
    progress("concurrency");
    let concurrency = concurrency::run(&pg, plan.concurrent_invocations).await;
    let binaries = footprint::binary_sizes();

    let setup = setup(&pg, quick, started.elapsed(), &load_before).await;
    let pictures = draw(&svg_dir, &warm, &refresh);
    let results = report::Results {
        setup,
        baseline,
        library,
        warm,
        round_trips,
        cold,
        cold_on_shares,
        refresh,
        refresh_frozen,
        budget,
        concurrency,
        binaries,
        pictures,
    };
    let report = results.render();
    println!("{report}");
    if let Some(path) = out {
        if let Err(e) = std::fs::write(&path, &report) {
            eprintln!("bench: could not write {}: {e}", path.display());
            std::process::exit(1);
        }
    }
}

/// The pictures, into `dir`: the files written, or why not.
fn draw(
    dir: &std::path::Path,
    warm: &[warm::WarmResult],
    refresh: &refresh::RefreshResult,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let latency = dir.join("warm-latency.svg");
    pictures::warm_latency(warm, &latency)?;
    let timeline = dir.join("refresh-timeline.svg");
    pictures::refresh_timeline(refresh, &timeline)?;
    Ok(vec![latency, timeline])
}

/// The run's header: command, date, machine, server, code.
async fn setup(pg: &Postgres, quick: bool, took: Duration, load_before: &str) -> String {
    let cpu = read_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".to_owned());
    let memory = read_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let version: String = pg.query("SHOW server_version").await[0].get(0);
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty = git(&["status", "--porcelain", "--", "runtime-adapter", "example-functions", "bench"])
        .is_some_and(|s| !s.is_empty());
    format!(
        "# Benchmark run\n\n\
         - command: `scripts/bench{}` (took {:.0} s)\n\
         - date: {}\n\
         - machine: {cores} cores (`nproc`), {cpu}, {memory} memory; load average (1, 5, 15 min) \
         {load_before} at the start, {} at the end\n\
         - server: PostgreSQL {version} on 127.0.0.1, scram-sha-256, `log_statement=none`\n\
         - code: commit {commit}{}\n",
        if quick { " --quick" } else { "" },
        took.as_secs_f64(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        load_average(),
        if dirty { " with uncommitted changes to the library, examples or bench" } else { "" },
    )
}

/// The first three fields of `/proc/loadavg`: other work on the machine skews every figure.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn read_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

fn git(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// On stdout: stderr carries every function's output (the harness echoes it there).
fn progress(what: &str) {
    println!("bench: {what}…");
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("bench: {problem}");
    }
    eprintln!("usage: scripts/bench [--quick] [--cold SAMPLES] [--out FILE] [--svg DIR]");
    std::process::exit(2);
}
