//! Where and how to connect, read from the environment: the address
//! (`DATABASE_URL`, or `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`), the
//! credential source (`DB_SECRET_ARN`, `DB_IAM_AUTH`), the TLS settings
//! (`sslmode`, `DB_SSLMODE`, `DB_SSL_ROOT_CERT`) and the AWS settings the
//! credentials need. Nothing here talks to AWS or the database: resolving
//! the credentials is [`crate::credentials`]' job, at every pool build.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::Lookup;
#[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
use crate::credentials::AwsSettings;
use crate::credentials::{CredentialSource, Credentials};
use crate::error::ConfigError;
use crate::tls::{self, SslMode, Tls, SSLMODE_FORM};

const URL_FORM: &str = "postgres://USER:PASSWORD@HOST:PORT/DATABASE";

/// Where and how to connect, as read from the environment.
pub(super) struct Connection {
    /// The address and, from a URL, the user and password: nothing derived.
    pub(super) pg: tokio_postgres::Config,
    pub(super) credentials: Credentials,
    pub(super) tls: Tls,
}

impl Connection {
    /// Reads the address, the credential source, the TLS settings and the
    /// AWS settings. `timeout` bounds each AWS call the credentials make.
    pub(super) fn read(env: &Lookup<'_>, timeout: Duration) -> Result<Self, ConfigError> {
        let source = credential_source(env)?;
        let Address { pg, sslmode, root_cert: url_root_cert } = address(env, &source)?;
        let root_cert: Option<PathBuf> = env.get("DB_SSL_ROOT_CERT").or(url_root_cert).map(Into::into);
        let mode = match sslmode {
            Some(raw) => SslMode::parse(&raw).ok_or_else(|| ConfigError::Invalid {
                var: "DATABASE_URL",
                // Never quoted: a URL's parts may hold the password.
                problem: "has an sslmode that is not one of libpq's modes".to_owned(),
                expected: SSLMODE_FORM,
            })?,
            // libpq 16: sslrootcert=system makes verify-full the default.
            None if root_cert.as_deref() == Some(Path::new(tls::SYSTEM_ROOTS)) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        let tls = Tls::new(mode, root_cert)?;
        Ok(Self { pg, credentials: credentials(env, source, timeout), tls })
    }
}

/// Where the password comes from: `DB_SECRET_ARN`, `DB_IAM_AUTH`, or the
/// URL. Either variable set in a build without its feature is refused here,
/// naming the feature, rather than ignored (the function would then try the
/// URL's password, or none, and fail later with a less telling error).
fn credential_source(env: &Lookup<'_>) -> Result<CredentialSource, ConfigError> {
    let secret_id = env.get("DB_SECRET_ARN");
    let iam = env.switch("DB_IAM_AUTH", "true or false")?.unwrap_or(false);
    match (secret_id, iam) {
        (Some(_), true) => Err(ConfigError::Conflict {
            vars: "DB_SECRET_ARN and DB_IAM_AUTH",
            problem: "both choose where the password comes from; set only one".to_owned(),
        }),
        #[cfg(feature = "secrets-manager")]
        (Some(secret_id), false) => Ok(CredentialSource::SecretsManager { secret_id }),
        #[cfg(not(feature = "secrets-manager"))]
        (Some(_), false) => Err(SECRETS_MANAGER_DISABLED),
        #[cfg(feature = "iam-auth")]
        (None, true) => Ok(CredentialSource::Iam),
        #[cfg(not(feature = "iam-auth"))]
        (None, true) => Err(IAM_AUTH_DISABLED),
        (None, false) => Ok(CredentialSource::Url),
    }
}

/// `DB_SECRET_ARN` in a build without the `secrets-manager` feature.
#[cfg_attr(feature = "secrets-manager", allow(dead_code))]
const SECRETS_MANAGER_DISABLED: ConfigError =
    ConfigError::FeatureDisabled { var: "DB_SECRET_ARN", what: "Secrets Manager support", feature: "secrets-manager" };

/// `DB_IAM_AUTH=true` in a build without the `iam-auth` feature.
#[cfg_attr(feature = "iam-auth", allow(dead_code))]
const IAM_AUTH_DISABLED: ConfigError =
    ConfigError::FeatureDisabled { var: "DB_IAM_AUTH", what: "RDS IAM authentication", feature: "iam-auth" };

/// The credentials of `source`, with the AWS settings resolving them needs
/// (`AWS_REGION`…), read only by builds that can use them.
#[cfg(any(feature = "secrets-manager", feature = "iam-auth"))]
fn credentials(env: &Lookup<'_>, source: CredentialSource, timeout: Duration) -> Credentials {
    let aws = AwsSettings {
        region: env.get("AWS_REGION").or_else(|| env.get("AWS_DEFAULT_REGION")),
        secrets_manager_endpoint: env.get("AWS_ENDPOINT_URL_SECRETS_MANAGER").or_else(|| env.get("AWS_ENDPOINT_URL")),
        keys: env.get("AWS_ACCESS_KEY_ID").zip(env.get("AWS_SECRET_ACCESS_KEY")).map(|(id, secret)| {
            crate::credentials::AwsCredentials::new(id, secret, env.get("AWS_SESSION_TOKEN"), None, "environment")
        }),
    };
    Credentials::new(source, aws, timeout)
}

/// Without the AWS features only the URL's password exists.
#[cfg(not(any(feature = "secrets-manager", feature = "iam-auth")))]
fn credentials(_env: &Lookup<'_>, source: CredentialSource, _timeout: Duration) -> Credentials {
    debug_assert_eq!(source, CredentialSource::Url);
    Credentials::default()
}

/// What the address variables give.
struct Address {
    pg: tokio_postgres::Config,
    /// `sslmode`, from the URL or `DB_SSLMODE`, unparsed.
    sslmode: Option<String>,
    /// The URL's `sslrootcert`.
    root_cert: Option<String>,
}

/// The address from `DATABASE_URL`, or from `DB_HOST`, `DB_PORT`, `DB_NAME`
/// and `DB_USER` (and `DB_SSLMODE`) when there is no URL; with a secret, what
/// neither gives may come from the secret.
fn address(env: &Lookup<'_>, source: &CredentialSource) -> Result<Address, ConfigError> {
    let separate = ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_SSLMODE"];
    let from_secret = source.gives_address();
    let var = "DATABASE_URL";
    let invalid = |problem: &str| ConfigError::Invalid { var, problem: problem.to_owned(), expected: URL_FORM };
    let Some(raw) = env.get(var) else {
        if !from_secret && env.get("DB_HOST").is_none() {
            return Err(ConfigError::Missing { var, expected: URL_FORM });
        }
        return separate_address(env, from_secret);
    };
    if let Some(other) = separate.iter().find(|v| env.get(v).is_some()) {
        return Err(ConfigError::Conflict {
            vars: "DATABASE_URL and DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_SSLMODE",
            problem: format!("{other} is set as well as DATABASE_URL; give the address one way only"),
        });
    }
    // tokio-postgres's parse errors can quote the offending part, which may be
    // the password, so none of its text reaches the message.
    if !(raw.starts_with("postgres://") || raw.starts_with("postgresql://")) {
        return Err(invalid("is not a postgres:// URL"));
    }
    let (rest, sslmode, root_cert) = tls::split_tls_params(&raw);
    let pg = tokio_postgres::Config::from_str(&rest).map_err(|_| invalid("is not a valid connection URL"))?;
    if !from_secret {
        if let Some(part) = missing_part(&pg) {
            return Err(invalid(part.problem()));
        }
    }
    Ok(Address { pg, sslmode, root_cert })
}

/// The address from `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER` and
/// `DB_SSLMODE`.
fn separate_address(env: &Lookup<'_>, from_secret: bool) -> Result<Address, ConfigError> {
    let mut pg = tokio_postgres::Config::new();
    if let Some(host) = env.get("DB_HOST") {
        pg.host(&host);
    }
    if let Some(port) = env.get("DB_PORT") {
        let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| ConfigError::Invalid {
            var: "DB_PORT",
            problem: format!("is not a port number ({port:?})"),
            expected: "a TCP port, 1 to 65535, e.g. 5432",
        })?;
        pg.port(port);
    }
    if let Some(name) = env.get("DB_NAME") {
        pg.dbname(&name);
    }
    if let Some(user) = env.get("DB_USER") {
        pg.user(&user);
    }
    let sslmode = env.get("DB_SSLMODE");
    if let Some(raw) = &sslmode {
        if SslMode::parse(raw).is_none() {
            return Err(ConfigError::Invalid {
                var: "DB_SSLMODE",
                problem: format!("is not one of libpq's modes ({raw:?})"),
                expected: SSLMODE_FORM,
            });
        }
    }
    if !from_secret {
        if let Some(part) = missing_part(&pg) {
            return Err(ConfigError::Missing {
                var: part.var(),
                expected: "the database's host, user and name (DB_HOST, DB_USER, DB_NAME), or DATABASE_URL",
            });
        }
    }
    Ok(Address { pg, sslmode, root_cert: None })
}

