//! Throwaway PostgreSQL server.
//!
//! A [`Postgres`] owns one private cluster: its temp directory (data dir, password file,
//! unix socket, `server.log`), a free loopback port, the postmaster child process, and the
//! `app` role/database that code under test connects as ([`Postgres::database_url`]).
//! It also owns the fault-injection helpers tests use to break connections: terminating
//! or freezing backends, and stopping/restarting the whole server on the same port.
//!
//! Every statement is logged (`log_statement=all`) with the prefix `%m [%p] %a `
//! (timestamp, backend pid, application_name), so tests can attribute log lines to
//! connections; [`Postgres::log_mark`]/[`Postgres::log_since`] give a cursor into the log.
//!
//! The data directory is a copy of a template cluster that initdb made once (with the
//! `app` role and database): copying it costs about 60 ms, initdb and creating the role
//! and database about 1 s of CPU per server (see [`template_cluster`]).
//!
//! When the tests run as root the server binaries run as the `postgres` OS user (initdb
//! refuses root). Dropping a [`Postgres`] stops the server immediately and deletes the
//! directory, also when the test panicked.

use std::{
    collections::BTreeSet,
    fs::{self, OpenOptions},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use tempfile::TempDir;
use tokio_postgres::{Client, Config, NoTls, Row};

/// Password of the `app` role. Unusual enough to grep for in captured output.
pub const APP_PASSWORD: &str = "s3cr3t-Pa55word-xyzzy";
/// Login role the code under test uses; owns [`APP_DATABASE`].
pub const APP_USER: &str = "app";
/// Database owned by [`APP_USER`].
pub const APP_DATABASE: &str = "app";
/// Superuser role created by initdb.
pub const SUPERUSER: &str = "postgres";
/// Password of [`SUPERUSER`].
pub const SUPERUSER_PASSWORD: &str = "superuser-Pa55word-plugh";
/// `application_name` of the harness's own connections (excluded from the fault helpers).
pub const HARNESS_APPLICATION_NAME: &str = "integration-tests-harness";

/// Environment variable that overrides the PostgreSQL binary directory.
pub const PG_BIN_ENV: &str = "INTEGRATION_TESTS_PG_BIN";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
const START_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 60;

/// Settings for [`Postgres`]; create with [`Postgres::builder`].
#[derive(Debug, Clone, Default)]
pub struct PostgresBuilder {
    max_connections: Option<u32>,
    port: Option<u16>,
    settings: Vec<(String, String)>,
}

impl PostgresBuilder {
    /// Server `max_connections` (PostgreSQL's default is 100).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Listen on this port instead of a free one picked at random (for a server
    /// that tools outside the harness find at a known address).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Any other server setting, passed as `-c name=value`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Create the cluster (a copy of the template), with the `app` role and database, and start the server.
    ///
    /// Panics (with the server log tail) if any step fails or the server is not
    /// accepting connections within 30 s.
    pub async fn start(self) -> Postgres {
        Postgres::start_with(self).await
    }
}

/// OS identity the server binaries run as.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Why a server start attempt failed.
enum StartError {
    /// The postmaster exited; `bind_failed` when the port was taken.
    Exited {
        status: ExitStatus,
        bind_failed: bool,
    },
    TimedOut,
}

/// A private PostgreSQL server; see the [module docs](self).
pub struct Postgres {
    port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    settings: PostgresBuilder,
    server: Mutex<Option<Child>>,
    stopped_backends: Mutex<BTreeSet<i32>>,
    // Dropped last (after `Drop::drop` stopped the server): deletes the directory.
    dir: TempDir,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("port", &self.port).field("dir", &self.dir.path()).finish_non_exhaustive()
    }
}

impl Postgres {
    /// Start a server with default settings; see [`PostgresBuilder::start`].
    pub async fn start() -> Postgres {
        Self::builder().start().await
    }

    /// Settings for a server to start.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    async fn start_with(settings: PostgresBuilder) -> Postgres {
        let run_as = run_as();
        let bin_dir = pg_bin_dir();
        let dir = tempfile::Builder::new().prefix("pg-it-").tempdir().expect("create temp dir for postgres");
        let log_path = dir.path().join("server.log");
        fs::write(&log_path, "").expect("create postgres server.log");
        chown_to_server_user(dir.path(), run_as);

