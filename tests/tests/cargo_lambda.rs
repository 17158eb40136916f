//! Local invocation as Rust Lambda users do it: `cargo lambda watch` runs
//! the examples (through `cargo run`) with the environment the user gives
//! it, and `cargo lambda invoke --data-file` sends them fixtures kept in the
//! repo. The database is the one `DATABASE_URL` names in the watcher's
//! environment, on whatever port: nothing in `example-functions/Cargo.toml`
//! overrides it.

use integration_tests::cargo_lambda::{metadata_env, Watch};
use integration_tests::orders::{body, status};
use integration_tests::{migrations, Postgres};

/// The port `scripts/local`'s throwaway database uses, which the test's
/// database must not be on, to show the URL is the user's.
const SCRIPTS_LOCAL_PORT: u16 = 55432;

#[tokio::test]
async fn watch_serves_from_the_database_in_its_environment() {
    let table = metadata_env();
    assert!(!table.contains_key("DATABASE_URL"), "the metadata table would override the user's: {table:?}");

    let pg = Postgres::start().await;
    assert_ne!(pg.port(), SCRIPTS_LOCAL_PORT);
    migrations::apply_all(&pg).await;
    // A row only this database has: the fixture get-order.json asks for id 1.
    let client = pg.app_client().await;
    let row = client
        .query_one("INSERT INTO orders (item, quantity) VALUES ('only in this database', 7) RETURNING id", &[])
        .await
        .expect("seed an order");
    assert_eq!(row.get::<_, i64>(0), 1);

    let url = pg.database_url();
    let watch = Watch::start(&[("DATABASE_URL", &url)]).await;
    let found = watch.invoke("orders", "example-functions/events/get-order.json").await;
    assert_eq!(status(&found), 200, "{found}\nwatch output:\n{}", watch.output());
    assert_eq!(body(&found)["item"], "only in this database");

    let created = watch.invoke("orders", "example-functions/events/post-order.json").await;
    assert_eq!(status(&created), 201, "{created}\nwatch output:\n{}", watch.output());
    let id = body(&created)["id"].as_i64().expect("numeric id");
    let row =
        client.query_one("SELECT item, quantity FROM orders WHERE id = $1", &[&id]).await.expect("committed here");
    assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("coffee beans".to_owned(), 2));

    // The axum example, on the same watcher: an HTTP API (v2) and an ALB event.
    let found = watch.invoke("orders-axum", "example-functions/events/get-order.json").await;
    assert_eq!(status(&found), 200, "{found}\nwatch output:\n{}", watch.output());
    assert_eq!(body(&found)["item"], "only in this database");
    let alb = watch.invoke("orders-axum", "example-functions/events/alb-get-order.json").await;
    assert_eq!(status(&alb), 200, "{alb}\nwatch output:\n{}", watch.output());
    assert_eq!(body(&alb)["item"], "only in this database");
    assert!(!watch.output().contains(integration_tests::APP_PASSWORD), "the password stays out of the logs");
}

#[tokio::test]
async fn watch_without_a_database_url_fails_init_naming_it() {
    let watch = Watch::start(&[]).await;
    // cargo lambda invoke prints the init error as the answer.
    let answer = watch.invoke("orders", "example-functions/events/get-order.json").await;
    assert_eq!(answer["errorType"], "RuntimeAdapter.InvalidConfiguration", "{answer}");
    let message = answer["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("DATABASE_URL is not set"), "the init error names the variable: {answer}");
}
