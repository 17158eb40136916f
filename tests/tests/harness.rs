//! Self-tests of the harness: the throwaway PostgreSQL server, the Runtime API emulator
//! (driven by a tiny hyper client and raw TCP) and the function process runner.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use integration_tests::{bin_path, Function, InvokeOptions, Outcome, Postgres, RuntimeApi, APP_PASSWORD};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_postgres::NoTls;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- postgres

/// Connect with `application_name` set, as the code under test would.
async fn connect_app(pg: &Postgres, application_name: &str) -> tokio_postgres::Client {
    let url = format!("{}?application_name={application_name}", pg.database_url());
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect as app");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn postmaster_pid(pg: &Postgres) -> u32 {
    let pid_file = std::fs::read_to_string(pg.dir().join("data/postmaster.pid")).expect("read postmaster.pid");
    pid_file.lines().next().and_then(|l| l.trim().parse().ok()).expect("pid on the first line of postmaster.pid")
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn postgres_app_role_owns_migrated_tables_and_password_stays_out_of_log() {
    let pg = Postgres::start().await;
    assert!(pg.database_url().contains(&format!(":{}/app", pg.port())));

    pg.apply_sql_as_app("CREATE TABLE things (id int PRIMARY KEY); INSERT INTO things VALUES (1)").await;
    let client = connect_app(&pg, "owner-check").await;
    let row = client
        .query_one(
            "SELECT current_user::text, (SELECT tableowner::text FROM pg_tables WHERE tablename = 'things'), \
                    (SELECT count(*) FROM things)",
            &[],
        )
        .await
        .expect("query as app");
    assert_eq!(row.get::<_, String>(0), "app");
    assert_eq!(row.get::<_, String>(1), "app");
    assert_eq!(row.get::<_, i64>(2), 1);

    let log = pg.read_log();
    assert!(log.contains("owner-check"), "application_name in log prefix");
    assert!(log.contains("connection authorized: user=app"), "log_connections on");
    assert!(!log.contains(APP_PASSWORD), "the app password must not be logged");
}

/// Every server's data directory is a copy of one template cluster: servers
/// started at once still see only what was written to them, and each has the
/// `app` role (a password login over TCP), its database and the superuser's
/// password.
#[tokio::test]
async fn postgres_servers_started_at_once_are_separate_clusters() {
    let (a, b, c) = tokio::join!(Postgres::start(), Postgres::start(), Postgres::start());
    let servers = [&a, &b, &c];
    for (i, pg) in servers.iter().enumerate() {
        pg.apply_sql_as_app(&format!("CREATE TABLE only_{i} (id int)")).await;
    }
    for (i, pg) in servers.iter().enumerate() {
        let client = connect_app(pg, "template-check").await;
        let row = client
            .query_one(
                "SELECT current_user::text, current_database()::text, \
                        array_agg(tablename::text ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'only_%'",
                &[],
            )
            .await
            .expect("query as app");
        assert_eq!(row.get::<_, String>(0), "app");
        assert_eq!(row.get::<_, String>(1), "app");
        assert_eq!(row.get::<_, Vec<String>>(2), [format!("only_{i}")], "server {i} sees only its own table");

        let (superuser, connection) =
            tokio_postgres::connect(&pg.superuser_url(), NoTls).await.expect("superuser password login over TCP");
        tokio::spawn(connection);
        let row = superuser.query_one("SELECT current_setting('data_directory')", &[]).await.expect("data_directory");
        assert_eq!(std::path::PathBuf::from(row.get::<_, String>(0)), pg.dir().join("data"));
    }
}

#[tokio::test]
async fn postgres_log_cursor_and_builder_settings() {
    let pg = Postgres::builder().max_connections(12).start().await;
    let row = pg.query("SHOW max_connections").await;
    assert_eq!(row[0].get::<_, String>(0), "12");

    let mark = pg.log_mark();
    assert!(!pg.log_since(mark).contains("cursor-marker-1"));
    pg.execute("SELECT 'cursor-marker-1'").await;
    assert!(pg.wait_for_log(mark, "cursor-marker-1", WAIT).await);
    let since = pg.log_since(mark);
    assert!(since.contains(": SELECT 'cursor-marker-1'"), "{since}");
    // Prefix: timestamp, [pid], application_name.
    let line = since.lines().find(|l| l.contains("cursor-marker-1")).expect("marker line");
    assert!(line.contains("] integration-tests-harness "), "{line}");

    let mark2 = pg.log_mark();
    assert!(!pg.log_since(mark2).contains("cursor-marker-1"));
    assert!(pg.read_log().contains("cursor-marker-1"));
}

#[tokio::test]
async fn postgres_kill_backends_terminates_only_that_application() {
    let pg = Postgres::start().await;
    let victim_a = connect_app(&pg, "victim").await;
    let victim_b = connect_app(&pg, "victim").await;
    let bystander = connect_app(&pg, "bystander").await;
    assert_eq!(pg.connection_count("victim").await, 2);
    assert_eq!(pg.connection_count_for_user("app").await, 3);
    let pids = pg.backend_pids("victim").await;
    assert_eq!(pids.len(), 2);

    let killed = pg.kill_backends("victim").await;
    assert_eq!(killed, pids);
    assert_eq!(pg.connection_count("victim").await, 0);
    assert!(victim_a.simple_query("SELECT 1").await.is_err());
    assert!(victim_b.simple_query("SELECT 1").await.is_err());
    bystander.simple_query("SELECT 1").await.expect("other connections survive");
}

#[tokio::test]
async fn postgres_stopped_backend_is_silent_until_continued() {
    let pg = Postgres::start().await;
    let client = connect_app(&pg, "frozen").await;
    let pids = pg.backend_pids("frozen").await;
    assert_eq!(pids.len(), 1);

    pg.stop_backend(pids[0]);
    let query = client.simple_query("SELECT 'thawed'");
    tokio::pin!(query);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut query).await.is_err(),
        "a stopped backend must not answer"
    );
    pg.cont_backend(pids[0]);
    tokio::time::timeout(WAIT, query).await.expect("answers after SIGCONT").expect("query succeeds");
}

