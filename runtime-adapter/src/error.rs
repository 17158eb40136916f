//! The library's one error type and its classification.
//!
//! Classification is keyed on SQLSTATE codes and I/O error kinds, never on
//! message text. A server error's `Display` in tokio-postgres is only
//! `db error`, so [`Error`] renders the server's own message and SQLSTATE
//! instead: that is what a user needs to act. The server's DETAIL (which
//! holds row values, such as a 23505's key) stays out of the text, in logs
//! and in Lambda's error responses alike; code that wants it reads it
//! through the error's source.

use std::fmt;
use std::time::Duration;

use tokio_postgres::error::{Severity, SqlState};

use crate::tls::TlsError;

/// A setting that could not be used. The message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{var} is not set; expected {expected}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// The expected form.
        expected: &'static str,
    },
    /// A variable's value cannot be used.
    #[error("{var} {problem}; expected {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// What is wrong with the value (never the value itself for secrets).
        problem: String,
        /// The expected form.
        expected: &'static str,
    },
    /// Two settings contradict each other, and running with them would be
    /// unsafe or certainly broken.
    #[error("{vars} contradict each other: {problem}")]
    Conflict {
        /// The variables involved.
        vars: &'static str,
        /// Why they cannot hold together, and what to change.
        problem: String,
    },
    /// A variable asks for something this build of runtime-adapter was
    /// compiled without: a cargo feature that is off by default because it
    /// brings in the AWS SDK (`secrets-manager` for `DB_SECRET_ARN`,
    /// `iam-auth` for `DB_IAM_AUTH=true`).
    #[error(
        "{var} is set, but this build of runtime-adapter has no {what}: it was compiled without the cargo feature \"{feature}\"; enable it in the function's Cargo.toml, e.g. runtime-adapter = {{ version = \"{version}\", features = [\"{feature}\"] }} (keep the dependency's path or git source), and rebuild; or unset {var}",
        version = env!("CARGO_PKG_VERSION")
    )]
    FeatureDisabled {
        /// The variable.
        var: &'static str,
        /// What the feature gives, e.g. "Secrets Manager support".
        what: &'static str,
        /// The cargo feature to enable.
        feature: &'static str,
    },
}

impl From<TlsError> for ConfigError {
    fn from(error: TlsError) -> Self {
        const ROOT_CERT_FORM: &str =
            "the path of a PEM file of CA certificates, e.g. /opt/rds/global-bundle.pem, or system";
        match error {
            TlsError::SystemRootsNeedVerifyFull { mode } => ConfigError::Conflict {
                vars: "DB_SSL_ROOT_CERT and sslmode",
                problem: format!(
                    "DB_SSL_ROOT_CERT=system trusts every public CA, which is safe only with the host name checked, and sslmode={mode} does not check it; use sslmode=verify-full (or leave sslmode unset), or name a CA file"
                ),
            },
            TlsError::RootCertMissing => ConfigError::Missing {
                var: "DB_SSL_ROOT_CERT",
                expected: "with sslmode=verify-ca the path of a PEM file of the CAs to trust, e.g. /opt/rds/global-bundle.pem (verify-ca checks no host name, so it never trusts public CAs; for those use sslmode=verify-full)",
            },
            TlsError::RootCert { problem } => {
                ConfigError::Invalid { var: "DB_SSL_ROOT_CERT", problem, expected: ROOT_CERT_FORM }
            }
        }
    }
}

/// Which warmup phase failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Opening the connection.
    Connect,
    /// Phase 1: a raw round trip proving the connection layer.
    RoundTrip,
    /// Phase 2: preparing the application's declared statements.
    Prepare,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::RoundTrip => "phase 1 (round trip)",
            Phase::Prepare => "phase 2 (prepare)",
        })
    }
}

