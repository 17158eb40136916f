//! `warm-path`: warm invocations of a few function binaries side by side,
//! for comparing two builds of the adapter with each other and with the bare
//! client on the same loaded machine (issue 18, "Warm path: where the CPU
//! went" in BENCHMARKS.md). The warm part of `scripts/bench` only, with the
//! contenders given on the command line, so that an `orders` built before a
//! change and one built after run interleaved in one run.
//!
//! ```sh
//! warm-path [--rounds N] [--warmup N] [--pause-ms MS] [--pids FILE] [--exec-before CMD] [--exec-after CMD] [--cold N] [--freeze] [--delay-us N] LABEL=PATH[@KEY=VALUE]...
//! warm-path old=/tmp/orders-old@DB_METRICS=off new=target/release/orders@DB_METRICS=off \
//!           bare=target/release/bench-contender@BENCH_STRATEGY=bare
//! ```
//!
//! Each round invokes every contender once (`GET /orders/1`), in a new random
//! order, with a pause after each invocation as `scripts/bench` does. Prints,
//! per contender, latency percentiles and the function process's CPU per
//! invocation over the measured rounds (`/proc/<pid>/task/*/schedstat`).
//! `--pids FILE` writes `LABEL PID` lines once every contender is warm, for
//! `perf record -p PID` during the measured rounds. `--exec-before CMD` and
//! `--exec-after CMD` run `sh -c CMD` (after the pids file is written) just
//! before and just after the measured rounds: `callgrind_control -z` and
//! `callgrind_control -d` for a function run under callgrind, say.
//! `--cold N` measures cold starts instead: N new processes of each
//! contender, interleaved, spawn → first `/next` poll (INIT) and spawn →
//! first answer, with the invocation queued before the spawn.
//! `--freeze` treats each function as Lambda treats an environment: after
//! an answer it is sent nothing until it has polled `/next` again, and it
//! is stopped (`SIGSTOP`) from that poll until its next invocation
//! (`SIGCONT`). Then a second table gives, per contender, how long it went
//! on after each answer before that poll, and the log lines `pool
//! refreshed` it wrote (with `@DB_MAX_AGE_MS=250`, say, to see refreshes).
//! `--delay-us N` puts a proxy between every function and the server that
//! holds each chunk of bytes N µs in each direction before passing it on,
//! adding about 2N µs to every round trip, as a network between Lambda and
//! the database would (0.2–1 ms inside an AWS availability zone); loopback
//! alone prices a round trip at about 0.05 ms.

use std::path::PathBuf;
use std::time::Duration;

use integration_tests::orders::{get_order, MIGRATION};
use integration_tests::{Function, InvokeOptions, Outcome, Postgres, RuntimeApi, APP_DATABASE, APP_PASSWORD, APP_USER};

struct Spec {
    label: String,
    program: PathBuf,
    env: Vec<(String, String)>,
    /// `@DEADLINE_MS=N`: the deadline sent with every invocation (epoch
    /// milliseconds; `600000` is cargo lambda's, which the adapter treats
    /// as no deadline), instead of now + 30 s.
    deadline_ms: Option<u64>,
    /// `@URL_QUERY=Q`: `?Q` appended to the `DATABASE_URL` it is given
    /// (`sslmode=disable`, say).
    url_query: Option<String>,
}

impl Spec {
    fn database_url(&self, url: &str) -> String {
        match &self.url_query {
            Some(query) => format!("{url}?{query}"),
            None => url.to_owned(),
        }
    }
}

struct Plan {
    rounds: usize,
    warmup: usize,
    pause: Duration,
    pids: Option<PathBuf>,
    before: Option<String>,
    after: Option<String>,
    /// `--cold N`: N cold starts of each contender instead of the warm rounds.
    cold: usize,
    /// `--freeze`: each function stopped from its `/next` poll until its
    /// next invocation, as Lambda freezes an environment.
    freeze: bool,
    /// `--delay-us N`: each chunk held N µs each way ([`delay_proxy`]).
    delay: Option<Duration>,
    specs: Vec<Spec>,
}

