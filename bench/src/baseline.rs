//! What the loopback costs by itself, measured by the driver with its own
//! client: one round trip (`SELECT 1`, as warmup phase 1 sends it) and one
//! connect (TCP, startup, SCRAM). The cold-start target is stated in these.

use std::time::{Duration, Instant};

use integration_tests::Postgres;
use tokio_postgres::NoTls;

use crate::summary::Summary;

#[derive(Debug)]
pub(crate) struct Baseline {
    pub(crate) round_trip: Summary,
    pub(crate) connect: Summary,
}

pub(crate) async fn run(pg: &Postgres, round_trips: usize, connects: usize) -> Baseline {
    let config = pg.app_config();
    let mut connect = Vec::with_capacity(connects);
    for _ in 0..connects {
        let started = Instant::now();
        let (client, connection) = config.connect(NoTls).await.expect("connect to the benchmark database");
        let task = tokio::spawn(connection);
        connect.push(started.elapsed());
        drop(client);
        let _ = task.await;
    }
    let (client, connection) = config.connect(NoTls).await.expect("connect to the benchmark database");
    let task = tokio::spawn(connection);
    let mut round_trip: Vec<Duration> = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        client.simple_query("SELECT 1").await.expect("SELECT 1");
        round_trip.push(started.elapsed());
    }
    drop(client);
    let _ = task.await;
    Baseline { round_trip: Summary::of(&round_trip), connect: Summary::of(&connect) }
}