/// A step of the adapter's work, as a timeout or a deadline names it (as
/// deadpool's `TimeoutType` names its own). The `Display` says what bounds
/// the step where a setting does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Opening a connection: TCP, TLS, startup and authentication, bounded
    /// by `DB_CONNECT_TIMEOUT_MS`.
    Connect,
    /// Waiting for a pooled connection, bounded by `DB_POOL_TIMEOUT_MS`.
    PoolWait,
    /// A health check's round trip, bounded by `DB_HEALTH_CHECK_TIMEOUT_MS`.
    HealthCheck,
    /// A health check that had to open a connection, bounded by
    /// `DB_HEALTH_CHECK_TIMEOUT_MS`.
    HealthCheckConnect,
    /// Warmup phase 1 on a new connection.
    RoundTrip,
    /// Warmup phase 2 on a new connection.
    Prepare,
    /// Warming a whole pool, within INIT's or the invocation's time budget.
    Warmup,
    /// Replacing a pool past its maximum age, within the invocation's deadline.
    Refresh,
    /// Getting a ready connection for an invocation, within its deadline.
    Checkout,
    /// A statement.
    Statement,
    /// A statement marked idempotent, retried as such.
    IdempotentStatement,
    /// `BEGIN`.
    Begin,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
    /// A whole transaction, retried as such.
    Transaction,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "opening a connection: TCP, TLS, startup and authentication (DB_CONNECT_TIMEOUT_MS)",
            Step::PoolWait => "waiting for a pooled connection (DB_POOL_TIMEOUT_MS)",
            Step::HealthCheck => "health check (DB_HEALTH_CHECK_TIMEOUT_MS)",
            Step::HealthCheckConnect => "health check: opening a connection (DB_HEALTH_CHECK_TIMEOUT_MS)",
            Step::RoundTrip => "warmup phase 1 (round trip)",
            Step::Prepare => "warmup phase 2 (prepare)",
            Step::Warmup => "warmup within its time budget",
            Step::Refresh => "pool refresh within the invocation's deadline",
            Step::Checkout => "checkout within the invocation's deadline",
            Step::Statement => "statement",
            Step::IdempotentStatement => "idempotent statement",
            Step::Begin => "BEGIN",
            Step::Commit => "COMMIT",
            Step::Rollback => "ROLLBACK",
            Step::Transaction => "transaction",
        })
    }
}

/// Which step of obtaining the database credentials failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialsStep {
    /// Reading the Secrets Manager secret `DB_SECRET_ARN` names, or its shape.
    ReadSecret,
    /// Getting the AWS credentials that sign RDS IAM tokens.
    GetAwsCredentials,
    /// Signing an RDS IAM token (the region and the host it needs).
    SignToken,
}

impl fmt::Display for CredentialsStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialsStep::ReadSecret => "reading the Secrets Manager secret named by DB_SECRET_ARN",
            CredentialsStep::GetAwsCredentials => "getting AWS credentials to sign the RDS IAM authentication token",
            CredentialsStep::SignToken => "signing the RDS IAM authentication token",
        })
    }
}

/// How an error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection or server is briefly unavailable: refused, reset or
    /// closed connections, 57P01/57P02/57P03, class 08, timeouts. Worth
    /// another attempt.
    Transient,
    /// The server has no connection slot left (53300).
    TooManyConnections,
    /// 40001 serialization_failure or 40P01 deadlock_detected: retryable,
    /// but only as a whole transaction.
    Serialization,
    /// Retrying cannot help: bad credentials, unknown database or relation,
    /// bad configuration, constraint violations and the like.
    Permanent,
}

