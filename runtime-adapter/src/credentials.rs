//! Where the database's address and credentials come from, and their
//! resolution at every pool build.
//!
//! Three sources, chosen by configuration ([`CredentialSource`]):
//!
//! - `DATABASE_URL` (or `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`): the
//!   password, if any, is the URL's;
//! - `DB_SECRET_ARN`: a Secrets Manager secret in the RDS JSON shape
//!   (`username`, `password`, and optionally `host`, `port`, `dbname`; `port`
//!   may be a string). Its user and password always win; its host, port and
//!   database fill in what the URL or variables do not give (an RDS-managed
//!   master secret holds only the user and password);
//! - `DB_IAM_AUTH=true`: an RDS IAM authentication token as the password,
//!   signed with the `aws-config` credentials for host, port, user and
//!   region, fresh for every new connection (tokens are valid 15 minutes).
//!
//! Credentials are resolved once per pool build (init, refresh, rebuild), so
//! a rotated secret is picked up by the next refresh: one `GetSecretValue`
//! per build, none per invocation. If a new connection then fails to
//! authenticate (28P01, 28000), they are resolved once more and that
//! connection is tried again: that covers a secret rotated between two
//! refreshes.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{self, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;
use tokio_postgres::config::Host;

use crate::error::Error;
use crate::error::{ConfigError, CredentialsStep};
use crate::tls::Tls;

/// AWS credentials, as [`rds_auth_token`] takes them.
pub(crate) use aws_credential_types::Credentials as AwsCredentials;

/// How long an RDS IAM authentication token is valid: RDS's maximum.
pub(crate) const IAM_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// AWS credentials this close to expiry are fetched anew before signing.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

/// Where the user name and password come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// The password in `DATABASE_URL` (or none).
    Url,
    /// A Secrets Manager secret, `DB_SECRET_ARN` (an ARN or a name).
    SecretsManager {
        /// The secret's ARN or name.
        secret_id: String,
    },
    /// An RDS IAM authentication token per connection, `DB_IAM_AUTH=true`.
    Iam,
}

/// The AWS settings read with the rest of the configuration, so that
/// [`Config::from_lookup`](crate::Config::from_lookup) decides them too;
/// anything unset is left to `aws-config`'s default chain.
#[derive(Clone, Default)]
pub(crate) struct AwsSettings {
    /// `AWS_REGION` (or `AWS_DEFAULT_REGION`).
    pub(crate) region: Option<String>,
    /// `AWS_ENDPOINT_URL_SECRETS_MANAGER` (or `AWS_ENDPOINT_URL`).
    pub(crate) secrets_manager_endpoint: Option<String>,
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub(crate) keys: Option<AwsCredentials>,
}

impl fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSettings")
            .field("region", &self.region)
            .field("secrets_manager_endpoint", &self.secrets_manager_endpoint)
            // `Credentials`' own Debug redacts the secret key and token.
            .field("keys", &self.keys)
            .finish()
    }
}

/// The credential source and what resolving it needs: the AWS clients,
/// created at first use and shared by clones.
#[derive(Clone)]
pub struct Credentials {
    source: CredentialSource,
    aws: AwsSettings,
    /// Bound on one AWS call: `DB_CONNECT_TIMEOUT_MS`.
    timeout: Duration,
    /// The AWS SDK's configuration and clients, built at first use; dropped
    /// before a SnapStart snapshot ([`Credentials::forget`]).
    clients: Arc<Mutex<Option<Arc<AwsClients>>>>,
    /// The AWS credentials IAM tokens are signed with, kept until near expiry.
    signing: Arc<Mutex<Option<AwsCredentials>>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("source", &self.source).field("aws", &self.aws).finish_non_exhaustive()
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            source: CredentialSource::Url,
            aws: AwsSettings::default(),
            timeout: Duration::from_secs(5),
            clients: Arc::default(),
            signing: Arc::default(),
        }
    }
}

