//! The credential tests proper, compiled with integration-tests' `aws`
//! feature (see `../credentials.rs`).

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::certs::{tls_postgres, TestCa};
use integration_tests::container_credentials::ContainerCredentials;
use integration_tests::inproc::context;
use integration_tests::moto::{Moto, ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY};
use integration_tests::orders::{orders_function, postgres, FUNCTION_NAME, MIGRATION, STARTUP};
use integration_tests::{Postgres, RuntimeApi, APP_DATABASE, APP_PASSWORD, APP_USER};
use runtime_adapter::CredentialSource;
use runtime_adapter::{Adapter, Config, Error, ErrorKind};

const ROTATED_PASSWORD: &str = "r0tated-Pa55word-plover";
const INVOCATION: Duration = Duration::from_secs(20);

fn secret_json(pg: &Postgres, password: &str) -> String {
    // `port` as a string, as some RDS secrets hold it.
    serde_json::json!({
        "engine": "postgres",
        "host": "127.0.0.1",
        "port": pg.port().to_string(),
        "username": APP_USER,
        "password": password,
        "dbname": APP_DATABASE,
    })
    .to_string()
}

fn config(vars: &[(String, String)]) -> Result<Config, runtime_adapter::ConfigError> {
    let vars: HashMap<String, String> = vars.iter().cloned().collect();
    Config::from_lookup(|name| vars.get(name).cloned())
}

async fn init(vars: &[(String, String)]) -> Result<Adapter, Error> {
    Adapter::builder().config(config(vars).expect("valid test configuration")).init().await
}

fn with(moto: &Moto, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars = moto.env();
    vars.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    vars
}

async fn current_user(adapter: &Adapter) -> String {
    let db = adapter.db(&context(INVOCATION)).await.expect("a connection");
    db.query_one("SELECT current_user::text", &[]).await.expect("query").get(0)
}

#[tokio::test]
async fn the_adapter_connects_with_the_secrets_credentials() {
    let (pg, moto) = tokio::join!(Postgres::start(), Moto::start());
    let arn = moto.create_secret("db/app", &secret_json(&pg, APP_PASSWORD)).await;
    // No DATABASE_URL: host, port, database, user and password all come from the secret.
    let adapter = init(&with(&moto, &[("DB_SECRET_ARN", &arn)])).await.expect("init with the secret");
    assert!(matches!(adapter.config().credentials.source(), CredentialSource::SecretsManager { .. }));
    assert_eq!(current_user(&adapter).await, APP_USER);
    assert!(!format!("{:?}", adapter.config()).contains(APP_PASSWORD), "Debug shows no secret");
}

#[tokio::test]
async fn an_rds_master_secret_takes_the_address_from_the_url() {
    let (pg, moto) = tokio::join!(Postgres::start(), Moto::start());
    // RDS-managed master secrets hold only the user name and password.
    let only_login = serde_json::json!({ "username": APP_USER, "password": APP_PASSWORD }).to_string();
    let arn = moto.create_secret("rds!db-master", &only_login).await;
    let url = format!("postgres://127.0.0.1:{}/{APP_DATABASE}", pg.port());
    let adapter = init(&with(&moto, &[("DB_SECRET_ARN", &arn), ("DATABASE_URL", &url)])).await.expect("init");
    assert_eq!(current_user(&adapter).await, APP_USER);
}

