//! The AWS side of the credentials: the settings read with the
//! configuration, the SDK's configuration and clients (loaded at first use,
//! dropped before a SnapStart snapshot), reading a secret, and the AWS
//! credentials IAM tokens are signed with. Compiled with the
//! `secrets-manager` or `iam-auth` feature only: it is what brings the AWS
//! SDK into a build.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
#[cfg(feature = "iam-auth")]
use std::time::SystemTime;

#[cfg(feature = "iam-auth")]
use aws_credential_types::provider::ProvideCredentials;

#[cfg(feature = "secrets-manager")]
use super::secret::Secret;
#[cfg(feature = "iam-auth")]
use super::CREDENTIALS_MARGIN;
use crate::error::{CredentialsStep, Error};

/// AWS credentials, as `rds_auth_token` takes them.
pub(crate) use aws_credential_types::Credentials as AwsCredentials;

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

/// The AWS settings and what they load, shared by clones of the
/// [`Credentials`](super::Credentials) that hold them.
#[derive(Clone)]
pub(super) struct Aws {
    pub(super) settings: AwsSettings,
    /// Bound on one AWS call: `DB_CONNECT_TIMEOUT_MS`.
    timeout: Duration,
    /// The AWS SDK's configuration and clients, built at first use; dropped
    /// before a SnapStart snapshot ([`Aws::forget`]).
    clients: Arc<Mutex<Option<Arc<AwsClients>>>>,
    /// The AWS credentials IAM tokens are signed with, kept until near expiry.
    #[cfg(feature = "iam-auth")]
    signing: Arc<Mutex<Option<AwsCredentials>>>,
}

pub(super) struct AwsClients {
    /// The SDK's configuration: the credentials provider and region IAM
    /// tokens are signed with.
    #[cfg(feature = "iam-auth")]
    sdk: aws_config::SdkConfig,
    #[cfg(feature = "secrets-manager")]
    secrets: Option<aws_sdk_secretsmanager::Client>,
}

impl Aws {
    pub(super) fn new(settings: AwsSettings, timeout: Duration) -> Self {
        Self {
            settings,
            timeout,
            clients: Arc::default(),
            #[cfg(feature = "iam-auth")]
            signing: Arc::default(),
        }
    }

    /// Drops the SDK's configuration and clients and the cached signing
    /// credentials, for every clone.
    pub(super) fn forget(&self) {
        *self.clients.lock().unwrap_or_else(PoisonError::into_inner) = None;
        #[cfg(feature = "iam-auth")]
        {
            *self.signing.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// Whether the SDK's configuration and the signing credentials are held.
    #[cfg(all(test, feature = "iam-auth"))]
    pub(super) fn held(&self) -> (bool, bool) {
        (self.clients.lock().expect("lock").is_some(), self.signing.lock().expect("lock").is_some())
    }

    pub(super) async fn clients(&self, secrets: bool) -> Arc<AwsClients> {
        if let Some(clients) = self.clients.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return clients;
        }
        // Two builds racing here both succeed; the first one stored wins.
        let built = Arc::new(self.load_clients(secrets).await);
        self.clients.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(built).clone()
    }

    #[cfg_attr(not(feature = "secrets-manager"), allow(unused_variables))]
    async fn load_clients(&self, secrets: bool) -> AwsClients {
        // The SDK's default HTTPS client (hyper, each client's connector
        // settings and sleep, proxies from the environment), with rustls on
        // ring, the crypto provider of the adapter's own connections, rather
        // than the default's aws-lc-rs (see the workspace's `Cargo.toml`).
        // Its trusted roots are the system's, loaded at first use.
        let https = aws_smithy_http_client::Builder::new().build_with_connector_fn(|settings, components| {
            use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
            let mut connector =
                aws_smithy_http_client::ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::Ring));
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector.set_proxy_config(Some(aws_smithy_http_client::proxy::ProxyConfig::from_env()));
            connector.build()
        });
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(https)
            .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(self.timeout).build());
        if let Some(region) = &self.settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(keys) = &self.settings.keys {
            loader = loader.credentials_provider(keys.clone());
        }
        let sdk = loader.load().await;
        #[cfg(feature = "secrets-manager")]
        let secrets = secrets.then(|| {
            let mut config = aws_sdk_secretsmanager::config::Builder::from(&sdk);
            if let Some(endpoint) = &self.settings.secrets_manager_endpoint {
                config = config.endpoint_url(endpoint);
            }
            aws_sdk_secretsmanager::Client::from_conf(config.build())
        });
        AwsClients {
            #[cfg(feature = "iam-auth")]
            sdk,
            #[cfg(feature = "secrets-manager")]
            secrets,
        }
    }

    /// Reads the secret `secret_id` names (one AWS call).
    #[cfg(feature = "secrets-manager")]
    pub(super) async fn read_secret(&self, secret_id: &str) -> Result<Secret, Error> {
        use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
        let what = CredentialsStep::ReadSecret;
        let clients = self.clients(true).await;
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
    #[cfg(feature = "iam-auth")]
    pub(super) async fn signing_credentials(&self, renew: bool) -> Result<AwsCredentials, Error> {
        let cached = self.signing.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(cached) = cached.filter(|c| !renew && !expires_soon(c)) {
            return Ok(cached);
        }
        let what = CredentialsStep::GetAwsCredentials;
        let clients = self.clients(false).await;
        let provider = clients.sdk.credentials_provider().ok_or_else(|| Error::Credentials {
            what,
            problem: "no AWS credentials provider is configured".to_owned(),
            transient: false,
        })?;
        let fresh = provider.provide_credentials().await.map_err(|e| {
            use aws_credential_types::provider::error::CredentialsError;
            let transient = matches!(e, CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_));
            Error::Credentials { what, problem: error_chain(&e), transient }
        })?;
        *self.signing.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }

    /// The region IAM tokens are signed for.
    #[cfg(feature = "iam-auth")]
    pub(super) async fn region(&self) -> Result<String, Error> {
        if let Some(region) = &self.settings.region {
            return Ok(region.clone());
        }
        let clients = self.clients(false).await;
        clients.sdk.region().map(ToString::to_string).ok_or(Error::Credentials {
            what: CredentialsStep::SignToken,
            problem: "no AWS region is configured; set AWS_REGION to the database's region".to_owned(),
            transient: false,
        })
    }
}

#[cfg(feature = "iam-auth")]
fn expires_soon(credentials: &AwsCredentials) -> bool {
    credentials.expiry().is_some_and(|at| at <= SystemTime::now() + CREDENTIALS_MARGIN)
}

/// An error and its sources, joined as the SDK's `DisplayErrorContext`
/// joins them (whose crate only the Secrets Manager client brings).
#[cfg(feature = "iam-auth")]
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