/// An error from the adapter or from the database behind it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A statement or connection failed.
    #[error("{}", describe(.0))]
    Db(#[source] tokio_postgres::Error),
    /// Warming a new connection failed.
    #[error("warmup {phase} failed{}: {}", statement.as_deref().map(|s| format!(" preparing `{s}`")).unwrap_or_default(), describe(.source))]
    Warmup {
        /// The phase that failed.
        phase: Phase,
        /// The statement being prepared, in phase 2.
        statement: Option<String>,
        /// The database's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A step did not finish in time.
    #[error("{step} timed out after {} ms", .after.as_millis())]
    Timeout {
        /// The step, and what bounds it.
        step: Step,
        /// The bound that ran out.
        after: Duration,
    },
    /// The connection closed before the request was sent.
    #[error("the connection closed")]
    ConnectionClosed,
    /// The pool was closed (replaced) while a checkout waited on it.
    #[error("the pool was closed while waiting for a connection")]
    PoolClosed,
    /// A failure inside the adapter that no setting explains.
    #[error("internal error: {0}")]
    Internal(String),
    /// The database could not be reached within the attempts or the time the
    /// invocation had.
    #[error("database unavailable after {attempts} attempt(s){}: {source}", if *.out_of_time { ", stopped to answer before the invocation's deadline" } else { "" })]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// Whether the invocation's deadline, not the attempt count, ended them.
        out_of_time: bool,
        /// The last failure.
        #[source]
        source: Box<Error>,
    },
    /// The server's connection limit was reached (53300), or the pooler's
    /// client limit (PgBouncer's 08P01 "no more connections allowed"), even
    /// after the adapter released its own connections and waited.
    #[error("{}", connection_limit(.source))]
    ConnectionLimit {
        /// The server's 53300 error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection was lost while COMMIT was in flight: the transaction
    /// may or may not have been committed. Never retried.
    #[error("commit outcome unknown: the connection was lost while COMMIT was in flight ({source}); check whether the transaction's effects exist before repeating it")]
    CommitOutcomeUnknown {
        /// The connection failure.
        #[source]
        source: Box<Error>,
    },
    /// A statement was still running when the invocation's deadline (less
    /// the margin) arrived; it was cancelled on the server.
    #[error("statement cancelled at the invocation's deadline after {} ms", .after.as_millis())]
    DeadlineExceeded {
        /// How long it had run.
        after: Duration,
    },
    /// The invocation's deadline less `DB_DEADLINE_MARGIN_MS` had passed
    /// before the step began: nothing was sent to the server.
    #[error("{step} not sent: the invocation's deadline less DB_DEADLINE_MARGIN_MS had passed")]
    DeadlineReached {
        /// What was not sent.
        step: Step,
    },
    /// `COMMIT` rolled the transaction back: a statement in it had failed
    /// (its error was handled inside the closure, which then returned `Ok`),
    /// and PostgreSQL answers `COMMIT` of a failed transaction with
    /// `ROLLBACK`. Nothing was committed.
    #[error("the transaction was rolled back, not committed: a statement in it failed earlier and the closure returned Ok; nothing was committed")]
    CommitRolledBack,
    /// The [`Db`](crate::Db) handle was used while its own transaction was
    /// open (inside the [`Db::transaction`](crate::Db::transaction) closure):
    /// the statement would have joined the transaction. Nothing was sent.
    #[error("the Db handle was used inside its own transaction; run statements through the Tx the closure received")]
    InTransaction,
    /// A [`Tx`](crate::Tx) was used after its transaction ended (it was kept
    /// past the closure, in a spawned task for example). Nothing was sent.
    #[error("the Tx was used after its transaction ended")]
    TransactionEnded,
    /// An autocommit statement was sent, then its connection failed (lost,
    /// reset, the server shutting down, a pooler losing its server): it may
    /// or may not have run. Never retried; check whether its effects exist
    /// before repeating it, or mark it [`Db::idempotent`](crate::Db::idempotent).
    #[error(
        "outcome unknown: the statement was sent and the connection then failed ({source}); it may or may not have run"
    )]
    OutcomeUnknown {
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// A statement was given the wrong number of parameters.
    #[error("the statement takes {expected} parameter(s), {got} given")]
    Parameters {
        /// Placeholders in the statement.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// In `DB_POOLER_MODE=transaction`, a statement ran past
    /// `DB_STATEMENT_TIMEOUT_MS`; it was cancelled on the server.
    #[error("statement cancelled after DB_STATEMENT_TIMEOUT_MS ({} ms)", .after.as_millis())]
    StatementTimeout {
        /// The timeout.
        after: Duration,
    },
    /// The database credentials could not be obtained: the Secrets Manager
    /// secret could not be read or has the wrong shape, or no AWS
    /// credentials or region were at hand to sign an RDS IAM token.
    #[error("{what} failed: {problem}")]
    Credentials {
        /// The step that failed.
        what: CredentialsStep,
        /// What went wrong, from AWS's error code and message; never a secret.
        problem: String,
        /// Whether another attempt may succeed (network, throttling, AWS's
        /// own failures), as opposed to a missing secret or denied access.
        transient: bool,
    },
    /// The server's TLS certificate failed a check that `sslmode` asked for.
    #[error("TLS verification of the database server failed (sslmode={mode}): {check}")]
    Tls {
        /// Which check failed.
        check: crate::tls::TlsCheck,
        /// The `sslmode` in force (after libpq's rule for `require` with
        /// `DB_SSL_ROOT_CERT`).
        mode: crate::tls::SslMode,
        /// The handshake's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// `query_one` or `query_opt` got a number of rows it cannot return.
    #[error("expected {expected} row(s), got {got}")]
    RowCount {
        /// "exactly one" or "at most one".
        expected: &'static str,
        /// Rows returned.
        got: usize,
    },
}

impl Error {
    /// How this error should be treated: retried, or handed on.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config(_) => ErrorKind::Permanent,
            // A startup refusal (08P01 from a pooler that does not support a
            // startup parameter) is permanent; at any later step 08P01 is a
            // pooler that lost or could not reach its server.
            Error::Warmup { phase: Phase::Connect, source, .. } => classify(source, Stage::Startup),
            Error::Db(e) | Error::Warmup { source: e, .. } => classify(e, Stage::Query),
            Error::OutcomeUnknown { source } => source.kind(),
            Error::Timeout { .. } | Error::PoolClosed | Error::ConnectionClosed => ErrorKind::Transient,
            Error::Internal(_)
            | Error::RowCount { .. }
            | Error::Parameters { .. }
            | Error::StatementTimeout { .. }
            | Error::CommitOutcomeUnknown { .. }
            | Error::CommitRolledBack
            | Error::InTransaction
            | Error::TransactionEnded
            | Error::DeadlineReached { .. } => ErrorKind::Permanent,
            Error::Unavailable { source, .. } => source.kind(),
            Error::ConnectionLimit { .. } => ErrorKind::TooManyConnections,
            Error::DeadlineExceeded { .. } => ErrorKind::Permanent,
            Error::Credentials { transient: true, .. } => ErrorKind::Transient,
            Error::Credentials { .. } | Error::Tls { .. } => ErrorKind::Permanent,
        }
    }

    /// Whether another attempt on another connection may succeed: the
    /// connection or server was briefly unavailable.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// The SQLSTATE the server reported, if any.
    #[must_use]
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Error::Db(e) | Error::Warmup { source: e, .. } => e.code(),
            Error::Unavailable { source, .. }
            | Error::CommitOutcomeUnknown { source }
            | Error::OutcomeUnknown { source } => source.code(),
            Error::ConnectionLimit { source } => source.code(),
            _ => None,
        }
    }

    /// A short, stable name for the error, used as Lambda's `errorType`.
    #[must_use]
    pub fn error_type(&self) -> &'static str {
        match self {
            Error::Config(_) => "RuntimeAdapter.InvalidConfiguration",
            Error::Warmup { .. } => "RuntimeAdapter.WarmupFailed",
            Error::Unavailable { .. } => "RuntimeAdapter.DatabaseUnavailable",
            Error::Timeout { .. } | Error::PoolClosed => "RuntimeAdapter.Timeout",
            Error::ConnectionClosed => "RuntimeAdapter.ConnectionClosed",
            Error::Internal(_) => "RuntimeAdapter.Internal",
            Error::ConnectionLimit { .. } => "RuntimeAdapter.ConnectionLimit",
            Error::CommitOutcomeUnknown { .. } => "RuntimeAdapter.CommitOutcomeUnknown",
            Error::DeadlineExceeded { .. } | Error::DeadlineReached { .. } => "RuntimeAdapter.DeadlineExceeded",
            Error::CommitRolledBack => "RuntimeAdapter.CommitRolledBack",
            Error::OutcomeUnknown { .. } => "RuntimeAdapter.OutcomeUnknown",
            Error::InTransaction | Error::TransactionEnded => "RuntimeAdapter.TransactionMisuse",
            Error::RowCount { .. } => "RuntimeAdapter.RowCount",
            Error::Credentials { .. } => "RuntimeAdapter.CredentialsUnavailable",
            Error::Tls { .. } => "RuntimeAdapter.TlsVerificationFailed",
            Error::Parameters { .. } => "RuntimeAdapter.Parameters",
            Error::StatementTimeout { .. } => "RuntimeAdapter.StatementTimeout",
            Error::Db(_) => "RuntimeAdapter.DatabaseError",
        }
    }
}

