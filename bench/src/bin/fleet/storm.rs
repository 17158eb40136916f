//! What one connection costs the server: connect over TCP, SCRAM-SHA-256
//! authentication (PostgreSQL 15: 4,096 iterations), startup, Terminate,
//! the backend's exit, measured as server CPU (all its processes, from
//! `/proc`) over many sequential connections against an idle server. A
//! burst of cold starts pays this once per new connection.

use std::time::{Duration, Instant};

use integration_tests::fleet::server::{server_cpu, ticks_per_second};
use integration_tests::Postgres;
use tokio_postgres::NoTls;

const CONNECTIONS: u32 = 200;

/// The measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectCost {
    pub(crate) per_connect: Duration,
    /// Connections per second one client achieved, one after another.
    pub(crate) sequential_per_second: f64,
}

pub(crate) async fn connect_cost() -> ConnectCost {
    let pg = Postgres::builder().setting("log_statement", "none").start().await;
    let ticks = ticks_per_second();
    let config = pg.app_config();
    let before = server_cpu(pg.dir(), ticks).expect("the server's CPU from /proc");
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let (client, connection) = config.connect(NoTls).await.expect("connect as app");
        let task = tokio::spawn(connection);
        // Dropping the client sends Terminate; the connection task then ends.
        drop(client);
        let _ = task.await;
    }
    let elapsed = started.elapsed();
    // Exited backends' CPU reaches the postmaster's counters once it reaped them.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg.connection_count_for_user("app").await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = server_cpu(pg.dir(), ticks).expect("the server's CPU from /proc");
    ConnectCost {
        per_connect: after.saturating_sub(before) / CONNECTIONS,
        sequential_per_second: f64::from(CONNECTIONS) / elapsed.as_secs_f64(),
    }
}