#[tokio::test]
async fn a_rotated_secret_is_used_from_the_next_refresh_and_no_invocation_fails() {
    let (pg, moto) = tokio::join!(Postgres::start(), Moto::start());
    let arn = moto.create_secret("db/rotating", &secret_json(&pg, APP_PASSWORD)).await;
    let adapter = init(&with(
        &moto,
        &[("DB_SECRET_ARN", &arn), ("DB_MAX_AGE_MS", "1500"), ("DB_HEALTH_CHECK_INTERVAL_MS", "1000")],
    ))
    .await
    .expect("init");
    assert_eq!(current_user(&adapter).await, APP_USER);

    // Rotation: the secret and the role change together, as a rotation
    // Lambda does. Connections already open stay authenticated.
    moto.put_secret(&arn, &secret_json(&pg, ROTATED_PASSWORD)).await;
    pg.batch(&format!("ALTER ROLE {APP_USER} PASSWORD '{ROTATED_PASSWORD}'")).await;
    assert_eq!(current_user(&adapter).await, APP_USER, "the current pool still works");

    let mark = pg.log_mark();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    for _ in 0..3 {
        assert_eq!(current_user(&adapter).await, APP_USER, "no invocation fails across the rotation");
    }
    let stats = adapter.stats();
    assert!(stats.refreshes_max_age >= 1, "the pool was refreshed: {stats:?}");
    assert_eq!(stats.refresh_failures, 0, "the refresh read the rotated secret: {stats:?}");
    let log = pg.log_since(mark);
    assert!(log.contains(&format!("connection authorized: user={APP_USER}")), "new connections authenticated:\n{log}");
    assert!(!log.contains("password authentication failed"), "the old password was not tried:\n{log}");
}

