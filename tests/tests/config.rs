//! Bad configuration fails INIT, through the real binary and the Runtime
//! API, with a message that names the variable and the problem; the handler
//! never runs. Settings that are only redundant together pass INIT with one
//! WARN line. (The parser's own cases are unit tests in `config.rs`.)

use std::time::Duration;

use integration_tests::orders::{get_order, orders_function, postgres, status, OrdersEnv, FUNCTION_NAME};
use integration_tests::RuntimeApi;

#[tokio::test]
async fn every_bad_setting_fails_init_naming_the_variable() {
    let pg = postgres().await;
    let cases: &[(&str, &str, &str)] = &[
        ("DB_POOL_SIZE", "abc", r#"DB_POOL_SIZE is not a whole number ("abc")"#),
        ("DB_POOL_SIZE", "0", "DB_POOL_SIZE is 0, which is not allowed here"),
        ("DB_POOL_TIMEOUT_MS", "-1", "DB_POOL_TIMEOUT_MS is negative (-1)"),
        ("DB_CONNECT_TIMEOUT_MS", "5s", r#"DB_CONNECT_TIMEOUT_MS is not a whole number ("5s")"#),
        ("DB_STATEMENT_TIMEOUT_MS", "-100", "DB_STATEMENT_TIMEOUT_MS is negative (-100)"),
        ("DB_HEALTH_CHECK_INTERVAL_MS", "often", r#"DB_HEALTH_CHECK_INTERVAL_MS is not a whole number ("often")"#),
        ("DB_HEALTH_CHECK_TIMEOUT_MS", "0", "DB_HEALTH_CHECK_TIMEOUT_MS is 0, which is not allowed here"),
        ("DB_MAX_AGE_MS", "0", "DB_MAX_AGE_MS is 0, which is not allowed here"),
        ("DB_WARMUP_ATTEMPTS", "0", "DB_WARMUP_ATTEMPTS is 0, which is not allowed here"),
        ("DB_WARMUP_RETRY_DELAY_MS", "1e3", r#"DB_WARMUP_RETRY_DELAY_MS is not a whole number ("1e3")"#),
        ("AWS_LAMBDA_MAX_CONCURRENCY", "many", r#"AWS_LAMBDA_MAX_CONCURRENCY is not a whole number ("many")"#),
        ("DATABASE_URL", "", "DATABASE_URL is not set"),
        ("DATABASE_URL", "mysql://app:pw@127.0.0.1/app", "DATABASE_URL is not a postgres:// URL"),
        ("DATABASE_URL", "postgres://app:pw@127.0.0.1:99999/app", "DATABASE_URL is not a valid connection URL"),
        ("DATABASE_URL", "postgres://app:pw@127.0.0.1:5432", "DATABASE_URL names no database"),
    ];
    for (var, value, expected) in cases {
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let mut function = orders_function(&pg, &[(var, value)]).spawn(&api);
        eprintln!("case {var}={value}");
        let error = function.expect_init_error(&api, Duration::from_secs(30)).await;
        assert_eq!(error.error_type(), Some("RuntimeAdapter.InvalidConfiguration"), "{var}={value}");
        let message = error.error_message().expect("a message");
        assert!(message.starts_with(&format!("invalid configuration: {expected}")), "{var}={value}: {message}");
        assert!(message.contains("expected") || message.contains("contradict"), "shows the expected form: {message}");
    }
}

#[tokio::test]
async fn a_short_max_age_alone_passes_init_with_one_warning() {
    // The default health-check interval (30 s) is longer than this maximum
    // age: redundant, not wrong, so the interval is capped and INIT goes on.
    let env = OrdersEnv::start(&[("DB_MAX_AGE_MS", "1000")]).await;
    assert!(env.api.init_errors().is_empty(), "no init error: {:?}", env.api.init_errors());

    let output = env.function.output();
    let warning = "DB_HEALTH_CHECK_INTERVAL_MS (30000 ms) is longer than DB_MAX_AGE_MS (1000 ms); \
                   the health-check interval is capped at 1000 ms";
    let lines: Vec<&str> = output.lines().filter(|line| line.contains(warning)).collect();
    assert_eq!(lines.len(), 1, "one warning at INIT; output:\n{output}");
    assert!(lines[0].contains("WARN"), "logged at WARN: {}", lines[0]);

    let answer = env.api.invoke(get_order("1")).await;
    assert_eq!(status(answer.response()), 404, "the function serves: {:?}", answer.outcome);
}
