//! Configuration: one struct, read once from the environment at INIT.
//!
//! Every setting has its default in [`Config::default`] with the reason beside
//! it. Parsing never panics: a bad value becomes a [`ConfigError`] that names
//! the variable, says what is wrong and shows the expected form. The database
//! password is kept in a [`tokio_postgres::Config`], whose `Debug` redacts it,
//! and no message here ever quotes the URL.
//!
//! Values wrong on their own (unparsable, negative, out of range) and
//! combinations that would be unsafe or certainly broken (IAM tokens over a
//! connection that may be plaintext, two sources for one setting) are errors.
//! Combinations that are merely redundant are not: the adapter does the
//! sensible thing, as HikariCP does with a `keepaliveTime` not shorter than
//! `maxLifetime`, and records a [`ConfigWarning`] that
//! [`Builder::init`](crate::Builder::init) logs at WARN. Parsing itself logs
//! nothing, so the warnings are plain values a test can read.

mod address;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;

/// What the client enforces in transaction mode when
/// `DB_STATEMENT_TIMEOUT_MS` is unset: ends runaway statements before a
/// 15-minute Lambda timeout would.
const CLIENT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(180);

/// The adapter's settings.
///
/// Build it with [`Config::from_env`] in a Lambda function, or with
/// [`Config::from_lookup`] to read from anything else (tests, a map).
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where to connect, and as whom: the address, user, password and
    /// options `DATABASE_URL` (or `DB_HOST`, …) gives, nothing derived.
    /// Each pool build derives the connection settings from it and the
    /// fields below as they stand then ([`Config::pg_config`]). Its `Debug`
    /// redacts the password.
    pub pg: tokio_postgres::Config,
    /// Where the password comes from: `DATABASE_URL`, a Secrets Manager
    /// secret (`DB_SECRET_ARN`) or RDS IAM tokens (`DB_IAM_AUTH`); resolved
    /// at every pool build. Its `Debug` shows no secret.
    pub credentials: crate::credentials::Credentials,
    /// `sslmode` (in `DATABASE_URL`, or `DB_SSLMODE`) and `DB_SSL_ROOT_CERT`,
    /// with the rustls connector built from them; default `prefer`, as libpq.
    pub tls: crate::tls::Tls,
    /// Connections in the pool. `DB_POOL_SIZE`; default:
    /// `AWS_LAMBDA_MAX_CONCURRENCY` when set, else 1.
    pub pool_size: usize,
    /// Wait for a pooled connection. `DB_POOL_TIMEOUT_MS`; default 10 s.
    pub pool_timeout: Duration,
    /// Bound on opening one connection, the whole of it (TCP, TLS, startup,
    /// authentication), and on each warmup phase run on it.
    /// `DB_CONNECT_TIMEOUT_MS`; default 5 s.
    pub connect_timeout: Duration,
    /// Bound on one statement; zero disables it, as in PostgreSQL.
    /// `DB_STATEMENT_TIMEOUT_MS`. Sent as each session's `statement_timeout`
    /// only when set, because a startup setting overrides one made on the
    /// role or database (`ALTER ROLE … SET statement_timeout`); `None`, the
    /// default, leaves the server's own setting. In transaction mode the
    /// client enforces it instead, 180 s when `None`.
    pub statement_timeout: Option<Duration>,
    /// No health check while a round trip succeeded more recently than this.
    /// Zero checks before every invocation. `DB_HEALTH_CHECK_INTERVAL_MS`;
    /// default 30 s.
    pub health_check_interval: Duration,
    /// Bound on one health check, its checkout included.
    /// `DB_HEALTH_CHECK_TIMEOUT_MS`; default 2 s.
    pub health_check_timeout: Duration,
    /// The pool is replaced once it is older than this, less up to 10 %
    /// jitter. `DB_MAX_AGE_MS`; default 300 s.
    pub max_age: Duration,
    /// Attempts at warming the pool before giving up on a transient failure.
    /// `DB_WARMUP_ATTEMPTS`; default 3.
    pub warmup_attempts: u32,
    /// Pause between warmup attempts. `DB_WARMUP_RETRY_DELAY_MS`; default 500 ms.
    pub warmup_retry_delay: Duration,
    /// Attempts at an operation that may be retried (checkout, connect,
    /// health check, statements not yet sent, idempotent statements, whole
    /// transactions). `DB_RETRY_ATTEMPTS`; default 5.
    pub retry_attempts: u32,
    /// Base of the exponential backoff between retries, with full jitter.
    /// `DB_RETRY_BASE_DELAY_MS`; default 200 ms.
    pub retry_base_delay: Duration,
    /// Time kept back before the invocation's deadline: retries stop and
    /// running statements are cancelled this long before it, so the handler
    /// can still answer. `DB_DEADLINE_MARGIN_MS`; default 500 ms.
    pub deadline_margin: Duration,
    /// Idle time before TCP keepalive probes start. `DB_TCP_KEEPALIVE_IDLE_MS`;
    /// default 60 s.
    pub tcp_keepalive_idle: Duration,
    /// How long sent data may stay unacknowledged before the kernel drops the
    /// connection (`TCP_USER_TIMEOUT`). `DB_TCP_USER_TIMEOUT_MS`; default 30 s.
    pub tcp_user_timeout: Duration,
    /// Whether CloudWatch EMF records are written. `DB_METRICS` (`on` or
    /// `off`); default on.
    pub metrics: bool,
    /// The window a metrics record aggregates: at most one record per
    /// window (aligned to the clock), written by the first invocation to
    /// start or end after it, at SIGTERM, or sooner when a duration metric
    /// nears EMF's 100 values. Zero writes a record after every invocation,
    /// with its request id. `DB_METRICS_INTERVAL_MS`; default 60 s.
    pub metrics_interval: Duration,
    /// The records' CloudWatch namespace. `DB_METRICS_NAMESPACE`; default
    /// `RuntimeAdapter`.
    pub metrics_namespace: String,
    /// Statements slower than this are logged at WARN with their SQL (never
    /// their parameters). `DB_SLOW_QUERY_MS`; default 1 s.
    pub slow_query: Duration,
    /// `AWS_LAMBDA_FUNCTION_NAME`: the metrics' `function_name` dimension and
    /// the connections' `application_name`.
    pub function_name: String,
    /// What sits between the adapter and PostgreSQL. `DB_POOLER_MODE`;
    /// default `none`.
    pub pooler_mode: PoolerMode,
    /// `AWS_LAMBDA_MAX_CONCURRENCY`, when Lambda runs several invocations at once.
    pub max_concurrency: Option<usize>,
    /// How many statements each connection keeps prepared (`none` mode), and
    /// how many SQL texts' parameter types the environment remembers
    /// (`transaction` mode), beyond the declared ones, which are never
    /// evicted. The least recently used goes first, and is closed on the
    /// server. `DB_STATEMENT_CACHE_SIZE`; default 100.
    pub statement_cache_size: usize,
    /// What parsing adjusted or found worth a warning; see [`Config::warnings`].
    pub(crate) warnings: Vec<ConfigWarning>,
}