impl Credentials {
    /// The credentials of `source`, with the AWS settings resolving them
    /// needs; `timeout` bounds each AWS call.
    pub(crate) fn new(source: CredentialSource, aws: AwsSettings, timeout: Duration) -> Self {
        Self { source, aws, timeout, ..Self::default() }
    }
}

struct AwsClients {
    sdk: aws_config::SdkConfig,
    secrets: Option<aws_sdk_secretsmanager::Client>,
}

impl Credentials {
    /// Where the password comes from.
    #[must_use]
    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// Settings that cannot safely hold together with this source. (A
    /// maximum age longer than a token's lifetime is not one: the
    /// configuration caps it, with a warning.)
    pub(crate) fn check(&self, tls: &Tls) -> Result<(), ConfigError> {
        if self.source != CredentialSource::Iam {
            return Ok(());
        }
        if !tls.mode().always_encrypts() {
            return Err(ConfigError::Conflict {
                vars: "DB_IAM_AUTH and sslmode",
                problem: format!(
                    "IAM authentication sends its token as the password, and with sslmode={} it could go in plaintext (RDS also refuses IAM authentication without TLS); set sslmode=verify-full with DB_SSL_ROOT_CERT naming the RDS CA bundle (verify-ca, or require, which leaves the server unverified, also encrypt)",
                    tls.mode()
                ),
            });
        }
        Ok(())
    }

    /// Resolves the credentials for one pool build: reads the secret (one
    /// AWS call) or makes sure AWS credentials for signing are at hand.
    pub(crate) async fn resolve(&self, pg: &tokio_postgres::Config) -> Result<Arc<Session>, Error> {
        let resolved = match &self.source {
            CredentialSource::Url => pg.clone(),
            CredentialSource::SecretsManager { secret_id } => {
                let secret = Box::pin(self.read_secret(secret_id)).await?;
                apply_secret(pg, secret)?
            }
            CredentialSource::Iam => {
                Box::pin(self.signing_credentials(false)).await?;
                pg.clone()
            }
        };
        Ok(Arc::new(Session { credentials: self.clone(), pg: Mutex::new(resolved) }))
    }

    /// Drops the AWS SDK's configuration and clients and the cached signing
    /// credentials, for every clone: before a SnapStart snapshot, so that
    /// none is in the snapshot (restored copies would share credentials that
    /// may have expired, and connections the SDK pooled). The next pool
    /// build, after the restore, loads them afresh.
    pub(crate) fn forget(&self) {
        *self.clients.lock().unwrap_or_else(PoisonError::into_inner) = None;
        *self.signing.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn clients(&self) -> Result<Arc<AwsClients>, Error> {
        if let Some(clients) = self.clients.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Ok(clients);
        }
        // Two builds racing here both succeed; the first one stored wins.
        let built = Arc::new(self.load_clients().await);
        Ok(self.clients.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(built).clone())
    }

