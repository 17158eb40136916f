//! Test certificates made at test time with rcgen, and a PostgreSQL with
//! `ssl=on` serving them.
//!
//! A [`TestCa`] is a self-signed CA; [`TestCa::server_cert`] issues a server
//! certificate for the given names, which [`tls_postgres`] hands to a
//! throwaway server. The CA's PEM goes to the adapter as `DB_SSL_ROOT_CERT`
//! ([`TestCa::write_pem`]).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tempfile::TempDir;

use crate::postgres::files_for_server;
use crate::Postgres;

/// A CA made for one test.
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A server certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate as `ca.pem` into `dir` and returns its path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write CA PEM");
        path
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed
    /// by this CA.
    pub fn server_cert(&self, names: &[&str]) -> ServerCert {
        let key = KeyPair::generate().expect("generate server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("server params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        let cert = params.signed_by(&key, &self.issuer).expect("sign server certificate");
        ServerCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

/// A PostgreSQL with `ssl=on` presenting `cert`. Keep the returned directory
/// (the server's certificate and key) as long as the server runs.
pub async fn tls_postgres(cert: &ServerCert) -> (Postgres, TempDir) {
    let files = files_for_server(&[("server.crt", &cert.cert_pem), ("server.key", &cert.key_pem)]);
    let pg = Postgres::builder()
        .setting("ssl", "on")
        .setting("ssl_cert_file", files.path().join("server.crt").display().to_string())
        .setting("ssl_key_file", files.path().join("server.key").display().to_string())
        .start()
        .await;
    (pg, files)
}
