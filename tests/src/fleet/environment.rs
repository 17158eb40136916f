//! One execution environment: a function process with its own emulated
//! Runtime API, driven by a task that owns both. It is frozen (SIGSTOP) once
//! the function polls for its next event after answering, as Lambda freezes
//! an environment when its runtime calls `/next`, and thawed (SIGCONT) before
//! the next invocation is handed to it. Reaping ends it the three ways a
//! platform does: SIGTERM to a thawed process, SIGKILL, or never again (a
//! lost host: its connections stay open and silent).

use std::path::PathBuf;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::runtime_api::{InvokeOptions, Outcome};
use crate::{Function, RuntimeApi};

/// Lambda ends an on-demand INIT after 10 s.
pub const INIT_LIMIT: Duration = Duration::from_secs(10);
/// Beyond the function timeout, how long the driver waits for an answer
/// before it calls the invocation hung.
const GRACE: Duration = Duration::from_secs(2);
/// How long a SIGTERMed environment may take to exit before it is SIGKILLed
/// (Lambda gives the runtime about 500 ms, extensions up to 2 s in all).
pub const SHUTDOWN_LIMIT: Duration = Duration::from_secs(2);

/// What the router asks of an environment.
#[derive(Debug)]
pub(crate) enum Command {
    Invoke { payload: Value, arrived: Instant, index: usize },
    Reap(Reap),
}

/// How an idle environment is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// Thawed, then SIGTERM: the adapter closes its connections.
    Terminate,
    /// SIGKILL: the kernel closes its sockets (FIN), nothing else.
    Kill,
    /// Left frozen for the rest of the run, then SIGKILLed: a lost host, whose
    /// connections the server keeps until it notices.
    Lose,
}

/// How one invocation ended, from the caller's side.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The function answered; its HTTP status.
    Response { status: i64, body: Value },
    /// The function reported an error.
    Error { error_type: String, message: String },
    /// INIT failed (`/init/error`) or the process exited before answering.
    InitFailed { error_type: String, message: String },
    /// No answer within the function timeout and grace: hung.
    TimedOut,
    /// Refused at the concurrency limit (Lambda's 429).
    Throttled,
}

impl Answer {
    /// Whether the caller got what it asked for (a response below 500).
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, Answer::Response { status, .. } if *status < 500)
    }

    /// Short label for tables: the status, the error type, `throttled`…
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Answer::Response { status, .. } => status.to_string(),
            Answer::Error { error_type, .. } => error_type.clone(),
            Answer::InitFailed { error_type, .. } => format!("init: {error_type}"),
            Answer::TimedOut => "timed out".to_owned(),
            Answer::Throttled => "throttled (429)".to_owned(),
        }
    }
}

/// How an environment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM; `clean` if it exited with status 0 within [`SHUTDOWN_LIMIT`].
    Terminated { clean: bool, took: Duration },
    /// SIGKILL by the reaper.
    Killed,
    /// Abandoned frozen (lost host); SIGKILLed at the end of the run.
    Lost,
    /// INIT failed or the process died before answering.
    Failed,
    /// An invocation hung; SIGKILLed, as Lambda resets a timed-out environment.
    TimedOut,
}

/// What an environment reports to the router.
#[derive(Debug)]
pub(crate) enum Event {
    Answered { env: usize, index: usize, answer: Answer, latency: Duration, cold: bool, usable: bool },
    Ended { env: usize, ending: Ending },
}

/// Starts an environment: its emulator, its process, and the task that
/// drives them. The first command is expected to be an invocation (a cold
/// start is always caused by one).
pub(crate) async fn start(
    env: usize,
    program: PathBuf,
    vars: Vec<(String, String)>,
    log: PathBuf,
    function_timeout: Duration,
    events: mpsc::UnboundedSender<Event>,
) -> (mpsc::UnboundedSender<Command>, u32) {
    let api = RuntimeApi::start_for("orders").await;
    let mut builder = Function::builder(program).name("orders").log_file(log);
    for (key, value) in vars {
        builder = builder.env(key, value);
    }
    let function = builder.spawn(&api);
    let pid = function.pid();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(Driven { env, api, function, function_timeout, events }, rx));
    (tx, pid)
}

struct Driven {
    env: usize,
    api: RuntimeApi,
    function: Function,
    function_timeout: Duration,
    events: mpsc::UnboundedSender<Event>,
}

