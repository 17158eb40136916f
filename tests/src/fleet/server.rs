//! Server truth during a fleet run: what PostgreSQL (and PgBouncer, when in
//! front) held and spent, sampled while the fleet runs, and what the server
//! log says about how each environment's sessions ended.
//!
//! - Connections: `pg_stat_activity`'s client backends of the `app` role,
//!   through one superuser session on the server's unix socket that the
//!   sampler keeps (and reopens after a restart).
//! - Connects: the server log's `connection authorized` lines for `app`, and
//!   its 53300 refusals, timestamped ([`connections_in_log`]).
//!   `pg_stat_database.sessions` is sampled too, but a backend reports it
//!   late (with its other statistics, at most once a second, later when
//!   idle), so it cannot place a storm in time.
//! - Server CPU: user + system time of the postmaster and every process it
//!   forked, from `/proc`: the living ones' own times plus the times of the
//!   exited ones, which the postmaster collected (`cutime`, `cstime`). It is
//!   all the server's CPU (authentication, queries, logging), not SCRAM alone.
//! - PgBouncer: `SHOW POOLS` on its admin console, when the caller gives it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::Postgres;

/// One sample.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Since the run's start.
    pub at: Duration,
    /// Environments alive (initializing, busy or frozen idle; not lost ones).
    pub envs_alive: usize,
    /// Client backends of the `app` role; `None` when the server did not answer.
    pub server_connections: Option<i64>,
    /// `pg_stat_database.sessions` of the `app` database (cumulative).
    pub sessions: Option<i64>,
    /// Server CPU since the server's (latest) start, all processes.
    pub server_cpu: Option<Duration>,
    /// Resident memory of the environments alive, KiB (`/proc/PID/statm`).
    pub envs_rss_kib: u64,
    /// PgBouncer's pool for `app`, when sampled.
    pub pool: Option<PoolSample>,
}

/// PgBouncer's `SHOW POOLS` row for the `app` database.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolSample {
    /// Clients linked to a server connection.
    pub cl_active: i64,
    /// Clients waiting for a server connection.
    pub cl_waiting: i64,
    /// Server connections linked to a client.
    pub sv_active: i64,
    /// Server connections idle and usable.
    pub sv_idle: i64,
    /// Longest current wait of a client, in microseconds.
    pub maxwait_us: i64,
}

/// Samples one server (and its pooler).
#[derive(Debug)]
pub(crate) struct Sampler<'a> {
    pg: &'a Postgres,
    bouncer_port: Option<u16>,
    client: Option<Client>,
    bouncer: Option<Client>,
    ticks_per_second: u64,
}

impl<'a> Sampler<'a> {
    pub(crate) fn new(pg: &'a Postgres, bouncer_port: Option<u16>) -> Self {
        Self { pg, bouncer_port, client: None, bouncer: None, ticks_per_second: ticks_per_second() }
    }

    /// Fills the server's fields of `sample`.
    pub(crate) async fn sample(&mut self, sample: &mut Sample) {
        if let Some((connections, sessions)) = self.activity().await {
            sample.server_connections = Some(connections);
            sample.sessions = Some(sessions);
        }
        sample.server_cpu = server_cpu(self.pg.dir(), self.ticks_per_second);
        if self.bouncer_port.is_some() {
            sample.pool = self.pools().await;
        }
    }

    async fn activity(&mut self) -> Option<(i64, i64)> {
        if self.client.is_none() {
            self.client = connect(self.pg.superuser_config()).await;
        }
        let client = self.client.as_ref()?;
        let query = client
            .query_one(
                "SELECT (SELECT count(*) FROM pg_stat_activity \
                          WHERE usename = 'app' AND backend_type = 'client backend'), \
                        (SELECT sessions FROM pg_stat_database WHERE datname = 'app')",
                &[],
            )
            .await;
        match query {
            Ok(row) => Some((row.get(0), row.get::<_, Option<i64>>(1).unwrap_or_default())),
            Err(_) => {
                // Down, or restarted: reconnect at the next sample.
                self.client = None;
                None
            }
        }
    }

