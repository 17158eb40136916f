//! The library's own cost per invocation, without processes or the Lambda
//! loop: in the driver's process, the adapter's gate and `Db` query against
//! a bare client's prepared query, alternated. Where the warm figures of the
//! two differ, this says how much of it the library's code accounts for.

use std::time::{Duration, Instant};

use integration_tests::inproc;
use integration_tests::Postgres;
use tokio_postgres::NoTls;

use crate::summary::Summary;

const GET_ORDER: &str = "SELECT id, item, quantity, created_at FROM orders WHERE id = $1";
/// The deadline each simulated invocation gets.
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct LibraryResult {
    pub(crate) bare: Summary,
    pub(crate) adapter: Summary,
}

pub(crate) async fn run(pg: &Postgres, iterations: usize) -> LibraryResult {
    let (client, connection) = pg.app_config().connect(NoTls).await.expect("connect to the benchmark database");
    let task = tokio::spawn(connection);
    let statement = client.prepare(GET_ORDER).await.expect("prepare the orders query");
    let adapter = inproc::adapter(&pg.database_url(), &[], &[GET_ORDER]).await;
    let id: i64 = 1;

    let mut bare = Vec::with_capacity(iterations);
    let mut through_adapter = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let row = client.query_opt(&statement, &[&id]).await.expect("bare query");
        bare.push(started.elapsed());
        assert!(row.is_some(), "order {id} exists");

        let started = Instant::now();
        let context = inproc::context(TIMEOUT);
        let db = adapter.db(&context).await.expect("the adapter's gate");
        let row = db.idempotent().query_opt(GET_ORDER, &[&id]).await.expect("query through the adapter");
        drop(db);
        through_adapter.push(started.elapsed());
        assert!(row.is_some(), "order {id} exists");
    }
    adapter.close().await;
    drop(client);
    let _ = task.await;
    LibraryResult { bare: Summary::of(&bare), adapter: Summary::of(&through_adapter) }
}
