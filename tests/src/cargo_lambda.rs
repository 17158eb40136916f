//! `cargo lambda` as Rust Lambda users run it locally.
//!
//! [`Watch`] runs `cargo lambda watch` as a child process in its own process
//! group, so that dropping it (also when a test panics) kills the watcher and
//! everything it started (`cargo run`, the function). [`Watch::invoke`] runs
//! `cargo lambda invoke <bin> --data-file <fixture>` against it.
//!
//! The tool is cargo-lambda from PyPI, installed into `.venv/` by
//! `scripts/tools lambda` (`scripts/test` runs it); without it every function
//! here panics saying so.
//!
//! cargo-lambda 1.9.2 gives the function the `[package.metadata.lambda.env]`
//! table of `example-functions/Cargo.toml` with precedence over its own
//! `--env-var` flags and over the inherited environment. That table
//! therefore names no database: a watched function gets `DATABASE_URL` from
//! the watcher's environment, `--env-var` or `--env-file`, as the user gives
//! it. [`Watch::start`] passes the variables it is given and nothing the
//! test process happens to have (`DB_*`, `DATABASE_URL*` and `AWS_LAMBDA_*`
//! are scrubbed, as for [`Function`](crate::Function)).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long [`Watch::start`] waits for the Runtime API to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `cargo lambda invoke` may take: the first one runs
/// `cargo run` (a build if anything changed) and the function's INIT.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(300);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long dropping a [`Watch`] waits for the killed watcher to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Inherited variables with these prefixes are not passed to the watcher:
/// the function's own settings (the test gives those), and what cargo sets
/// for the test binary it runs (the test package's manifest directory, name
/// and version, ...), which a user's shell does not have. ring's build script
/// declares `rerun-if-env-changed` on several of the latter, so with them the
/// watcher's `cargo run` would rebuild ring and what depends on it, and the
/// next build would rebuild them back.
const SCRUBBED_PREFIXES: [&str; 8] = [
    "DB_",
    "DATABASE_URL",
    "AWS_LAMBDA_",
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
];

/// The examples' features for `cargo run` under `cargo lambda watch`: those
/// the workspace build of the tests gave the binaries (`scripts/test`), so
/// that the watcher's build of `orders`, written to the same
/// `target/debug/orders`, does not replace it with one lacking the AWS
/// features while later tests (`credentials`) run it.
const WATCH_FEATURES: &[&str] = if cfg!(feature = "aws") {
    &["--features", "example-functions/secrets-manager,example-functions/iam-auth"]
} else {
    &[]
};

/// The workspace root (where `Cargo.toml`, `template.yaml` and `.venv/` are).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

/// The `cargo-lambda` executable: `.venv/bin/cargo-lambda`, else one on
/// `PATH`. Panics with how to install it if there is none.
#[must_use]
pub fn executable() -> PathBuf {
    let venv = workspace_root().join(".venv/bin/cargo-lambda");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("cargo-lambda"))
        .find(|path| path.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "cargo-lambda is not installed: run `scripts/tools lambda` (installs cargo-lambda 1.9.2 from PyPI \
             into .venv/), or `pip install cargo-lambda==1.9.2`"
        )
    })
}

/// The `[package.metadata.lambda.env]` table of `example-functions`, as
/// `cargo metadata` reads it; empty if there is none.
#[must_use]
pub fn metadata_env() -> BTreeMap<String, String> {
    let metadata = lambda_metadata();
    let Some(env) = metadata["env"].as_object() else { return BTreeMap::new() };
    env.iter()
        .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_else(|| panic!("{key} is not a string")).to_owned()))
        .collect()
}

