//! Self-tests of the fault-injecting proxy against a real throwaway server: plain
//! forwarding, silence (and resuming or releasing it), resets, and cuts at a protocol moment.

use std::{
    future::Future,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use integration_tests::{FaultProxy, Postgres};
use tokio::{io::AsyncReadExt as _, net::TcpStream, task::JoinHandle};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

const WAIT: Duration = Duration::from_secs(10);
/// How long a query through a silenced connection must stay unanswered.
const SILENT_FOR: Duration = Duration::from_millis(500);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The app role's settings, through the proxy, with `application_name`.
fn proxied_config(pg: &Postgres, proxy: &FaultProxy, application_name: &str) -> Config {
    let mut config: Config = proxy.url_for(&pg.database_url()).parse().expect("parse proxied database URL");
    config.application_name(application_name).connect_timeout(WAIT);
    config
}

async fn connect(config: &Config) -> Client {
    connect_watched(config).await.0
}

/// Connect, and keep the connection task's handle to see how the connection ended.
async fn connect_watched(config: &Config) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, connection) = config.connect(NoTls).await.expect("connect through the proxy");
    (client, tokio::spawn(connection))
}

/// Whether the connection task ended because the socket was reset (RST, not a clean close).
async fn ended_by_reset(connection: JoinHandle<Result<(), tokio_postgres::Error>>) -> bool {
    let ended =
        tokio::time::timeout(WAIT, connection).await.expect("connection task ends").expect("join connection task");
    let Err(err) = ended else {
        return false;
    };
    let io = std::error::Error::source(&err).and_then(|source| source.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| io.kind() == ErrorKind::ConnectionReset)
}

/// The value of a one-row, one-column simple query.
async fn simple_value(client: &Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.expect("simple query through the proxy");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row with a value")
}

/// Rows in `table`, counted over a direct (unproxied) connection.
async fn row_count(pg: &Postgres, table: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM {table}");
    pg.app_client().await.query_one(&sql, &[]).await.expect("count rows over a direct connection").get(0)
}

/// Poll `condition` until it holds; false after `timeout`.
async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test]
async fn url_for_replaces_only_the_port() {
    let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
    let proxy = FaultProxy::start(upstream).await;
    let port = proxy.port();
    assert_eq!(proxy.addr(), SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    assert_eq!(proxy.upstream(), upstream);
    assert_eq!(
        proxy.url_for("postgres://app:pw@127.0.0.1:5432/app"),
        format!("postgres://app:pw@127.0.0.1:{port}/app")
    );
    assert_eq!(
        proxy.url_for("postgres://app:p:w@127.0.0.1:5432/app?sslmode=disable"),
        format!("postgres://app:p:w@127.0.0.1:{port}/app?sslmode=disable")
    );
    assert_eq!(proxy.url_for("postgres://127.0.0.1/app"), format!("postgres://127.0.0.1:{port}/app"));
    assert_eq!(proxy.url_for("postgresql://u@[::1]:5432"), format!("postgresql://u@[::1]:{port}"));
}

#[tokio::test]
async fn forwards_queries_and_counts_connections() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    assert_eq!((proxy.connections(), proxy.accepted()), (0, 0));

    let client = connect(&proxied_config(&pg, &proxy, "proxy-forward")).await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");
    let row = client.query_one("SELECT $1::int + 1, current_user::text", &[&41i32]).await.expect("extended query");
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "app");
    assert_eq!((proxy.connections(), proxy.accepted()), (1, 1));
    assert_eq!(pg.connection_count("proxy-forward").await, 1);

    // A client that goes away closes both sides.
    drop(client);
    assert!(proxy.wait_connections(0, WAIT).await, "proxied connection closed after the client left");
    assert!(eventually(WAIT, || async { pg.connection_count("proxy-forward").await == 0 }).await);
    assert_eq!(proxy.accepted(), 1);

    // Dropping the proxy closes what is still open.
    let client = connect(&proxied_config(&pg, &proxy, "proxy-forward")).await;
    assert_eq!(simple_value(&client, "SELECT 2").await, "2");
    drop(proxy);
    client.simple_query("SELECT 3").await.expect_err("the proxy is gone");
    assert!(client.is_closed());
}