/// A combination of settings that works, but not as written: what the
/// adapter did about it. [`Builder::init`](crate::Builder::init) logs each
/// at WARN; the `Display` names the variables and what happens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigWarning {
    /// `DB_HEALTH_CHECK_INTERVAL_MS` was longer than `DB_MAX_AGE_MS`, and was
    /// capped at it: a pool never outlives its maximum age, and the refresh
    /// warms (so proves) every new connection.
    HealthCheckIntervalCapped {
        /// The interval as configured (or the default).
        configured: Duration,
        /// The maximum age, which is now the interval.
        max_age: Duration,
    },
    /// With `DB_IAM_AUTH=true`, `DB_MAX_AGE_MS` was longer than the
    /// 15 minutes an IAM token is valid, and was capped at 15 minutes, so
    /// that no connection outlives the credentials it was opened with.
    MaxAgeCappedForIam {
        /// The maximum age as configured.
        configured: Duration,
    },
    /// `DB_IAM_AUTH=true` with `sslmode=require` and no `DB_SSL_ROOT_CERT`:
    /// the server's certificate is not checked, so anyone on the network
    /// path can pose as the database and receive the IAM token, a bearer
    /// credential valid 15 minutes.
    IamOverUnverifiedTls,
    /// `DB_POOL_SIZE` is below `AWS_LAMBDA_MAX_CONCURRENCY`: concurrent
    /// invocations will wait for connections.
    PoolSmallerThanConcurrency {
        /// `DB_POOL_SIZE`.
        pool_size: usize,
        /// `AWS_LAMBDA_MAX_CONCURRENCY`.
        max_concurrency: usize,
    },
}

impl ConfigWarning {
    /// The variables involved, e.g. `"DB_HEALTH_CHECK_INTERVAL_MS, DB_MAX_AGE_MS"`.
    #[must_use]
    pub fn variables(&self) -> &'static str {
        match self {
            ConfigWarning::HealthCheckIntervalCapped { .. } => "DB_HEALTH_CHECK_INTERVAL_MS, DB_MAX_AGE_MS",
            ConfigWarning::MaxAgeCappedForIam { .. } => "DB_IAM_AUTH, DB_MAX_AGE_MS",
            ConfigWarning::IamOverUnverifiedTls => "DB_IAM_AUTH, sslmode, DB_SSL_ROOT_CERT",
            ConfigWarning::PoolSmallerThanConcurrency { .. } => "DB_POOL_SIZE, AWS_LAMBDA_MAX_CONCURRENCY",
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::HealthCheckIntervalCapped { configured, max_age } => write!(
                f,
                "DB_HEALTH_CHECK_INTERVAL_MS ({} ms) is longer than DB_MAX_AGE_MS ({} ms); the health-check interval is capped at {} ms: the pool is replaced at its maximum age, and the replacement proves its connections",
                configured.as_millis(),
                max_age.as_millis(),
                max_age.as_millis()
            ),
            ConfigWarning::MaxAgeCappedForIam { configured } => write!(
                f,
                "DB_MAX_AGE_MS ({} ms) is longer than the 15 minutes an IAM authentication token is valid (DB_IAM_AUTH=true); the pool's maximum age is capped at {} ms, so that connections are reopened with fresh tokens",
                configured.as_millis(),
                crate::credentials::IAM_TOKEN_LIFETIME.as_millis()
            ),
            ConfigWarning::IamOverUnverifiedTls => f.write_str(
                "DB_IAM_AUTH=true with sslmode=require and no DB_SSL_ROOT_CERT: the server's certificate is not verified, so anyone on the network path can pose as the database and receive the IAM token, a bearer credential valid 15 minutes; set sslmode=verify-full with DB_SSL_ROOT_CERT naming the RDS global bundle (https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem)",
            ),
            ConfigWarning::PoolSmallerThanConcurrency { pool_size, max_concurrency } => write!(
                f,
                "DB_POOL_SIZE ({pool_size}) is below AWS_LAMBDA_MAX_CONCURRENCY ({max_concurrency}): concurrent invocations will wait for connections"
            ),
        }
    }
}