impl Error {
    /// Whether the statement failed at Bind because the connection's prepared
    /// statement went stale: a migration changed its result type (0A000,
    /// "cached plan must not change result type"), or `DISCARD`/`DEALLOCATE`
    /// removed it (26000). Nothing ran: it may be prepared again and rerun.
    pub(crate) fn is_stale_statement(&self) -> bool {
        matches!(self, Error::Db(_)) && self.code().is_some_and(is_stale_code)
    }

    /// Whether a write reached a read-only server (25006): after a failover
    /// the old writer comes back as a reader. Nothing ran.
    pub(crate) fn is_read_only(&self) -> bool {
        matches!(self, Error::Db(_)) && self.code().is_some_and(|c| *c == SqlState::READ_ONLY_SQL_TRANSACTION)
    }

    /// Whether this error, met by `COMMIT`, leaves its outcome unknown: no
    /// answer came (the connection was lost or the wait ran out), or the
    /// server ended the session (FATAL), was shutting down (class 57) or the
    /// link to it failed (class 08) while the COMMIT may have run.
    pub(crate) fn leaves_commit_unknown(&self) -> bool {
        match self {
            Error::Db(e) => match e.as_db_error() {
                None => true,
                Some(db) => commit_unknown(db.code(), db.parsed_severity()),
            },
            Error::Timeout { .. } | Error::ConnectionClosed => true,
            _ => false,
        }
    }
}