    async fn pools(&mut self) -> Option<PoolSample> {
        let port = self.bouncer_port?;
        if self.bouncer.is_none() {
            let mut config = tokio_postgres::Config::new();
            config
                .host("127.0.0.1")
                .port(port)
                .user(crate::APP_USER)
                .password(crate::APP_PASSWORD)
                .dbname("pgbouncer")
                .connect_timeout(Duration::from_secs(2));
            self.bouncer = connect(config).await;
        }
        let client = self.bouncer.as_ref()?;
        let Ok(messages) = client.simple_query("SHOW POOLS").await else {
            self.bouncer = None;
            return None;
        };
        messages.iter().find_map(|message| match message {
            SimpleQueryMessage::Row(row) if row.get("database") == Some(crate::APP_DATABASE) => {
                let field = |name: &str| row.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
                Some(PoolSample {
                    cl_active: field("cl_active"),
                    cl_waiting: field("cl_waiting"),
                    sv_active: field("sv_active"),
                    sv_idle: field("sv_idle"),
                    maxwait_us: field("maxwait") * 1_000_000 + field("maxwait_us"),
                })
            }
            _ => None,
        })
    }
}

async fn connect(config: tokio_postgres::Config) -> Option<Client> {
    let (client, connection) = tokio::time::timeout(Duration::from_secs(2), config.connect(NoTls)).await.ok()?.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`; 100 if unknown).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The CPU the server has used since its latest start: the postmaster's own
/// and its collected children's, plus its living children's.
pub fn server_cpu(cluster_dir: &Path, ticks_per_second: u64) -> Option<Duration> {
    let pid_file = std::fs::read_to_string(cluster_dir.join("data").join("postmaster.pid")).ok()?;
    let postmaster: u32 = pid_file.lines().next()?.trim().parse().ok()?;
    let own = stat_fields(postmaster)?;
    // utime, stime, cutime, cstime: fields 14 to 17 (1-based) of /proc/PID/stat.
    let mut ticks = own.cpu + own.children_cpu;
    for child in children(postmaster) {
        if let Some(stat) = stat_fields(child) {
            ticks += stat.cpu;
        }
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64))
}

/// Resident set of `pid` in KiB, if it still exists.
pub(crate) fn resident_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

struct Stat {
    ppid: u32,
    cpu: u64,
    children_cpu: u64,
}

fn stat_fields(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // `rest` starts at field 3 (state): field n is index n - 3.
    Some(Stat {
        ppid: u32::try_from(number(1)?).ok()?,
        cpu: number(11)? + number(12)?,
        children_cpu: number(13)? + number(14)?,
    })
}

fn children(parent: u32) -> Vec<u32> {
    let listed = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"));
    if let Ok(text) = listed {
        return text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

/// The harness's own sessions (schema, checks), left out of the counts.
const HARNESS: &str = crate::postgres::HARNESS_APPLICATION_NAME;

/// Connections of the `app` role the server authorized (the harness's own
/// left out), and connection
/// attempts it refused for want of slots (53300), each as time since
/// `started` (the run's start, wall clock), read from the log's `%m`
/// timestamps (UTC, millisecond).
#[must_use]
pub fn connections_in_log(log: &str, started: std::time::SystemTime) -> (Vec<Duration>, Vec<Duration>) {
    let since_epoch = started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let start_of_day = since_epoch % 86_400.0;
    let at = |line: &str| -> Option<Duration> {
        // "2026-12-01 11:04:10.736 UTC [pid] ..."
        let time = line.get(11..23)?;
        let (h, rest) = time.split_once(':')?;
        let (m, s) = rest.split_once(':')?;
        let of_day = h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?;
        let mut since = of_day - start_of_day;
        if since < -43_200.0 {
            since += 86_400.0;
        }
        Some(Duration::from_secs_f64(since.max(0.0)))
    };
    let mut authorized = Vec::new();
    let mut refused = Vec::new();
    for line in log.lines() {
        if line.contains("connection authorized: user=app ") && !line.contains(HARNESS) {
            authorized.extend(at(line));
        } else if line.contains("sorry, too many clients already")
            || line.contains("remaining connection slots are reserved")
        {
            refused.extend(at(line));
        }
    }
    (authorized, refused)
}

/// The most sessions of the `app` role open at once, replaying the log's
/// `connection authorized` and `disconnection` lines in order: exact where
/// sampling `pg_stat_activity` could miss a peak.
#[must_use]
pub fn peak_sessions_in_log(log: &str) -> usize {
    let (mut open, mut peak) = (0usize, 0usize);
    for line in log.lines() {
        if line.contains("connection authorized: user=app ") && !line.contains(HARNESS) {
            open += 1;
            peak = peak.max(open);
        } else if line.contains("LOG:  disconnection: session time:")
            && line.contains(" user=app ")
            && !line.contains(&format!("] {HARNESS} "))
        {
            open = open.saturating_sub(1);
        }
    }
    peak
}

/// How the sessions of one `application_name` ended, from a server log
/// written with the harness's prefix (`%m [%p] %a `), `log_disconnections`
/// and `log_min_messages=debug1` (which logs a client that left without the
/// Terminate message: "unexpected EOF on client connection", or "could not
/// receive data from client").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Closes {
    /// Backends that logged a line under the name.
    pub backends: usize,
    /// Of those, backends that logged their disconnection.
    pub disconnections: usize,
    /// Of those, backends whose client left without Terminate.
    pub unclean: usize,
}

/// [`Closes`] for every `application_name` in `log` that starts with `prefix`.
#[must_use]
pub fn closes_by_application(log: &str, prefix: &str) -> BTreeMap<String, Closes> {
    // pid -> (application, disconnected, unclean)
    let mut backends: BTreeMap<i32, (String, bool, bool)> = BTreeMap::new();
    for line in log.lines() {
        let Some(open) = line.find(" [") else { continue };
        let Some(close) = line[open..].find("] ").map(|i| open + i) else { continue };
        let Ok(pid) = line[open + 2..close].parse::<i32>() else { continue };
        let rest = &line[close + 2..];
        let Some((application, message)) = rest.split_once(' ') else { continue };
        if !application.starts_with(prefix) {
            continue;
        }
        let entry = backends.entry(pid).or_insert_with(|| (application.to_owned(), false, false));
        if message.contains("disconnection: session time") {
            entry.1 = true;
        }
        if message.contains("unexpected EOF on client connection")
            || message.contains("could not receive data from client")
        {
            entry.2 = true;
        }
    }
    let mut closes: BTreeMap<String, Closes> = BTreeMap::new();
    for (application, disconnected, unclean) in backends.into_values() {
        let c = closes.entry(application).or_default();
        c.backends += 1;
        c.disconnections += usize::from(disconnected);
        c.unclean += usize::from(unclean);
    }
    closes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_are_read_per_application() {
        let log = "\
2026-01-01 00:00:00.000 UTC [10] fleet-e1 LOG:  disconnection: session time: 0:00:01.000 user=app\n\
2026-01-01 00:00:00.000 UTC [11] fleet-e2 DEBUG:  unexpected EOF on client connection\n\
2026-01-01 00:00:00.000 UTC [11] fleet-e2 LOG:  disconnection: session time: 0:00:01.000 user=app\n\
2026-01-01 00:00:00.000 UTC [12] fleet-e2 LOG:  execute s0: SELECT 1\n\
2026-01-01 00:00:00.000 UTC [13] [unknown] LOG:  connection received: host=127.0.0.1\n";
        let closes = closes_by_application(log, "fleet-e");
        assert_eq!(closes["fleet-e1"], Closes { backends: 1, disconnections: 1, unclean: 0 });
        assert_eq!(closes["fleet-e2"], Closes { backends: 2, disconnections: 1, unclean: 1 });
        assert_eq!(closes.len(), 2);
    }
}