fn usage(problem: &str) -> ! {
    eprintln!("warm-path: {problem}");
    eprintln!("usage: warm-path [--rounds N] [--warmup N] [--pause-ms MS] [--pids FILE] [--exec-before CMD] [--exec-after CMD] [--cold N] [--freeze] [--delay-us N] LABEL=PATH[@KEY=VALUE]...");
    std::process::exit(2)
}

fn parse_args() -> Plan {
    let mut plan = Plan {
        rounds: 2000,
        warmup: 200,
        pause: Duration::from_millis(2),
        pids: None,
        before: None,
        after: None,
        cold: 0,
        freeze: false,
        delay: None,
        specs: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>, what: &str| -> u64 {
        value.and_then(|v| v.parse().ok()).unwrap_or_else(|| usage(&format!("{what} needs a number")))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => plan.rounds = number(args.next(), "--rounds") as usize,
            "--warmup" => plan.warmup = number(args.next(), "--warmup") as usize,
            "--pause-ms" => plan.pause = Duration::from_millis(number(args.next(), "--pause-ms")),
            "--exec-before" => {
                plan.before = Some(args.next().unwrap_or_else(|| usage("--exec-before needs a command")))
            }
            "--exec-after" => plan.after = Some(args.next().unwrap_or_else(|| usage("--exec-after needs a command"))),
            "--cold" => plan.cold = number(args.next(), "--cold") as usize,
            "--freeze" => plan.freeze = true,
            "--delay-us" => plan.delay = Some(Duration::from_micros(number(args.next(), "--delay-us"))),
            "--pids" => plan.pids = Some(args.next().unwrap_or_else(|| usage("--pids needs a file")).into()),
            spec => {
                let (label, rest) = spec.split_once('=').unwrap_or_else(|| usage(&format!("`{spec}`: LABEL=PATH")));
                let mut parts = rest.split('@');
                let program = PathBuf::from(parts.next().unwrap_or_default());
                let mut env = Vec::new();
                let mut deadline_ms = None;
                let mut url_query = None;
                for kv in parts {
                    let (k, v) = kv.split_once('=').unwrap_or_else(|| usage(&format!("`{kv}`: KEY=VALUE")));
                    if k == "DEADLINE_MS" {
                        deadline_ms = Some(number(Some(v.to_owned()), "DEADLINE_MS"));
                    } else if k == "URL_QUERY" {
                        url_query = Some(v.to_owned());
                    } else {
                        env.push((k.to_owned(), v.to_owned()));
                    }
                }
                plan.specs.push(Spec { label: label.to_owned(), program, env, deadline_ms, url_query });
            }
        }
    }
    if plan.specs.is_empty() {
        usage("no contender given");
    }
    plan
}

