//! The fleet's report: the scenario table, connection storms, faults and
//! recovery, memory per environment, as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use integration_tests::fleet::{quantile_of, Answer, FleetReport, Mark};

use crate::scenarios::{Injected, Ran, Size, Target};
use crate::storm::ConnectCost;

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The fault (or the second burst) whose recovery a scenario measures.
pub(crate) fn disruption(ran: &Ran) -> Option<Mark> {
    match ran.scenario.injected {
        Injected::None => None,
        Injected::LostEnvironments => ran.report.marks.iter().find(|m| m.label == "second burst").cloned(),
        _ => ran.report.marks.iter().find(|m| m.fault).cloned(),
    }
}

/// "Normal": 3 × the warm p99 before the disruption, at least 25 ms.
fn normal_p99(report: &FleetReport, before: Duration) -> Duration {
    let mut warm: Vec<Duration> = report
        .records
        .iter()
        .filter(|r| r.arrived < before && !r.cold && r.answer.is_success())
        .map(|r| r.latency)
        .collect();
    (quantile_of(&mut warm, 0.99) * 3).max(Duration::from_millis(25))
}

pub(crate) fn report(runs: &[Ran], seed: u64, size: Size, cost: &ConnectCost) -> String {
    let mut md = String::new();
    let flag = match size {
        Size::Quick => " --quick",
        Size::Default => "",
        Size::Large => " --large",
    };
    let _ = writeln!(md, "## Fleet run (seed {seed})\n\n`FLEET_SEED={seed} scripts/fleet{flag}`\n");
    let _ = writeln!(
        md,
        "| scenario | server slots | invocations | ok | failed | throttled (429) | cold starts | peak envs | peak server conns | p50 | p99 | max | SIGTERM → Terminate | envs served at first failure |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ran in runs {
        let s = ran.report.summary();
        let slots = match ran.scenario.target {
            Target::Direct => format!("max_connections {}", ran.scenario.max_connections),
            Target::Bouncer(pool) => {
                format!("PgBouncer pool {pool} (max_connections {})", ran.scenario.max_connections)
            }
        };
        let terminate = match &ran.terminate_closes {
            Some(closes) => {
                let clean = closes
                    .iter()
                    .filter(|c| c.backends > 0 && c.unclean == 0 && c.disconnections == c.backends)
                    .count();
                format!("{clean} of {} ({} exited 0)", closes.len(), s.terminated_clean)
            }
            None => format!(
                "{} exited 0 of {} (server side not visible behind the pooler)",
                s.terminated_clean, s.terminated
            ),
        };
        let first_failure = ran.report.envs_at_first_failure().map_or("no failure".to_owned(), |n| n.to_string());
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ran.scenario.key,
            slots,
            s.invocations,
            s.succeeded,
            s.failed,
            s.throttled,
            s.cold_starts,
            s.peak_envs,
            s.peak_server_connections,
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            terminate,
            first_failure
        );
    }
    let _ = writeln!(md, "\nScenarios:\n");
    for ran in runs {
        let _ = writeln!(md, "- `{}`: {}.", ran.scenario.key, ran.scenario.title);
    }

    let _ = writeln!(md, "\n### Failures by kind\n");
    for ran in runs {
        let s = ran.report.summary();
        if s.failures_by_kind.is_empty() {
            let _ = writeln!(md, "- `{}`: none.", ran.scenario.key);
        } else {
            let kinds: Vec<String> = s.failures_by_kind.iter().map(|(k, n)| format!("{k} × {n}")).collect();
            let _ = writeln!(md, "- `{}`: {}.", ran.scenario.key, kinds.join(", "));
        }
        if let Some(message) = &ran.connection_limit_message {
            let _ = writeln!(md, "  The `ConnectionLimit` message: \"{message}\"");
        }
        let init: Vec<&str> = ran
            .report
            .records
            .iter()
            .filter_map(|r| match &r.answer {
                Answer::InitFailed { message, .. } if !message.is_empty() => Some(message.as_str()),
                _ => None,
            })
            .take(1)
            .collect();
        if let Some(message) = init.first() {
            let _ = writeln!(md, "  First INIT failure: \"{message}\"");
        }
    }

    let _ = writeln!(md, "\n### Faults and recovery\n");
    let _ = writeln!(
        md,
        "Recovered = the first second from which on, for 3 s, nothing failed and each second's p99 stayed within 3 × the warm p99 before the disruption (at least 25 ms).\n"
    );
    let _ = writeln!(
        md,
        "| scenario | disruption at | action took | failed (arrived during the disruption's phase) | time to recover |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for ran in runs {
        let Some(mark) = disruption(ran) else { continue };
        let normal = normal_p99(&ran.report, mark.from);
        let phase_end =
            ran.report.marks.iter().filter(|m| !m.fault && m.from <= mark.from).map(|m| m.to).max().unwrap_or(mark.to);
        let failed = ran.report.failures_between(mark.from, phase_end);
        let recovery = ran
            .report
            .recovery(&mark, normal, 3)
            .map_or("not within the run".to_owned(), |d| format!("{} s", d.as_secs()));
        let _ = writeln!(
            md,
            "| {} | {} ({:.1} s) | {} | {} | {} |",
            ran.scenario.key,
            mark.label,
            mark.from.as_secs_f64(),
            ms(mark.to.saturating_sub(mark.from)),
            failed,
            recovery
        );
    }

    let _ = writeln!(md, "\n### Connection storms\n");
    let _ = writeln!(
        md,
        "Server CPU per connection (TCP, SCRAM-SHA-256, startup, Terminate, backend exit; {} sequential connections to an idle server): **{}**; one client managed {:.0} connections/s.\n",
        200,
        ms(cost.per_connect),
        cost.sequential_per_second
    );
    let _ = writeln!(md, "| scenario | peak connects/s | server CPU in that second | connects in the burst phase | server CPU in the burst phase | of which connections (est.) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for ran in runs {
        let timeline = ran.report.timeline();
        let Some(peak) = timeline.iter().max_by_key(|b| b.connects) else { continue };
        let burst = ran.report.marks.iter().find(|m| m.label == "burst");
        let (connects, cpu) = burst.map_or((0, Duration::ZERO), |m| {
            timeline
                .iter()
                .filter(|b| b.second as u64 >= m.from.as_secs() && (b.second as u64) < m.to.as_secs())
                .fold((0, Duration::ZERO), |(c, t), b| (c + b.connects, t + b.server_cpu))
        });
        let share = if cpu.is_zero() {
            0.0
        } else {
            (cost.per_connect * connects as u32).as_secs_f64() / cpu.as_secs_f64() * 100.0
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} % |",
            ran.scenario.key,
            peak.connects,
            ms(peak.server_cpu),
            connects,
            ms(cpu),
            share
        );
    }

    let _ = writeln!(md, "\n### Memory\n");
    for ran in runs {
        let peak = ran.report.samples.iter().filter(|s| s.envs_alive > 0).max_by_key(|s| s.envs_alive);
        if let Some(p) = peak {
            let _ = writeln!(
                md,
                "- `{}`: {} environments alive held {:.0} MiB resident, {:.1} MiB each.",
                ran.scenario.key,
                p.envs_alive,
                p.envs_rss_kib as f64 / 1024.0,
                p.envs_rss_kib as f64 / 1024.0 / p.envs_alive as f64
            );
        }
    }
    md
}