        let mut pg = Postgres {
            port: settings.port.unwrap_or_else(free_port),
            data_dir: dir.path().join("data"),
            log_path,
            bin_dir,
            run_as,
            settings,
            server: Mutex::new(None),
            stopped_backends: Mutex::new(BTreeSet::new()),
            dir,
        };

        // Blocking work (the first server of the process may build the template).
        let (from_bin, to) = (pg.bin_dir.clone(), pg.data_dir.clone());
        if let Err(e) = tokio::task::spawn_blocking(move || copy_template(&from_bin, run_as, &to)).await {
            std::panic::resume_unwind(e.into_panic());
        }

        let mut attempt = 1;
        loop {
            match pg.spawn_and_wait_ready().await {
                Ok(()) => break,
                Err(StartError::Exited { bind_failed: true, .. })
                    if attempt < START_ATTEMPTS && pg.settings.port.is_none() =>
                {
                    // Another process took the port between picking and binding it.
                    attempt += 1;
                    pg.port = free_port();
                }
                Err(err) => pg.fail_start(err),
            }
        }
        pg
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL the code under test uses: `postgres://app:<APP_PASSWORD>@127.0.0.1:<port>/app`.
    pub fn database_url(&self) -> String {
        format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{APP_DATABASE}", self.port)
    }

    /// Superuser URL (`postgres` database).
    pub fn superuser_url(&self) -> String {
        format!("postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's temp directory (data dir, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the server log (stdout and stderr of the postmaster).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole server log so far.
    pub fn read_log(&self) -> String {
        self.log_since(0)
    }

    /// Cursor into the log: its current length in bytes. Pass to [`Postgres::log_since`].
    pub fn log_mark(&self) -> usize {
        fs::metadata(&self.log_path).map(|m| usize::try_from(m.len()).expect("log length fits usize")).unwrap_or(0)
    }

    /// The log written after `mark` (from [`Postgres::log_mark`]).
    pub fn log_since(&self, mark: usize) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(mark..).unwrap_or_default()).into_owned()
    }

    /// Wait until the log written after `mark` contains `needle`; false on timeout.
    pub async fn wait_for_log(&self, mark: usize, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_since(mark).contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// TCP + password settings for the superuser (application_name
    /// [`HARNESS_APPLICATION_NAME`]).
    pub fn superuser_config(&self) -> Config {
        let mut config = self.base_config(SUPERUSER, "postgres");
        config.host("127.0.0.1").password(SUPERUSER_PASSWORD);
        config
    }

    /// TCP + password settings for the `app` role (application_name
    /// [`HARNESS_APPLICATION_NAME`]).
    pub fn app_config(&self) -> Config {
        let mut config = self.base_config(APP_USER, APP_DATABASE);
        config.host("127.0.0.1").password(APP_PASSWORD);
        config
    }

    /// Settings for the private unix socket (trust authentication, no password).
    fn socket_config(&self, user: &str, dbname: &str) -> Config {
        let mut config = self.base_config(user, dbname);
        config.host_path(self.dir.path());
        config
    }

    fn base_config(&self, user: &str, dbname: &str) -> Config {
        let mut config = Config::new();
        config
            .port(self.port)
            .user(user)
            .dbname(dbname)
            .application_name(HARNESS_APPLICATION_NAME)
            .connect_timeout(CONNECT_TIMEOUT);
        config
    }

    /// A new superuser connection (over the unix socket); its connection task is spawned
    /// on the current runtime.
    pub async fn superuser(&self) -> Client {
        self.connect(&self.socket_config(SUPERUSER, "postgres"), "superuser").await
    }

    /// A new connection as the `app` role to the `app` database (over the unix socket).
    pub async fn app_client(&self) -> Client {
        self.connect(&self.socket_config(APP_USER, APP_DATABASE), "app").await
    }

    async fn connect(&self, config: &Config, who: &str) -> Client {
        match connect(config).await {
            Ok(client) => client,
            Err(e) => {
                panic!("connect to postgres as {who} on port {}: {}\n{}", self.port, error_text(&e), self.log_tail())
            }
        }
    }

    /// Run one statement as the superuser; returns the affected row count.
    pub async fn execute(&self, sql: &str) -> u64 {
        let client = self.superuser().await;
        client.execute(sql, &[]).await.unwrap_or_else(|e| panic!("execute `{sql}` as superuser: {}", error_text(&e)))
    }

    /// Run a batch of statements as the superuser.
    pub async fn batch(&self, sql: &str) {
        let client = self.superuser().await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("batch as superuser failed: {}\n{sql}", error_text(&e)));
    }

