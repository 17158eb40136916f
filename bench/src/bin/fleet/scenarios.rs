//! The scenarios of issue 19, each against its own server: the adapter at
//! its defaults directly against a PostgreSQL with fewer slots than the
//! fleet's peak; behind PgBouncer in transaction mode; the seed's five
//! connections per environment; faults mid-run (PostgreSQL restarted,
//! PgBouncer restarted, a burst while lost environments hold slots); and, in
//! `--large`, one aiming at 1,000 environments.

use std::path::Path;
use std::time::Duration;

use integration_tests::fleet::{self, Closes, Fault, FleetConfig, FleetReport, Phase, Schedule, Server, Workload};
use integration_tests::orders::MIGRATION;
use integration_tests::pgbouncer::PgBouncer;
use integration_tests::{bin_path, Postgres};

/// How big a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    Quick,
    Default,
    Large,
}

/// Where the functions connect.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    Direct,
    /// PgBouncer in transaction mode with this many server connections.
    Bouncer(u32),
}

/// What happens mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    None,
    RestartPostgres,
    RestartBouncer,
    /// Reaping loses a share of environments (left frozen, slots held), and
    /// a second burst comes while they hold them.
    LostEnvironments,
}

/// One scenario.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    pub(crate) target: Target,
    pub(crate) max_connections: u32,
    /// `bench-contender` with `BENCH_STRATEGY=pool-of-5` instead of `orders`.
    pub(crate) seed_strategy: bool,
    pub(crate) injected: Injected,
}

/// A scenario and what it measured.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) scenario: Scenario,
    pub(crate) report: FleetReport,
    /// Per SIGTERMed environment, how its sessions ended (direct scenarios).
    pub(crate) terminate_closes: Option<Vec<Closes>>,
    /// The first `ConnectionLimit` message, if any.
    pub(crate) connection_limit_message: Option<String>,
}

pub(crate) fn all(size: Size) -> Vec<Scenario> {
    let (small, big) = match size {
        Size::Quick => (24, 60),
        // Below the ~50 environments the default burst needs (measured).
        _ => (30, 200),
    };
    let pool = if size == Size::Quick { 4 } else { 10 };
    if size == Size::Large {
        return vec![Scenario {
            key: "large",
            title: "aiming at 1,000 environments, behind PgBouncer (transaction mode, 20 server connections)",
            target: Target::Bouncer(20),
            max_connections: 100,
            seed_strategy: false,
            injected: Injected::None,
        }];
    }
    vec![
        Scenario {
            key: "direct",
            title: "adapter defaults, directly against PostgreSQL with max_connections below the peak",
            target: Target::Direct,
            max_connections: small,
            seed_strategy: false,
            injected: Injected::None,
        },
        Scenario {
            key: "pgbouncer",
            title: "adapter behind PgBouncer, transaction mode, DB_POOLER_MODE=transaction",
            target: Target::Bouncer(pool),
            max_connections: small,
            seed_strategy: false,
            injected: Injected::None,
        },
        Scenario {
            key: "pool-of-5",
            title: "the seed's strategy: 5 connections per environment, SELECT 1 per request, same server",
            target: Target::Direct,
            max_connections: small,
            seed_strategy: true,
            injected: Injected::None,
        },
        Scenario {
            key: "restart-postgres",
            title: "direct, PostgreSQL restarted (fast shutdown) mid-run",
            target: Target::Direct,
            max_connections: big,
            seed_strategy: false,
            injected: Injected::RestartPostgres,
        },
        Scenario {
            key: "restart-pgbouncer",
            title: "behind PgBouncer, PgBouncer restarted mid-run",
            target: Target::Bouncer(pool),
            max_connections: small,
            seed_strategy: false,
            injected: Injected::RestartBouncer,
        },
        Scenario {
            key: "lost-envs",
            title: "direct, a second burst while lost environments' connections hold slots (idle_session_timeout 30 s)",
            target: Target::Direct,
            max_connections: if size == Size::Quick { 50 } else { 40 },
            seed_strategy: false,
            injected: Injected::LostEnvironments,
        },
    ]
}

/// The load: steady, burst, quiet, steady (a second burst for lost environments).
pub(crate) fn schedule(size: Size, injected: Injected) -> (Schedule, usize, Duration) {
    let s = Duration::from_secs;
    let (phases, limit, reap) = match size {
        Size::Quick => (
            vec![
                Phase::steady("steady", s(6), 10.0),
                Phase::burst("burst", s(6), 30, Duration::from_millis(20), 15.0),
                Phase::steady("quiet", s(10), 0.2),
                Phase::steady("steady again", s(6), 10.0),
            ],
            40,
            s(4),
        ),
        Size::Default => (
            vec![
                Phase::steady("steady", s(15), 20.0),
                Phase::burst("burst", s(12), 100, Duration::from_millis(50), 30.0),
                Phase::steady("quiet", s(20), 0.2),
                Phase::steady("steady again", s(13), 20.0),
            ],
            120,
            s(8),
        ),
        Size::Large => (
            vec![
                Phase::steady("steady", s(10), 20.0),
                Phase::burst("burst", s(40), 1000, s(1), 30.0),
                Phase::steady("quiet", s(40), 0.2),
                Phase::steady("steady again", s(10), 20.0),
            ],
            1100,
            s(20),
        ),
    };
    let mut phases = phases;
    if injected == Injected::LostEnvironments {
        let (burst, spread) = if size == Size::Quick { (30, 20) } else { (100, 50) };
        let last = phases.pop().expect("four phases");
        phases.push(Phase::burst("second burst", s(25), burst, Duration::from_millis(spread), last.rate));
    }
    (Schedule { phases, max_arrivals: 20_000 }, limit, reap)
}

