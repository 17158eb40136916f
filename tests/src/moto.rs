//! moto's server as a local Secrets Manager, and botocore as the reference
//! for RDS IAM tokens. Both come from the repository's virtualenv `.venv/`,
//! which `scripts/tools moto` fills (`scripts/test` runs it).
//!
//! [`Moto::start`] runs `.venv/bin/moto_server` on a free loopback port as a
//! child process, killed when the value is dropped; [`Moto::env`] is the
//! environment that points the adapter at it with static test credentials.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The RDS IAM token botocore's `generate_db_auth_token` makes for these
/// inputs at `at` (whole seconds), run with the virtualenv's boto3.
pub fn botocore_db_auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    keys: (&str, &str, Option<&str>),
    at: SystemTime,
) -> String {
    const SCRIPT: &str = r#"
import datetime, sys
from unittest import mock
import boto3, botocore.auth
host, port, user, region, key_id, secret, token, epoch = sys.argv[1:]
aware = datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
def fixed(remove_tzinfo=True):
    return aware.replace(tzinfo=None) if remove_tzinfo else aware
client = boto3.client("rds", region_name=region, aws_access_key_id=key_id,
                      aws_secret_access_key=secret, aws_session_token=token or None)
# botocore signs in Python, or with awscrt when installed (aws-sam-cli brings it): freeze both clocks.
patches = [mock.patch.object(botocore.auth, "get_current_datetime", fixed)]
try:
    import botocore.crt.auth
    patches.append(mock.patch.object(botocore.crt.auth, "get_current_datetime", fixed))
except ImportError:
    pass
for p in patches:
    p.start()
print(client.generate_db_auth_token(DBHostname=host, Port=int(port), DBUsername=user, Region=region))
"#;
    let python = venv_bin("python");
    assert!(python.exists(), "{} is missing: {INSTALL_HINT}", python.display());
    let epoch = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs().to_string();
    let out = Command::new(&python)
        .args(["-c", SCRIPT, host, &port.to_string(), user, region, keys.0, keys.1, keys.2.unwrap_or(""), &epoch])
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "botocore failed ({}): {}; {INSTALL_HINT}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 token").trim().to_owned()
}
