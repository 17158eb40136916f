//! Lambda function binaries as child processes.
//!
//! A [`Function`] owns one child process started with the environment Lambda gives a
//! function (pointed at a [`RuntimeApi`] emulator) and everything it prints: stdout and
//! stderr are read line by line into a shared buffer as they arrive, and echoed to the
//! test's stderr prefixed with `[fn]`, or written to a log file instead
//! ([`FunctionBuilder::log_file`]). The parent's `DB_*`, `DATABASE_URL*` and
//! `AWS_LAMBDA_*` variables are never inherited. The child is killed when the
//! [`Function`] is dropped.
//!
//! [`bin_path`] finds a workspace binary built next to the running test executable.

use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io::Write as _,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    process::{Child, Command},
    sync::watch,
    task::JoinHandle,
};

use crate::runtime_api::{InitError, RuntimeApi};

/// Inherited variables with these prefixes are removed from the child's environment.
const SCRUBBED_PREFIXES: [&str; 3] = ["DB_", "DATABASE_URL", "AWS_LAMBDA_"];
/// How long [`Function::wait_exit`] waits for the output pipes to drain after exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Path of the workspace binary `name`: `target/<profile>/<name>`, found from the running
/// executable (a test in `target/<profile>/deps/`, or a binary such as the demo in
/// `target/<profile>/`). Panics if it is not built.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running executable");
    let dir = exe.parent().expect("the executable lives in target/<profile>");
    let profile_dir =
        if dir.ends_with("deps") { dir.parent().expect("target/<profile>/deps has a parent") } else { dir };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not built: run `scripts/test` (it builds the workspace binaries first) \
         or `cargo build -p example-functions` (looked for {})",
        path.display()
    );
    path
}

/// Which pipe a line came from.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Captured {
    all: String,
    stdout: String,
    stderr: String,
}

/// Output shared between the reader tasks and the [`Function`].
struct Output {
    text: Mutex<Captured>,
    /// Bumped on every line so waiters can re-check.
    lines: watch::Sender<u64>,
    /// Where each line is echoed: the test's stderr, or this file.
    log: Option<Mutex<File>>,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, Captured> {
        self.text.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, stream: Stream, line: &str) {
        {
            let mut captured = self.lock();
            captured.all.push_str(line);
            captured.all.push('\n');
            let own = match stream {
                Stream::Stdout => &mut captured.stdout,
                Stream::Stderr => &mut captured.stderr,
            };
            own.push_str(line);
            own.push('\n');
        }
        self.lines.send_modify(|n| *n += 1);
    }

    fn echo(&self, line: &str) {
        match &self.log {
            Some(file) => {
                let mut file = file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A log the test cannot write is no reason to fail it.
                let _ = writeln!(file, "{line}");
            }
            None => eprintln!("[fn] {line}"),
        }
    }
}

/// Settings for a [`Function`]; create with [`Function::builder`].
#[derive(Debug, Clone)]
pub struct FunctionBuilder {
    program: PathBuf,
    args: Vec<OsString>,
    name: String,
    env: Vec<(OsString, Option<OsString>)>,
    log_file: Option<PathBuf>,
}

impl FunctionBuilder {
    /// `AWS_LAMBDA_FUNCTION_NAME` (default `orders`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// A command-line argument for the binary.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Set an environment variable (applied after, so overriding, the defaults).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Remove an environment variable (including one of the defaults).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Echo the function's output into the file at `path` (created or
    /// truncated) instead of the test's stderr. It is still captured.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Start the binary against `api`. Must be called inside a tokio runtime.
    pub fn spawn(self, api: &RuntimeApi) -> Function {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let scrub = key.to_str().is_some_and(|k| SCRUBBED_PREFIXES.iter().any(|p| k.starts_with(p)));
            if scrub {
                cmd.env_remove(&key);
            }
        }
        let logging = [("AWS_LAMBDA_LOG_LEVEL", "info".to_owned()), ("RUST_LOG", "info".to_owned())];
        for (key, value) in api.lambda_env(&self.name).into_iter().chain(logging) {
            cmd.env(key, value);
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }

        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn function {}: {e}", self.program.display()));
        let pid = child.id().expect("pid of a just-spawned child");
        let log = self.log_file.as_ref().map(|path| {
            Mutex::new(File::create(path).unwrap_or_else(|e| panic!("create the log file {}: {e}", path.display())))
        });
        let output = Arc::new(Output { text: Mutex::new(Captured::default()), lines: watch::Sender::new(0), log });
        let stdout = child.stdout.take().expect("child stdout is piped");
        let stderr = child.stderr.take().expect("child stderr is piped");
        let readers = vec![
            tokio::spawn(pump(stdout, Stream::Stdout, output.clone())),
            tokio::spawn(pump(stderr, Stream::Stderr, output.clone())),
        ];
        Function { child, pid, output, readers, status: None }
    }
}

/// Read `reader` line by line into `output`, echoing each line to our stderr.
async fn pump(reader: impl AsyncRead + Unpin, stream: Stream, output: Arc<Output>) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']);
                output.echo(line);
                output.push(stream, line);
            }
        }
    }
}

