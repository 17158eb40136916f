//! moto's server as a local Secrets Manager, and botocore as the reference
//! for RDS IAM tokens. Both come from the repository's virtualenv `.venv/`,
//! which `scripts/tools moto` fills (`scripts/test` runs it).
//!
//! [`Moto::start`] runs `.venv/bin/moto_server` on a free loopback port as a
//! child process, killed when the value is dropped; [`Moto::env`] is the
//! environment that points the adapter at it with static test credentials.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The region the tests use.
pub const REGION: &str = "us-east-1";
/// Static test credentials (moto accepts any).
pub const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
/// Static test credentials (moto accepts any).
pub const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "run `scripts/tools moto` (installs the pinned moto[server] and boto3 into .venv/)";

/// The repository's virtualenv.
fn venv_bin(tool: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin").join(tool)
}

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    client: aws_sdk_secretsmanager::Client,
}

impl Moto {
    /// Starts moto's server and waits until it answers.
    ///
    /// Panics, saying how to install it, if moto is not in `.venv/`.
    pub async fn start() -> Self {
        let server = venv_bin("moto_server");
        assert!(server.exists(), "{} is missing: {INSTALL_HINT}", server.display());
        let port = crate::free_port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}; {INSTALL_HINT}", server.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            // moto speaks plain HTTP; the SDK's default HTTPS client is not compiled.
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "test",
            ))
            .endpoint_url(&endpoint)
            .load()
            .await;
        let mut moto = Self { child, port, client: aws_sdk_secretsmanager::Client::new(&sdk) };
        let started = Instant::now();
        loop {
            if moto.client.list_secrets().send().await.is_ok() {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}) before answering; {INSTALL_HINT}");
            }
            assert!(started.elapsed() < READY_TIMEOUT, "moto_server did not answer within {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment pointing the adapter at this server, with static
    /// test credentials: region, Secrets Manager endpoint, keys.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_REGION".to_owned(), REGION.to_owned()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER".to_owned(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".to_owned(), ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), SECRET_ACCESS_KEY.to_owned()),
        ]
    }

    /// Creates a secret holding `value`; returns its ARN.
    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        let out = self.client.create_secret().name(name).secret_string(value).send().await.expect("create secret");
        out.arn().expect("secret ARN").to_owned()
    }

    /// Replaces the secret's value (a rotation).
    pub async fn put_secret(&self, id: &str, value: &str) {
        self.client.put_secret_value().secret_id(id).secret_string(value).send().await.expect("put secret value");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