    async fn load_clients(&self) -> AwsClients {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(self.timeout).build());
        if let Some(region) = &self.aws.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(keys) = &self.aws.keys {
            loader = loader.credentials_provider(keys.clone());
        }
        let sdk = loader.load().await;
        let secrets = matches!(self.source, CredentialSource::SecretsManager { .. }).then(|| {
            let mut config = aws_sdk_secretsmanager::config::Builder::from(&sdk);
            if let Some(endpoint) = &self.aws.secrets_manager_endpoint {
                config = config.endpoint_url(endpoint);
            }
            aws_sdk_secretsmanager::Client::from_conf(config.build())
        });
        AwsClients { sdk, secrets }
    }

    async fn read_secret(&self, secret_id: &str) -> Result<Secret, Error> {
        use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
        let what = CredentialsStep::ReadSecret;
        let clients = self.clients().await?;
        let client = clients.secrets.as_ref().ok_or_else(|| Error::Internal("no Secrets Manager client".to_owned()))?;
        let output = client.get_secret_value().secret_id(secret_id).send().await.map_err(|e| {
            let transient = match &e {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
                SdkError::ServiceError(service) => {
                    service.err().is_internal_service_error()
                        || matches!(service.err().code(), Some("ThrottlingException" | "RequestLimitExceeded"))
                }
                _ => false,
            };
            let problem = match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
            };
            Error::Credentials { what, problem, transient }
        })?;
        let Some(text) = output.secret_string() else {
            return Err(Error::Credentials {
                what,
                problem: "the secret has no SecretString (a binary secret cannot hold the RDS JSON shape)".to_owned(),
                transient: false,
            });
        };
        Secret::parse(text).map_err(|problem| Error::Credentials { what, problem, transient: false })
    }

    /// AWS credentials to sign IAM tokens with: the cached ones unless
    /// `renew` or close to expiry.
    async fn signing_credentials(&self, renew: bool) -> Result<AwsCredentials, Error> {
        let cached = self.signing.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(cached) = cached.filter(|c| !renew && !expires_soon(c)) {
            return Ok(cached);
        }
        let what = CredentialsStep::GetAwsCredentials;
        let clients = self.clients().await?;
        let provider = clients.sdk.credentials_provider().ok_or_else(|| Error::Credentials {
            what,
            problem: "no AWS credentials provider is configured".to_owned(),
            transient: false,
        })?;
        let fresh = provider.provide_credentials().await.map_err(|e| {
            use aws_credential_types::provider::error::CredentialsError;
            let transient = matches!(e, CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_));
            Error::Credentials {
                what,
                problem: aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
                transient,
            }
        })?;
        *self.signing.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }

    fn region(&self, clients: &AwsClients) -> Result<String, Error> {
        self.aws.region.clone().or_else(|| clients.sdk.region().map(ToString::to_string)).ok_or(Error::Credentials {
            what: CredentialsStep::SignToken,
            problem: "no AWS region is configured; set AWS_REGION to the database's region".to_owned(),
            transient: false,
        })
    }
}

fn expires_soon(credentials: &AwsCredentials) -> bool {
    credentials.expiry().is_some_and(|at| at <= SystemTime::now() + CREDENTIALS_MARGIN)
}

/// The credentials of one pool build.
pub(crate) struct Session {
    credentials: Credentials,
    /// The address and credentials connections use; replaced when the
    /// credentials are resolved once more after an authentication failure.
    pg: Mutex<tokio_postgres::Config>,
}

impl Session {
    /// The configuration for one new connection: with IAM, carrying a
    /// freshly signed token.
    pub(crate) async fn connection_config(&self) -> Result<tokio_postgres::Config, Error> {
        let mut pg = self.pg.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if self.credentials.source == CredentialSource::Iam {
            let what = CredentialsStep::SignToken;
            let aws = Box::pin(self.credentials.signing_credentials(false)).await?;
            let clients = Box::pin(self.credentials.clients()).await?;
            let region = self.credentials.region(&clients)?;
            let host = match pg.get_hosts().first() {
                Some(Host::Tcp(host)) => host.clone(),
                _ => {
                    return Err(Error::Credentials {
                        what,
                        problem: "IAM authentication needs a TCP host name, not a unix socket".to_owned(),
                        transient: false,
                    })
                }
            };
            let port = pg.get_ports().first().copied().unwrap_or(5432);
            let user = pg.get_user().unwrap_or_default().to_owned();
            let token = rds_auth_token(&host, port, &user, &region, &aws, SystemTime::now())?;
            pg.password(token);
        }
        Ok(pg)
    }