#[tokio::test]
async fn a_secret_rotated_between_refreshes_is_read_again_when_a_connection_fails_to_authenticate() {
    let (pg, moto) = tokio::join!(Postgres::start(), Moto::start());
    let arn = moto.create_secret("db/rotated-early", &secret_json(&pg, APP_PASSWORD)).await;
    let adapter =
        init(&with(&moto, &[("DB_SECRET_ARN", &arn), ("AWS_LAMBDA_FUNCTION_NAME", "rotation")])).await.expect("init");
    assert_eq!(current_user(&adapter).await, APP_USER);

    moto.put_secret(&arn, &secret_json(&pg, ROTATED_PASSWORD)).await;
    pg.batch(&format!("ALTER ROLE {APP_USER} PASSWORD '{ROTATED_PASSWORD}'")).await;
    // The pool's connection dies long before the pool's maximum age: the
    // replacement is opened with the credentials of the last build, fails
    // with 28P01, and the secret is read once more.
    let killed = pg.kill_backends("rotation").await;
    assert_eq!(killed.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mark = pg.log_mark();
    assert_eq!(current_user(&adapter).await, APP_USER, "the invocation succeeds");
    let log = pg.log_since(mark);
    assert!(log.contains("password authentication failed"), "the stale password was refused once:\n{log}");
    let stats = adapter.stats();
    assert_eq!((stats.refreshes_max_age, stats.refreshes_failed_check), (0, 0), "no refresh: {stats:?}");
}

#[tokio::test]
async fn a_wrong_secret_arn_fails_init_with_a_clear_message() {
    let (pg, moto) = tokio::join!(Postgres::start(), Moto::start());
    let missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:no-such-secret-AbCdEf";
    let url = pg.database_url();
    let error =
        init(&with(&moto, &[("DB_SECRET_ARN", missing), ("DATABASE_URL", &url)])).await.expect_err("init must fail");
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert_eq!(error.error_type(), "RuntimeAdapter.CredentialsUnavailable");
    let message = error.to_string();
    assert!(message.contains("the Secrets Manager secret named by DB_SECRET_ARN"), "{message}");
    assert!(message.contains("ResourceNotFoundException"), "{message}");

    // The same through the real function: reported to /runtime/init/error.
    pg.apply_sql_as_app(MIGRATION).await;
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let mut env: Vec<(&str, &str)> = vec![("DB_SECRET_ARN", missing)];
    let moto_env = moto.env();
    env.extend(moto_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let init_error = orders_function(&pg, &env).spawn(&api).expect_init_error(&api, STARTUP).await;
    assert_eq!(init_error.error_type(), Some("RuntimeAdapter.CredentialsUnavailable"));
    let reported = init_error.error_message().unwrap_or_default();
    assert!(reported.contains("DB_SECRET_ARN") && reported.contains("ResourceNotFoundException"), "{reported}");
}

#[tokio::test]
async fn iam_auth_offers_a_fresh_token_over_tls_and_a_refusal_fails_init() {
    let ca = TestCa::new("iam test CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca.write_pem(dir.path()).display().to_string();
    let url = format!("postgres://{APP_USER}@localhost:{}/{APP_DATABASE}?sslmode=verify-full", pg.port());
    let vars: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("DB_IAM_AUTH", "true"),
        ("DB_SSL_ROOT_CERT", root.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mark = pg.log_mark();
    // PostgreSQL here does not know IAM: the token, offered as the password
    // over verified TLS, is refused; the adapter signs a new one and tries
    // once more, then fails INIT with the server's message.
    let error = init(&vars).await.expect_err("a token is not the role's password");
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert_eq!(error.code().map(|c| c.code()), Some("28P01"), "{error}");
    let log = pg.log_since(mark);
    assert_eq!(log.matches("password authentication failed").count(), 2, "one retry with a fresh token:\n{log}");

    // Without TLS, IAM is refused at once: the token could travel in plaintext.
    let mut plain = vars.clone();
    plain[0].1 = format!("postgres://{APP_USER}@localhost:{}/{APP_DATABASE}?sslmode=prefer", pg.port());
    let err = config(&plain).expect_err("IAM without TLS");
    assert!(err.to_string().contains("DB_IAM_AUTH and sslmode contradict each other"), "{err}");
    // A pool meant to live longer than a token is capped at a token's lifetime, with a warning.
    let mut old = vars.clone();
    old.push(("DB_MAX_AGE_MS".to_owned(), "1800000".to_owned()));
    let capped = config(&old).expect("capped, not refused");
    assert_eq!(capped.max_age, Duration::from_secs(900));
    let warnings: Vec<String> = capped.warnings().iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.contains("longer than the 15 minutes an IAM authentication token is valid")),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_refused_iam_token_is_followed_by_one_signed_with_renewed_credentials() {
    // The function reads its AWS credentials as on ECS or SnapStart: from a
    // container credentials endpoint, which hands out a new key each time.
    // A token names its key (X-Amz-Credential), so a token signed after the
    // renewal differs from the refused one.
    let ca = TestCa::new("iam renewal CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let endpoint = ContainerCredentials::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca.write_pem(dir.path()).display().to_string();
    let url = format!("postgres://{APP_USER}@localhost:{}/{APP_DATABASE}?sslmode=verify-full", pg.port());
    let mut env: Vec<(String, String)> = endpoint.env();
    env.extend(
        [("DATABASE_URL", url.as_str()), ("DB_IAM_AUTH", "true"), ("DB_SSL_ROOT_CERT", &root), ("AWS_REGION", REGION)]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mark = pg.log_mark();
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let error = orders_function(&pg, &env).spawn(&api).expect_init_error(&api, STARTUP).await;
    let message = error.error_message().unwrap_or_default();
    assert!(message.contains("28P01"), "the server's refusal: {message}");

    let log = pg.log_since(mark);
    assert_eq!(log.matches("password authentication failed").count(), 2, "two tokens offered:\n{log}");
    let keys = endpoint.served();
    assert_eq!(keys.len(), 2, "credentials fetched for the first token and renewed for the second: {keys:?}");
    assert_ne!(keys[0], keys[1], "the second token is signed with other credentials than the refused one");
}

#[tokio::test]
async fn secrets_need_no_call_per_invocation() {
    let (pg, moto) = tokio::join!(postgres(), Moto::start());
    let arn = moto.create_secret("db/quiet", &secret_json(&pg, APP_PASSWORD)).await;
    let adapter = init(&with(&moto, &[("DB_SECRET_ARN", &arn)])).await.expect("init");
    // Break the secret: invocations that do not build a pool never read it.
    moto.put_secret(&arn, "not json").await;
    for _ in 0..5 {
        assert_eq!(current_user(&adapter).await, APP_USER);
    }
}