/// A part of the address every connection needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Host,
    User,
    Database,
}

impl Part {
    /// How a URL without it is described.
    fn problem(self) -> &'static str {
        match self {
            Part::Host => "names no host",
            Part::User => "names no user",
            Part::Database => "names no database",
        }
    }

    /// The separate variable that gives it.
    fn var(self) -> &'static str {
        match self {
            Part::Host => "DB_HOST",
            Part::User => "DB_USER",
            Part::Database => "DB_NAME",
        }
    }
}

/// The first part of the address `pg` lacks.
fn missing_part(pg: &tokio_postgres::Config) -> Option<Part> {
    if pg.get_hosts().is_empty() {
        Some(Part::Host)
    } else if pg.get_user().is_none_or(str::is_empty) {
        Some(Part::User)
    } else if pg.get_dbname().is_none_or(str::is_empty) {
        Some(Part::Database)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn connection(vars: &[(&str, &str)]) -> Result<Connection, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let lookup = |name: &str| map.get(name).cloned();
        Connection::read(&Lookup(&lookup), Duration::from_secs(5))
    }

    #[test]
    fn sources_and_addresses_are_read_from_the_environment() {
        #[cfg(feature = "secrets-manager")]
        {
            let c =
                connection(&[("DB_SECRET_ARN", "arn:aws:secretsmanager:eu-west-1:1:secret:db")]).expect("secret only");
            assert!(matches!(c.credentials.source(), CredentialSource::SecretsManager { .. }));
        }
        let c = connection(&[
            ("DB_HOST", "h"),
            ("DB_PORT", "6432"),
            ("DB_NAME", "d"),
            ("DB_USER", "u"),
            ("DB_SSLMODE", "verify-full"),
        ])
        .expect("separate variables");
        assert_eq!(c.pg.get_ports(), &[6432]);
        assert_eq!(c.tls.mode(), SslMode::VerifyFull);
        let err = connection(&[("DATABASE_URL", "postgres://u:p@h/d?sslmode=verify-ca")]).err().expect("no root file");
        assert!(err.to_string().starts_with("DB_SSL_ROOT_CERT is not set"), "{err}");
        assert_eq!(connection(&[("DATABASE_URL", "postgres://u:p@h/d")]).expect("url").tls.mode(), SslMode::Prefer);
        let c = connection(&[("DATABASE_URL", "postgres://u:p@h/d"), ("DB_SSL_ROOT_CERT", "system")]).expect("system");
        assert_eq!(
            (c.tls.mode(), c.tls.trusts_public_roots()),
            (SslMode::VerifyFull, true),
            "system implies verify-full"
        );
        let err = connection(&[("DATABASE_URL", "postgres://u:p@h/d?sslmode=require&sslrootcert=system")])
            .err()
            .expect("a weaker mode with system is refused");
        assert!(err.to_string().contains("use sslmode=verify-full"), "{err}");

        let cases = [
            (
                vec![("DATABASE_URL", "postgres://u:p@h/d?sslmode=allow")],
                "DATABASE_URL has an sslmode that is not one of libpq's modes",
            ),
            (vec![("DATABASE_URL", "postgres://u:p@h/d"), ("DB_HOST", "x")], "DB_HOST is set as well as DATABASE_URL"),
            (vec![("DB_HOST", "h"), ("DB_NAME", "d")], "DB_USER is not set"),
            (vec![("DB_HOST", "h"), ("DB_PORT", "0"), ("DB_NAME", "d"), ("DB_USER", "u")], "DB_PORT is not a port"),
            (vec![("DB_SECRET_ARN", "s"), ("DB_IAM_AUTH", "true")], "DB_SECRET_ARN and DB_IAM_AUTH contradict"),
            (vec![("DATABASE_URL", "postgres://u@h/d"), ("DB_IAM_AUTH", "maybe")], "DB_IAM_AUTH is not true or false"),
        ];
        for (vars, message) in cases {
            let err = connection(&vars).err().unwrap_or_else(|| panic!("{vars:?} must fail"));
            assert!(err.to_string().contains(message), "{err} should contain {message}");
        }
    }

    /// The whole message: the variable, the feature, and the Cargo.toml
    /// line that enables it. Checked in every build, whatever its features.
    #[test]
    fn a_disabled_feature_names_the_variable_the_feature_and_the_cargo_toml_line() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            SECRETS_MANAGER_DISABLED.to_string(),
            format!(
                "DB_SECRET_ARN is set, but this build of runtime-adapter has no Secrets Manager support: it was compiled without the cargo feature \"secrets-manager\"; enable it in the function's Cargo.toml, e.g. runtime-adapter = {{ version = \"{version}\", features = [\"secrets-manager\"] }} (keep the dependency's path or git source), and rebuild; or unset DB_SECRET_ARN"
            )
        );
        assert_eq!(
            IAM_AUTH_DISABLED.to_string(),
            format!(
                "DB_IAM_AUTH is set, but this build of runtime-adapter has no RDS IAM authentication: it was compiled without the cargo feature \"iam-auth\"; enable it in the function's Cargo.toml, e.g. runtime-adapter = {{ version = \"{version}\", features = [\"iam-auth\"] }} (keep the dependency's path or git source), and rebuild; or unset DB_IAM_AUTH"
            )
        );
    }

    /// In a build without a feature, its variable fails the configuration
    /// with that message, and never quotes the value (an ARN names the
    /// account). `DB_IAM_AUTH=false` asks for nothing and passes.
    #[test]
    fn aws_variables_without_their_feature_are_refused() {
        let url = ("DATABASE_URL", "postgres://u:p@h/d?sslmode=verify-full");
        let arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db";
        let secret = connection(&[url, ("DB_SECRET_ARN", arn)]);
        let iam = connection(&[url, ("DB_IAM_AUTH", "true")]);
        #[cfg(not(feature = "secrets-manager"))]
        {
            let err = secret.err().expect("refused without the feature");
            assert_eq!(err, SECRETS_MANAGER_DISABLED);
            assert!(!err.to_string().contains("123456789012"), "{err}");
        }
        #[cfg(feature = "secrets-manager")]
        assert!(secret.is_ok(), "accepted with the feature");
        #[cfg(not(feature = "iam-auth"))]
        assert_eq!(iam.err().expect("refused without the feature"), IAM_AUTH_DISABLED);
        #[cfg(feature = "iam-auth")]
        assert!(iam.is_ok(), "accepted with the feature");
        let off = connection(&[url, ("DB_IAM_AUTH", "false")]).expect("false asks for nothing");
        assert_eq!(off.credentials.source(), &CredentialSource::Url);
    }

    #[test]
    #[cfg(feature = "iam-auth")]
    fn iam_needs_tls() {
        let check = |url: &str| {
            let c = connection(&[("DATABASE_URL", url), ("DB_IAM_AUTH", "true")]).expect("parses");
            c.credentials.check(&c.tls)
        };
        let err = check("postgres://u@h/d").expect_err("prefer may fall back to plaintext");
        assert!(err.to_string().contains("sslmode=prefer it could go in plaintext"), "{err}");
        assert!(check("postgres://u@h/d?sslmode=disable").is_err());
        check("postgres://u@h/d?sslmode=require").expect("fine");
    }
}
