//! A Secrets Manager secret in the RDS JSON shape, and what it gives a
//! connection's configuration.

use crate::error::{CredentialsStep, Error};

/// An RDS secret in the standard JSON shape. Never printed.
pub(super) struct Secret {
    pub(super) username: String,
    pub(super) password: String,
    host: Option<String>,
    port: Option<u16>,
    dbname: Option<String>,
}

impl Secret {
    /// Parses the secret; the problem never quotes its content.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
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
pub(super) fn apply_secret(pg: &tokio_postgres::Config, secret: Secret) -> Result<tokio_postgres::Config, Error> {
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use tokio_postgres::config::Host;

    use super::*;

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
}
