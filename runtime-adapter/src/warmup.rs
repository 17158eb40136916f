//! The two warmup phases every new connection passes before the pool hands
//! it out. The retry loop around a whole pool build is the pool's
//! (`WarmPool::build_retrying`).
//!
//! Phase 1 is a raw round trip: it proves the connection layer (socket,
//! authentication, server accepting queries). Phase 2 prepares each declared
//! statement (see `statement`), which caches it on the connection (the first
//! invocation pays no prepare) and makes the server check it against the
//! schema at INIT.

use std::time::Duration;

use deadpool_postgres::ClientWrapper;

use crate::error::{Error, Phase, Step};
use crate::statement::Statements;

/// Phase 1's round trip. The comment names it in the server's logs.
pub(crate) const ROUND_TRIP_SQL: &str = "/* runtime-adapter warmup */ SELECT 1";

pub(crate) async fn round_trip(client: &ClientWrapper, bound: Duration) -> Result<(), Error> {
    match tokio::time::timeout(bound, client.simple_query(ROUND_TRIP_SQL)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(Error::Warmup { phase: Phase::RoundTrip, statement: None, source }),
        Err(_) => Err(Error::Timeout { step: Step::RoundTrip, after: bound }),
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
        Ok(Err((statement, source))) => Err(Error::Warmup { phase: Phase::Prepare, statement, source }),
        Err(_) => Err(Error::Timeout { step: Step::Prepare, after: bound }),
    }
}
