//! Round trips per invocation, one contender at a time through a counting
//! proxy ([`crate::wire`]), and the statements the server executed for them
//! (`pg_stat_statements`, reset before each contender).

use integration_tests::Postgres;

use crate::contenders::{Contender, Running};
use crate::wire::{CountingProxy, WireCounts};

/// Invocations before counting: lazy pools connect and prepare on the first.
const SETTLE: usize = 10;

#[derive(Debug)]
pub(crate) struct RoundTrips {
    pub(crate) contender: Contender,
    /// During INIT (process start to the first poll).
    pub(crate) init: WireCounts,
    /// During the first invocation.
    pub(crate) first: WireCounts,
    /// During `invocations` warm invocations.
    pub(crate) warm: WireCounts,
    /// Statements the server executed during those (`pg_stat_statements` calls).
    pub(crate) statements: i64,
    pub(crate) invocations: usize,
}

impl RoundTrips {
    pub(crate) fn per_invocation(&self, count: u64) -> f64 {
        count as f64 / self.invocations as f64
    }
}

/// Loads `pg_stat_statements` (the server must preload it).
pub(crate) async fn install(pg: &Postgres) {
    pg.batch("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await;
}

pub(crate) async fn run(pg: &Postgres, invocations: usize) -> Vec<RoundTrips> {
    let mut results = Vec::new();
    for contender in Contender::strategies() {
        let proxy = CountingProxy::start(pg.port()).await;
        let mut instance = Running::start(contender, pg, Some(proxy.port()), "rtt", &[]).await;
        let init = proxy.counts();
        instance.invoke().await;
        let first = proxy.counts().since(init);
        for _ in 1..SETTLE {
            instance.invoke().await;
        }
        pg.execute("SELECT pg_stat_statements_reset()").await;
        let before = proxy.counts();
        for _ in 0..invocations {
            instance.invoke().await;
        }
        let warm = proxy.counts().since(before);
        let statements = executed_by_app(pg).await;
        results.push(RoundTrips { contender, init, first, warm, statements, invocations });
    }
    results
}

/// Calls of every statement the `app` role ran since the last reset.
async fn executed_by_app(pg: &Postgres) -> i64 {
    let rows = pg
        .query(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE userid = (SELECT oid FROM pg_roles WHERE rolname = 'app')",
        )
        .await;
    rows[0].get(0)
}
