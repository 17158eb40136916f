//! The report: Markdown tables of every figure, and the targets as ratios.

use std::fmt::Write as _;
use std::time::Duration;

use crate::baseline::Baseline;
use crate::budget::{self, Budget};
use crate::cgroup::{self, SHARES};
use crate::cold::{ColdResult, QuotaResult, Warmup};
use crate::concurrency::{ConcurrencyResult, MAX_CONCURRENCY, SENDERS};
use crate::contenders::{Contender, FOOTPRINT_INVOCATIONS};
use crate::footprint::BinarySize;
use crate::library::LibraryResult;
use crate::refresh::{RefreshResult, MAX_AGE_MS};
use crate::round_trips::RoundTrips;
use crate::summary::{median, ms};
use crate::warm::WarmResult;

/// Everything one run measured.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) setup: String,
    pub(crate) baseline: Baseline,
    pub(crate) library: LibraryResult,
    pub(crate) warm: Vec<WarmResult>,
    pub(crate) round_trips: Vec<RoundTrips>,
    pub(crate) cold: Vec<ColdResult>,
    /// Cold starts on Lambda-sized CPU shares, or why they could not run.
    pub(crate) cold_on_shares: Result<Vec<QuotaResult>, String>,
    pub(crate) refresh: RefreshResult,
    /// The same run with the function frozen between invocations.
    pub(crate) refresh_frozen: RefreshResult,
    pub(crate) budget: Budget,
    pub(crate) concurrency: Vec<ConcurrencyResult>,
    pub(crate) binaries: Vec<BinarySize>,
    /// The SVG files drawn, or why not.
    pub(crate) pictures: Result<Vec<std::path::PathBuf>, String>,
}

const SLOTS: i64 = 100;

