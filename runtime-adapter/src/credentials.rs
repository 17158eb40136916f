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
//!
//! The two AWS sources are cargo features, off by default, because they
//! compile the AWS SDK: `secrets-manager` (the Secrets Manager client, in
//! `credentials::secret` and `credentials::aws`) and `iam-auth` (token
//! signing in `credentials::iam`, AWS credentials from `credentials::aws`).
//! A build without one refuses its variable at INIT
//! ([`ConfigError::FeatureDisabled`]); nothing AWS is compiled into a build
//! with neither.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

#[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
mod aws;
#[cfg(feature = "iam-auth")]
mod iam;
#[cfg(feature = "secrets-manager")]
mod secret;

#[cfg(feature = "iam-auth")]
use tokio_postgres::config::Host;

use crate::error::{ConfigError, Error};
use crate::tls::Tls;
#[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
pub(crate) use aws::{AwsCredentials, AwsSettings};
#[cfg(feature = "iam-auth")]
use iam::rds_auth_token;
#[cfg(feature = "secrets-manager")]
use secret::apply_secret;

/// How long an RDS IAM authentication token is valid: RDS's maximum.
pub(crate) const IAM_TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// AWS credentials this close to expiry are fetched anew before signing.
#[cfg(feature = "iam-auth")]
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(300);

/// Where the user name and password come from.
///
/// The Secrets Manager and IAM sources exist only in builds with their
/// cargo features (`secrets-manager`, `iam-auth`); without them, setting
/// their variables fails INIT with a [`ConfigError::FeatureDisabled`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialSource {
    /// The password in `DATABASE_URL` (or none).
    Url,
    /// A Secrets Manager secret, `DB_SECRET_ARN` (an ARN or a name).
    /// Feature `secrets-manager`.
    #[cfg(feature = "secrets-manager")]
    SecretsManager {
        /// The secret's ARN or name.
        secret_id: String,
    },
    /// An RDS IAM authentication token per connection, `DB_IAM_AUTH=true`.
    /// Feature `iam-auth`.
    #[cfg(feature = "iam-auth")]
    Iam,
}

impl CredentialSource {
    /// Whether the source may give the address too (a secret's host, port
    /// and database), so that the configuration need not.
    pub(crate) fn gives_address(&self) -> bool {
        #[cfg(feature = "secrets-manager")]
        if let CredentialSource::SecretsManager { .. } = self {
            return true;
        }
        false
    }
}

/// The credential source and what resolving it needs: with the AWS
/// features, the AWS settings and the clients, created at first use and
/// shared by clones.
#[derive(Clone)]
pub struct Credentials {
    source: CredentialSource,
    #[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
    aws: aws::Aws,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Credentials");
        debug.field("source", &self.source);
        #[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
        debug.field("aws", &self.aws.settings);
        debug.finish_non_exhaustive()
    }
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            source: CredentialSource::Url,
            #[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
            aws: aws::Aws::new(AwsSettings::default(), Duration::from_secs(5)),
        }
    }
}

impl Credentials {
    /// The credentials of `source`, with the AWS settings resolving them
    /// needs; `timeout` bounds each AWS call.
    #[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
    pub(crate) fn new(source: CredentialSource, aws: AwsSettings, timeout: Duration) -> Self {
        Self { source, aws: aws::Aws::new(aws, timeout) }
    }

    /// Where the password comes from.
    #[must_use]
    pub fn source(&self) -> &CredentialSource {
        &self.source
    }

    /// Whether connections authenticate with RDS IAM tokens (always false
    /// without the `iam-auth` feature).
    pub(crate) fn uses_iam(&self) -> bool {
        #[cfg(feature = "iam-auth")]
        if self.source == CredentialSource::Iam {
            return true;
        }
        false
    }

