//! The warmup gate at INIT: permanent failures become Lambda init errors that
//! name the cause and the handler never runs; a database that is down at
//! INIT does not wedge the environment.

use std::time::Duration;

use integration_tests::orders::{
    get_order, orders_function, post_valid_order, postgres, status, OrdersEnv, FUNCTION_NAME, MIGRATION, STARTUP,
};
use integration_tests::{InitError, InvokeOptions, Postgres, RuntimeApi, APP_PASSWORD};

/// Starts `orders` against `pg` and returns the init error it reports, after
/// checking that it exited without ever asking for an event
/// ([`integration_tests::Function::expect_init_error`]).
async fn init_error(pg: &Postgres, url: Option<&str>, env: &[(&str, &str)]) -> InitError {
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let mut builder = orders_function(pg, env);
    if let Some(url) = url {
        builder = builder.env("DATABASE_URL", url);
    }
    builder.spawn(&api).expect_init_error(&api, STARTUP).await
}

#[tokio::test]
async fn a_missing_table_fails_init_with_its_name() {
    let pg = postgres().await;
    let error = init_error(&pg, None, &[]).await;
    assert_eq!(error.error_type(), Some("RuntimeAdapter.WarmupFailed"));
    let message = error.error_message().expect("a message");
    assert!(message.contains(r#"relation "orders" does not exist"#), "{message}");
    assert!(message.contains("42P01"), "{message}");
    assert!(message.contains("phase 2"), "{message}");
}

#[tokio::test]
async fn a_missing_column_fails_init_with_its_name() {
    let pg = postgres().await;
    pg.apply_sql_as_app("CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())").await;
    let error = init_error(&pg, None, &[]).await;
    let message = error.error_message().expect("a message");
    assert!(message.contains(r#"column "quantity" does not exist"#), "{message}");
    assert!(message.contains("42703"), "{message}");
}

#[tokio::test]
async fn bad_credentials_and_unknown_databases_fail_init_at_once() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let port = pg.port();
    let cases = [
        (
            format!("postgres://app:wrong-password@127.0.0.1:{port}/app"),
            "28P01",
            r#"password authentication failed for user "app""#,
        ),
        (format!("postgres://nobody:wrong-password@127.0.0.1:{port}/app"), "28P01", r#"for user "nobody""#),
    ];
    for (url, code, text) in &cases {
        let mark = pg.log_mark();
        let error = init_error(&pg, Some(url), &[("DB_WARMUP_ATTEMPTS", "3")]).await;
        let message = error.error_message().expect("a message");
        assert!(message.contains(code) && message.contains(text), "{message}");
        let attempts = pg.log_since(mark).matches("password authentication failed").count();
        assert_eq!(attempts, 1, "a permanent failure is not retried");
    }

    let url = format!("postgres://app:{APP_PASSWORD}@127.0.0.1:{port}/nosuchdb");
    let error = init_error(&pg, Some(&url), &[]).await;
    let message = error.error_message().expect("a message");
    assert!(message.contains(r#"database "nosuchdb" does not exist"#) && message.contains("3D000"), "{message}");
}

#[tokio::test]
async fn a_database_down_at_init_does_not_wedge_the_environment() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    pg.stop().await;

    let env = OrdersEnv::start_with(
        pg,
        &[("DB_WARMUP_ATTEMPTS", "2"), ("DB_WARMUP_RETRY_DELAY_MS", "100"), ("DB_RETRY_ATTEMPTS", "2")],
    )
    .await;
    assert!(env.api.init_errors().is_empty(), "an unreachable database is not an init error");

    let down = env.api.invoke(get_order("1")).await;
    assert!(down.outcome.is_error(), "{:?}", down.outcome);
    assert_eq!(down.outcome.error_type(), Some("RuntimeAdapter.DatabaseUnavailable"));
    let message = down.outcome.error_message().expect("a message");
    assert!(message.contains("database unavailable after 2 attempt(s)"), "{message}");
    // Two refused connects and one pause between them, at most the base
    // delay (full jitter's first ceiling), plus slack for a shared machine.
    let bound = runtime_adapter::Config::default().retry_base_delay + Duration::from_millis(500);
    assert!(down.latency < bound, "two attempts and one pause, then the answer: {:?} (bound {bound:?})", down.latency);
    eprintln!("measured: database down, error answered in {:?}", down.latency);

    env.pg.start_again().await;
    let created = env.api.invoke(post_valid_order("tea", 1)).await;
    assert_eq!(status(created.response()), 201, "{:?}", created.outcome);
    let found = env.api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 200, "{:?}", found.outcome);
}

#[tokio::test]
async fn with_the_database_unreachable_the_error_answer_beats_a_2_5_s_timeout() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    pg.stop().await;
    // 50 retries from 200 ms would take far longer than the function's
    // 2.5 s: only the deadline can end them in time.
    let env = OrdersEnv::start_with(
        pg,
        &[("DB_WARMUP_ATTEMPTS", "1"), ("DB_RETRY_ATTEMPTS", "50"), ("DB_RETRY_BASE_DELAY_MS", "200")],
    )
    .await;
    let timeout = Duration::from_millis(2500);
    let down = env.api.invoke_with(get_order("1"), InvokeOptions::default().function_timeout(timeout)).await;
    assert_eq!(down.outcome.error_type(), Some("RuntimeAdapter.DatabaseUnavailable"), "{:?}", down.outcome);
    let message = down.outcome.error_message().expect("a message");
    assert!(message.contains("stopped to answer before the invocation's deadline"), "{message}");
    assert!(down.latency < timeout, "answered before the deadline: {:?}", down.latency);
    // It retried, and stopped when the next pause would have run past the
    // deadline less the margin, not when the attempts ran out.
    let attempts: u32 = message
        .strip_prefix("database unavailable after ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attempt count in {message}"));
    assert!((2..50).contains(&attempts), "{message}");
    eprintln!("measured: database unreachable, 2.5 s timeout, error answer after {:?}", down.latency);
}
