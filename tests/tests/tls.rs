//! TLS with rustls and libpq's sslmode meanings, against a throwaway
//! PostgreSQL with `ssl=on` and a CA made at test time.

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::certs::{tls_postgres, TestCa};
use integration_tests::inproc::context;
use integration_tests::orders::{get_order, orders_function, status, FUNCTION_NAME, MIGRATION};
use integration_tests::{Postgres, RuntimeApi, APP_DATABASE, APP_PASSWORD, APP_USER};
use runtime_adapter::{Adapter, Config, ConfigError, Error, ErrorKind};
use runtime_adapter::{SslMode, Tls, TlsCheck};

const INVOCATION: Duration = Duration::from_secs(20);

fn url(host: &str, pg: &Postgres, sslmode: &str) -> String {
    format!("postgres://{APP_USER}:{APP_PASSWORD}@{host}:{}/{APP_DATABASE}?sslmode={sslmode}", pg.port())
}

fn config(url: &str, root_cert: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let mut vars = HashMap::from([("DATABASE_URL".to_owned(), url.to_owned())]);
    if let Some(root) = root_cert {
        vars.insert("DB_SSL_ROOT_CERT".to_owned(), root.display().to_string());
    }
    // One attempt: a refused certificate must fail at once, not be retried.
    vars.insert("DB_WARMUP_ATTEMPTS".to_owned(), "1".to_owned());
    Config::from_lookup(|name| vars.get(name).cloned())
}

async fn init(url: &str, root_cert: Option<&std::path::Path>) -> Result<Adapter, Error> {
    let config = config(url, root_cert).expect("valid test configuration");
    Adapter::builder().config(config).init().await
}

/// As [`init`], with `public` in place of Mozilla's roots, the way the
/// library adds them: through its own trust-store construction.
async fn init_with_public_roots(
    url: &str,
    root_cert: Option<&std::path::Path>,
    public: &TestCa,
) -> Result<Adapter, Error> {
    let mut config = config(url, root_cert).expect("valid test configuration");
    let tls = config.tls.clone();
    let root_cert = if tls.trusts_public_roots() { root_cert.map(Into::into) } else { tls.root_cert().map(Into::into) };
    config.tls =
        Tls::with_public_roots(tls.mode(), root_cert, public.pem()).expect("the same settings, other public roots");
    Adapter::builder().config(config).init().await
}

/// Whether the adapter's session is encrypted, as the server sees it.
async fn encrypted(adapter: &Adapter) -> bool {
    let db = adapter.db(&context(INVOCATION)).await.expect("a connection");
    db.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("pg_stat_ssl").get(0)
}

fn tls_failure(error: &Error) -> (TlsCheck, SslMode) {
    match error {
        Error::Tls { check, mode, .. } => (*check, *mode),
        other => panic!("expected a TLS verification error, got: {other}"),
    }
}