    /// After a connection failed to authenticate: resolves the credentials
    /// once more. Whether another attempt may now succeed.
    pub(crate) async fn renew(&self) -> bool {
        let renewed = match &self.credentials.source {
            CredentialSource::Url => return false,
            CredentialSource::SecretsManager { secret_id } => {
                match Box::pin(self.credentials.read_secret(secret_id)).await {
                    Ok(secret) => {
                        let mut pg = self.pg.lock().unwrap_or_else(PoisonError::into_inner);
                        // The secret's user and password replace the old ones;
                        // the address already holds what the secret adds.
                        pg.user(&secret.username);
                        pg.password(secret.password.as_bytes());
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            CredentialSource::Iam => Box::pin(self.credentials.signing_credentials(true)).await.map(drop),
        };
        match renewed {
            Ok(()) => {
                tracing::info!("authentication failed; resolved the credentials again for another attempt");
                true
            }
            Err(error) => {
                tracing::warn!(%error, "authentication failed, and resolving the credentials again failed too");
                false
            }
        }
    }
}

/// An RDS secret in the standard JSON shape. Never printed.
struct Secret {
    username: String,
    password: String,
    host: Option<String>,
    port: Option<u16>,
    dbname: Option<String>,
}

impl Secret {
    /// Parses the secret; the problem never quotes its content.
    fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|_| "the secret is not JSON; expected the RDS shape {\"username\", \"password\", \"host\", \"port\", \"dbname\"}".to_owned())?;
        let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str).map(str::to_owned);
        let username = field("username").ok_or("the secret has no \"username\" string")?;
        let password = field("password").ok_or("the secret has no \"password\" string")?;
        let port = match value.get("port") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(
                n.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or("the secret's \"port\" is not a port number")?,
            ),
            Some(serde_json::Value::String(s)) => {
                Some(s.trim().parse::<u16>().map_err(|_| "the secret's \"port\" is not a port number")?)
            }
            Some(_) => return Err("the secret's \"port\" is not a port number".to_owned()),
        };
        Ok(Self { username, password, host: field("host"), port, dbname: field("dbname") })
    }
}

/// The configured address with the secret's user and password, and its
/// host, port and database where the configuration gives none.
fn apply_secret(pg: &tokio_postgres::Config, secret: Secret) -> Result<tokio_postgres::Config, Error> {
    let mut pg = pg.clone();
    pg.user(&secret.username);
    pg.password(secret.password.as_bytes());
    if pg.get_hosts().is_empty() {
        if let Some(host) = &secret.host {
            pg.host(host);
            if let Some(port) = secret.port.filter(|_| pg.get_ports().is_empty()) {
                pg.port(port);
            }
        }
    }
    if pg.get_dbname().is_none() {
        if let Some(dbname) = &secret.dbname {
            pg.dbname(dbname);
        }
    }
    let missing = |part: &str, var: &str| Error::Credentials {
        what: CredentialsStep::ReadSecret,
        problem: format!("the secret has no \"{part}\", and neither DATABASE_URL nor {var} gives one"),
        transient: false,
    };
    if pg.get_hosts().is_empty() {
        return Err(missing("host", "DB_HOST"));
    }
    if pg.get_dbname().is_none_or(str::is_empty) {
        return Err(missing("dbname", "DB_NAME"));
    }
    Ok(pg)
}

/// An RDS IAM authentication token for `user` at `host:port` in `region`,
/// signed (SigV4, by `aws-sigv4`, as the SDK's `AuthTokenGenerator` does)
/// with `credentials` at time `at`; valid 15 minutes from then.
///
/// The token is `host:port/?Action=connect&DBUser=…&X-Amz-…` without a scheme,
/// with query values percent-encoded as botocore's `generate_db_auth_token`
/// encodes them.
///
/// # Errors
///
/// [`Error::Credentials`] if the request cannot be signed.
pub(crate) fn rds_auth_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &AwsCredentials,
    at: SystemTime,
) -> Result<String, Error> {
    let failed = |e: &dyn std::error::Error| Error::Credentials {
        what: CredentialsStep::SignToken,
        problem: e.to_string(),
        transient: false,
    };
    let mut settings = SigningSettings::default();
    settings.expires_in = Some(IAM_TOKEN_LIFETIME);
    settings.signature_location = SignatureLocation::QueryParams;
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(at)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?;
    let unsigned = format!("{host}:{port}/?Action=connect&DBUser={}", encode(user));
    let url = format!("https://{unsigned}");
    let request =
        SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[])).map_err(|e| failed(&e))?;
    let (instructions, _signature) = http_request::sign(request, &params.into()).map_err(|e| failed(&e))?.into_parts();
    let mut token = unsigned;
    for (name, value) in instructions.params() {
        token.push('&');
        token.push_str(name);
        token.push('=');
        token.push_str(&encode(value));
    }
    Ok(token)
}

