//! RDS IAM authentication tokens: SigV4 presigned URLs, signed as the SDK's
//! `AuthTokenGenerator` and botocore's `generate_db_auth_token` sign them.

use std::time::SystemTime;

use aws_sigv4::http_request::{self, SignableBody, SignableRequest, SignatureLocation, SigningSettings};
use aws_sigv4::sign::v4;

use super::{AwsCredentials, IAM_TOKEN_LIFETIME};
use crate::error::{CredentialsStep, Error};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