#[tokio::test]
async fn verify_full_connects_with_the_ca_and_checks_the_host_name() {
    let ca = TestCa::new("runtime-adapter test CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca.write_pem(dir.path());

    let adapter = init(&url("localhost", &pg, "verify-full"), Some(&root)).await.expect("verify-full with the CA");
    assert!(encrypted(&adapter).await, "the session is encrypted");
    assert_eq!(adapter.config().tls.effective_mode(), SslMode::VerifyFull);

    // The certificate names `localhost`, not 127.0.0.1.
    let error = init(&url("127.0.0.1", &pg, "verify-full"), Some(&root)).await.expect_err("wrong host name");
    assert_eq!(tls_failure(&error), (TlsCheck::HostName, SslMode::VerifyFull));
    assert_eq!(error.kind(), ErrorKind::Permanent);
    assert_eq!(error.error_type(), "RuntimeAdapter.TlsVerificationFailed");
    let message = error.to_string();
    assert!(message.contains("sslmode=verify-full"), "{message}");
    assert!(message.contains("the host name check failed"), "{message}");

    // verify-ca checks the CA only, so the other name is fine.
    let adapter = init(&url("127.0.0.1", &pg, "verify-ca"), Some(&root)).await.expect("verify-ca");
    assert!(encrypted(&adapter).await);
}

#[tokio::test]
async fn an_unknown_ca_is_refused_with_a_clear_error() {
    let ca = TestCa::new("the server's CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let other = TestCa::new("some other CA").write_pem(dir.path());

    for mode in ["verify-full", "verify-ca"] {
        let error = init(&url("localhost", &pg, mode), Some(&other)).await.expect_err("unknown CA");
        assert_eq!(tls_failure(&error).0, TlsCheck::CertificateAuthority, "{mode}");
        let message = error.to_string();
        assert!(message.contains("the CA check failed"), "{message}");
        assert!(message.contains("DB_SSL_ROOT_CERT"), "the message says what to set: {message}");
    }
    // Without DB_SSL_ROOT_CERT only Mozilla's roots are trusted.
    let error = init(&url("localhost", &pg, "verify-full"), None).await.expect_err("test CA is no public root");
    assert_eq!(tls_failure(&error).0, TlsCheck::CertificateAuthority);

    // `require` encrypts without verifying, as in libpq...
    let adapter = init(&url("localhost", &pg, "require"), None).await.expect("require without a root certificate");
    assert!(encrypted(&adapter).await);
    // ...unless a root certificate is given: then it verifies the CA, as libpq does.
    let error = init(&url("localhost", &pg, "require"), Some(&other)).await.expect_err("require + root cert");
    assert_eq!(tls_failure(&error), (TlsCheck::CertificateAuthority, SslMode::VerifyCa));
}

#[tokio::test]
async fn a_publicly_trusted_certificate_passes_only_verify_full() {
    // The server's certificate comes from a CA trusted the way a public root
    // is; DB_SSL_ROOT_CERT names the harness's own CA, which did not sign it.
    let public = TestCa::new("a CA the trust store holds as a public root");
    let (pg, _files) = tls_postgres(&public.server_cert(&["localhost"])).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = TestCa::new("runtime-adapter test CA").write_pem(dir.path());

    // The control: the injected root is trusted where public roots are, so
    // the refusals below come from the mode, not from the injection.
    let adapter = init_with_public_roots(&url("localhost", &pg, "verify-full"), None, &public)
        .await
        .expect("verify-full without DB_SSL_ROOT_CERT trusts the public roots");
    assert!(encrypted(&adapter).await);
    assert!(adapter.config().tls.trusts_public_roots());

    // verify-ca checks no host name: a public CA must never be enough.
    for (mode, effective) in [("verify-ca", SslMode::VerifyCa), ("require", SslMode::VerifyCa)] {
        let error = init_with_public_roots(&url("localhost", &pg, mode), Some(&root), &public)
            .await
            .expect_err("the public root is not in DB_SSL_ROOT_CERT");
        assert_eq!(tls_failure(&error), (TlsCheck::CertificateAuthority, effective), "{mode}");
    }
    // With a root file, verify-full trusts that file alone, as libpq does.
    let error = init_with_public_roots(&url("localhost", &pg, "verify-full"), Some(&root), &public)
        .await
        .expect_err("DB_SSL_ROOT_CERT replaces the public roots");
    assert_eq!(tls_failure(&error), (TlsCheck::CertificateAuthority, SslMode::VerifyFull));

    // verify-ca without a root file fails INIT, naming the variable.
    let error = config(&url("localhost", &pg, "verify-ca"), None).expect_err("no root file");
    assert!(matches!(error, ConfigError::Missing { var: "DB_SSL_ROOT_CERT", .. }), "{error}");

    // DB_SSL_ROOT_CERT=system is verify-full over the public roots.
    let system = std::path::Path::new("system");
    let adapter = init_with_public_roots(&url("localhost", &pg, "verify-full"), Some(system), &public)
        .await
        .expect("system roots with verify-full");
    assert_eq!(adapter.config().tls.effective_mode(), SslMode::VerifyFull);
    let error = init_with_public_roots(&url("127.0.0.1", &pg, "verify-full"), Some(system), &public)
        .await
        .expect_err("the host name is checked");
    assert_eq!(tls_failure(&error).0, TlsCheck::HostName);
    let url_without_mode = format!("postgres://{APP_USER}:{APP_PASSWORD}@localhost:{}/{APP_DATABASE}", pg.port());
    let implied = config(&url_without_mode, Some(system)).expect("system implies verify-full");
    assert_eq!(implied.tls.effective_mode(), SslMode::VerifyFull);
    let error = config(&url("localhost", &pg, "verify-ca"), Some(system)).expect_err("too weak for system");
    assert!(error.to_string().contains("use sslmode=verify-full"), "{error}");
}

#[tokio::test]
async fn require_refuses_a_server_without_tls() {
    let pg = Postgres::start().await;
    let mark = pg.log_mark();
    let error = init(&url("127.0.0.1", &pg, "require"), None).await.expect_err("no plaintext fallback");
    assert_eq!(error.kind(), ErrorKind::Permanent, "{error}");
    assert!(error.to_string().contains("server does not support TLS"), "{error}");
    let log = pg.log_since(mark);
    assert!(!log.contains("connection authorized"), "no plaintext session was opened:\n{log}");

    // `prefer` falls back to plaintext; `disable` never tries TLS.
    for mode in ["prefer", "disable"] {
        let adapter = init(&url("127.0.0.1", &pg, mode), None).await.expect(mode);
        assert!(!encrypted(&adapter).await, "{mode}");
    }
}

#[tokio::test]
async fn prefer_encrypts_when_the_server_offers_tls() {
    let ca = TestCa::new("prefer CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let adapter = init(&url("127.0.0.1", &pg, "prefer"), None).await.expect("prefer");
    assert!(encrypted(&adapter).await, "prefer uses TLS when offered");
}

#[tokio::test]
async fn the_orders_function_runs_over_verified_tls() {
    let ca = TestCa::new("orders CA");
    let (pg, _files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    pg.apply_sql_as_app(MIGRATION).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca.write_pem(dir.path()).display().to_string();
    let api = RuntimeApi::start_for(FUNCTION_NAME).await;
    let url = url("localhost", &pg, "verify-full");
    let mut function =
        orders_function(&pg, &[("DATABASE_URL", url.as_str()), ("DB_SSL_ROOT_CERT", root.as_str())]).spawn(&api);
    let found = api.invoke(get_order("1")).await;
    assert_eq!(status(found.response()), 404, "output:\n{}", function.output());
    let ssl: Vec<bool> = pg
        .query(&format!("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{FUNCTION_NAME}'"))
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "the function's sessions are encrypted: {ssl:?}");
    function.kill();
}

#[tokio::test]
async fn a_cancel_keeps_its_connections_tls_settings_after_the_pool_is_replaced() {
    let ca = TestCa::new("the connection's CA");
    let (pg, files) = tls_postgres(&ca.server_cert(&["localhost"])).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = ca.write_pem(dir.path());
    let adapter = init(&url("localhost", &pg, "verify-full"), Some(&root)).await.expect("verify-full");

    // A statement abandoned mid-flight (its future dropped) is cancelled
    // when its connection is released.
    let db = adapter.db(&context(INVOCATION)).await.expect("a connection");
    let abandoned = tokio::time::timeout(Duration::from_millis(300), db.query("SELECT pg_sleep(5)", &[])).await;
    assert!(abandoned.is_err(), "still running when abandoned");
    // Its pool is replaced (gone) while it is checked out...
    adapter.close().await;
    // ...and the server now presents a certificate from a CA nobody trusts,
    // as an impostor on the path would: a cancel request must refuse it, as
    // its connection would.
    let impostor = TestCa::new("an impostor's CA").server_cert(&["localhost"]);
    std::fs::write(files.path().join("server.crt"), &impostor.cert_pem).expect("write certificate");
    std::fs::write(files.path().join("server.key"), &impostor.key_pem).expect("write key");
    let mark = pg.log_mark();
    pg.execute("SELECT pg_reload_conf()").await;
    // The postmaster loads the new certificate in the same step, before it
    // accepts another connection.
    assert!(pg.wait_for_log(mark, "reloading configuration files", Duration::from_secs(10)).await);

    drop(db);
    assert!(
        pg.wait_for_log(mark, "could not accept SSL connection", Duration::from_secs(10)).await,
        "the cancel request's TLS handshake was refused by the client:\n{}",
        pg.log_since(mark)
    );
    let log = pg.log_since(mark);
    assert!(!log.contains("canceling statement due to user request"), "no cancel over unverified TLS:\n{log}");
}