/// A proxy to `server_port` on a port of its own (returned): each
/// connection gets two threads, one per direction, each of which holds
/// every chunk it reads `delay` before writing it on. Blocking threads with
/// a timer slack of 1 ns, so that the hold is `delay` to within a few
/// microseconds rather than tokio's millisecond timer or Linux's default
/// 50 µs slack.
fn delay_proxy(server_port: u16, delay: Duration) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the delay proxy");
    let port = listener.local_addr().expect("the delay proxy's address").port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", server_port)) else { continue };
            for (from, to) in [(&client, &server), (&server, &client)] {
                let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { continue };
                std::thread::spawn(move || {
                    use std::io::{Read as _, Write as _};
                    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and
                    // applies to the calling thread only.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
                    let _ = from.set_nodelay(true);
                    let _ = to.set_nodelay(true);
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        std::thread::sleep(delay);
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

/// CPU nanoseconds and timeslices over every thread of `pid`.
fn cpu_of(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return total };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let fields: Vec<u64> = text.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        if let [on_cpu, _, slices] = fields[..] {
            total.0 += on_cpu;
            total.1 += slices;
        }
    }
    total
}

/// Runs `command` with `sh -c`, if given, and waits for it.
fn run(command: Option<&str>) {
    if let Some(command) = command {
        match std::process::Command::new("sh").arg("-c").arg(command).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("warm-path: `{command}`: {other:?}"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let plan = parse_args();
    let pg = Postgres::builder().setting("log_statement", "none").start().await;
    pg.apply_sql_as_app(MIGRATION).await;
    pg.apply_sql_as_app("INSERT INTO orders (item, quantity) VALUES ('coffee beans', 2)").await;
    let port = match plan.delay {
        Some(delay) => delay_proxy(pg.port(), delay),
        None => pg.port(),
    };
    let url = format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/{APP_DATABASE}");
    if plan.cold > 0 {
        return cold(&plan, &url).await;
    }

    let mut running = Vec::new();
    for (i, spec) in plan.specs.iter().enumerate() {
        let name = format!("warm-path-{i}");
        let api = RuntimeApi::start_for(&name).await;
        let mut builder = Function::builder(&spec.program)
            .name(&name)
            .env("DATABASE_URL", spec.database_url(&url))
            .log_file(std::env::temp_dir().join(format!("{name}.log")));
        for (k, v) in &spec.env {
            builder = builder.env(k, v);
        }
        let function = builder.spawn(&api);
        assert!(api.wait_next_polls(1, Duration::from_secs(30)).await, "{} never reached its loop", spec.label);
        running.push((api, function));
    }
    let event = get_order("1");
    let mut order: Vec<usize> = (0..running.len()).collect();
    let mut samples = vec![Vec::with_capacity(plan.rounds); running.len()];
    let mut before = Vec::new();
    for round in 0..plan.warmup + plan.rounds {
        if round == plan.warmup {
            before = running.iter().map(|(_, f)| cpu_of(f.pid())).collect();
            if let Some(path) = &plan.pids {
                let lines: String =
                    plan.specs.iter().zip(&running).map(|(s, (_, f))| format!("{} {}\n", s.label, f.pid())).collect();
                std::fs::write(path, lines).expect("write the pids file");
            }
            run(plan.before.as_deref());
            eprintln!("warm-path: measuring {} rounds", plan.rounds);
        }
        fastrand::shuffle(&mut order);
        for &i in &order {
            let options = match plan.specs[i].deadline_ms {
                Some(ms) => InvokeOptions::default().deadline_ms(ms),
                None => InvokeOptions::default(),
            };
            let (api, function) = &running[i];
            if plan.freeze {
                function.thaw();
            }
            let invocation = api.invoke_with(event.clone(), options).await;
            let ok = matches!(&invocation.outcome, Outcome::Response(r) if r["statusCode"].as_i64() == Some(200));
            assert!(ok, "{} did not answer 200: {:?}", plan.specs[i].label, invocation.outcome);
            if plan.freeze {
                function.freeze_at_next_poll(api).await;
            }
            if round >= plan.warmup {
                samples[i].push(invocation.latency);
            }
            tokio::time::sleep(plan.pause).await;
        }
    }
    run(plan.after.as_deref());
    if plan.freeze {
        for (_, function) in &running {
            function.thaw();
        }
    }
    let n = plan.rounds as f64;
    println!("| contender | n | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | mean ms | function CPU µs | slices |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, spec) in plan.specs.iter().enumerate() {
        let (cpu, slices) = cpu_of(running[i].1.pid());
        let (cpu, slices) = (cpu - before[i].0, slices - before[i].1);
        let mut sorted = samples[i].clone();
        sorted.sort();
        let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2} |",
            spec.label,
            sorted.len(),
            ms(percentile(&sorted, 0.5)),
            ms(percentile(&sorted, 0.95)),
            ms(percentile(&sorted, 0.99)),
            ms(percentile(&sorted, 0.999)),
            ms(percentile(&sorted, 1.0)),
            ms(mean),
            cpu as f64 / n / 1000.0,
            slices as f64 / n,
        );
    }
    if plan.freeze {
        after_answers(&plan, &running);
    }
}

/// `--freeze`: per contender, how long it went on after each answer before
/// it polled `/next` (when Lambda would freeze it), and its `pool
/// refreshed` lines.
fn after_answers(plan: &Plan, running: &[(RuntimeApi, Function)]) {
    println!();
    println!(
        "| contender | answers | answer → next poll p50 ms | p99 ms | max ms | over 1 ms | `pool refreshed` lines |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (spec, (api, function)) in plan.specs.iter().zip(running) {
        let mut held: Vec<Duration> = api.times().held_after_completions().into_iter().flatten().collect();
        held.sort();
        let over = held.iter().filter(|d| **d > Duration::from_millis(1)).count();
        let refreshed = function.output().lines().filter(|line| line.contains("pool refreshed")).count();
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {over} | {refreshed} |",
            spec.label,
            held.len(),
            ms(percentile(&held, 0.5)),
            ms(percentile(&held, 0.99)),
            ms(percentile(&held, 1.0)),
        );
    }
}