/// 0A000 ("cached plan must not change result type") or 26000 (the
/// statement is gone): a stale prepared statement, refused at Bind.
fn is_stale_code(code: &SqlState) -> bool {
    *code == SqlState::FEATURE_NOT_SUPPORTED || *code == SqlState::INVALID_SQL_STATEMENT_NAME
}

/// Whether a server error answering `COMMIT` leaves the commit's outcome
/// unknown: the session ended (FATAL, PANIC), the server was shutting down
/// (class 57), or the link to it failed (class 08, a pooler's 08P01).
fn commit_unknown(code: &SqlState, severity: Option<Severity>) -> bool {
    let class = &code.code()[..2];
    matches!(severity, Some(Severity::Fatal | Severity::Panic)) || class == "08" || class == "57"
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<Error> for lambda_runtime::Diagnostic {
    fn from(e: Error) -> Self {
        lambda_runtime::Diagnostic { error_type: e.error_type().to_owned(), error_message: e.to_string() }
    }
}

/// Where a server error was met: 08P01 means different things there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The startup handshake.
    Startup,
    /// Anything after it.
    Query,
}

fn classify(e: &tokio_postgres::Error, step: Stage) -> ErrorKind {
    let refusal = e.as_db_error().filter(|_| step == Stage::Startup).and_then(|db| pooler_refusal(db.message()));
    if let Some(kind) = refusal {
        return kind;
    }
    match e.code() {
        Some(code) => classify_at(code, step),
        // No SQLSTATE: the failure is in the connection itself (I/O, closed
        // connection, TLS, timeout). Those are transient; so is anything
        // whose source is an I/O error.
        None if e.is_closed() || io_kind(e).is_some() => ErrorKind::Transient,
        None => ErrorKind::Permanent,
    }
}