/// The cargo features `cargo lambda build --bin <binary>` (and so `sam
/// build`) adds for one example binary: its
/// `[package.metadata.lambda.bin.<binary>.build]` table's `features`, as
/// cargo-lambda 1.9.2 reads them; empty if there are none.
#[must_use]
pub fn build_features(binary: &str) -> Vec<String> {
    let metadata = lambda_metadata();
    let Some(features) = metadata["bin"][binary]["build"]["features"].as_array() else { return Vec::new() };
    features.iter().map(|f| f.as_str().unwrap_or_else(|| panic!("{binary}: {f} is not a string")).to_owned()).collect()
}

/// `example-functions`' `[package.metadata.lambda]`, as `cargo metadata`
/// reads it (null if there is none).
fn lambda_metadata() -> Value {
    let out = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "example-functions"))
        .expect("example-functions is a workspace member");
    package["metadata"]["lambda"].clone()
}

/// A running `cargo lambda watch`; see the [module docs](self).
#[derive(Debug)]
pub struct Watch {
    child: Child,
    pgid: u32,
    port: u16,
    // Holds `watch.log`: outside the project, so that nothing the watcher
    // writes can trigger a rebuild.
    dir: TempDir,
}

impl Watch {
    /// Starts `cargo lambda watch` for the `example-functions` package on a
    /// free loopback port, without reloading on changes, with `env` in its
    /// environment (as a user's shell would give it), and waits until its
    /// Runtime API listens. Functions start on their first invocation.
    pub async fn start(env: &[(&str, &str)]) -> Watch {
        let port = crate::free_port();
        let dir = tempfile::Builder::new().prefix("cargo-lambda-watch-").tempdir().expect("create temp dir");
        let log = std::fs::File::create(dir.path().join("watch.log")).expect("create watch.log");
        let log_err = log.try_clone().expect("clone watch.log handle");
        let mut cmd = Command::new(executable());
        cmd.args(["lambda", "watch", "--invoke-address", "127.0.0.1", "--invoke-port", &port.to_string()])
            .args(["--ignore-changes", "--package", "example-functions"])
            .args(WATCH_FEATURES)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0)
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p))) {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().copied());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn cargo lambda watch: {e}"));
        let pgid = child.id().expect("pid of a just-spawned child");
        let mut watch = Watch { child, pgid, port, dir };
        watch.wait_listening().await;
        watch
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cargo lambda watch exited with {status}:\n{}", self.output());
            }
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cargo lambda watch not listening on port {} after {LISTEN_TIMEOUT:?}:\n{}",
                self.port,
                self.output()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The port its Runtime API and invoke endpoint listen on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the watcher, cargo and the functions printed so far.
    #[must_use]
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("watch.log")).unwrap_or_default()
    }

    /// `cargo lambda invoke <function> --data-file <data_file>` (a path
    /// relative to the workspace root); returns the function's answer.
    /// Panics, with the watcher's output, if the invoke fails or takes
    /// longer than 5 minutes.
    pub async fn invoke(&self, function: &str, data_file: &str) -> Value {
        let out = self.try_invoke(function, data_file).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cargo lambda invoke {function} failed ({}):\n{stdout}\n{}\nwatch output:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.output()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {stdout}"))
    }

    /// As [`Watch::invoke`], but returns what `cargo lambda invoke` did,
    /// failed or not. Panics only if it takes longer than 5 minutes.
    pub async fn try_invoke(&self, function: &str, data_file: &str) -> Output {
        let mut cmd = Command::new(executable());
        cmd.args(["lambda", "invoke", function, "--data-file", data_file])
            .args(["--invoke-address", "127.0.0.1", "--invoke-port", &self.port.to_string()])
            .args(["--output-format", "json"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(INVOKE_TIMEOUT, cmd.output()).await {
            Ok(out) => out.unwrap_or_else(|e| panic!("run cargo lambda invoke: {e}")),
            Err(_) => panic!("cargo lambda invoke {function} took over {INVOKE_TIMEOUT:?}:\n{}", self.output()),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The whole group: the watcher, `cargo run` and the function.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
        // Reap the watcher, so that no zombie outlives the test process.
        let deadline = Instant::now() + REAP_TIMEOUT;
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
