//! The two warmup phases, the statements phase 2 prepares, and the retry
//! loop around a whole pool build.
//!
//! Phase 1 is a raw round trip: it proves the connection layer (socket,
//! authentication, server accepting queries). Phase 2 prepares each declared
//! statement (see `statement`), which caches it on the connection (the first
//! invocation pays no prepare) and makes the server check it against the
//! schema at INIT.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use deadpool_postgres::ClientWrapper;

use crate::config::Config;
use crate::error::{Error, Phase};
use crate::health::Liveness;
use crate::pool::WarmPool;
use crate::statement::Statements;
use crate::stats::{bump, Counters};

/// Phase 1's round trip. The comment names it in the server's logs.
pub(crate) const ROUND_TRIP_SQL: &str = "/* runtime-adapter warmup */ SELECT 1";

pub(crate) async fn round_trip(client: &ClientWrapper, bound: Duration) -> Result<(), Error> {
    match tokio::time::timeout(bound, client.simple_query(ROUND_TRIP_SQL)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(Error::Warmup { phase: Phase::RoundTrip, statement: None, source }),
        Err(_) => Err(Error::Timeout { what: "warmup phase 1 (round trip)", after: bound }),
    }
}

/// Phase 2 on one connection: the declared statements checked against the
/// schema and prepared; see [`Statements::warm`].
pub(crate) async fn prepare(
    client: &ClientWrapper,
    statements: &Statements,
    bound: Duration,
) -> Result<Vec<(String, tokio_postgres::Statement)>, Error> {
    match tokio::time::timeout(bound, statements.warm(client)).await {
        Ok(Ok(prepared)) => Ok(prepared),
        Ok(Err((sql, source))) => {
            Err(Error::Warmup { phase: Phase::Prepare, statement: (!sql.is_empty()).then_some(sql), source })
        }
        Err(_) => Err(Error::Timeout { what: "warmup phase 2 (prepare)", after: bound }),
    }
}

/// Builds and warms a pool at INIT, retrying transient failures up to
/// `DB_WARMUP_ATTEMPTS` times, `DB_WARMUP_RETRY_DELAY_MS` apart, and never
/// past `until` when one is given. Permanent failures return at once.
///
/// Inside an invocation the gate makes one attempt per call and its own
/// retry loop (with backoff) spaces them.
pub(crate) async fn warm(
    config: &Config,
    statements: &Statements,
    counters: &Arc<Counters>,
    liveness: &Arc<Liveness>,
    attempts: u32,
    until: Option<Instant>,
) -> Result<WarmPool, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let build = WarmPool::build(config, statements, counters, liveness);
        let result = match until {
            Some(until) => tokio::time::timeout_at(until, build).await.unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: "warmup within its time budget",
                    after: until.saturating_duration_since(Instant::now()),
                })
            }),
            None => build.await,
        };
        let error = match result {
            Ok(pool) => return Ok(pool),
            Err(error) => error,
        };
        bump(&counters.warmup_failures);
        counters.failed_now();
        let next = Instant::now() + config.warmup_retry_delay;
        let out_of_time = until.is_some_and(|until| next >= until);
        if !error.is_transient() {
            tracing::error!(%error, attempt, kind = ?error.kind(), "warmup failed permanently");
            return Err(error);
        }
        if attempt >= attempts || out_of_time {
            tracing::warn!(%error, attempt, kind = ?error.kind(), "warmup failed; no attempt left");
            if attempts == 1 {
                return Err(error);
            }
            return Err(Error::Unavailable { attempts: attempt, out_of_time, source: Box::new(error) });
        }
        tracing::warn!(
            %error,
            attempt,
            delay_ms = config.warmup_retry_delay.as_millis() as u64,
            kind = ?error.kind(),
            "warmup failed; retrying"
        );
        tokio::time::sleep_until(next).await;
    }
}