/// Sends `signal` to `pid`; the process may be gone already.
pub(crate) fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

async fn drive(mut d: Driven, mut commands: mpsc::UnboundedReceiver<Command>) {
    let pid = d.function.pid();
    let mut cold = true;
    while let Some(command) = commands.recv().await {
        match command {
            Command::Invoke { payload, arrived, index } => {
                if !cold {
                    signal(pid, Signal::CONT);
                }
                let limit = d.function_timeout + GRACE + if cold { INIT_LIMIT } else { Duration::ZERO };
                let pending = d.api.enqueue(payload, InvokeOptions::default().function_timeout(d.function_timeout));
                let answer = tokio::select! {
                    waited = pending.try_wait(limit) => match waited {
                        Ok(invocation) => Some(answer_of(invocation.outcome)),
                        Err(_) => None,
                    },
                    // Outlives the invocation's wait, so a hang is reported as one.
                    _ = d.function.wait_exit(limit + GRACE) => Some(init_failure(&d.api)),
                };
                let latency = arrived.elapsed();
                let (answer, usable) = match answer {
                    Some(answer @ Answer::InitFailed { .. }) => (answer, false),
                    Some(answer) => (answer, d.function.is_running()),
                    None => (Answer::TimedOut, false),
                };
                let timed_out = answer == Answer::TimedOut;
                if usable {
                    // Lambda freezes the environment when its runtime asks for the
                    // next event; if that poll never comes, freeze it anyway.
                    d.api.wait_waiting_polls(1, Duration::from_secs(1)).await;
                    signal(pid, Signal::STOP);
                }
                let _ = d.events.send(Event::Answered { env: d.env, index, answer, latency, cold, usable });
                cold = false;
                if !usable {
                    d.function.kill();
                    d.function.wait_exit(SHUTDOWN_LIMIT).await;
                    let ending = if timed_out { Ending::TimedOut } else { Ending::Failed };
                    let _ = d.events.send(Event::Ended { env: d.env, ending });
                    return;
                }
            }
            Command::Reap(Reap::Terminate) => {
                signal(pid, Signal::CONT);
                let signalled = Instant::now();
                signal(pid, Signal::TERM);
                let status = d.function.wait_exit(SHUTDOWN_LIMIT).await;
                let took = signalled.elapsed();
                if status.is_none() {
                    d.function.kill();
                    d.function.wait_exit(SHUTDOWN_LIMIT).await;
                }
                let clean = status.is_some_and(|s| s.success());
                let _ = d.events.send(Event::Ended { env: d.env, ending: Ending::Terminated { clean, took } });
                return;
            }
            Command::Reap(Reap::Kill) => {
                d.function.kill();
                d.function.wait_exit(SHUTDOWN_LIMIT).await;
                let _ = d.events.send(Event::Ended { env: d.env, ending: Ending::Killed });
                return;
            }
            Command::Reap(Reap::Lose) => {
                let _ = d.events.send(Event::Ended { env: d.env, ending: Ending::Lost });
                // Frozen until the router lets go at the end of the run.
                while commands.recv().await.is_some() {}
                d.function.kill();
                d.function.wait_exit(SHUTDOWN_LIMIT).await;
                return;
            }
        }
    }
    // The run is over and nobody reaped this one: do not leave it behind.
    d.function.kill();
    d.function.wait_exit(SHUTDOWN_LIMIT).await;
}

fn answer_of(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::Response(body) => {
            let status = body["statusCode"].as_i64().unwrap_or(200);
            Answer::Response { status, body }
        }
        Outcome::Error { error_type, body } => {
            let message = body.get("errorMessage").and_then(Value::as_str).unwrap_or_default().to_owned();
            Answer::Error { error_type, message }
        }
    }
}

fn init_failure(api: &RuntimeApi) -> Answer {
    match api.init_errors().first() {
        Some(error) => Answer::InitFailed {
            error_type: error.error_type().unwrap_or("Runtime.InitError").to_owned(),
            message: error.error_message().unwrap_or_default().to_owned(),
        },
        // Lambda's name for a runtime that exits without reporting.
        None => Answer::InitFailed { error_type: "Runtime.ExitError".to_owned(), message: String::new() },
    }
}
