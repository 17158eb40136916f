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

mod iam;
mod secret;

use aws_credential_types::provider::ProvideCredentials;
use tokio_postgres::config::Host;

use crate::error::{ConfigError, CredentialsStep, Error};
use crate::tls::Tls;
use iam::rds_auth_token;
use secret::{apply_secret, Secret};

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
}
