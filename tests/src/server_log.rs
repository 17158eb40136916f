//! Reading what the server saw: counts of connections and protocol steps in
//! a PostgreSQL log written with the harness's `log_line_prefix`
//! (`%m [%p] %a `), `log_statement=all`, `log_connections`,
//! `log_disconnections` and `log_min_duration_statement=0` (which is what
//! makes Parse steps visible); unclean closes show at `log_min_messages=debug1`.

use crate::orders::FUNCTION_NAME;

/// Counts of what one application did, as the server logged it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sessions authorized.
    pub connections: usize,
    /// Sessions ended.
    pub disconnections: usize,
    /// Sessions that ended without the client's Terminate message.
    pub unclean_closes: usize,
    /// Extended-protocol Parse steps (statements prepared).
    pub parses: usize,
    /// Extended-protocol Execute steps (prepared statements run).
    pub executes: usize,
    /// Every statement the server ran, either protocol: Execute steps and
    /// simple-protocol queries (`BEGIN`, `SET`, `ROLLBACK`, a health check…).
    pub statements: usize,
    /// The adapter's health checks.
    pub health_checks: usize,
    /// The adapter's warmup phase 1 round trips.
    pub warmup_round_trips: usize,
}

/// A slice of the server log.
#[derive(Debug, Clone)]
pub struct Log {
    text: String,
}

impl Log {
    /// Wraps log text (from `Postgres::read_log` or `log_since`).
    #[must_use]
    pub fn new(text: String) -> Self {
        Self { text }
    }

    /// The raw text.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The lines written by backend `pid`.
    #[must_use]
    pub fn for_pid(&self, pid: i32) -> Self {
        let tag = format!("[{pid}] ");
        Self { text: self.text.lines().filter(|l| l.contains(&tag)).map(|l| format!("{l}\n")).collect() }
    }

    /// Backend pids that logged a line for the function's `application_name`,
    /// in order of first appearance.
    #[must_use]
    pub fn function_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for line in self.function_lines() {
            if let Some(pid) = pid_of(line) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// What the `orders` function's sessions did.
    #[must_use]
    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        // `%a` is not known yet when the server logs the authorization, but
        // the message itself names the application.
        let authorized = format!("application_name={FUNCTION_NAME}");
        counts.connections =
            self.text.lines().filter(|l| l.contains("LOG:  connection authorized:") && l.contains(&authorized)).count();
        for line in self.function_lines() {
            let message = line.split_once("LOG:  ").or_else(|| line.split_once("DEBUG:  ")).map_or("", |(_, m)| m);
            if message.starts_with("execute ") || message.starts_with("statement: ") {
                counts.statements += 1;
            }
            if message.starts_with("disconnection:") {
                counts.disconnections += 1;
            } else if message.starts_with("execute ") {
                counts.executes += 1;
            } else if message.starts_with("statement: /* runtime-adapter health check */") {
                counts.health_checks += 1;
            } else if message.starts_with("statement: /* runtime-adapter warmup */") {
                counts.warmup_round_trips += 1;
            } else if message.starts_with("duration: ") && message.contains(" ms  parse ") {
                counts.parses += 1;
            } else if message.contains("unexpected EOF on client connection")
                || message.contains("could not receive data from client")
            {
                counts.unclean_closes += 1;
            }
        }
        counts
    }

    fn function_lines(&self) -> impl Iterator<Item = &str> {
        let tag = format!("] {FUNCTION_NAME} ");
        self.text.lines().filter(move |l| l.contains(&tag))
    }
}

fn pid_of(line: &str) -> Option<i32> {
    let start = line.find('[')? + 1;
    let end = start + line[start..].find(']')?;
    line[start..end].parse().ok()
}