    /// Run a query as the superuser and return its rows.
    pub async fn query(&self, sql: &str) -> Vec<Row> {
        let client = self.superuser().await;
        client.query(sql, &[]).await.unwrap_or_else(|e| panic!("query `{sql}` as superuser: {}", error_text(&e)))
    }

    /// Run a batch as the `app` role in the `app` database (migrations: objects are owned
    /// by `app`).
    pub async fn apply_sql_as_app(&self, sql: &str) {
        let client = self.app_client().await;
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("batch as app failed: {}\n{sql}", error_text(&e)));
    }

    /// Pids of client backends whose `application_name` is `application_name`.
    pub async fn backend_pids(&self, application_name: &str) -> Vec<i32> {
        self.superuser()
            .await
            .query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE application_name = $1 AND backend_type = 'client backend' \
                   AND pid <> pg_backend_pid() ORDER BY pid",
                &[&application_name],
            )
            .await
            .expect("query pg_stat_activity")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Number of client backends whose `application_name` is `application_name`.
    pub async fn connection_count(&self, application_name: &str) -> i64 {
        self.count_backends("application_name", application_name).await
    }

    /// Number of client backends logged in as `user` (excluding the harness's own).
    pub async fn connection_count_for_user(&self, user: &str) -> i64 {
        self.count_backends("usename", user).await
    }

    /// Waits until the server has `n` client backends whose
    /// `application_name` is `application_name`; false after `timeout`.
    /// Polls on one session of its own, which logs nothing.
    pub async fn wait_connection_count(&self, application_name: &str, n: i64, timeout: Duration) -> bool {
        let client = self.superuser().await;
        client.batch_execute("SET log_statement = 'none'").await.expect("quiet polling");
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            let count: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND backend_type = 'client backend' \
                       AND pid <> pg_backend_pid()",
                    &[&application_name],
                )
                .await
                .expect("count backends in pg_stat_activity")
                .get(0);
            if count == n {
                return true;
            }
            if tokio::time::Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn count_backends(&self, column: &str, value: &str) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE {column} = $1 AND backend_type = 'client backend' \
               AND pid <> pg_backend_pid()"
        );
        self.superuser().await.query_one(&sql, &[&value]).await.expect("count backends in pg_stat_activity").get(0)
    }

    /// Terminate (`pg_terminate_backend`) every client backend logged in as
    /// `user` without waiting for them to exit; returns how many were
    /// signalled. Behind a pooler this cuts its server connections.
    pub async fn kill_backends_of_user(&self, user: &str) -> i64 {
        self.superuser()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE usename = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[&user],
            )
            .await
            .expect("terminate backends")
            .get(0)
    }

    /// Terminate (`pg_terminate_backend`) every client backend with this
    /// `application_name` and return their pids. Waits up to 5 s for each to exit, except
    /// for backends frozen with [`Postgres::stop_backend`] (they exit once continued).
    pub async fn kill_backends(&self, application_name: &str) -> Vec<i32> {
        let pids = self.backend_pids(application_name).await;
        let client = self.superuser().await;
        for &pid in &pids {
            let frozen = self.stopped().contains(&pid);
            let sql = if frozen { "SELECT pg_terminate_backend($1)" } else { "SELECT pg_terminate_backend($1, 5000)" };
            // An error or `false` means the backend already went away or is slow to exit;
            // the signal was sent either way.
            let _ = client.query_one(sql, &[&pid]).await;
        }
        pids
    }

    /// Freeze a backend with SIGSTOP: its connection stays open but never answers
    /// (a half-open/silent peer). Undo with [`Postgres::cont_backend`]; `Drop`, `stop` and
    /// `restart` continue frozen backends first.
    pub fn stop_backend(&self, pid: i32) {
        signal(pid, "STOP");
        self.stopped().insert(pid);
    }

    /// Resume a backend frozen with [`Postgres::stop_backend`].
    pub fn cont_backend(&self, pid: i32) {
        self.stopped().remove(&pid);
        signal(pid, "CONT");
    }

    fn cont_all_backends(&self) {
        let pids = std::mem::take(&mut *self.stopped());
        for pid in pids {
            // The backend may be gone already.
            let _ = Command::new("kill").args(["-CONT", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }

    fn stopped(&self) -> MutexGuard<'_, BTreeSet<i32>> {
        self.stopped_backends.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn server(&self) -> MutexGuard<'_, Option<Child>> {
        self.server.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the postmaster process is running.
    pub fn is_running(&self) -> bool {
        match self.server().as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stop the server (`pg_ctl stop -m fast`) and wait for it to exit. The port stays
    /// reserved for [`Postgres::start_again`]. No-op if it is not running.
    pub async fn stop(&self) {
        self.stop_mode("fast").await;
    }

    /// Stop the server with `pg_ctl stop -m immediate` (like a crash: no clean shutdown).
    pub async fn stop_immediate(&self) {
        self.stop_mode("immediate").await;
    }

    async fn stop_mode(&self, mode: &str) {
        self.cont_all_backends();
        let Some(mut child) = self.server().take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let mut pg_ctl = self.command("pg_ctl");
            pg_ctl.arg("stop").arg("-D").arg(&self.data_dir).args(["-m", mode, "-w", "-t", "30"]);
            let out = tokio::process::Command::from(pg_ctl).output().await.expect("run pg_ctl stop");
            if !out.status.success() {
                let _ = child.kill();
                panic!(
                    "pg_ctl stop -m {mode} failed ({}): {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    self.log_tail()
                );
            }
        }
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("postmaster did not exit after pg_ctl stop\n{}", self.log_tail());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Start the server again after [`Postgres::stop`], on the same port, and wait until
    /// it accepts connections. No-op if it is running.
    pub async fn start_again(&self) {
        if self.is_running() {
            return;
        }
        if let Err(err) = self.spawn_and_wait_ready().await {
            self.fail_start(err);
        }
    }

    /// [`Postgres::stop`] then [`Postgres::start_again`].
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    async fn spawn_and_wait_ready(&self) -> Result<(), StartError> {
        let mark = self.log_mark();
        self.spawn_server();
        let deadline = Instant::now() + READY_TIMEOUT;
        // Probe through our private unix socket, not TCP: if another server grabbed the
        // port, a TCP login (same well-known credentials) would reach *that* server.
        let config = self.socket_config(SUPERUSER, "postgres");
        loop {
            let exited = {
                let mut server = self.server();
                let status = server.as_mut().and_then(|c| c.try_wait().ok()?);
                if status.is_some() {
                    server.take();
                }
                status
            };
            if let Some(status) = exited {
                let log = self.log_since(mark);
                let bind_failed = log.contains("could not bind") || log.contains("Address already in use");
                return Err(StartError::Exited { status, bind_failed });
            }
            if connect(&config).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError::TimedOut);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn fail_start(&self, err: StartError) -> ! {
        let why = match err {
            StartError::Exited { status, bind_failed: true } => {
                format!("postmaster exited with {status}: port {} is taken by another process", self.port)
            }
            StartError::Exited { status, .. } => format!("postmaster exited with {status}"),
            StartError::TimedOut => {
                format!("not accepting connections after {READY_TIMEOUT:?}")
            }
        };
        panic!("postgres on port {} failed to start: {why}\n{}", self.port, self.log_tail());
    }

    fn spawn_server(&self) {
        let log = OpenOptions::new().append(true).open(&self.log_path).expect("open postgres server.log");
        let log_err = log.try_clone().expect("clone server.log handle");
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(&self.data_dir).arg("-p").arg(self.port.to_string());
        let mut settings = vec![
            ("listen_addresses".to_owned(), "127.0.0.1".to_owned()),
            ("unix_socket_directories".to_owned(), self.dir.path().display().to_string()),
            ("log_statement".to_owned(), "all".to_owned()),
            ("log_connections".to_owned(), "on".to_owned()),
            ("log_disconnections".to_owned(), "on".to_owned()),
            ("log_line_prefix".to_owned(), "%m [%p] %a ".to_owned()),
            ("fsync".to_owned(), "off".to_owned()),
            ("synchronous_commit".to_owned(), "off".to_owned()),
            ("full_page_writes".to_owned(), "off".to_owned()),
        ];
        if let Some(n) = self.settings.max_connections {
            settings.push(("max_connections".to_owned(), n.to_string()));
        }
        settings.extend(self.settings.settings.iter().cloned());
        for (name, value) in settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log_err));
        let child = cmd.spawn().expect("spawn postgres");
        *self.server() = Some(child);
    }

    /// A command for a PostgreSQL binary, run as the `postgres` OS user when we are root.
    fn command(&self, binary: &str) -> Command {
        server_command(&self.bin_dir, binary, self.run_as, self.dir.path())
    }

    /// The last lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.read_log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("--- postgres server.log (last {LOG_TAIL_LINES} lines) ---\n{tail}\n--- end of server.log ---")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.cont_all_backends();
        let child = self.server().take();
        if let Some(mut child) = child {
            if matches!(child.try_wait(), Ok(None)) {
                let stopped = self
                    .command("pg_ctl")
                    .arg("stop")
                    .arg("-D")
                    .arg(&self.data_dir)
                    .args(["-m", "immediate", "-w", "-t", "10"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !stopped {
                    let _ = child.kill();
                }
                let deadline = Instant::now() + EXIT_TIMEOUT;
                while matches!(child.try_wait(), Ok(None)) {
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Connect and spawn the connection task on the current runtime.
async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // Errors surface through the client; the task just drives the socket.
        let _ = connection.await;
    });
    Ok(client)
}

/// An error with its source chain (tokio-postgres puts the server message in the source).
fn error_text(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn signal(pid: i32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("run kill -{signal} {pid}: {e}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A loopback port that was free a moment ago and that no other server of this process
/// has used (the kernel may hand a just-released port out again).
///
/// Picked at random below the kernel's ephemeral range (`ip_local_port_range`), which
/// is where every client socket on the machine gets its local port: a server stopped
/// and started again on its port ([`Postgres::start_again`]) found it taken by some
/// test's outgoing connection when ports came from that range.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let below_ephemeral = below_ephemeral_ports();
    loop {
        let port = match &below_ephemeral {
            Some(range) => fastrand::u16(range.clone()),
            None => 0,
        };
        let Ok(probe) = std::net::TcpListener::bind(("127.0.0.1", port)) else { continue };
        let port = probe.local_addr().expect("local addr of port probe").port();
        if HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(port) {
            return port;
        }
    }
}

/// The upper half of the ports below the kernel's ephemeral range (16384–32767 with
/// Linux's default 32768–60999), or `None` (the kernel's choice) when that range starts
/// too low to leave room or cannot be read.
fn below_ephemeral_ports() -> Option<std::ops::Range<u16>> {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (low >= 8192).then_some(low / 2..low)
}

/// A command for PostgreSQL's `binary` in `bin_dir`, run in `dir` as the server's
/// OS user (see [`as_server_user`]).
fn server_command(bin_dir: &Path, binary: &str, run_as: Option<RunAs>, dir: &Path) -> Command {
    let mut cmd = Command::new(bin_dir.join(binary));
    cmd.current_dir(dir);
    as_server_user(&mut cmd, run_as);
    cmd
}

/// Run `cmd` as the OS user the server binaries run as (see [`run_as`]), with no
/// inherited `PGDATA`, `PGPORT` or `PGHOST`.
fn as_server_user(cmd: &mut Command, run_as: Option<RunAs>) {
    cmd.env_remove("PGDATA").env_remove("PGPORT").env_remove("PGHOST");
    if let Some(user) = run_as {
        cmd.uid(user.uid).gid(user.gid);
    }
}

fn chown_to_server_user(path: &Path, run_as: Option<RunAs>) {
    if let Some(user) = run_as {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// initdb's arguments for every cluster (after `-D` and `--pwfile`).
const INITDB_ARGS: &[&str] = &[
    // Passwords over TCP (what the code under test uses); the harness's own
    // connections use the private unix socket without one, which is much faster
    // than SCRAM in an unoptimized test build.
    "--auth-host=scram-sha-256",
    "--auth-local=trust",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync",
    "--no-instructions",
];

/// Copy the template cluster (see [`template_cluster`]) to `to`, a new data directory.
fn copy_template(bin_dir: &Path, run_as: Option<RunAs>, to: &Path) {
    let template = template_cluster(&std::env::temp_dir(), bin_dir, run_as);
    let mut cp = Command::new("cp");
    cp.arg("-a").arg(template.join("data")).arg(to);
    as_server_user(&mut cp, run_as);
    let out = cp.output().expect("run cp");
    assert!(
        out.status.success(),
        "copying the template cluster {} to {} failed ({}): {}",
        template.display(),
        to.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster every server starts from: what initdb made, with the `app` role and
/// database added. A server's data directory is a copy of it (`cp -a`, about 60 ms,
/// against about 1 s for initdb and the role and database per server).
///
/// Built once per recipe, PostgreSQL build and OS user, then shared by every test
/// process: `$TMPDIR/pg-it-template-<hash>` (about 40 MB, left for the next run).
/// A process builds it in a directory of its own and renames that into place, so a
/// process sees either no template or a whole one; when two build it at once, the
/// one that renames first wins and the other deletes its own. One that lost files
/// since (a cleaner of old files in `$TMPDIR`) is moved aside and built anew.
fn template_cluster(root: &Path, bin_dir: &Path, run_as: Option<RunAs>) -> PathBuf {
    use std::hash::{Hash as _, Hasher as _};
    // This process's servers wait while the first one builds it.
    static BUILDING: Mutex<()> = Mutex::new(());

    let sql = format!(
        "CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}';\nCREATE DATABASE {APP_DATABASE} OWNER {APP_USER};\n"
    );
    let postgres = fs::metadata(bin_dir.join("postgres"))
        .unwrap_or_else(|e| panic!("{}: {e}", bin_dir.join("postgres").display()));
    // The user the template belongs to: the server's (root runs the binaries as
    // `postgres`), else ours. Another user's template is not readable.
    let owner = run_as.map_or_else(euid, |user| user.uid);
    let mut key = std::hash::DefaultHasher::new();
    (INITDB_ARGS, SUPERUSER, SUPERUSER_PASSWORD, &sql, bin_dir, postgres.len(), postgres.mtime(), owner).hash(&mut key);
    let name = format!("pg-it-template-{:016x}", key.finish());
    let template = root.join(&name);

    let _building = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if template.join("data").is_dir() {
        let found = fs::metadata(&template).map(|m| m.uid()).ok();
        assert_eq!(
            found,
            Some(owner),
            "{} belongs to another user (uid {found:?}, expected {owner}): delete it",
            template.display()
        );
        if is_whole_cluster(&template.join("data")) {
            return template;
        }
        let aside = root.join(format!("{name}.partial-{}", std::process::id()));
        if fs::rename(&template, &aside).is_ok() {
            let _ = fs::remove_dir_all(&aside);
        }
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!("{name}.building-"))
        .tempdir_in(root)
        .expect("create temp dir for the template cluster");
    chown_to_server_user(staging.path(), run_as);
    build_cluster(staging.path(), bin_dir, run_as, &sql);

    match fs::rename(staging.path(), &template) {
        Ok(()) => {}
        // Another process renamed its own first: use that one (ours is deleted on drop).
        Err(_) if template.join("data").is_dir() => {}
        Err(e) => panic!("rename {} to {}: {e}", staging.path().display(), template.display()),
    }
    template
}

/// A cluster in `dir/data` (owned by the server's user): initdb, then `sql` (the
/// `app` role and database) in single-user mode: no server, port or connection.
fn build_cluster(dir: &Path, bin_dir: &Path, run_as: Option<RunAs>, sql: &str) {
    let pwfile = dir.join("pwfile");
    fs::write(&pwfile, SUPERUSER_PASSWORD).expect("write postgres password file");
    chown_to_server_user(&pwfile, run_as);
    let data = dir.join("data");

    let mut initdb = server_command(bin_dir, "initdb", run_as, dir);
    initdb.arg("-D").arg(&data).arg(format!("--username={SUPERUSER}")).arg(format!("--pwfile={}", pwfile.display()));
    let out = initdb.args(INITDB_ARGS).output().expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(&pwfile).expect("remove the password file");

    // The role and database, in single-user mode: no server, port or connection.
    let mut single = server_command(bin_dir, "postgres", run_as, dir);
    single.arg("--single").arg("-D").arg(&data).args(["-c", "fsync=off", SUPERUSER]);
    single.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = single.spawn().expect("run postgres --single");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(sql.as_bytes()).expect("write to postgres --single");
    }
    let out = child.wait_with_output().expect("wait for postgres --single");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(APP_PASSWORD, "<APP_PASSWORD>");
    // Single-user mode reports a failed statement on stderr and still exits 0.
    assert!(
        out.status.success() && !stderr.contains("ERROR:") && !stderr.contains("FATAL:"),
        "creating the {APP_USER} role and database in the template cluster failed ({}):\n{stderr}",
        out.status
    );
}

/// Whether `data` still has what a server needs to start (initdb writes them all
/// at once, so a cleaner of old files removes them together).
fn is_whole_cluster(data: &Path) -> bool {
    ["PG_VERSION", "postgresql.conf", "pg_hba.conf", "global/pg_control", "global/pg_filenode.map"]
        .iter()
        .all(|file| data.join(file).is_file())
        && data.join("base").is_dir()
}

/// The user this process runs as.
fn euid() -> u32 {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or_else(|_| {
        let out = Command::new("id").arg("-u").output().expect("run `id -u`");
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("parse `id -u` output")
    })
}

/// The `postgres` OS user when running as root, else `None` (run as ourselves).
pub(crate) fn run_as() -> Option<RunAs> {
    if euid() != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let user = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            Some(RunAs { uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? })
        } else {
            None
        }
    });
    Some(user.expect("running as root but /etc/passwd has no `postgres` user (initdb refuses to run as root)"))
}

/// Directory of initdb/postgres/pg_ctl: `$INTEGRATION_TESTS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV) {
        return PathBuf::from(dir);
    }
    let newest = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/<version>/bin \
             (install postgresql, or set {PG_BIN_ENV})"
        ),
    }
}

/// A new temp directory holding `files` (name, contents), each readable only
/// by the OS user the server runs as (mode 0600): for settings that name a
/// file the server reads, such as `ssl_cert_file` and `ssl_key_file`. Keep it
/// as long as the server runs.
pub fn files_for_server(files: &[(&str, &str)]) -> TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new().prefix("pg-files-").tempdir().expect("create temp dir for server files");
    let owner = run_as();
    for (name, contents) in files {
        let path = dir.path().join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
        chown_to_server_user(&path, owner);
    }
    chown_to_server_user(dir.path(), owner);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports come from below the kernel's ephemeral range, where no client
    /// socket gets one, each once per process.
    #[test]
    fn ports_are_picked_below_the_ephemeral_range_and_never_twice() {
        let range =
            below_ephemeral_ports().expect("Linux's ephemeral range (ip_local_port_range) starts at 8192 or above");
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| range.contains(p)), "{ports:?} not all in {range:?}");
        assert_eq!(ports.iter().collect::<BTreeSet<_>>().len(), ports.len(), "a port handed out twice: {ports:?}");
    }

    /// A template that lost files is built anew; a whole one is used as it is.
    #[test]
    fn a_template_that_lost_files_is_built_anew() {
        let root = tempfile::Builder::new().prefix("pg-it-root-").tempdir().expect("temp dir");
        let run_as = run_as();
        chown_to_server_user(root.path(), run_as);
        let bin_dir = pg_bin_dir();

        let template = template_cluster(root.path(), &bin_dir, run_as);
        let control = template.join("data/global/pg_control");
        let built = fs::metadata(&control).and_then(|m| m.modified()).expect("pg_control");
        assert_eq!(template_cluster(root.path(), &bin_dir, run_as), template);
        assert_eq!(fs::metadata(&control).and_then(|m| m.modified()).ok(), Some(built), "used as it was");

        fs::remove_file(&control).expect("remove pg_control");
        assert_eq!(template_cluster(root.path(), &bin_dir, run_as), template);
        assert!(is_whole_cluster(&template.join("data")), "built anew");
        let left: Vec<_> = fs::read_dir(root.path())
            .expect("read the root")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [template.file_name().expect("name").to_string_lossy().into_owned()], "nothing else left");
    }
}