pub(crate) async fn run(scenario: &Scenario, size: Size, seed: u64, out: &Path) -> Ran {
    let pg = Postgres::builder()
        .max_connections(scenario.max_connections)
        // Connections and how they end are logged (the harness's defaults);
        // statements are not: the fleet's volume would make logging the
        // server's main work.
        .setting("log_statement", "none")
        .setting("log_min_messages", "debug1")
        .start()
        .await;
    pg.apply_sql_as_app(MIGRATION).await;
    pg.apply_sql_as_app("INSERT INTO orders (item, quantity) VALUES ('the first order', 1)").await;
    if scenario.injected == Injected::LostEnvironments {
        // README, "Connection budget": what reclaims a vanished client's slot.
        pg.batch("ALTER ROLE app SET idle_session_timeout = '30s'").await;
    }
    let mut bouncer = match scenario.target {
        Target::Direct => None,
        Target::Bouncer(pool) => Some(
            PgBouncer::start_with(
                &pg,
                "transaction",
                pool,
                &[("admin_users", "app"), ("server_login_retry", "1"), ("max_client_conn", "3000")],
            )
            .await,
        ),
    };
    let database_url = bouncer.as_ref().map_or_else(|| pg.database_url(), PgBouncer::database_url);
    let bouncer_port = bouncer.as_ref().map(PgBouncer::port);

    let (schedule, concurrency_limit, reap_after) = schedule(size, scenario.injected);
    let mut vars: Vec<(String, String)> = vec![("AWS_LAMBDA_LOG_LEVEL".into(), "info".into())];
    if matches!(scenario.target, Target::Bouncer(_)) {
        vars.push(("DB_POOLER_MODE".into(), "transaction".into()));
    }
    let program = if scenario.seed_strategy {
        vars.push(("BENCH_STRATEGY".into(), "pool-of-5".into()));
        bin_path("bench-contender")
    } else {
        bin_path("orders")
    };
    let (kill_share, lose_share) = match scenario.injected {
        Injected::LostEnvironments => (0.1, 0.6),
        _ => (0.1, 0.0),
    };
    let config = FleetConfig {
        label: scenario.key.to_owned(),
        program,
        database_url,
        app_prefix: format!("{}-e", scenario.key),
        vars,
        concurrency_limit,
        reap_after,
        kill_share,
        lose_share,
        function_timeout: Duration::from_secs(10),
        schedule: schedule.clone(),
        seed,
        workload: if scenario.seed_strategy { Workload::Reads } else { Workload::Orders { write_share: 0.2 } },
        log_dir: out.join("logs").join(scenario.key),
    };
    // Mid-run faults land 3 s after the burst began, with the fleet at its peak.
    let fault_at = schedule.phase_starts()[1] + Duration::from_secs(3);
    let mut faults = Vec::new();
    match scenario.injected {
        Injected::RestartPostgres => faults.push(Fault::new(fault_at, "PostgreSQL restarted", pg.restart())),
        Injected::RestartBouncer => {
            let bouncer = bouncer.as_mut().expect("a PgBouncer scenario");
            faults.push(Fault::new(fault_at, "PgBouncer restarted", bouncer.restart()));
        }
        Injected::None | Injected::LostEnvironments => {}
    }
    let report = fleet::run(config, Server { pg: &pg, bouncer_port }, faults).await;

    let terminate_closes = matches!(scenario.target, Target::Direct).then(|| {
        let closes = fleet::closes_by_application(&pg.read_log(), &format!("{}-e", scenario.key));
        report
            .environments
            .iter()
            .filter(|e| matches!(e.ended, Some((_, fleet::Ending::Terminated { .. }))))
            .map(|e| closes.get(&e.application_name).copied().unwrap_or_default())
            .collect()
    });
    let connection_limit_message = report.records.iter().find_map(|r| match &r.answer {
        fleet::Answer::Error { error_type, message } if error_type == "RuntimeAdapter.ConnectionLimit" => {
            Some(message.clone())
        }
        _ => None,
    });
    drop(bouncer);
    Ran { scenario: scenario.clone(), report, terminate_closes, connection_limit_message }
}