#[tokio::test]
async fn silence_hangs_in_flight_query_and_new_connections_still_work_until_resumed() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let silenced = connect(&proxied_config(&pg, &proxy, "proxy-silenced")).await;
    assert_eq!(simple_value(&silenced, "SELECT 1").await, "1");

    assert_eq!(proxy.silence_all(), 1);
    let in_flight = silenced.simple_query("SELECT 'late'");
    tokio::pin!(in_flight);
    assert!(tokio::time::timeout(SILENT_FOR, &mut in_flight).await.is_err(), "a silenced connection answers nothing");
    assert!(!silenced.is_closed(), "silence keeps the connection open");

    // Connections made after the silence are not affected.
    let fresh = connect(&proxied_config(&pg, &proxy, "proxy-fresh")).await;
    assert_eq!(simple_value(&fresh, "SELECT 2").await, "2");
    assert_eq!(proxy.connections(), 2);
    // The server still holds the silenced backend (it only sees an idle client).
    assert_eq!(pg.connection_count("proxy-silenced").await, 1);

    // Resuming delivers the held request and its answer.
    assert_eq!(proxy.resume_silenced(), 1);
    let messages = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("the in-flight query completes after resume")
        .expect("the in-flight query succeeds after resume");
    let late = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    assert_eq!(late, Some("late"));
    assert_eq!(simple_value(&silenced, "SELECT 3").await, "3");
}

#[tokio::test]
async fn release_silenced_closes_the_silenced_connections_only() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let silenced = connect(&proxied_config(&pg, &proxy, "proxy-silenced")).await;
    assert_eq!(simple_value(&silenced, "SELECT 1").await, "1");
    assert_eq!(proxy.silence_all(), 1);
    let fresh = connect(&proxied_config(&pg, &proxy, "proxy-fresh")).await;

    assert_eq!(proxy.release_silenced(), 1);
    let err = tokio::time::timeout(WAIT, silenced.simple_query("SELECT 2"))
        .await
        .expect("a released connection fails promptly")
        .expect_err("a released connection is closed");
    assert!(silenced.is_closed(), "client closed after: {err}");
    assert_eq!(simple_value(&fresh, "SELECT 3").await, "3");
    assert!(proxy.wait_connections(1, WAIT).await);
    assert!(eventually(WAIT, || async { pg.connection_count("proxy-silenced").await == 0 }).await);
}

#[tokio::test]
async fn reset_all_fails_the_next_use_and_closes_upstream() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let (client, connection) = connect_watched(&proxied_config(&pg, &proxy, "proxy-reset")).await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");

    assert_eq!(proxy.reset_all(), 1);
    let err = tokio::time::timeout(WAIT, client.simple_query("SELECT 2"))
        .await
        .expect("a reset connection fails promptly")
        .expect_err("a reset connection is closed");
    assert!(client.is_closed(), "client closed after: {err}");
    assert!(ended_by_reset(connection).await, "the client saw an RST");
    assert!(proxy.wait_connections(0, WAIT).await);
    assert!(eventually(WAIT, || async { pg.connection_count("proxy-reset").await == 0 }).await, "backend gone");

    // New connections work.
    let fresh = connect(&proxied_config(&pg, &proxy, "proxy-reset")).await;
    assert_eq!(simple_value(&fresh, "SELECT 3").await, "3");
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn reset_all_sends_an_rst_not_a_fin() {
    let pg = Postgres::start().await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let mut raw = TcpStream::connect(proxy.addr()).await.expect("raw connect to the proxy");
    assert!(proxy.wait_connections(1, WAIT).await);

    assert_eq!(proxy.reset_all(), 1);
    let mut buf = [0; 16];
    let read = tokio::time::timeout(WAIT, raw.read(&mut buf)).await.expect("the reset arrives promptly");
    match read {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a connection reset, read {n} bytes (0 = FIN)"),
    }
}

