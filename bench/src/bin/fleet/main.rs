//! `fleet`: a Lambda fleet against one database (issue 19), run by
//! `scripts/fleet`. Every scenario runs the same seeded schedule (steady,
//! burst, quiet, steady) through [`integration_tests::fleet`] against its own
//! throwaway PostgreSQL (and PgBouncer), one after the other; the report
//! puts them side by side.
//!
//! Options: `--quick` (shorter phases, a smaller burst), `--large` (one
//! scenario aiming at 1,000 environments behind PgBouncer), `--only KEY`
//! (one scenario; repeatable), `--out DIR` (default `target/fleet`: the
//! report `fleet.md`, the timeline `fleet-timeline.svg`, the environments'
//! logs). `FLEET_SEED` fixes the seed; the seed is printed either way.
//!
//! # Layout
//!
//! - [`scenarios`]: what each scenario sets up and what it injects.
//! - [`storm`]: server CPU per connection (the price of a cold start's SCRAM).
//! - [`markdown`]: the report.
//! - [`timeline`]: the SVG.

mod markdown;
#[path = "../../palette.rs"]
mod palette;
mod scenarios;
mod storm;
mod timeline;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use scenarios::Size;

#[tokio::main]
async fn main() {
    let mut size = Size::Default;
    let mut only: Vec<String> = Vec::new();
    let mut out = PathBuf::from("target/fleet");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => size = Size::Quick,
            "--large" => size = Size::Large,
            "--only" => only.push(args.next().expect("--only needs a scenario key")),
            "--out" => out = PathBuf::from(args.next().expect("--out needs a directory")),
            other => panic!("unknown option {other}; options: --quick, --large, --only KEY, --out DIR"),
        }
    }
    let seed = match std::env::var("FLEET_SEED") {
        Ok(seed) => seed.parse().expect("FLEET_SEED is a whole number"),
        Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(19),
    };
    eprintln!("fleet: seed {seed} (FLEET_SEED={seed} repeats this schedule)");
    std::fs::create_dir_all(&out).expect("create the output directory");

    let connect_cost = storm::connect_cost().await;
    eprintln!("fleet: server CPU per SCRAM connection: {:?}", connect_cost.per_connect);

    let mut reports = Vec::new();
    for scenario in scenarios::all(size) {
        if !only.is_empty() && !only.iter().any(|k| k == scenario.key) {
            continue;
        }
        eprintln!("fleet: scenario {}: {}", scenario.key, scenario.title);
        let report = scenarios::run(&scenario, size, seed, &out).await;
        let s = report.report.summary();
        eprintln!(
            "fleet:   {} invocations, {} ok, {} failed, {} throttled; peak {} envs, {} server connections; p50 {:?} p99 {:?}",
            s.invocations, s.succeeded, s.failed, s.throttled, s.peak_envs, s.peak_server_connections, s.p50, s.p99
        );
        reports.push(report);
    }
    let svg = out.join("fleet-timeline.svg");
    timeline::draw(&reports, &svg);
    let text = markdown::report(&reports, seed, size, &connect_cost);
    std::fs::write(out.join("fleet.md"), &text).expect("write fleet.md");
    println!("{text}");
    eprintln!("fleet: report {}, timeline {}", out.join("fleet.md").display(), svg.display());
}