/// `--cold N`: N cold starts of each contender, interleaved in a new random
/// order each round, each a new process with the invocation already queued:
/// spawn → first `/next` poll (INIT) and spawn → first answer, medians and
/// the spread.
async fn cold(plan: &Plan, url: &str) {
    const STARTUP: Duration = Duration::from_secs(30);
    let mut init = vec![Vec::new(); plan.specs.len()];
    let mut first = vec![Vec::new(); plan.specs.len()];
    let mut order: Vec<usize> = (0..plan.specs.len()).collect();
    for round in 0..plan.cold {
        fastrand::shuffle(&mut order);
        for &i in &order {
            let spec = &plan.specs[i];
            let name = format!("warm-path-cold-{round}-{i}");
            let api = RuntimeApi::start_for(&name).await;
            let pending = api.enqueue(get_order("1"), InvokeOptions::default().timeout(STARTUP));
            let mut builder = Function::builder(&spec.program)
                .name(&name)
                .env("DATABASE_URL", spec.database_url(url))
                .log_file(std::env::temp_dir().join(format!("{name}.log")));
            for (k, v) in &spec.env {
                builder = builder.env(k, v);
            }
            let spawned = tokio::time::Instant::now();
            let mut function = builder.spawn(&api);
            let polled = async {
                assert!(api.wait_next_polls(1, STARTUP).await, "{} never polled", spec.label);
                spawned.elapsed()
            };
            let answered = async {
                let invocation = pending.wait().await;
                (spawned.elapsed(), invocation)
            };
            let (polled, (answered, invocation)) = tokio::join!(polled, answered);
            let ok = matches!(&invocation.outcome, Outcome::Response(r) if r["statusCode"].as_i64() == Some(200));
            assert!(ok, "{} did not answer 200: {:?}", spec.label, invocation.outcome);
            init[i].push(polled);
            first[i].push(answered);
            function.kill();
            function.wait_exit(Duration::from_secs(5)).await;
        }
    }
    println!("| contender | n | INIT p50 ms | INIT p10–p90 ms | first answer p50 ms | first answer p10–p90 ms |");
    println!("|---|---|---|---|---|---|");
    for (i, spec) in plan.specs.iter().enumerate() {
        let (mut a, mut b) = (init[i].clone(), first[i].clone());
        a.sort();
        b.sort();
        println!(
            "| {} | {} | {:.3} | {:.3}–{:.3} | {:.3} | {:.3}–{:.3} |",
            spec.label,
            a.len(),
            ms(percentile(&a, 0.5)),
            ms(percentile(&a, 0.1)),
            ms(percentile(&a, 0.9)),
            ms(percentile(&b, 0.5)),
            ms(percentile(&b, 0.1)),
            ms(percentile(&b, 0.9)),
        );
    }
}