#[tokio::test]
async fn cut_after_insert_tag_loses_the_answer_but_keeps_the_row() {
    let pg = Postgres::start().await;
    pg.apply_sql_as_app("CREATE TABLE cut_insert (id int PRIMARY KEY)").await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let (client, connection) = connect_watched(&proxied_config(&pg, &proxy, "proxy-cut-insert")).await;
    // Prepared before arming, so only the INSERT's own answer can trip the trigger.
    let insert = client.prepare("INSERT INTO cut_insert VALUES ($1)").await.expect("prepare insert");

    proxy.cut_after_server_sends(b"INSERT 0 1");
    assert!(!proxy.wait_cut(Duration::ZERO).await, "armed, not fired yet");
    let err = client.execute(&insert, &[&1i32]).await.expect_err("the client never hears the INSERT's answer");
    assert!(proxy.wait_cut(WAIT).await, "the trigger fired");
    assert!(client.is_closed(), "client closed after: {err}");
    assert!(ended_by_reset(connection).await, "the client saw an RST");
    assert_eq!(row_count(&pg, "cut_insert").await, 1, "the autocommit INSERT committed");

    // One-shot: a new connection inserts normally.
    let fresh = connect(&proxied_config(&pg, &proxy, "proxy-cut-insert")).await;
    assert_eq!(fresh.execute("INSERT INTO cut_insert VALUES (2)", &[]).await.expect("insert after the cut"), 1);
    assert_eq!(row_count(&pg, "cut_insert").await, 2);
}

#[tokio::test]
async fn cut_after_commit_tag_loses_the_answer_but_keeps_the_transaction() {
    let pg = Postgres::start().await;
    pg.apply_sql_as_app("CREATE TABLE cut_commit (id int PRIMARY KEY)").await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let (client, connection) = connect_watched(&proxied_config(&pg, &proxy, "proxy-cut-commit")).await;

    client.batch_execute("BEGIN; INSERT INTO cut_commit VALUES (1);").await.expect("begin and insert");
    assert_eq!(row_count(&pg, "cut_commit").await, 0, "not visible before COMMIT");
    proxy.cut_after_server_sends(b"COMMIT");
    let err = client.batch_execute("COMMIT").await.expect_err("the client never hears the COMMIT's answer");
    assert!(proxy.wait_cut(WAIT).await, "the trigger fired");
    assert!(client.is_closed(), "client closed after: {err}");
    assert!(ended_by_reset(connection).await, "the client saw an RST");
    assert_eq!(row_count(&pg, "cut_commit").await, 1, "the transaction committed");
}

#[tokio::test]
async fn cut_when_client_sends_delivers_the_request_then_cuts() {
    let pg = Postgres::start().await;
    pg.apply_sql_as_app("CREATE TABLE cut_request (id int PRIMARY KEY)").await;
    let proxy = FaultProxy::for_postgres(&pg).await;
    let (client, connection) = connect_watched(&proxied_config(&pg, &proxy, "proxy-cut-request")).await;
    assert_eq!(simple_value(&client, "SELECT 1").await, "1");

    proxy.cut_when_client_sends(b"INSERT INTO cut_request");
    let err = client.simple_query("INSERT INTO cut_request VALUES (7)").await.expect_err("the client is cut off");
    assert!(proxy.wait_cut(WAIT).await, "the trigger fired");
    assert!(client.is_closed(), "client closed after: {err}");
    assert!(ended_by_reset(connection).await, "the client saw an RST");
    // The server received the request and ran it although its client is gone.
    assert!(eventually(WAIT, || async { row_count(&pg, "cut_request").await == 1 }).await, "the INSERT ran");
    assert!(proxy.wait_connections(0, WAIT).await);
}