    /// Settings that cannot safely hold together with this source. (A
    /// maximum age longer than a token's lifetime is not one: the
    /// configuration caps it, with a warning.)
    pub(crate) fn check(&self, tls: &Tls) -> Result<(), ConfigError> {
        if !self.uses_iam() {
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
            #[cfg(feature = "secrets-manager")]
            CredentialSource::SecretsManager { secret_id } => {
                let secret = Box::pin(self.aws.read_secret(secret_id)).await?;
                apply_secret(pg, secret)?
            }
            #[cfg(feature = "iam-auth")]
            CredentialSource::Iam => {
                Box::pin(self.aws.signing_credentials(false)).await?;
                pg.clone()
            }
        };
        Ok(Arc::new(Session { credentials: self.clone(), pg: Mutex::new(resolved) }))
    }

    /// Drops the AWS SDK's configuration and clients and the cached signing
    /// credentials, for every clone: before a SnapStart snapshot, so that
    /// none is in the snapshot (restored copies would share credentials that
    /// may have expired, and connections the SDK pooled). The next pool
    /// build, after the restore, loads them afresh. Nothing to drop in a
    /// build without the AWS features.
    pub(crate) fn forget(&self) {
        #[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
        self.aws.forget();
    }
}

/// The credentials of one pool build.
pub(crate) struct Session {
    #[cfg_attr(not(any(feature = "secrets-manager", feature = "iam-auth")), allow(dead_code))]
    credentials: Credentials,
    /// The address and credentials connections use; replaced when the
    /// credentials are resolved once more after an authentication failure.
    pg: Mutex<tokio_postgres::Config>,
}

impl Session {
    /// The configuration for one new connection: with IAM, carrying a
    /// freshly signed token.
    pub(crate) async fn connection_config(&self) -> Result<tokio_postgres::Config, Error> {
        #[cfg_attr(not(feature = "iam-auth"), allow(unused_mut))]
        let mut pg = self.pg.lock().unwrap_or_else(PoisonError::into_inner).clone();
        #[cfg(feature = "iam-auth")]
        if self.credentials.uses_iam() {
            let what = crate::error::CredentialsStep::SignToken;
            let aws = &self.credentials.aws;
            let keys = Box::pin(aws.signing_credentials(false)).await?;
            let region = Box::pin(aws.region()).await?;
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
            let token = rds_auth_token(&host, port, &user, &region, &keys, std::time::SystemTime::now())?;
            pg.password(token);
        }
        Ok(pg)
    }

    /// After a connection failed to authenticate: resolves the credentials
    /// once more. Whether another attempt may now succeed.
    pub(crate) async fn renew(&self) -> bool {
        let renewed: Option<Result<(), Error>> = match &self.credentials.source {
            CredentialSource::Url => None,
            #[cfg(feature = "secrets-manager")]
            CredentialSource::SecretsManager { secret_id } => {
                Some(Box::pin(self.credentials.aws.read_secret(secret_id)).await.map(|secret| {
                    let mut pg = self.pg.lock().unwrap_or_else(PoisonError::into_inner);
                    // The secret's user and password replace the old ones;
                    // the address already holds what the secret adds.
                    pg.user(&secret.username);
                    pg.password(secret.password.as_bytes());
                }))
            }
            #[cfg(feature = "iam-auth")]
            CredentialSource::Iam => Some(Box::pin(self.credentials.aws.signing_credentials(true)).await.map(drop)),
        };
        match renewed {
            None => false,
            Some(Ok(())) => {
                tracing::info!("authentication failed; resolved the credentials again for another attempt");
                true
            }
            Some(Err(error)) => {
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

#[cfg(all(test, feature = "iam-auth"))]
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
        credentials.aws.signing_credentials(false).await.expect("static keys");
        let before = credentials.aws.clients(false).await;
        let held = |c: &Credentials| c.aws.held();
        assert_eq!(held(&original), (true, true), "clones share them");

        original.forget();
        assert_eq!(held(&credentials), (false, false), "nothing left for a snapshot");
        credentials.aws.signing_credentials(false).await.expect("rebuilt after a restore");
        let after = credentials.aws.clients(false).await;
        assert!(!Arc::ptr_eq(&before, &after), "a new SDK configuration");
        assert_eq!(held(&credentials), (true, true));
    }
}
