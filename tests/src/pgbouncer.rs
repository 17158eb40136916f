//! A throwaway PgBouncer (Debian's `pgbouncer`) in front of a [`Postgres`],
//! in the pooling mode and with the server pool size a test asks for.
//! Started on its own loopback port, as the `postgres` OS user when running
//! as root (PgBouncer refuses root), stopped on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::postgres::{free_port, run_as, Postgres, APP_DATABASE, APP_PASSWORD, APP_USER};

const BINARY: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer; see the [module docs](self).
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl PgBouncer {
    /// PgBouncer in front of `pg`'s `app` database: `pool_mode` (`transaction`
    /// or `session`) with `server_pool_size` server connections.
    pub async fn start(pg: &Postgres, pool_mode: &str, server_pool_size: u32) -> PgBouncer {
        Self::start_with(pg, pool_mode, server_pool_size, &[]).await
    }

    /// As [`PgBouncer::start`], with `settings` added to its `[pgbouncer]`
    /// section (e.g. `("server_login_retry", "1")`).
    pub async fn start_with(
        pg: &Postgres,
        pool_mode: &str,
        server_pool_size: u32,
        settings: &[(&str, &str)],
    ) -> PgBouncer {
        Self::start_via(pg.port(), pool_mode, server_pool_size, settings).await
    }

    /// As [`PgBouncer::start_with`], reaching the server (the harness's
    /// `app` database) through `port`: a [`FaultProxy`](crate::FaultProxy)
    /// in front of it, say.
    pub async fn start_via(port: u16, pool_mode: &str, server_pool_size: u32, settings: &[(&str, &str)]) -> PgBouncer {
        let server_port = port;
        assert!(
            std::path::Path::new(BINARY).exists(),
            "pgbouncer is not installed: run scripts/setup (apt-get install pgbouncer)"
        );
        let dir = tempfile::Builder::new().prefix("pgbouncer-it-").tempdir().expect("temp dir for pgbouncer");
        let port = free_port();
        let log = dir.path().join("pgbouncer.log");
        let ini = dir.path().join("pgbouncer.ini");
        let users = dir.path().join("userlist.txt");
        fs::write(&users, format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n")).expect("write userlist");
        // The harness's settings, each overridden by `settings` (one line per
        // key: a second line would leave which one wins to the parser).
        let mut lines: Vec<(String, String)> = [
            ("listen_addr", "127.0.0.1".to_owned()),
            ("listen_port", port.to_string()),
            ("unix_socket_dir", String::new()),
            ("auth_type", "scram-sha-256".to_owned()),
            ("auth_file", users.display().to_string()),
            ("pool_mode", pool_mode.to_owned()),
            ("default_pool_size", server_pool_size.to_string()),
            ("min_pool_size", "0".to_owned()),
            ("reserve_pool_size", "0".to_owned()),
            ("max_client_conn", "500".to_owned()),
            ("server_reset_query", String::new()),
            ("ignore_startup_parameters", "extra_float_digits, options".to_owned()),
            ("logfile", log.display().to_string()),
            ("pidfile", dir.path().join("pgbouncer.pid").display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (key, value) in settings {
            match lines.iter_mut().find(|(k, _)| k == key) {
                Some(line) => line.1 = (*value).to_owned(),
                None => lines.push(((*key).to_owned(), (*value).to_owned())),
            }
        }
        let section: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        fs::write(
            &ini,
            format!(
                "[databases]\n{APP_DATABASE} = host=127.0.0.1 port={server_port} dbname={APP_DATABASE}\n[pgbouncer]\n{section}"
            ),
        )
        .expect("write pgbouncer.ini");
        let mut command = Command::new(BINARY);
        command.arg(&ini).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(user) = run_as() {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).expect("chown pgbouncer dir");
            for file in [&ini, &users] {
                std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid)).expect("chown pgbouncer file");
                fs::set_permissions(file, fs::Permissions::from_mode(0o600)).expect("chmod pgbouncer file");
            }
            command.uid(user.uid).gid(user.gid);
        }
        let child = command.spawn().expect("spawn pgbouncer");
        let bouncer = PgBouncer { port, child, log, _dir: dir };
        bouncer.wait_ready().await;
        bouncer
    }

    /// Process id of the running PgBouncer.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops PgBouncer (SIGTERM: its immediate shutdown, every client and
    /// server connection closed) and starts it again with the same settings
    /// on the same port; returns once it accepts connections.
    pub async fn restart(&mut self) {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
        let mut command = Command::new(BINARY);
        command
            .arg(self._dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = run_as() {
            command.uid(user.uid).gid(user.gid);
        }
        self.child = command.spawn().expect("spawn pgbouncer again");
        self.wait_ready().await;
    }

    /// Port PgBouncer listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `app` database through PgBouncer.
    pub fn database_url(&self) -> String {
        format!("postgres://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{}/{APP_DATABASE}", self.port)
    }

    /// PgBouncer's own log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "pgbouncer did not start; its log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