/// What sits between the adapter and PostgreSQL, which decides how
/// statements are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolerMode {
    /// PostgreSQL itself, or a pooler in session mode: statements are
    /// prepared once per connection (named) and cached; `statement_timeout`
    /// travels in the startup packet.
    #[default]
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode=transaction`,
    /// Supavisor on 6543, Neon's pooler), or RDS Proxy without pinning: only
    /// unnamed statements, no session state; `DB_STATEMENT_TIMEOUT_MS` is
    /// enforced by the client, which cancels the statement on the server.
    Transaction,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pg: tokio_postgres::Config::new(),
            // The URL's password, and libpq's default sslmode (prefer).
            credentials: crate::credentials::Credentials::default(),
            tls: crate::tls::Tls::default(),
            // One invocation at a time needs one connection; more would only
            // take slots other environments need.
            pool_size: 1,
            // Long enough to ride out a burst, short of Lambda's usual timeouts.
            pool_timeout: Duration::from_secs(10),
            // Half of Lambda's 10 s INIT limit, so a retry still fits.
            connect_timeout: Duration::from_secs(5),
            // The server's own setting (role, database, postgresql.conf)
            // stands unless the variable asks otherwise.
            statement_timeout: None,
            // Lambda drops idle connections after about 350 s; checking every
            // 30 s of idleness costs one round trip at most that often.
            health_check_interval: Duration::from_secs(30),
            // A half-open connection after a freeze must not hang the invocation.
            health_check_timeout: Duration::from_secs(2),
            // Below Lambda's ~350 s idle drop, so connections are replaced
            // before the platform cuts them.
            max_age: Duration::from_secs(300),
            // Rides out a database restart without stretching INIT past 10 s.
            warmup_attempts: 3,
            warmup_retry_delay: Duration::from_millis(500),
            // Five attempts with full jitter from 200 ms: about 3 s at worst,
            // and never past the deadline, which bounds them first.
            retry_attempts: 5,
            retry_base_delay: Duration::from_millis(200),
            // Enough to serialize and send an error answer.
            deadline_margin: Duration::from_millis(500),
            // Keeps NAT mappings alive and finds a dead peer within
            // idle + 3 probes of 10 s, well before Lambda's ~350 s idle drop.
            tcp_keepalive_idle: Duration::from_secs(60),
            // A peer that stops acknowledging is dropped by the kernel, so a
            // silent connection cannot hold a write forever.
            tcp_user_timeout: Duration::from_secs(30),
            // The metrics are how the dashboard and alarms see the pool.
            metrics: true,
            // CloudWatch's standard resolution: each record falls in one
            // minute, and a busy environment writes ~1 KB a minute instead
            // of ~1 KB per invocation.
            metrics_interval: Duration::from_secs(60),
            metrics_namespace: "RuntimeAdapter".to_owned(),
            // Slower than any healthy OLTP statement; fast enough to matter.
            slow_query: Duration::from_secs(1),
            function_name: "runtime-adapter".to_owned(),
            pooler_mode: PoolerMode::None,
            // sqlx's default: room for an application's own statements,
            // while dynamic SQL (IN-lists, query builders), whose every text
            // differs, cannot grow a server backend without bound.
            statement_cache_size: 100,
            max_concurrency: None,
            warnings: Vec::new(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `tokio_postgres::Config`'s own `Debug` redacts the password.
        f.debug_struct("Config")
            .field("pg", &self.pg)
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("pool_timeout", &self.pool_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("health_check_interval", &self.health_check_interval)
            .field("health_check_timeout", &self.health_check_timeout)
            .field("max_age", &self.max_age)
            .field("warmup_attempts", &self.warmup_attempts)
            .field("warmup_retry_delay", &self.warmup_retry_delay)
            .field("retry_attempts", &self.retry_attempts)
            .field("retry_base_delay", &self.retry_base_delay)
            .field("deadline_margin", &self.deadline_margin)
            .field("tcp_keepalive_idle", &self.tcp_keepalive_idle)
            .field("tcp_user_timeout", &self.tcp_user_timeout)
            .field("metrics", &self.metrics)
            .field("metrics_interval", &self.metrics_interval)
            .field("metrics_namespace", &self.metrics_namespace)
            .field("slow_query", &self.slow_query)
            .field("function_name", &self.function_name)
            .field("pooler_mode", &self.pooler_mode)
            .field("statement_cache_size", &self.statement_cache_size)
            .field("max_concurrency", &self.max_concurrency)
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first variable that is missing, malformed
    /// or in conflict with another.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, which returns a variable's
    /// value or `None` when it is unset.
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let env = Lookup(&lookup);

        let max_concurrency = env.number::<usize>(
            "AWS_LAMBDA_MAX_CONCURRENCY",
            Zero::Reject,
            "a whole number of concurrent invocations, e.g. 16",
        )?;
        let pool_size = env
            .number::<usize>("DB_POOL_SIZE", Zero::Reject, "a whole number of connections, at least 1, e.g. 4")?
            .or(max_concurrency)
            .unwrap_or(defaults.pool_size);

        let connect_timeout = env.millis("DB_CONNECT_TIMEOUT_MS", Zero::Reject)?.unwrap_or(defaults.connect_timeout);
        let connection = address::Connection::read(&env, connect_timeout)?;
        let mut config = Self {
            pg: connection.pg,
            credentials: connection.credentials,
            tls: connection.tls,
            pool_size,
            pool_timeout: env.millis("DB_POOL_TIMEOUT_MS", Zero::Reject)?.unwrap_or(defaults.pool_timeout),
            connect_timeout,
            statement_timeout: env.millis("DB_STATEMENT_TIMEOUT_MS", Zero::Allow)?,
            health_check_interval: env
                .millis("DB_HEALTH_CHECK_INTERVAL_MS", Zero::Allow)?
                .unwrap_or(defaults.health_check_interval),
            health_check_timeout: env
                .millis("DB_HEALTH_CHECK_TIMEOUT_MS", Zero::Reject)?
                .unwrap_or(defaults.health_check_timeout),
            max_age: env.millis("DB_MAX_AGE_MS", Zero::Reject)?.unwrap_or(defaults.max_age),
            warmup_attempts: env
                .number::<u32>("DB_WARMUP_ATTEMPTS", Zero::Reject, "a whole number of attempts, at least 1, e.g. 3")?
                .unwrap_or(defaults.warmup_attempts),
            warmup_retry_delay: env
                .millis("DB_WARMUP_RETRY_DELAY_MS", Zero::Allow)?
                .unwrap_or(defaults.warmup_retry_delay),
            retry_attempts: env
                .number::<u32>("DB_RETRY_ATTEMPTS", Zero::Reject, "a whole number of attempts, at least 1, e.g. 5")?
                .unwrap_or(defaults.retry_attempts),
            retry_base_delay: env.millis("DB_RETRY_BASE_DELAY_MS", Zero::Allow)?.unwrap_or(defaults.retry_base_delay),
            deadline_margin: env.millis("DB_DEADLINE_MARGIN_MS", Zero::Allow)?.unwrap_or(defaults.deadline_margin),
            tcp_keepalive_idle: env
                .millis("DB_TCP_KEEPALIVE_IDLE_MS", Zero::Reject)?
                .unwrap_or(defaults.tcp_keepalive_idle),
            tcp_user_timeout: env.millis("DB_TCP_USER_TIMEOUT_MS", Zero::Allow)?.unwrap_or(defaults.tcp_user_timeout),
            metrics: env.switch("DB_METRICS", "on or off")?.unwrap_or(defaults.metrics),
            metrics_interval: env.millis("DB_METRICS_INTERVAL_MS", Zero::Allow)?.unwrap_or(defaults.metrics_interval),
            metrics_namespace: namespace(&env)?.unwrap_or(defaults.metrics_namespace),
            slow_query: env.millis("DB_SLOW_QUERY_MS", Zero::Reject)?.unwrap_or(defaults.slow_query),
            function_name: env.get("AWS_LAMBDA_FUNCTION_NAME").unwrap_or(defaults.function_name),
            pooler_mode: pooler_mode(&env)?.unwrap_or(defaults.pooler_mode),
            statement_cache_size: env
                .number::<usize>(
                    "DB_STATEMENT_CACHE_SIZE",
                    Zero::Reject,
                    "a whole number of statements, at least 1, e.g. 100",
                )?
                .unwrap_or(defaults.statement_cache_size),
            max_concurrency,
            warnings: Vec::new(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks settings that cannot hold together, and reconciles those that
    /// are merely redundant (recording a [`ConfigWarning`] once for each).
    /// [`Config::from_lookup`] calls it, and
    /// [`Builder::init`](crate::Builder::init) calls it again, so that a
    /// configuration changed in code after parsing is held to the same rules.
    ///
    /// # Errors
    ///
    /// A [`ConfigError::Conflict`] naming the variables.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        self.credentials.check(&self.tls)?;
        self.reconcile();
        Ok(())
    }

    /// The client-side bound on one statement in transaction mode.
    pub(crate) fn client_statement_timeout(&self) -> Duration {
        self.statement_timeout.unwrap_or(CLIENT_STATEMENT_TIMEOUT)
    }

    /// The connection settings a pool build uses, derived from [`Config::pg`]
    /// and the other fields as they stand now, as deadpool-postgres's
    /// `Config::get_pg_config` derives them: TLS mode, timeouts, keepalives,
    /// `application_name`, and `statement_timeout` in the startup packet (so
    /// they cost no round trip).
    #[must_use]
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        pg.ssl_mode(self.tls.mode().for_tokio_postgres());
        // Transaction-mode poolers refuse or drop startup options: there the
        // client enforces the timeout. Unset, nothing is sent: a startup
        // option would override the role's or the database's setting.
        if let Some(timeout) = self.statement_timeout.filter(|_| self.pooler_mode == PoolerMode::None) {
            let mut options = pg.get_options().unwrap_or_default().to_owned();
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c statement_timeout={}", timeout.as_millis()));
            pg.options(&options);
        }
        pg.connect_timeout(self.connect_timeout);
        pg.keepalives(true);
        pg.keepalives_idle(self.tcp_keepalive_idle);
        pg.keepalives_interval(Duration::from_secs(10));
        pg.keepalives_retries(3);
        if !self.tcp_user_timeout.is_zero() {
            pg.tcp_user_timeout(self.tcp_user_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(&self.function_name);
        }
        pg
    }

    /// What parsing adjusted, or found worth a warning, in the order it was
    /// found. [`Builder::init`](crate::Builder::init) logs each at WARN.
    #[must_use]
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// Settings that are redundant together, not wrong: the sensible value
    /// is used and a warning recorded. The IAM cap comes first, because the
    /// interval is capped at the maximum age that results.
    fn reconcile(&mut self) {
        let iam = self.credentials.uses_iam();
        if iam && !self.tls.verifies() {
            self.warn(ConfigWarning::IamOverUnverifiedTls);
        }
        if iam && self.max_age > crate::credentials::IAM_TOKEN_LIFETIME {
            self.warn(ConfigWarning::MaxAgeCappedForIam { configured: self.max_age });
            self.max_age = crate::credentials::IAM_TOKEN_LIFETIME;
        }
        if self.health_check_interval > self.max_age {
            self.warn(ConfigWarning::HealthCheckIntervalCapped {
                configured: self.health_check_interval,
                max_age: self.max_age,
            });
            self.health_check_interval = self.max_age;
        }
        if let Some(max_concurrency) = self.max_concurrency.filter(|&c| c > self.pool_size) {
            self.warn(ConfigWarning::PoolSmallerThanConcurrency { pool_size: self.pool_size, max_concurrency });
        }
    }

    /// Records `warning`, once however often the configuration is validated.
    fn warn(&mut self, warning: ConfigWarning) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }
}

/// Whether zero is a meaningful value for a setting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allow,
    Reject,
}

struct Lookup<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Lookup<'_> {
    /// The variable's value; an empty string counts as unset, as a template
    /// parameter left blank produces one.
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn millis(&self, var: &'static str, zero: Zero) -> Result<Option<Duration>, ConfigError> {
        let expected = match zero {
            Zero::Allow => "a whole number of milliseconds, 0 or more, e.g. 5000",
            Zero::Reject => "a whole number of milliseconds, at least 1, e.g. 5000",
        };
        Ok(self.number::<u64>(var, zero, expected)?.map(Duration::from_millis))
    }

    /// A switch: `on`, `true` or `1`, or `off`, `false` or `0`, in any case;
    /// `spelling` is how the variable's documentation writes the two.
    fn switch(&self, var: &'static str, spelling: &'static str) -> Result<Option<bool>, ConfigError> {
        let Some(raw) = self.get(var) else { return Ok(None) };
        match raw.to_ascii_lowercase().as_str() {
            "on" | "true" | "1" => Ok(Some(true)),
            "off" | "false" | "0" => Ok(Some(false)),
            _ => Err(ConfigError::Invalid { var, problem: format!("is not {spelling} ({raw:?})"), expected: spelling }),
        }
    }

    fn number<T>(&self, var: &'static str, zero: Zero, expected: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr + PartialEq + Default,
    {
        let Some(raw) = self.get(var) else { return Ok(None) };
        let invalid = |problem: String| ConfigError::Invalid { var, problem, expected };
        if raw.starts_with('-') && raw[1..].chars().all(|c| c.is_ascii_digit()) && raw.len() > 1 {
            return Err(invalid(format!("is negative ({raw})")));
        }
        let value = raw.parse::<T>().map_err(|_| {
            if raw.chars().all(|c| c.is_ascii_digit()) {
                invalid(format!("is too large ({raw})"))
            } else {
                invalid(format!("is not a whole number ({raw:?})"))
            }
        })?;
        if zero == Zero::Reject && value == T::default() {
            return Err(invalid("is 0, which is not allowed here".to_owned()));
        }
        Ok(Some(value))
    }
}

fn pooler_mode(env: &Lookup<'_>) -> Result<Option<PoolerMode>, ConfigError> {
    let var = "DB_POOLER_MODE";
    match env.get(var).map(|v| v.to_ascii_lowercase()).as_deref() {
        None => Ok(None),
        Some("none") => Ok(Some(PoolerMode::None)),
        Some("transaction") => Ok(Some(PoolerMode::Transaction)),
        Some(other) => Err(ConfigError::Invalid {
            var,
            problem: format!("is not a pooler mode ({other:?})"),
            expected: "none (PostgreSQL itself, or a session-mode pooler) or transaction",
        }),
    }
}

fn namespace(env: &Lookup<'_>) -> Result<Option<String>, ConfigError> {
    let var = "DB_METRICS_NAMESPACE";
    let expected = "1 to 255 letters, digits or . - _ / # : and spaces, not starting with AWS/, e.g. RuntimeAdapter";
    let Some(raw) = env.get(var) else { return Ok(None) };
    let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    let problem = if raw.len() > 255 {
        Some("is longer than 255 characters".to_owned())
    } else if raw.starts_with("AWS/") {
        Some("starts with AWS/, which CloudWatch reserves".to_owned())
    } else {
        raw.chars().find(|c| !allowed(*c)).map(|c| format!("contains {c:?}"))
    };
    match problem {
        Some(problem) => Err(ConfigError::Invalid { var, problem, expected }),
        None => Ok(Some(raw)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;

    use super::*;

    const URL: &str = "postgres://app:hunter2-secret@127.0.0.1:5432/app";

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    fn parse_with_url(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vec![("DATABASE_URL", URL)];
        all.extend_from_slice(vars);
        parse(&all)
    }

    #[test]
    fn defaults_apply_when_only_the_url_is_set() {
        let config = parse_with_url(&[]).expect("valid");
        assert_eq!(config.pool_size, 1);
        assert_eq!(config.pool_timeout, Duration::from_millis(10_000));
        assert_eq!(config.connect_timeout, Duration::from_millis(5_000));
        assert_eq!(config.statement_timeout, None, "the server's own setting");
        assert_eq!(config.client_statement_timeout(), Duration::from_secs(180));
        assert_eq!(config.health_check_interval, Duration::from_millis(30_000));
        assert_eq!(config.health_check_timeout, Duration::from_millis(2_000));
        assert_eq!(config.max_age, Duration::from_millis(300_000));
        assert_eq!(config.warmup_attempts, 3);
        assert_eq!(config.warmup_retry_delay, Duration::from_millis(500));
        assert_eq!(config.retry_attempts, 5);
        assert_eq!(config.retry_base_delay, Duration::from_millis(200));
        assert_eq!(config.deadline_margin, Duration::from_millis(500));
        assert_eq!(config.pg_config().get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(config.pg_config().get_tcp_user_timeout(), Some(&Duration::from_secs(30)));
        assert!(config.metrics);
        assert_eq!(config.metrics_interval, Duration::from_secs(60));
        assert_eq!(config.metrics_namespace, "RuntimeAdapter");
        assert_eq!(config.slow_query, Duration::from_secs(1));
        assert_eq!(config.function_name, "runtime-adapter");
        assert_eq!(config.pg_config().get_application_name(), Some("runtime-adapter"));
        assert_eq!(config.pg_config().get_options(), None, "the server's statement_timeout stands");
        assert_eq!(config.pg.get_options(), None, "nothing derived is stored");
    }

    #[test]
    fn the_connection_settings_follow_changes_made_in_code() {
        let mut config = parse_with_url(&[]).expect("valid");
        config.statement_timeout = Some(Duration::from_millis(750));
        config.tcp_keepalive_idle = Duration::from_secs(20);
        config.function_name = "renamed".to_owned();
        let pg = config.pg_config();
        assert_eq!(pg.get_options(), Some("-c statement_timeout=750"));
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(20));
        assert_eq!(pg.get_application_name(), Some("renamed"));
        assert_eq!(pg.get_ssl_mode(), tokio_postgres::config::SslMode::Prefer);
        let verified = parse_with_url(&[("DB_SSL_ROOT_CERT", "system")]).expect("valid");
        assert_eq!(verified.pg_config().get_ssl_mode(), tokio_postgres::config::SslMode::Require, "verify-full");
    }

    #[test]
    fn validation_holds_changes_made_in_code_to_the_same_rules() {
        let mut config = parse_with_url(&[("DB_HEALTH_CHECK_INTERVAL_MS", "1000")]).expect("valid");
        config.max_age = Duration::from_millis(500);
        config.validate().expect("redundant, not wrong");
        assert_eq!(config.health_check_interval, Duration::from_millis(500), "capped");
        config.validate().expect("still fine");
        assert_eq!(config.warnings().len(), 1, "each warning once: {:?}", config.warnings());
    }

    #[test]
    fn statement_timeout_is_sent_only_when_set() {
        let set = parse_with_url(&[("DB_STATEMENT_TIMEOUT_MS", "2500")]).expect("valid");
        assert_eq!(set.pg_config().get_options(), Some("-c statement_timeout=2500"));
        let off = parse_with_url(&[("DB_STATEMENT_TIMEOUT_MS", "0")]).expect("valid");
        assert_eq!(off.pg_config().get_options(), Some("-c statement_timeout=0"), "0 disables it, explicitly");
        let url = format!("{URL}?options=-c%20search_path%3Dapp");
        let kept = parse(&[("DATABASE_URL", &url), ("DB_STATEMENT_TIMEOUT_MS", "100")]).expect("valid");
        assert_eq!(kept.pg_config().get_options(), Some("-c search_path=app -c statement_timeout=100"));
        let pooled =
            parse_with_url(&[("DB_STATEMENT_TIMEOUT_MS", "2500"), ("DB_POOLER_MODE", "transaction")]).expect("valid");
        assert_eq!(
            (pooled.pg_config().get_options(), pooled.statement_timeout),
            (None, Some(Duration::from_millis(2500)))
        );
    }

    #[test]
    fn pool_size_follows_max_concurrency_unless_overridden() {
        assert_eq!(parse_with_url(&[("AWS_LAMBDA_MAX_CONCURRENCY", "16")]).expect("valid").pool_size, 16);
        let both = parse_with_url(&[("AWS_LAMBDA_MAX_CONCURRENCY", "16"), ("DB_POOL_SIZE", "4")]).expect("valid");
        assert_eq!(both.pool_size, 4);
    }

    #[test]
    fn missing_url_names_the_variable() {
        let err = parse(&[]).expect_err("must fail");
        assert_eq!(err.to_string(), "DATABASE_URL is not set; expected postgres://USER:PASSWORD@HOST:PORT/DATABASE");
    }

    #[test]
    fn malformed_urls_are_refused_without_quoting_them() {
        for url in [
            "mysql://app:hunter2-secret@host/app",
            "postgres://app:hunter2-secret@127.0.0.1:notaport/app",
            "postgres://app:hunter2-secret@127.0.0.1:5432",
            "postgres://:hunter2-secret@127.0.0.1:5432/app",
        ] {
            let err = parse(&[("DATABASE_URL", url)]).expect_err(url);
            let text = err.to_string();
            assert!(text.starts_with("DATABASE_URL "), "{text}");
            assert!(!text.contains("hunter2"), "password leaked: {text}");
        }
    }

    #[test]
    fn bad_numbers_name_the_variable_and_the_problem() {
        let cases = [
            ("DB_POOL_SIZE", "abc", "DB_POOL_SIZE is not a whole number (\"abc\"); expected a whole number of connections, at least 1, e.g. 4"),
            ("DB_POOL_SIZE", "0", "DB_POOL_SIZE is 0, which is not allowed here; expected a whole number of connections, at least 1, e.g. 4"),
            ("DB_POOL_TIMEOUT_MS", "-5", "DB_POOL_TIMEOUT_MS is negative (-5); expected a whole number of milliseconds, at least 1, e.g. 5000"),
            ("DB_CONNECT_TIMEOUT_MS", "1.5", "DB_CONNECT_TIMEOUT_MS is not a whole number (\"1.5\"); expected a whole number of milliseconds, at least 1, e.g. 5000"),
            ("DB_STATEMENT_TIMEOUT_MS", "99999999999999999999999", "DB_STATEMENT_TIMEOUT_MS is too large (99999999999999999999999); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
            ("DB_HEALTH_CHECK_INTERVAL_MS", "30s", "DB_HEALTH_CHECK_INTERVAL_MS is not a whole number (\"30s\"); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
            ("DB_HEALTH_CHECK_TIMEOUT_MS", "0", "DB_HEALTH_CHECK_TIMEOUT_MS is 0, which is not allowed here; expected a whole number of milliseconds, at least 1, e.g. 5000"),
            ("DB_MAX_AGE_MS", "0", "DB_MAX_AGE_MS is 0, which is not allowed here; expected a whole number of milliseconds, at least 1, e.g. 5000"),
            ("DB_WARMUP_ATTEMPTS", "0", "DB_WARMUP_ATTEMPTS is 0, which is not allowed here; expected a whole number of attempts, at least 1, e.g. 3"),
            ("DB_WARMUP_RETRY_DELAY_MS", "soon", "DB_WARMUP_RETRY_DELAY_MS is not a whole number (\"soon\"); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
            ("AWS_LAMBDA_MAX_CONCURRENCY", "-1", "AWS_LAMBDA_MAX_CONCURRENCY is negative (-1); expected a whole number of concurrent invocations, e.g. 16"),
            ("DB_RETRY_ATTEMPTS", "0", "DB_RETRY_ATTEMPTS is 0, which is not allowed here; expected a whole number of attempts, at least 1, e.g. 5"),
            ("DB_RETRY_BASE_DELAY_MS", "x", "DB_RETRY_BASE_DELAY_MS is not a whole number (\"x\"); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
            ("DB_DEADLINE_MARGIN_MS", "-2", "DB_DEADLINE_MARGIN_MS is negative (-2); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
            ("DB_TCP_KEEPALIVE_IDLE_MS", "0", "DB_TCP_KEEPALIVE_IDLE_MS is 0, which is not allowed here; expected a whole number of milliseconds, at least 1, e.g. 5000"),
            ("DB_METRICS", "maybe", "DB_METRICS is not on or off (\"maybe\"); expected on or off"),
            ("DB_METRICS_INTERVAL_MS", "1m", "DB_METRICS_INTERVAL_MS is not a whole number (\"1m\"); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
            ("DB_METRICS_NAMESPACE", "AWS/Lambda", "DB_METRICS_NAMESPACE starts with AWS/, which CloudWatch reserves; expected 1 to 255 letters, digits or . - _ / # : and spaces, not starting with AWS/, e.g. RuntimeAdapter"),
            ("DB_METRICS_NAMESPACE", "a{b}", "DB_METRICS_NAMESPACE contains '{'; expected 1 to 255 letters, digits or . - _ / # : and spaces, not starting with AWS/, e.g. RuntimeAdapter"),
            ("DB_POOLER_MODE", "session", "DB_POOLER_MODE is not a pooler mode (\"session\"); expected none (PostgreSQL itself, or a session-mode pooler) or transaction"),
            ("DB_SLOW_QUERY_MS", "0", "DB_SLOW_QUERY_MS is 0, which is not allowed here; expected a whole number of milliseconds, at least 1, e.g. 5000"),
            ("DB_TCP_USER_TIMEOUT_MS", "1h", "DB_TCP_USER_TIMEOUT_MS is not a whole number (\"1h\"); expected a whole number of milliseconds, 0 or more, e.g. 5000"),
        ];
        for (var, value, message) in cases {
            let err = parse_with_url(&[(var, value)]).expect_err(var);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn zero_is_accepted_where_it_means_something() {
        let config = parse_with_url(&[
            ("DB_STATEMENT_TIMEOUT_MS", "0"),
            ("DB_HEALTH_CHECK_INTERVAL_MS", "0"),
            ("DB_WARMUP_RETRY_DELAY_MS", "0"),
            ("DB_METRICS_INTERVAL_MS", "0"),
        ])
        .expect("valid");
        assert_eq!(config.metrics_interval, Duration::ZERO, "a record after every invocation");
        assert_eq!(config.statement_timeout, Some(Duration::ZERO));
        assert_eq!(config.health_check_interval, Duration::ZERO);
    }

    #[test]
    fn a_short_max_age_caps_the_health_check_interval_with_one_warning() {
        // The default interval (30 s) is longer than this maximum age.
        let config = parse_with_url(&[("DB_MAX_AGE_MS", "1000")]).expect("redundant, not wrong");
        assert_eq!(config.max_age, Duration::from_millis(1000));
        assert_eq!(config.health_check_interval, Duration::from_millis(1000));
        assert_eq!(
            config.warnings(),
            [ConfigWarning::HealthCheckIntervalCapped {
                configured: Duration::from_secs(30),
                max_age: Duration::from_secs(1)
            }]
        );
        let text = config.warnings()[0].to_string();
        assert!(
            text.starts_with("DB_HEALTH_CHECK_INTERVAL_MS (30000 ms) is longer than DB_MAX_AGE_MS (1000 ms)"),
            "{text}"
        );
        assert!(text.contains("capped at 1000 ms"), "{text}");

        let both = parse_with_url(&[("DB_HEALTH_CHECK_INTERVAL_MS", "60000"), ("DB_MAX_AGE_MS", "1500")])
            .expect("redundant, not wrong");
        assert_eq!(both.health_check_interval, Duration::from_millis(1500));
        assert_eq!(both.warnings().len(), 1);
    }

    #[test]
    fn settings_that_hold_together_warn_about_nothing() {
        assert_eq!(parse_with_url(&[]).expect("valid").warnings(), []);
        let equal =
            parse_with_url(&[("DB_HEALTH_CHECK_INTERVAL_MS", "5000"), ("DB_MAX_AGE_MS", "5000")]).expect("valid");
        assert_eq!((equal.health_check_interval, equal.warnings()), (Duration::from_secs(5), &[][..]));
        let every_time =
            parse_with_url(&[("DB_HEALTH_CHECK_INTERVAL_MS", "0"), ("DB_MAX_AGE_MS", "1")]).expect("valid");
        assert_eq!((every_time.health_check_interval, every_time.warnings()), (Duration::ZERO, &[][..]));
    }

    #[test]
    #[cfg(feature = "iam-auth")]
    fn iam_caps_the_max_age_at_a_token_lifetime_and_the_interval_follows() {
        let iam = [("DATABASE_URL", "postgres://u@h/d?sslmode=verify-full"), ("DB_IAM_AUTH", "true")];
        let mut vars = iam.to_vec();
        vars.extend([("DB_MAX_AGE_MS", "1800000"), ("DB_HEALTH_CHECK_INTERVAL_MS", "1200000")]);
        let config = parse(&vars).expect("capped, not refused");
        assert_eq!(config.max_age, Duration::from_secs(900));
        assert_eq!(config.health_check_interval, Duration::from_secs(900));
        assert_eq!(
            config.warnings(),
            [
                ConfigWarning::MaxAgeCappedForIam { configured: Duration::from_secs(1800) },
                ConfigWarning::HealthCheckIntervalCapped {
                    configured: Duration::from_secs(1200),
                    max_age: Duration::from_secs(900)
                },
            ]
        );
        assert!(config.warnings()[0].to_string().contains("capped at 900000 ms"), "{}", config.warnings()[0]);
        assert_eq!(parse(&iam).expect("valid").warnings(), []);
    }

    #[test]
    #[cfg(feature = "iam-auth")]
    fn iam_over_unverified_tls_is_a_warning_naming_the_risk_and_the_fix() {
        let config = parse(&[("DATABASE_URL", "postgres://u@h/d?sslmode=require"), ("DB_IAM_AUTH", "true")])
            .expect("allowed, with a warning");
        assert_eq!(config.warnings(), [ConfigWarning::IamOverUnverifiedTls]);
        let text = config.warnings()[0].to_string();
        assert!(text.contains("receive the IAM token"), "the risk: {text}");
        assert!(
            text.contains("sslmode=verify-full with DB_SSL_ROOT_CERT naming the RDS global bundle"),
            "the fix: {text}"
        );
        let verified =
            parse(&[("DATABASE_URL", "postgres://u@h/d?sslmode=verify-full"), ("DB_IAM_AUTH", "true")]).expect("valid");
        assert_eq!(verified.warnings(), []);
        let url_only = parse(&[("DATABASE_URL", "postgres://u:p@h/d?sslmode=require")]).expect("valid");
        assert_eq!(url_only.warnings(), [], "a password from the URL is the user's own choice");
    }

    #[test]
    fn a_pool_smaller_than_the_concurrency_is_a_warning() {
        let config = parse_with_url(&[("AWS_LAMBDA_MAX_CONCURRENCY", "8"), ("DB_POOL_SIZE", "2")]).expect("valid");
        assert_eq!(config.warnings(), [ConfigWarning::PoolSmallerThanConcurrency { pool_size: 2, max_concurrency: 8 }]);
    }

    #[test]
    fn unsafe_or_ambiguous_combinations_are_still_refused() {
        let cases = [
            #[cfg(feature = "iam-auth")]
            (
                vec![("DATABASE_URL", "postgres://u@h/d"), ("DB_IAM_AUTH", "true")],
                "DB_IAM_AUTH and sslmode contradict each other",
            ),
            // A conflict in every build, whatever its features.
            (
                vec![("DB_SECRET_ARN", "s"), ("DB_IAM_AUTH", "true")],
                "DB_SECRET_ARN and DB_IAM_AUTH contradict each other",
            ),
            (
                vec![("DATABASE_URL", URL), ("DB_HOST", "h")],
                "contradict each other: DB_HOST is set as well as DATABASE_URL",
            ),
        ];
        for (vars, message) in cases {
            let err = parse(&vars).expect_err(message);
            assert!(err.to_string().contains(message), "{err}");
        }
    }

    #[test]
    fn transaction_mode_sends_no_startup_options() {
        let config = parse_with_url(&[("DB_POOLER_MODE", "transaction")]).expect("valid");
        assert_eq!(config.pooler_mode, PoolerMode::Transaction);
        assert_eq!(config.pg_config().get_options(), None);
    }

    #[test]
    fn debug_never_shows_the_password() {
        let config = parse_with_url(&[]).expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("pool_size"));
    }

    /// The README's table of variables: for each row, the names in its first
    /// column and its default as written.
    fn readme_rows() -> Vec<(Vec<String>, String)> {
        let readme = include_str!("../../README.md");
        let table = readme.split("| Variable | Default | Meaning |").nth(1).expect("the README's table of variables");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                let names = cells[1].split('`').skip(1).step_by(2).map(str::to_owned).collect();
                (names, cells[2].trim_matches('`').to_owned())
            })
            .collect()
    }

    #[test]
    fn the_readme_table_names_every_variable_the_code_reads_and_no_other() {
        let read = Mutex::new(BTreeSet::new());
        let record = |vars: &[(&str, &str)]| {
            let map: HashMap<&str, &str> = vars.iter().copied().collect();
            let lookup = |name: &str| {
                read.lock().expect("lock").insert(name.to_owned());
                map.get(name).map(|v| (*v).to_owned())
            };
            drop(Config::from_lookup(lookup));
        };
        // Each way to give the address and the credentials, so that every
        // branch asks for its variables.
        record(&[("DATABASE_URL", URL)]);
        record(&[("DB_HOST", "h"), ("DB_NAME", "d"), ("DB_USER", "u")]);
        record(&[("DB_SECRET_ARN", "arn")]);
        record(&[("DATABASE_URL", URL), ("DB_IAM_AUTH", "true")]);
        let ours = |name: &String| name.starts_with("DB_") || name == "DATABASE_URL";
        let code: BTreeSet<String> = read.into_inner().expect("lock").into_iter().filter(ours).collect();
        let table: BTreeSet<String> = readme_rows().into_iter().flat_map(|(names, _)| names).filter(ours).collect();
        assert_eq!(code, table, "the variables the code reads, and those the README's table lists");
    }

    #[test]
    fn the_readme_table_gives_the_codes_defaults() {
        let baseline = format!("{:?}", parse_with_url(&[]).expect("valid"));
        let mut checked = 0;
        for (names, default) in readme_rows() {
            let [name] = names.as_slice() else { continue };
            let plain = default.chars().all(|c| c.is_ascii_digit())
                || ["on", "off", "true", "false", "none"].contains(&default.as_str());
            if !name.starts_with("DB_") || !plain {
                continue;
            }
            let explicit = parse_with_url(&[(name.as_str(), default.as_str())]).expect("the README's default is valid");
            assert_eq!(format!("{explicit:?}"), baseline, "{name}: the README's default {default} is not the code's");
            checked += 1;
        }
        assert!(checked >= 15, "only {checked} defaults checked");
    }
}