/// PgBouncer refuses a client at startup with 08P01 for reasons that pass as
/// well as for ones that do not (an unsupported startup parameter), and the
/// code alone cannot tell them apart; its messages can, and they are stable
/// across its releases. Out of client slots is the pooler's 53300: a burst
/// of environments larger than `max_client_conn`, or abandoned clients not
/// yet reaped. The others are the pooler's server being unreachable or slow.
fn pooler_refusal(message: &str) -> Option<ErrorKind> {
    const TRANSIENT: [&str; 4] = [
        "server login has been failing",
        "pgbouncer cannot connect to server",
        "query_wait_timeout",
        "client_login_timeout",
    ];
    if message.starts_with("no more connections allowed") {
        Some(ErrorKind::TooManyConnections)
    } else if TRANSIENT.iter().any(|transient| message.starts_with(transient)) {
        Some(ErrorKind::Transient)
    } else {
        None
    }
}

/// A server error's kind, by its SQLSTATE and where it was met.
fn classify_at(code: &SqlState, step: Stage) -> ErrorKind {
    if *code == SqlState::PROTOCOL_VIOLATION && step == Stage::Query {
        return ErrorKind::Transient;
    }
    classify_code(code)
}

fn classify_code(code: &SqlState) -> ErrorKind {
    if *code == SqlState::TOO_MANY_CONNECTIONS {
        return ErrorKind::TooManyConnections;
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return ErrorKind::Serialization;
    }
    // 08P01 (protocol violation) is what a pooler answers to a startup
    // parameter it does not support: retrying cannot fix it. After startup
    // (see `classify`) it is the pooler's "server login has been failing"
    // or "server conn crashed?", which pass.
    let transient = [
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        // idle_session_timeout ended the session; a new one works.
        SqlState::IDLE_SESSION_TIMEOUT,
    ];
    if transient.contains(code) || (code.code().starts_with("08") && *code != SqlState::PROTOCOL_VIOLATION) {
        return ErrorKind::Transient;
    }
    ErrorKind::Permanent
}

fn io_kind(e: &tokio_postgres::Error) -> Option<std::io::ErrorKind> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

