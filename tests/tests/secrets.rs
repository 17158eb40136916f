//! The password never appears in anything the function writes or reports,
//! on success and failure paths alike, even at the most verbose log level.

use std::time::Duration;

use integration_tests::orders::{
    get_order, orders_function, post_valid_order, postgres, status, OrdersEnv, FUNCTION_NAME, MIGRATION,
};
use integration_tests::{free_port, RuntimeApi, APP_PASSWORD};

const VERBOSE: [(&str, &str); 2] = [("AWS_LAMBDA_LOG_LEVEL", "trace"), ("RUST_LOG", "trace")];

fn assert_secret_free(what: &str, text: &str, secret: &str) {
    assert!(!text.contains(secret), "{what} contains the password:\n{text}");
}

#[tokio::test]
async fn the_password_is_absent_from_output_on_success() {
    let env = OrdersEnv::start(&VERBOSE).await;
    let created = env.api.invoke(post_valid_order("tea", 1)).await;
    assert_eq!(status(created.response()), 201);
    let found = env.api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 200);
    let output = env.function.output();
    assert!(output.contains("pool warmed"), "logs were captured:\n{output}");
    assert_secret_free("function output", &output, APP_PASSWORD);
    assert_secret_free("responses", &format!("{:?}{:?}", created.outcome, found.outcome), APP_PASSWORD);
}

#[tokio::test]
async fn the_password_is_absent_from_output_and_errors_on_failure() {
    let pg = postgres().await;
    pg.apply_sql_as_app(MIGRATION).await;
    let wrong = "Wr0ng-Pa55word-plover";
    let closed_port = free_port();
    let cases = [
        ("wrong password", format!("postgres://app:{wrong}@127.0.0.1:{}/app", pg.port()), wrong),
        ("unreachable host", format!("postgres://app:{APP_PASSWORD}@127.0.0.1:{closed_port}/app"), APP_PASSWORD),
        ("malformed URL", format!("postgres://app:{APP_PASSWORD}@127.0.0.1:notaport/app"), APP_PASSWORD),
        (
            "malformed URL option",
            format!("postgres://app:{APP_PASSWORD}@127.0.0.1/app?sslmode={APP_PASSWORD}"),
            APP_PASSWORD,
        ),
    ];
    for (what, url, secret) in cases {
        let api = RuntimeApi::start_for(FUNCTION_NAME).await;
        let mut env: Vec<(&str, &str)> = VERBOSE.to_vec();
        env.extend([("DATABASE_URL", url.as_str()), ("DB_WARMUP_ATTEMPTS", "1")]);
        let mut function = orders_function(&pg, &env).spawn(&api);

        let mut reported = String::new();
        if what == "unreachable host" {
            // Transient: INIT goes on and the invocation reports the failure.
            assert!(api.wait_next_polls(1, Duration::from_secs(30)).await, "{}", function.output());
            let failed = api.invoke(get_order("1")).await;
            assert!(failed.outcome.is_error(), "{what}: {:?}", failed.outcome);
            reported = format!("{:?}", failed.outcome);
        } else {
            eprintln!("case: {what}");
            let error = function.expect_init_error(&api, Duration::from_secs(30)).await;
            reported.push_str(&format!("{error:?}"));
        }
        assert!(!reported.is_empty());
        assert_secret_free(&format!("{what}: reported error"), &reported, secret);
        assert_secret_free(&format!("{what}: function output"), &function.output(), secret);
    }
}
