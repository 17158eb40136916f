//! Local invocation as Rust Lambda users do it: `cargo lambda watch` runs
//! `orders` (through `cargo run`) with the `[package.metadata.lambda.env]`
//! table of `example-functions/Cargo.toml`, and `cargo lambda invoke
//! --data-file` sends it a fixture kept in the repo. One round trip against
//! a throwaway PostgreSQL at the address that table names.

use std::net::{Ipv4Addr, TcpListener};

use integration_tests::cargo_lambda::{metadata_env, Watch};
use integration_tests::orders::{body, status};
use integration_tests::{migrations, Postgres};

/// The port of a `postgres://user:password@host:port/db` URL.
fn port_of(url: &str) -> u16 {
    let authority = url.rsplit_once('@').map_or(url, |(_, rest)| rest);
    let host_port = authority.split_once('/').map_or(authority, |(hp, _)| hp);
    let port = host_port.rsplit_once(':').unwrap_or_else(|| panic!("no port in {host_port}")).1;
    port.parse().unwrap_or_else(|_| panic!("`{port}` is not a port"))
}

#[tokio::test]
async fn watch_and_invoke_round_trip_against_the_metadata_database() {
    let env = metadata_env();
    let url = env.get("DATABASE_URL").expect("[package.metadata.lambda.env] sets DATABASE_URL");
    let port = port_of(url);
    // cargo-lambda 1.9.2 lets that table win over `--env-var`, so the test
    // database must be where the table says.
    assert!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
        "port {port}, where [package.metadata.lambda.env] puts the local database, is in use: \
         stop `scripts/local` (or whatever listens there) and run the test again"
    );
    let pg = Postgres::builder().port(port).start().await;
    assert_eq!(url, &pg.database_url(), "the metadata table names the throwaway database (user, password, port, db)");
    migrations::apply_all(&pg).await;

    let watch = Watch::start().await;
    let answer = watch.invoke("orders", "example-functions/events/post-order.json").await;

    assert_eq!(status(&answer), 201, "{answer}\nwatch output:\n{}", watch.output());
    let order = body(&answer);
    assert_eq!(order["item"], "coffee beans");
    assert_eq!(order["quantity"], 2);
    let id = order["id"].as_i64().expect("numeric id");
    let row = pg
        .app_client()
        .await
        .query_one("SELECT item, quantity FROM orders WHERE id = $1", &[&id])
        .await
        .expect("the order is in the throwaway database");
    assert_eq!(row.get::<_, String>(0), "coffee beans");
    assert_eq!(row.get::<_, i32>(1), 2);
}