/// The server's message and SQLSTATE, or the client error's own text.
/// Parameters and connection strings never appear in either, nor the
/// server's DETAIL, which may hold row values (a 23505's key, for one): it
/// stays reachable through the error's source, for code that wants it.
/// [`Error::ConnectionLimit`]'s message: which limit, and the knobs for it.
fn connection_limit(source: &tokio_postgres::Error) -> String {
    let pooler = source.as_db_error().is_some_and(|db| pooler_refusal(db.message()).is_some());
    if pooler {
        format!(
            "the connection pooler's client limit was reached ({}); raise its max_client_conn above the function's reserved concurrency × DB_POOL_SIZE, or cap the function's reserved concurrency",
            describe(source)
        )
    } else {
        format!(
            "the database server's connection limit was reached ({}); lower DB_POOL_SIZE, cap the function's reserved concurrency, or put a pooler (RDS Proxy, PgBouncer) in front",
            describe(source)
        )
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_violation_is_permanent_only_at_startup() {
        assert_eq!(classify_at(&SqlState::PROTOCOL_VIOLATION, Stage::Startup), ErrorKind::Permanent);
        // PgBouncer's refusals at startup, all 08P01, by their messages.
        let refusals = [
            ("no more connections allowed (max_client_conn)", Some(ErrorKind::TooManyConnections)),
            ("server login has been failing, try again later (server_login_retry)", Some(ErrorKind::Transient)),
            ("pgbouncer cannot connect to server", Some(ErrorKind::Transient)),
            ("query_wait_timeout", Some(ErrorKind::Transient)),
            ("unsupported startup parameter: extra_float_digits", None),
            ("no such database: app", None),
        ];
        for (message, kind) in refusals {
            assert_eq!(pooler_refusal(message), kind, "{message}");
        }
        assert_eq!(classify_at(&SqlState::PROTOCOL_VIOLATION, Stage::Query), ErrorKind::Transient);
        assert_eq!(classify_at(&SqlState::UNIQUE_VIOLATION, Stage::Query), ErrorKind::Permanent);
        assert_eq!(classify_at(&SqlState::ADMIN_SHUTDOWN, Stage::Startup), ErrorKind::Transient);
    }

    #[test]
    fn stale_statements_and_unknown_commits_are_recognised() {
        assert!(is_stale_code(&SqlState::FEATURE_NOT_SUPPORTED));
        assert!(is_stale_code(&SqlState::INVALID_SQL_STATEMENT_NAME));
        assert!(!is_stale_code(&SqlState::UNDEFINED_TABLE));
        assert!(commit_unknown(&SqlState::ADMIN_SHUTDOWN, Some(Severity::Fatal)));
        assert!(commit_unknown(&SqlState::PROTOCOL_VIOLATION, Some(Severity::Error)), "class 08");
        assert!(commit_unknown(&SqlState::IDLE_SESSION_TIMEOUT, Some(Severity::Error)), "class 57");
        assert!(commit_unknown(&SqlState::INTERNAL_ERROR, Some(Severity::Panic)));
        assert!(commit_unknown(&SqlState::INTERNAL_ERROR, Some(Severity::Fatal)));
        assert!(
            !commit_unknown(&SqlState::UNIQUE_VIOLATION, Some(Severity::Error)),
            "a deferred constraint: rolled back"
        );
        assert!(!commit_unknown(&SqlState::T_R_SERIALIZATION_FAILURE, None));
        assert!(Error::Timeout { step: Step::Commit, after: Duration::ZERO }.leaves_commit_unknown());
        assert!(Error::ConnectionClosed.leaves_commit_unknown());
        assert!(!Error::DeadlineReached { step: Step::Commit }.leaves_commit_unknown(), "not sent: known");
        assert!(!Error::PoolClosed.is_stale_statement() && !Error::PoolClosed.is_read_only());
    }

    #[test]
    fn kinds_and_error_types_of_the_adapters_own_errors() {
        assert!(Error::PoolClosed.is_transient());
        assert!(!Error::Internal("x".into()).is_transient());
        assert_eq!(Error::PoolClosed.code(), None);
        assert_eq!(Error::CommitRolledBack.error_type(), "RuntimeAdapter.CommitRolledBack");
        assert_eq!(Error::InTransaction.error_type(), "RuntimeAdapter.TransactionMisuse");
        assert_eq!(Error::DeadlineReached { step: Step::Statement }.error_type(), "RuntimeAdapter.DeadlineExceeded");
        let unknown = Error::OutcomeUnknown { source: Box::new(Error::ConnectionClosed) };
        assert_eq!(unknown.error_type(), "RuntimeAdapter.OutcomeUnknown");
        assert_eq!(unknown.kind(), ErrorKind::Transient, "the kind of what failed");
        assert_eq!(Phase::RoundTrip.to_string(), "phase 1 (round trip)");
    }

    #[test]
    fn sqlstates_are_classified() {
        assert_eq!(classify_code(&SqlState::TOO_MANY_CONNECTIONS), ErrorKind::TooManyConnections);
        assert_eq!(classify_code(&SqlState::CANNOT_CONNECT_NOW), ErrorKind::Transient);
        assert_eq!(classify_code(&SqlState::ADMIN_SHUTDOWN), ErrorKind::Transient);
        assert_eq!(classify_code(&SqlState::CONNECTION_FAILURE), ErrorKind::Transient);
        assert_eq!(classify_code(&SqlState::CRASH_SHUTDOWN), ErrorKind::Transient);
        assert_eq!(classify_code(&SqlState::IDLE_SESSION_TIMEOUT), ErrorKind::Transient);
        assert_eq!(classify_code(&SqlState::T_R_SERIALIZATION_FAILURE), ErrorKind::Serialization);
        assert_eq!(classify_code(&SqlState::T_R_DEADLOCK_DETECTED), ErrorKind::Serialization);
        for permanent in [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::UNDEFINED_TABLE,
            SqlState::UNDEFINED_COLUMN,
            SqlState::UNIQUE_VIOLATION,
            SqlState::SYNTAX_ERROR,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::QUERY_CANCELED,
            SqlState::PROTOCOL_VIOLATION,
        ] {
            assert_eq!(classify_code(&permanent), ErrorKind::Permanent, "{permanent:?}");
        }
    }
}
