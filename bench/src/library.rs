//! The library's own cost per invocation, without processes or the Lambda
//! loop: in the driver's process, the adapter's gate and `Db` query against
//! a bare client's prepared query, alternated. Where the warm figures of the
//! two differ, this says how much of it the library's code accounts for.
//!
//! Twice: back to back (caches hot), and with a pause after each, as the
//! warm run paces each function (caches cold, as on Lambda, where an
//! environment sits idle between invocations).

use std::time::{Duration, Instant};

use integration_tests::inproc;
use integration_tests::Postgres;
use tokio_postgres::NoTls;

use crate::summary::Summary;

const GET_ORDER: &str = "SELECT id, item, quantity, created_at FROM orders WHERE id = $1";
/// The deadline each simulated invocation gets.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The pause after each query in the paced pass.
const PAUSE: Duration = Duration::from_millis(5);
/// Queries of each kind in the paced pass.
const PACED: usize = 500;

#[derive(Debug)]
pub(crate) struct LibraryResult {
    pub(crate) bare: Summary,
    pub(crate) adapter: Summary,
    /// The same, paced.
    pub(crate) paced_bare: Summary,
    pub(crate) paced_adapter: Summary,
}

pub(crate) async fn run(pg: &Postgres, iterations: usize) -> LibraryResult {
    let (client, connection) = pg.app_config().connect(NoTls).await.expect("connect to the benchmark database");
    let task = tokio::spawn(connection);
    let statement = client.prepare(GET_ORDER).await.expect("prepare the orders query");
    let adapter = inproc::adapter(&pg.database_url(), &[], &[GET_ORDER]).await;
    let id: i64 = 1;

    let mut bare = Vec::with_capacity(iterations);
    let mut through_adapter = Vec::with_capacity(iterations);
    let mut paced_bare = Vec::with_capacity(PACED);
    let mut paced_adapter = Vec::with_capacity(PACED);
    for i in 0..iterations + PACED {
        let paced = i >= iterations;
        let started = Instant::now();
        let row = client.query_opt(&statement, &[&id]).await.expect("bare query");
        let took = started.elapsed();
        assert!(row.is_some(), "order {id} exists");
        if paced {
            paced_bare.push(took);
            tokio::time::sleep(PAUSE).await;
        } else {
            bare.push(took);
        }

        let started = Instant::now();
        let context = inproc::context(TIMEOUT);
        let db = adapter.db(&context).await.expect("the adapter's gate");
        let row = db.idempotent().query_opt(GET_ORDER, &[&id]).await.expect("query through the adapter");
        drop(db);
        let took = started.elapsed();
        assert!(row.is_some(), "order {id} exists");
        if paced {
            paced_adapter.push(took);
            tokio::time::sleep(PAUSE).await;
        } else {
            through_adapter.push(took);
        }
    }
    adapter.close().await;
    drop(client);
    let _ = task.await;
    LibraryResult {
        bare: Summary::of(&bare),
        adapter: Summary::of(&through_adapter),
        paced_bare: Summary::of(&paced_bare),
        paced_adapter: Summary::of(&paced_adapter),
    }
}