impl Results {
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        line(o, &self.setup);
        self.targets(o);
        self.render_warm(o);
        self.render_round_trips(o);
        self.render_cold(o);
        self.render_cold_on_shares(o);
        self.render_refresh(o);
        self.render_budget(o);
        self.render_concurrency(o);
        self.render_footprint(o);
        self.render_pictures(o);
        out
    }

    fn warm_of(&self, contender: Contender) -> Option<&WarmResult> {
        self.warm.iter().find(|w| w.contender == contender)
    }

    fn rtt_of(&self, contender: Contender) -> Option<&RoundTrips> {
        self.round_trips.iter().find(|r| r.contender == contender)
    }

    fn adapter_warmups(&self) -> &[Warmup] {
        self.cold.iter().find(|c| c.contender == Contender::Adapter).map_or(&[], |c| c.warmups.as_slice())
    }

    fn targets(&self, o: &mut String) {
        line(o, "## Targets\n");
        line(o, "| target | measured | ratio | met |");
        line(o, "|---|---|---|---|");
        if let (Some(adapter), Some(bare)) = (self.warm_of(Contender::Adapter), self.warm_of(Contender::Bare)) {
            let ratio = secs(adapter.latency.p50) / secs(bare.latency.p50);
            line(
                o,
                &format!(
                    "| warm p50 within 10 % of the bare client | {} ms vs {} ms | {ratio:.3} (≤ 1.10) | {} |",
                    ms(adapter.latency.p50),
                    ms(bare.latency.p50),
                    yes(ratio <= 1.10)
                ),
            );
        }
        if let (Some(adapter), Some(check)) =
            (self.rtt_of(Contender::Adapter), self.rtt_of(Contender::CheckEveryRequest))
        {
            let a = adapter.per_invocation(adapter.warm.round_trips);
            let c = check.per_invocation(check.warm.round_trips);
            line(
                o,
                &format!(
                    "| ≥ 1 round trip fewer than `SELECT 1` per request | {a:.2} vs {c:.2} per invocation | \
                     {:.2} fewer (≥ 1) | {} |",
                    c - a,
                    yes(c - a >= 1.0)
                ),
            );
        }
        let warmups = self.adapter_warmups();
        if !warmups.is_empty() {
            let rtt = secs(self.baseline.round_trip.p50) * 1000.0;
            let totals: Vec<f64> = warmups.iter().map(|w| w.total).collect();
            let bounds: Vec<f64> = warmups.iter().map(|w| w.connect + 2.0 * rtt + 1.0).collect();
            let ratio = median(&totals) / median(&bounds);
            line(
                o,
                &format!(
                    "| cold-start warmup ≤ connect + 2 round trips + 1 ms | {:.3} ms vs {:.3} ms (median of {}) | \
                     {ratio:.3} (≤ 1) | {} |",
                    median(&totals),
                    median(&bounds),
                    warmups.len(),
                    yes(ratio <= 1.0)
                ),
            );
        }
        let refresh = &self.refresh;
        if refresh.refreshing.n > 0 && refresh.normal.n > 0 {
            let bound = 1.2 * secs(refresh.normal.p99);
            let ratio = secs(refresh.refreshing.p50) / bound;
            line(
                o,
                &format!(
                    "| refreshing invocation p50 ≤ 1.2 × normal p99, none waiting | {} ms vs 1.2 × {} ms (n {}); \
                     {} of {} refreshes waited for | {ratio:.3} (≤ 1) | {} |",
                    ms(refresh.refreshing.p50),
                    ms(refresh.normal.p99),
                    refresh.refreshing.n,
                    refresh.waited,
                    refresh.waited + refresh.background,
                    yes(ratio <= 1.0 && refresh.waited == 0)
                ),
            );
        }
        line(o, "");
    }

    fn render_warm(&self, o: &mut String) {
        line(o, "## 1. Warm invocation latency\n");
        line(
            o,
            "Enqueue → answer through the emulated Runtime API (the same HTTP hop for every contender), \
             all contenders interleaved.\n",
        );
        line(o, "| contender | n | p50 ms | p95 ms | p99 ms | mean ms | p50 × bare |");
        line(o, "|---|---|---|---|---|---|---|");
        let bare = self.warm_of(Contender::Bare).map(|w| secs(w.latency.p50));
        for w in &self.warm {
            let l = &w.latency;
            let ratio = bare.map_or_else(|| "–".to_owned(), |b| format!("{:.3}", secs(l.p50) / b));
            line(
                o,
                &format!(
                    "| {} | {} | {} | {} | {} | {} | {ratio} |",
                    w.contender.label(),
                    l.n,
                    ms(l.p50),
                    ms(l.p95),
                    ms(l.p99),
                    ms(l.mean)
                ),
            );
        }
        line(
            o,
            "\nWhere the time goes, per invocation, during the measured rounds (`/proc/<pid>/task/*/schedstat`):\n",
        );
        line(o, "| contender | function CPU µs | function threads scheduled | server backend CPU µs |");
        line(o, "|---|---|---|---|");
        for w in &self.warm {
            let n = w.latency.n.max(1) as f64;
            let backend =
                w.backend_cpu.map_or_else(|| "–".to_owned(), |b| format!("{:.1}", b.on_cpu_ns as f64 / n / 1000.0));
            line(
                o,
                &format!(
                    "| {} | {:.1} | {:.2} | {backend} |",
                    w.contender.label(),
                    w.function_cpu.on_cpu_ns as f64 / n / 1000.0,
                    w.function_cpu.slices as f64 / n
                ),
            );
        }
        let l = &self.library;
        line(
            o,
            "\nThe library by itself, in the driver's process (no Lambda loop, no other process): the adapter's \
             gate + `idempotent().query_opt` alternating with a bare client's prepared query.\n",
        );
        line(o, "| pass | n | bare p50 ms | adapter p50 ms | difference µs | bare p99 ms | adapter p99 ms |");
        line(o, "|---|---|---|---|---|---|---|");
        for (pass, bare, adapter) in
            [("back to back", &l.bare, &l.adapter), ("5 ms pause after each", &l.paced_bare, &l.paced_adapter)]
        {
            line(
                o,
                &format!(
                    "| {pass} | {} | {} | {} | {:+.1} | {} | {} |",
                    bare.n,
                    ms(bare.p50),
                    ms(adapter.p50),
                    (secs(adapter.p50) - secs(bare.p50)) * 1e6,
                    ms(bare.p99),
                    ms(adapter.p99)
                ),
            );
        }
        line(o, "");
    }

    fn render_round_trips(&self, o: &mut String) {
        line(o, "## 2. Server round trips per invocation\n");
        line(
            o,
            "Round trips: client flights the server had to answer, counted at the server's socket by a \
             protocol-reading proxy. Statements: `pg_stat_statements` calls (it does not see an empty \
             query or a bare Sync).\n",
        );
        line(
            o,
            "| contender | round trips / invocation | statements / invocation | connections opened / invocation | \
             INIT round trips | first invocation round trips |",
        );
        line(o, "|---|---|---|---|---|---|");
        for r in &self.round_trips {
            line(
                o,
                &format!(
                    "| {} | {:.2} | {:.2} | {:.2} | {} | {} |",
                    r.contender.label(),
                    r.per_invocation(r.warm.round_trips),
                    r.statements as f64 / r.invocations as f64,
                    r.per_invocation(r.warm.connections),
                    r.init.round_trips,
                    r.first.round_trips
                ),
            );
        }
        if let Some(r) = self.round_trips.first() {
            line(o, &format!("\n{} invocations each, after 10 to settle.", r.invocations));
        }
        line(o, "");
    }

    fn render_cold(&self, o: &mut String) {
        line(o, "## 3. Cold start to first answer\n");
        line(
            o,
            "A new process per sample with the invocation already queued; medians (min–max) over the samples. \
             Interleaved, each round starting one contender further; the fixed sleep's samples run after the \
             others' (its idle slowed the cold starts that came after it).\n",
        );
        line(o, "| contender | samples | INIT: spawn → first poll, ms | spawn → first answer, ms |");
        line(o, "|---|---|---|---|");
        for c in &self.cold {
            line(
                o,
                &format!(
                    "| {} | {} | {} ({}–{}) | {} ({}–{}) |",
                    c.contender.label(),
                    c.init.n,
                    ms(c.init.p50),
                    ms(c.init.min),
                    ms(c.init.max),
                    ms(c.first_answer.p50),
                    ms(c.first_answer.min),
                    ms(c.first_answer.max)
                ),
            );
        }
        let warmups = self.adapter_warmups();
        if !warmups.is_empty() {
            let m = |f: fn(&Warmup) -> f64| median(&warmups.iter().map(f).collect::<Vec<_>>());
            line(o, "\nThe adapter's warmup at INIT, as it logs it (`pool warmed`), medians:\n");
            line(o, "| connect ms | phase 1 (round trip) ms | phase 2 (prepare 2 statements) ms | total ms |");
            line(o, "|---|---|---|---|");
            line(
                o,
                &format!(
                    "| {:.3} | {:.3} | {:.3} | {:.3} |",
                    m(|w| w.connect),
                    m(|w| w.phase1),
                    m(|w| w.phase2),
                    m(|w| w.total)
                ),
            );
        }
        let b = &self.baseline;
        line(
            o,
            &format!(
                "\nLoopback by itself (the driver's own client): one `SELECT 1` round trip p50 {} ms \
                 (n = {}), one connect (TCP + startup + SCRAM) p50 {} ms (n = {}).\n",
                ms(b.round_trip.p50),
                b.round_trip.n,
                ms(b.connect.p50),
                b.connect.n
            ),
        );
    }

    fn render_cold_on_shares(&self, o: &mut String) {
        line(o, "### Cold start on Lambda-sized CPU\n");
        let results = match &self.cold_on_shares {
            Ok(results) if !results.is_empty() => results,
            Ok(_) => return,
            Err(why) => {
                line(o, &format!("Not measured: {why}.\n"));
                return;
            }
        };
        let samples = results[0].first_answer.n;
        line(
            o,
            &format!(
                "Lambda gives CPU in proportion to memory (1,769 MB is one vCPU). Each sample is a new process \
                 in a new cgroup with a CPU quota ({}); PostgreSQL and the driver are not limited. \
                 Spawn → first answer, median of {samples} (× the bare client's):\n",
                cgroup::mechanism()
            ),
        );
        let of = |share, contender| results.iter().find(|r| r.share == share && r.contender == contender);
        let mut contenders: Vec<Contender> = Vec::new();
        for r in results {
            if !contenders.contains(&r.contender) {
                contenders.push(r.contender);
            }
        }
        let header: Vec<String> = SHARES.iter().map(ToString::to_string).collect();
        line(o, &format!("| contender | {} |", header.join(" | ")));
        line(o, &format!("|---|{}", "---|".repeat(SHARES.len())));
        for &contender in &contenders {
            let cells: Vec<String> = SHARES
                .iter()
                .map(|&share| match (of(share, contender), of(share, Contender::Bare)) {
                    (Some(r), Some(bare)) => format!(
                        "{} ms (× {:.2})",
                        ms(r.first_answer.p50),
                        secs(r.first_answer.p50) / secs(bare.first_answer.p50).max(1e-9)
                    ),
                    _ => "–".to_owned(),
                })
                .collect();
            line(o, &format!("| {} | {} |", contender.label(), cells.join(" | ")));
        }
        line(
            o,
            "\nEach cell in detail: INIT (spawn → first poll) and first answer, medians (min–max); the CPU the \
             function process had used when it answered (its live threads, `/proc/<pid>/task/*/schedstat`), and \
             the cgroup's periods (`cpu.stat`: `nr_periods`, of which `nr_throttled` hit the quota), medians.\n",
        );
        line(o, "| share | contender | INIT ms | first answer ms | CPU to first answer ms | periods (throttled) |");
        line(o, "|---|---|---|---|---|---|");
        for r in results {
            line(
                o,
                &format!(
                    "| {} | {} | {} | {} ({}–{}) | {:.2} | {:.0} ({:.0}) |",
                    r.share.label,
                    r.contender.label(),
                    ms(r.init.p50),
                    ms(r.first_answer.p50),
                    ms(r.first_answer.min),
                    ms(r.first_answer.max),
                    median(&r.cpu_ms),
                    median(&r.periods),
                    median(&r.throttled_periods)
                ),
            );
        }
        line(o, "");
    }

    fn render_pictures(&self, o: &mut String) {
        line(o, "## Pictures\n");
        match &self.pictures {
            Ok(files) => {
                for file in files {
                    line(o, &format!("- `{}`", file.display()));
                }
            }
            Err(why) => line(o, &format!("Not drawn: {why}.")),
        }
        line(o, "");
    }

    fn render_refresh(&self, o: &mut String) {
        let r = &self.refresh;
        line(o, "## 4. Refresh cost\n");
        line(
            o,
            &format!(
                "One adapter with `DB_MAX_AGE_MS={MAX_AGE_MS}` invoked every ~5 ms, connected through the counting \
                 proxy; the invocations that started the pool's replacement (a connection opened between it being \
                 sent and the next one being sent), the invocation after each of those, and the others \
                 (normal).\n"
            ),
        );
        refresh_rows(o, r);
        line(
            o,
            &format!(
                "\nFrom the answer reaching the Runtime API to the function's next `/next` poll (when Lambda would \
                 freeze the environment, and could hand it another invocation), p50 / p99: after normal invocations \
                 {} / {} ms (n {}), after refreshing ones {} / {} ms (n {}). An invocation sent meanwhile waits in the \
                 emulator's queue (the row after each); Lambda would give it to another environment.",
                ms(r.held_normal.p50),
                ms(r.held_normal.p99),
                r.held_normal.n,
                ms(r.held_refreshing.p50),
                ms(r.held_refreshing.p99),
                r.held_refreshing.n
            ),
        );
        if !r.warmups.is_empty() {
            let m = |f: fn(&Warmup) -> f64| median(&r.warmups.iter().map(f).collect::<Vec<_>>());
            line(
                o,
                &format!(
                    "\nThe new pools' warmups (medians of {}): connect {:.3} ms, phase 1 {:.3} ms, phase 2 {:.3} ms, \
                     total {:.3} ms; the adapter's `pool refreshed` duration: median {:.3} ms.",
                    r.warmups.len(),
                    m(|w| w.connect),
                    m(|w| w.phase1),
                    m(|w| w.phase2),
                    m(|w| w.total),
                    median(&r.durations_ms)
                ),
            );
        }
        let f = &self.refresh_frozen;
        line(o, "\n### Refresh cost, frozen between invocations\n");
        line(
            o,
            "The same run with the function treated as Lambda treats an environment: sent nothing until it has \
             polled `/next` again, and stopped (`SIGSTOP`) from that poll for the ~5 ms pause, until its next \
             invocation (`SIGCONT`). Work the function leaves running after it asks for more goes on only while \
             later invocations run.\n",
        );
        refresh_rows(o, f);
        line(
            o,
            &format!(
                "\nFrom the answer to the next `/next` poll, p50 / p99: after normal invocations {} / {} ms, after \
                 refreshing ones {} / {} ms.",
                ms(f.held_normal.p50),
                ms(f.held_normal.p99),
                ms(f.held_refreshing.p50),
                ms(f.held_refreshing.p99),
            ),
        );
        line(o, "");
    }

    fn render_budget(&self, o: &mut String) {
        let b = &self.budget;
        line(o, "## 5. Connection budget\n");
        line(
            o,
            &format!(
                "Server connections one environment holds between invocations (`pg_stat_activity`), and the \
                 environments {SLOTS} server slots serve at that rate (this server: max_connections {}, {} \
                 reserved for superusers).\n",
                b.max_connections, b.reserved
            ),
        );
        line(o, "| configuration | connections per environment | environments per 100 slots |");
        line(o, "|---|---|---|");
        let row = |o: &mut String, what: &str, n: i64| {
            let envs =
                budget::environments(SLOTS, n).map_or_else(|| "unbounded (0 held)".to_owned(), |e| e.to_string());
            line(o, &format!("| {what} | {n} | {envs} |"));
        };
        for w in self.warm.iter().filter(|w| w.contender != Contender::AdapterMetricsOff) {
            let what = match w.contender {
                Contender::Adapter => "runtime-adapter, defaults (`DB_POOL_SIZE` 1)".to_owned(),
                other => format!("{}, defaults", other.label()),
            };
            row(o, &what, w.connections);
        }
        row(o, "runtime-adapter, `DB_POOL_SIZE=5`", b.pool_of_five);
        for c in &self.concurrency {
            if c.contender == Contender::Adapter {
                row(
                    o,
                    &format!("runtime-adapter, `AWS_LAMBDA_MAX_CONCURRENCY={MAX_CONCURRENCY}` (pool follows it)"),
                    c.connections,
                );
            }
        }
        line(
            o,
            "\nSequential invocations keep a lazy pool at one connection; connect-per-invocation holds none \
             between invocations but one during each, plus a connect every time.\n",
        );
    }

    fn render_concurrency(&self, o: &mut String) {
        line(o, "## 6. Concurrency\n");
        line(
            o,
            &format!(
                "`AWS_LAMBDA_MAX_CONCURRENCY={MAX_CONCURRENCY}`, {SENDERS} senders, one contender driven at a \
                 time in chunks taken in turn; pools sized to the concurrency. Throughput: invocations over the \
                 time spent driving that contender.\n"
            ),
        );
        line(o, "| contender | invocations | errors | throughput /s | p50 ms | p99 ms | connections |");
        line(o, "|---|---|---|---|---|---|---|");
        for c in &self.concurrency {
            line(
                o,
                &format!(
                    "| {} | {} | {} | {:.0} | {} | {} | {} |",
                    c.contender.label(),
                    c.invocations,
                    c.errors,
                    c.throughput(),
                    ms(c.latency.p50),
                    ms(c.latency.p99),
                    c.connections
                ),
            );
        }
        line(o, "");
    }

    fn render_footprint(&self, o: &mut String) {
        line(o, "## 7. Footprint\n");
        line(o, "| binary | release size | stripped |");
        line(o, "|---|---|---|");
        for b in &self.binaries {
            let stripped = b.stripped.map_or_else(|| "(strip not installed)".to_owned(), mib);
            line(o, &format!("| `{}` | {} | {stripped} |", b.name, mib(b.unstripped)));
        }
        line(
            o,
            &format!(
                "\n| contender | peak RSS (VmHWM) after {FOOTPRINT_INVOCATIONS} invocations | at the end of the run |"
            ),
        );
        line(o, "|---|---|---|");
        for w in &self.warm {
            let at = w.peak_rss_at_footprint.map_or_else(|| "?".to_owned(), mib);
            let end = w.peak_rss.map_or_else(|| "?".to_owned(), mib);
            line(o, &format!("| {} | {at} | {end} ({} invocations) |", w.contender.label(), w.served));
        }
        line(o, "");
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

fn line(out: &mut String, text: &str) {
    let _ = writeln!(out, "{text}");
}

/// A refresh run's table and its count of refreshes by kind.
fn refresh_rows(o: &mut String, r: &RefreshResult) {
    line(o, "| invocations | n | p50 ms | p99 ms | max ms |");
    line(o, "|---|---|---|---|---|");
    let rows = [("normal", &r.normal), ("that refreshed the pool", &r.refreshing), ("the one after each", &r.after)];
    for (what, s) in rows {
        line(o, &format!("| {what} | {} | {} | {} | {} |", s.n, ms(s.p50), ms(s.p99), ms(s.max)));
    }
    line(
        o,
        &format!(
            "\nRefreshes built in the background: {}; with an invocation waiting (the fallback past the grace): {}.",
            r.background, r.waited
        ),
    );
}