/// A running function process; see the [module docs](self).
pub struct Function {
    child: Child,
    pid: u32,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function").field("pid", &self.pid).field("status", &self.status).finish_non_exhaustive()
    }
}

impl Function {
    /// Settings for running the binary at `program` (see [`bin_path`]).
    pub fn builder(program: impl Into<PathBuf>) -> FunctionBuilder {
        FunctionBuilder {
            program: program.into(),
            args: Vec::new(),
            name: "orders".to_owned(),
            env: Vec::new(),
            log_file: None,
        }
    }

    /// Start `program` against `api` with the default environment.
    pub fn spawn(program: impl Into<PathBuf>, api: &RuntimeApi) -> Function {
        Self::builder(program).spawn(api)
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many of the process's threads tokio runs as workers: tokio names
    /// them (its blocking pool's too) `tokio-rt-worker`; a current-thread
    /// runtime runs on the main thread and has none until something blocks.
    pub fn tokio_worker_threads(&self) -> usize {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap_or_else(|e| panic!("the threads of process {}: {e}", self.pid));
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim_end() == "tokio-rt-worker")
            .count()
    }

    /// Stops the process (`SIGSTOP`), as Lambda freezes an environment once
    /// it has asked for the next invocation. Panics if the signal cannot be sent.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Waits until the function, one invocation at a time, is back at
    /// `/next` on `api` (within 10 s, else panics with its output), then
    /// [`freeze`](Self::freeze)s it: what Lambda does after each invocation.
    pub async fn freeze_at_next_poll(&self, api: &RuntimeApi) {
        self.wait_back_at_next(api).await;
        self.freeze();
    }

    /// Waits until the function, one invocation at a time, is back at
    /// `/next` on `api` (within 10 s, else panics with its output): what it
    /// does after an answer is done by then.
    pub async fn wait_back_at_next(&self, api: &RuntimeApi) {
        let polled = api.wait_waiting_polls(1, Duration::from_secs(10)).await;
        assert!(polled, "the function did not poll /next again within 10 s:\n{}", self.output());
    }

    /// Resumes a process [`freeze`](Self::freeze) stopped (`SIGCONT`).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill").args([signal, &self.pid.to_string()]).status();
        assert!(status.as_ref().is_ok_and(|s| s.success()), "kill {signal} {}: {status:?}", self.pid);
    }

    /// Everything captured so far, stdout and stderr interleaved in arrival order.
    pub fn output(&self) -> String {
        self.output.lock().all.clone()
    }

    /// Captured stdout so far.
    pub fn stdout(&self) -> String {
        self.output.lock().stdout.clone()
    }

    /// Captured stderr so far.
    pub fn stderr(&self) -> String {
        self.output.lock().stderr.clone()
    }

    /// Wait until the output contains `needle`; false on timeout.
    pub async fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_output_where(timeout, |output| output.contains(needle)).await
    }

    /// Wait until `ready` holds of the output so far; false on timeout.
    pub async fn wait_for_output_where(&self, timeout: Duration, ready: impl Fn(&str) -> bool) -> bool {
        let mut lines = self.output.lines.subscribe();
        let found = lines.wait_for(|_| ready(&self.output.lock().all));
        // `Err` only if the sender is gone, which cannot happen while `self` exists.
        let result = tokio::time::timeout(timeout, found).await;
        matches!(result, Ok(Ok(_)))
    }

    /// Wait up to `timeout` for the process to exit; `None` if it is still running.
    /// After it exits, waits briefly for the remaining output to be captured.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let status =
                tokio::time::timeout(timeout, self.child.wait()).await.ok()?.expect("wait for function process");
            self.status = Some(status);
        }
        for reader in std::mem::take(&mut self.readers) {
            // A grandchild may hold the pipes open; don't wait for it forever.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, reader).await;
        }
        self.status
    }

    /// The exit status if the process has exited (does not wait).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("poll function process status");
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Send SIGKILL (no-op if it already exited). Use [`Function::wait_exit`] to reap it.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            // Fails only if it exited in the meantime.
            let _ = self.child.start_kill();
        }
    }

    /// Waits for the init error this function reports to `api`, then checks
    /// that INIT failed the way Lambda needs: the process exits non-zero and
    /// never asked for an event (the handler never ran). Panics with the
    /// function's output if no init error comes within `timeout`.
    pub async fn expect_init_error(&mut self, api: &RuntimeApi, timeout: Duration) -> InitError {
        let error = api
            .wait_init_error(timeout)
            .await
            .unwrap_or_else(|| panic!("no init error reported; output:\n{}", self.output()));
        let status = self.wait_exit(timeout).await.expect("the function exits after an init error");
        assert!(!status.success(), "a failed INIT exits non-zero: {status:?}");
        assert_eq!(api.next_polls(), 0, "the handler never ran: no event was asked for");
        error
    }

    /// Send SIGTERM (graceful shutdown, as Lambda does) if it is still running.
    pub fn terminate(&mut self) {
        if self.try_status().is_none() {
            // Fails only if it exited in the meantime.
            let _ = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        }
    }
}
