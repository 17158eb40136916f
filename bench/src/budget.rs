//! Connection budget: what one environment holds on the server, and so how
//! many environments 100 server slots serve.

use integration_tests::Postgres;

use crate::contenders::{Contender, Running};

/// The pool size compared with the adapter's default.
pub(crate) const POOL_OF_FIVE: usize = 5;

#[derive(Debug)]
pub(crate) struct Budget {
    /// Connections held by an adapter with `DB_POOL_SIZE=5`, after a few invocations.
    pub(crate) pool_of_five: i64,
    pub(crate) max_connections: i64,
    pub(crate) reserved: i64,
}

/// Environments that `slots` server connections serve at `per_environment` each.
pub(crate) fn environments(slots: i64, per_environment: i64) -> Option<i64> {
    (per_environment > 0).then(|| slots / per_environment)
}

pub(crate) async fn run(pg: &Postgres) -> Budget {
    let size = POOL_OF_FIVE.to_string();
    let mut instance = Running::start(Contender::Adapter, pg, None, "pool5", &[("DB_POOL_SIZE", size.as_str())]).await;
    for _ in 0..10 {
        instance.invoke().await;
    }
    let pool_of_five = pg.connection_count(&instance.name).await;
    let setting = |rows: Vec<tokio_postgres::Row>| -> i64 {
        rows[0].get::<_, String>(0).parse().expect("a numeric server setting")
    };
    Budget {
        pool_of_five,
        max_connections: setting(pg.query("SHOW max_connections").await),
        reserved: setting(pg.query("SHOW superuser_reserved_connections").await),
    }
}