#[tokio::test]
async fn postgres_restart_and_stop_start_keep_the_port() {
    let pg = Postgres::start().await;
    let port = pg.port();
    let old = connect_app(&pg, "before-restart").await;

    pg.restart().await;
    assert_eq!(pg.port(), port);
    assert!(old.simple_query("SELECT 1").await.is_err(), "old connection is gone");
    connect_app(&pg, "after-restart").await.simple_query("SELECT 1").await.expect("new connection works after restart");

    pg.stop().await;
    assert!(!pg.is_running());
    assert!(tokio_postgres::connect(&pg.database_url(), NoTls).await.is_err(), "connect fails while stopped");
    pg.start_again().await;
    assert!(pg.is_running());
    connect_app(&pg, "after-start-again")
        .await
        .simple_query("SELECT 1")
        .await
        .expect("new connection works after start_again");
}

#[tokio::test]
async fn postgres_drop_stops_server_and_removes_dir_even_with_frozen_backend() {
    let pg = Postgres::start().await;
    let dir = pg.dir().to_owned();
    let postmaster = postmaster_pid(&pg);
    let _client = connect_app(&pg, "frozen-at-drop").await;
    let backend = pg.backend_pids("frozen-at-drop").await[0];
    pg.stop_backend(backend);
    assert!(process_exists(postmaster));

    drop(pg);
    assert!(!dir.exists(), "temp dir removed");
    assert!(!process_exists(postmaster), "postmaster gone");
    // Backends exit once they notice the postmaster is gone.
    let deadline = std::time::Instant::now() + WAIT;
    while process_exists(u32::try_from(backend).expect("positive pid")) {
        assert!(std::time::Instant::now() < deadline, "backend {backend} outlived the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- runtime API

struct HttpReply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl HttpReply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap_or_else(|| panic!("missing header {name}")).to_str().expect("ASCII header")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// One HTTP/1.1 request on a fresh connection, with a minimal hyper client.
async fn request(addr: &str, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> HttpReply {
    let stream = TcpStream::connect(addr).await.expect("connect to emulator");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut builder = Request::builder().method(method).uri(path).header("host", addr);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::new(Bytes::from(body.to_owned()))).expect("build request");
    let resp = sender.send_request(req).await.expect("send request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("read body").to_bytes();
    HttpReply { status, headers, body }
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

fn completion(id: &str, kind: &str) -> String {
    format!("/2018-06-01/runtime/invocation/{id}/{kind}")
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis()).expect("fits")
}

#[tokio::test]
async fn runtime_api_round_trip_response() {
    let api = RuntimeApi::start().await;
    let addr = api.addr();
    let client = tokio::spawn(async move {
        let next = request(&addr, Method::GET, NEXT, &[], "").await;
        assert_eq!(next.status, StatusCode::OK);
        let id = next.header("lambda-runtime-aws-request-id").to_owned();
        let deadline: u64 = next.header("lambda-runtime-deadline-ms").parse().expect("numeric deadline");
        let arn = next.header("lambda-runtime-invoked-function-arn").to_owned();
        let trace = next.header("lambda-runtime-trace-id").to_owned();
        let payload = next.json();
        let echo = json!({"echo": payload, "deadline": deadline, "arn": arn, "trace": trace});
        let done = request(&addr, Method::POST, &completion(&id, "response"), &[], &echo.to_string()).await;
        assert_eq!(done.status, StatusCode::ACCEPTED);
        id
    });

    let before = now_ms();
    let invocation = api.invoke(json!({"hello": "world"})).await;
    let id = client.await.expect("client task");
    assert_eq!(invocation.request_id, id);
    assert!(!invocation.outcome.is_error());
    let response = invocation.response();
    assert_eq!(response["echo"], json!({"hello": "world"}));
    let deadline = response["deadline"].as_u64().expect("deadline");
    assert!(deadline >= before + 29_000 && deadline <= now_ms() + 30_000, "deadline {deadline} is about now + 30 s");
    assert_eq!(response["arn"], "arn:aws:lambda:us-east-1:123456789012:function:orders");
    let trace = response["trace"].as_str().expect("trace");
    assert!(trace.starts_with("Root=1-") && trace.contains(";Parent=") && trace.ends_with(";Sampled=1"), "{trace}");
    assert!(invocation.latency < WAIT);
    assert_eq!(api.next_polls(), 1);
    assert_eq!(api.delivered(), 1);
    assert_eq!(api.completed(), 1);
}

#[tokio::test]
async fn runtime_api_error_init_error_deadline_and_unknown_paths() {
    let api = RuntimeApi::start_for("billing").await;
    let addr = api.addr();

    // An explicit (past) deadline and an error outcome.
    let pending = api.enqueue(json!({"n": 1}), InvokeOptions::default().deadline_ms(600_000));
    let next = request(&addr, Method::GET, NEXT, &[], "").await;
    assert_eq!(next.header("lambda-runtime-deadline-ms"), "600000");
    assert_eq!(
        next.header("lambda-runtime-invoked-function-arn"),
        "arn:aws:lambda:us-east-1:123456789012:function:billing"
    );
    let id = next.header("lambda-runtime-aws-request-id").to_owned();
    assert_eq!(id, pending.request_id());
    let error_body = json!({"errorType": "DbUnavailable", "errorMessage": "pool timed out"});
    let reply = request(
        &addr,
        Method::POST,
        &completion(&id, "error"),
        &[("Lambda-Runtime-Function-Error-Type", "unhandled")],
        &error_body.to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let invocation = pending.wait().await;
    assert!(invocation.outcome.is_error());
    assert_eq!(invocation.outcome.error_type(), Some("DbUnavailable"));
    assert_eq!(invocation.outcome.error_message(), Some("pool timed out"));
    assert_eq!(invocation.outcome, Outcome::Error { error_type: "DbUnavailable".to_owned(), body: error_body });

    // Completing again, or an unknown id, is rejected.
    let again = request(&addr, Method::POST, &completion(&id, "response"), &[], "{}").await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    let unknown = request(&addr, Method::POST, &completion("nope", "response"), &[], "{}").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(api.rejected_completions(), vec![id.clone(), "nope".to_owned()]);

    // Init error.
    assert!(api.init_errors().is_empty());
    let init = request(
        &addr,
        Method::POST,
        "/2018-06-01/runtime/init/error",
        &[("Lambda-Runtime-Function-Error-Type", "Runtime.InitError")],
        r#"{"errorType":"ConfigError","errorMessage":"DATABASE_URL missing"}"#,
    )
    .await;
    assert_eq!(init.status, StatusCode::ACCEPTED);
    let error = api.wait_init_error(WAIT).await.expect("init error recorded");
    assert_eq!(error.header.as_deref(), Some("Runtime.InitError"));
    assert_eq!(error.error_type(), Some("ConfigError"));
    assert_eq!(error.error_message(), Some("DATABASE_URL missing"));
    assert_eq!(api.init_errors().len(), 1);

    // Restore error goes to its own list.
    let restore = request(
        &addr,
        Method::POST,
        "/2018-06-01/runtime/restore/error",
        &[],
        r#"{"errorType":"RestoreFailed","errorMessage":"x"}"#,
    )
    .await;
    assert_eq!(restore.status, StatusCode::ACCEPTED);
    assert_eq!(api.restore_errors()[0].error_type(), Some("RestoreFailed"));
    assert_eq!(api.init_errors().len(), 1);

    let missing = request(&addr, Method::GET, "/2018-06-01/runtime/nothing", &[], "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let wrong = request(&addr, Method::POST, NEXT, &[], "").await;
    assert_eq!(wrong.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_serves_64_concurrent_polls_with_distinct_invocations() {
    const N: usize = 64;
    let api = RuntimeApi::start().await;
    let mut workers = Vec::new();
    for _ in 0..N {
        let addr = api.addr();
        workers.push(tokio::spawn(async move {
            let next = request(&addr, Method::GET, NEXT, &[], "").await;
            let id = next.header("lambda-runtime-aws-request-id").to_owned();
            let n = next.json()["n"].clone();
            let body = json!({"n": n, "id": id}).to_string();
            let reply = request(&addr, Method::POST, &completion(&id, "response"), &[], &body).await;
            assert_eq!(reply.status, StatusCode::ACCEPTED);
            id
        }));
    }
    assert!(api.wait_next_polls(N, WAIT).await, "all polls arrive");
    assert!(api.wait_waiting_polls(N, WAIT).await, "all polls wait");

    let pending: Vec<_> = (0..N).map(|n| api.enqueue(json!({"n": n}), InvokeOptions::default())).collect();
    let mut ids = std::collections::HashSet::new();
    for (n, pending) in pending.into_iter().enumerate() {
        let invocation = pending.wait().await;
        assert_eq!(invocation.response()["n"], n);
        assert_eq!(invocation.response()["id"], invocation.request_id.as_str());
        ids.insert(invocation.request_id);
    }
    assert_eq!(ids.len(), N);
    let mut served = std::collections::HashSet::new();
    for worker in workers {
        served.insert(worker.await.expect("worker"));
    }
    assert_eq!(served, ids, "each poll got a different invocation");
    assert_eq!(api.waiting_polls(), 0);
}

#[tokio::test]
async fn runtime_api_abandoned_poll_takes_nothing() {
    let api = RuntimeApi::start().await;
    let mut raw = TcpStream::connect(api.addr()).await.expect("connect");
    raw.write_all(format!("GET {NEXT} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send raw request");
    assert!(api.wait_waiting_polls(1, WAIT).await);
    drop(raw);
    assert!(api.wait_waiting_polls(0, WAIT).await, "poll abandoned on close");

    let pending = api.enqueue(json!({"after": "abandon"}), InvokeOptions::default());
    // A raw HTTP/1.1 exchange, to show the wire format is plain.
    let mut raw = TcpStream::connect(api.addr()).await.expect("connect");
    raw.write_all(format!("GET {NEXT} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("send raw request");
    let mut text = String::new();
    raw.read_to_string(&mut text).await.expect("read response");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains(&format!("lambda-runtime-aws-request-id: {}", pending.request_id())),
        "{text}"
    );
    assert!(text.ends_with(r#"{"after":"abandon"}"#), "{text}");
    assert_eq!(api.delivered(), 1);
    assert_eq!(api.next_polls(), 2);

    let reply = request(&api.addr(), Method::POST, &completion(pending.request_id(), "response"), &[], "\"ok\"").await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let invocation = pending.wait().await;
    assert_eq!(invocation.response(), &json!("ok"));
}

#[tokio::test]
async fn runtime_api_try_wait_returns_pending_on_timeout() {
    let api = RuntimeApi::start().await;
    let pending = api.enqueue(json!({}), InvokeOptions::default());
    let pending = pending.try_wait(Duration::from_millis(50)).await.expect_err("nobody polled, so no outcome");
    assert!(!pending.is_delivered());
    let next = request(&api.addr(), Method::GET, NEXT, &[], "").await;
    assert!(pending.is_delivered());
    request(
        &api.addr(),
        Method::POST,
        &completion(next.header("lambda-runtime-aws-request-id"), "response"),
        &[],
        "not json",
    )
    .await;
    let invocation = pending.try_wait(WAIT).await.expect("outcome arrives");
    assert_eq!(invocation.response(), &json!("not json"));
}

#[tokio::test]
#[should_panic(expected = "no /next poll ever took it")]
async fn runtime_api_invoke_timeout_explains_what_happened() {
    let api = RuntimeApi::start().await;
    api.invoke_with(json!({}), InvokeOptions::default().timeout(Duration::from_millis(20))).await;
}

#[tokio::test]
async fn runtime_api_restore_next_waits_for_the_restore() {
    let api = RuntimeApi::start().await;
    let addr = api.addr();
    let poll =
        tokio::spawn(async move { request(&addr, Method::GET, "/2018-06-01/runtime/restore/next", &[], "").await });
    assert!(api.wait_restore_polls(1, Duration::from_secs(5)).await);
    assert!(!poll.is_finished(), "blocks until restored");
    api.restore();
    let reply = poll.await.expect("restore poll");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(api.restore_polls(), 1);
    assert_eq!(api.next_polls(), 0);
}

#[tokio::test]
async fn runtime_api_shuts_down_when_dropped() {
    let api = RuntimeApi::start().await;
    let addr = api.addr();
    let clone = api.clone();
    drop(api);
    request(&addr, Method::GET, "/", &[], "").await; // still served via the clone
    drop(clone);
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(&addr).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- function

#[tokio::test]
async fn function_env_output_and_exit_status() {
    let api = RuntimeApi::start().await;
    let script = r#"
        echo "api=$AWS_LAMBDA_RUNTIME_API name=$AWS_LAMBDA_FUNCTION_NAME mem=$AWS_LAMBDA_FUNCTION_MEMORY_SIZE version=$AWS_LAMBDA_FUNCTION_VERSION"
        echo "rust_log=${RUST_LOG:-unset} level=$AWS_LAMBDA_LOG_LEVEL custom=$CUSTOM db=${DB_FROM_TEST:-unset}"
        echo "to-stderr" >&2
        exit 3
    "#;
    let mut function = Function::builder("/bin/sh")
        .arg("-c")
        .arg(script)
        .name("billing")
        .env("CUSTOM", "yes")
        .env("DB_FROM_TEST", "set-then-removed")
        .env_remove("DB_FROM_TEST")
        .env_remove("RUST_LOG")
        .spawn(&api);
    assert!(function.pid() > 0);
    let status = function.wait_exit(WAIT).await.expect("exits");
    assert_eq!(status.code(), Some(3));
    let stdout = function.stdout();
    assert!(stdout.contains(&format!("api={} name=billing mem=128 version=$LATEST", api.addr())), "{stdout}");
    assert!(stdout.contains("rust_log=unset level=info custom=yes db=unset"), "{stdout}");
    assert_eq!(function.stderr(), "to-stderr\n");
    assert!(function.output().contains("to-stderr"));
    assert!(!function.is_running());
}

#[tokio::test]
async fn function_wait_for_output_timeout_and_kill() {
    let api = RuntimeApi::start().await;
    let mut function = Function::builder("/bin/sh").arg("-c").arg("echo ready; exec sleep 60").spawn(&api);
    assert!(function.wait_for_output("ready", WAIT).await);
    assert!(!function.wait_for_output("never", Duration::from_millis(50)).await);
    assert!(function.wait_exit(Duration::from_millis(50)).await.is_none());
    assert!(function.is_running());
    function.terminate();
    let status = function.wait_exit(WAIT).await.expect("exits on SIGTERM");
    assert!(!status.success());

    let mut stubborn =
        Function::builder("/bin/sh").arg("-c").arg("trap '' TERM; echo trapped; while :; do sleep 1; done").spawn(&api);
    assert!(stubborn.wait_for_output("trapped", WAIT).await);
    stubborn.kill();
    assert!(stubborn.wait_exit(WAIT).await.is_some());
}

#[test]
#[should_panic(expected = "binary `no-such-function` not built: run `scripts/test`")]
fn bin_path_explains_missing_binary() {
    bin_path("no-such-function");
}