/// Percent-encodes all but RFC 3986's unreserved characters, as SigV4 and
/// botocore do.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a connection failed to authenticate: 28P01 (invalid password) or
/// 28000 (invalid authorization, what RDS answers a bad IAM token with).
pub(crate) fn is_auth_failure(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    error
        .code()
        .is_some_and(|c| *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn secrets_parse_in_the_rds_shape_with_string_or_number_ports() {
        let full = Secret::parse(
            r#"{"engine":"postgres","host":"db.example","port":"5433","username":"u","password":"p","dbname":"d"}"#,
        )
        .expect("valid");
        assert_eq!(
            (full.host.as_deref(), full.port, full.dbname.as_deref()),
            (Some("db.example"), Some(5433), Some("d"))
        );
        assert_eq!(Secret::parse(r#"{"username":"u","password":"p","port":5432}"#).expect("valid").port, Some(5432));
        let master = Secret::parse(r#"{"username":"u","password":"p"}"#).expect("valid");
        assert_eq!((master.host, master.port), (None, None));
        for (bad, problem) in [
            ("hunter2", "not JSON"),
            (r#"{"password":"hunter2"}"#, "no \"username\""),
            (r#"{"username":"u","password":"hunter2","port":"x"}"#, "\"port\" is not a port number"),
        ] {
            let Err(err) = Secret::parse(bad) else { panic!("{bad} must be refused") };
            assert!(err.contains(problem), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_secret_fills_in_only_what_the_configuration_lacks() {
        let secret = || Secret {
            username: "rotated".into(),
            password: "pw".into(),
            host: Some("from-secret".into()),
            port: Some(6543),
            dbname: Some("secretdb".into()),
        };
        let from_url = tokio_postgres::Config::from_str("postgres://old:old@url-host:5432/urldb").expect("url");
        let pg = apply_secret(&from_url, secret()).expect("applied");
        assert_eq!(pg.get_user(), Some("rotated"));
        assert_eq!(pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(pg.get_hosts(), &[Host::Tcp("url-host".into())]);
        assert_eq!(pg.get_dbname(), Some("urldb"));
        let pg = apply_secret(&tokio_postgres::Config::new(), secret()).expect("applied");
        assert_eq!((pg.get_hosts(), pg.get_ports()), (&[Host::Tcp("from-secret".into())][..], &[6543][..]));
        let err = apply_secret(&tokio_postgres::Config::new(), Secret { host: None, ..secret() }).expect_err("no host");
        assert!(err.to_string().contains("no \"host\""), "{err}");
    }

    #[tokio::test]
    async fn forget_drops_the_sdk_clients_and_the_signing_credentials_for_every_clone() {
        let aws = AwsSettings {
            region: Some("eu-west-1".to_owned()),
            secrets_manager_endpoint: None,
            keys: Some(AwsCredentials::new("AKIDEXAMPLE", "secret", None, None, "test")),
        };
        let original = Credentials::new(CredentialSource::Iam, aws, Duration::from_secs(5));
        let credentials = original.clone();
        credentials.signing_credentials(false).await.expect("static keys");
        let before = credentials.clients().await.expect("loaded");
        let held =
            |c: &Credentials| (c.clients.lock().expect("lock").is_some(), c.signing.lock().expect("lock").is_some());
        assert_eq!(held(&original), (true, true), "clones share them");

        original.forget();
        assert_eq!(held(&credentials), (false, false), "nothing left for a snapshot");
        credentials.signing_credentials(false).await.expect("rebuilt after a restore");
        let after = credentials.clients().await.expect("loaded again");
        assert!(!Arc::ptr_eq(&before, &after), "a new SDK configuration");
        assert_eq!(held(&credentials), (true, true));
    }

    #[test]
    fn tokens_have_the_rds_structure() {
        let creds = AwsCredentials::new("AKIDEXAMPLE", "secret", Some("tok/en+=".into()), None, "test");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = rds_auth_token("db.example.com", 5432, "iam user", "eu-west-1", &creds, at).expect("signed");
        assert!(token.starts_with("db.example.com:5432/?Action=connect&DBUser=iam%20user&"), "{token}");
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F20231114%2Feu-west-1%2Frds-db%2Faws4_request",
            "X-Amz-Date=20231114T221320Z",
            "X-Amz-Expires=900",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Security-Token=tok%2Fen%2B%3D",
            "X-Amz-Signature=",
        ] {
            assert!(token.contains(part), "{part} missing from {token}");
        }
        assert!(!token.contains("https://"));
    }

    /// The AWS documentation's example keys.
    const ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const INSTALL_HINT: &str = "run `scripts/tools moto` (installs the pinned boto3 into .venv/)";

    /// The RDS IAM token botocore's `generate_db_auth_token` makes for these
    /// inputs at `at` (whole seconds), run with the virtualenv's boto3.
    fn botocore_db_auth_token(
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
        let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(python.exists(), "{} is missing: {INSTALL_HINT}", python.display());
        let epoch = at.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs().to_string();
        let out = std::process::Command::new(&python)
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

    #[test]
    fn iam_tokens_have_the_rds_form() {
        let keys = AwsCredentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, None, None, "test");
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_201_600); // 2025-11-27T00:00:00Z
        let token =
            rds_auth_token("db.cluster-abc.eu-west-1.rds.amazonaws.com", 5432, "app_iam", "eu-west-1", &keys, at)
                .expect("token");
        let (address, query) = token.split_once("/?").expect("host:port/?query");
        assert_eq!(address, "db.cluster-abc.eu-west-1.rds.amazonaws.com:5432");
        let params: std::collections::HashMap<&str, &str> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        assert_eq!(params["Action"], "connect");
        assert_eq!(params["DBUser"], "app_iam");
        assert_eq!(params["X-Amz-Expires"], "900");
        assert_eq!(params["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            params["X-Amz-Credential"],
            format!("{ACCESS_KEY_ID}%2F20251127%2Feu-west-1%2Frds-db%2Faws4_request")
        );
        assert_eq!(params["X-Amz-Date"], "20251127T000000Z");
        assert_eq!(params["X-Amz-SignedHeaders"], "host");
        assert_eq!(params["X-Amz-Signature"].len(), 64);
    }

    #[test]
    fn iam_token_signatures_match_botocores() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_201_723);
        for (host, port, user, session_token) in [
            ("db.cluster-abc.eu-west-1.rds.amazonaws.com", 5432, "app_iam", None),
            ("proxy.proxy-xyz.us-east-1.rds.amazonaws.com", 6432, "svc user", Some("FwoGZXIvYXdzEJr//////////+token=")),
        ] {
            let keys =
                AwsCredentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY, session_token.map(str::to_owned), None, "t");
            let region = host.split('.').nth(2).expect("region in host");
            let ours = rds_auth_token(host, port, user, region, &keys, at).expect("token");
            let theirs =
                botocore_db_auth_token(host, port, user, region, (ACCESS_KEY_ID, SECRET_ACCESS_KEY, session_token), at);
            let signature =
                |token: &str| token.split('&').find_map(|p| p.strip_prefix("X-Amz-Signature=")).map(str::to_owned);
            assert_eq!(signature(&ours), signature(&theirs), "signatures differ:\nours:   {ours}\nboto3:  {theirs}");
            let sorted = |token: &str| {
                let (address, query) = token.split_once("/?").expect("query");
                let mut params: Vec<&str> = query.split('&').collect();
                params.sort_unstable();
                (address.to_owned(), params.join("&"))
            };
            assert_eq!(sorted(&ours), sorted(&theirs), "same parameters, same encoding");
        }
    }
}
