//! TLS to the database, on rustls, with libpq's `sslmode` meanings.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` | if the server offers it, else plaintext | no |
//! | `require` | always (never falls back to plaintext) | no; as `verify-ca` when `DB_SSL_ROOT_CERT` names a file, like libpq with a root certificate file |
//! | `verify-ca` | always | signed by a CA in `DB_SSL_ROOT_CERT` (required); host name not checked |
//! | `verify-full` | always | signed by a trusted CA and issued for the host name |
//!
//! tokio-postgres itself only knows `disable`, `prefer` and `require`, so the
//! two `verify-*` modes are taken out of the URL here and mapped to `require`
//! plus a certificate verifier.
//!
//! What is trusted follows libpq (`sslrootcert`): a `DB_SSL_ROOT_CERT` file
//! is trusted alone, in every mode that verifies (e.g. the RDS global
//! bundle, whose CAs are not public roots). Public roots (Mozilla's, from
//! `webpki-roots`, compiled in so nothing depends on the image's certificate
//! store) serve only `verify-full`, where the host name is checked too:
//! without that check anyone holding a publicly trusted certificate for a
//! name of their own would pass. They are used by `verify-full` without
//! `DB_SSL_ROOT_CERT`, and by `DB_SSL_ROOT_CERT=system` (libpq 16's special
//! value), which implies `verify-full` and refuses weaker modes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why TLS settings cannot be used. The configuration turns it into a
/// [`ConfigError`](crate::ConfigError) naming the variables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// `DB_SSL_ROOT_CERT=system` (every public CA) with a mode that does not check
    /// the host name.
    #[error("the public roots need sslmode=verify-full, not {mode}")]
    SystemRootsNeedVerifyFull {
        /// The mode asked for.
        mode: SslMode,
    },
    /// `verify-ca` without a file of CAs to trust: it never trusts the
    /// public roots, because it checks no host name.
    #[error("sslmode=verify-ca needs a root certificate file")]
    RootCertMissing,
    /// The root certificate file cannot be read or used.
    #[error("the root certificate file {problem}")]
    RootCert {
        /// What is wrong with it, starting with the path it names.
        problem: String,
    },
}

/// How a connection uses TLS: libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS without verification if the server offers it, else plaintext.
    /// libpq's default, and so the default here.
    Prefer,
    /// TLS always, without verification (unless `DB_SSL_ROOT_CERT` is set,
    /// which makes it `VerifyCa`, as in libpq).
    Require,
    /// TLS always; the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// TLS always; the certificate must chain to a trusted CA and be issued
    /// for the host name connected to.
    VerifyFull,
}

/// The accepted spellings, for error messages.
pub(crate) const SSLMODE_FORM: &str = "disable, prefer, require, verify-ca or verify-full";

impl SslMode {
    /// Parses libpq's spelling. `allow` (plaintext first) is refused: it
    /// would send credentials in plaintext whenever the server accepts that.
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        match raw {
            "disable" => Some(Self::Disable),
            "prefer" => Some(Self::Prefer),
            "require" => Some(Self::Require),
            "verify-ca" => Some(Self::VerifyCa),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    /// libpq's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Whether every connection is encrypted (no plaintext fallback).
    #[must_use]
    pub fn always_encrypts(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }

    /// What tokio-postgres is told: it encrypts; the verifier decides the rest.
    pub(crate) fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings and the connector built from them once, at INIT.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    mode: SslMode,
    /// The mode after libpq's rule for `require` with a root certificate file.
    effective: SslMode,
    /// The `DB_SSL_ROOT_CERT` file; `None` with `system` too.
    root_cert: Option<PathBuf>,
    /// Whether the public roots are trusted: `verify-full` without a file.
    public_roots: bool,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("effective", &self.effective)
            .field("root_cert", &self.root_cert)
            .field("public_roots", &self.public_roots)
            .finish_non_exhaustive()
    }
}

impl Default for Tls {
    fn default() -> Self {
        Self::new(SslMode::Prefer, None).expect("no root certificate file to read")
    }
}

/// `DB_SSL_ROOT_CERT`'s special value: the public roots, with `verify-full`.
pub(crate) const SYSTEM_ROOTS: &str = "system";

impl Tls {
    /// Builds the connector for `mode`. `root_cert` is the PEM file of the
    /// CAs to trust (alone), or `system` for the public roots.
    ///
    /// # Errors
    ///
    /// `DB_SSL_ROOT_CERT` cannot be read or holds no certificate; it is
    /// missing with `verify-ca`; it is `system` with a mode weaker than
    /// `verify-full`.
    pub fn new(mode: SslMode, root_cert: Option<PathBuf>) -> Result<Self, TlsError> {
        Self::build(mode, root_cert, webpki_roots::TLS_SERVER_ROOTS.to_vec())
    }

    /// As [`Tls::new`], with the CAs of the PEM text `public` standing in
    /// for Mozilla's roots: for tests, which cannot get a certificate from a
    /// public CA, to show which modes trust the public roots. Not part of
    /// the supported API.
    ///
    /// # Errors
    ///
    /// As [`Tls::new`]; `public` holds no usable certificate.
    #[doc(hidden)]
    pub fn with_public_roots(mode: SslMode, root_cert: Option<PathBuf>, public: &str) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(public.as_bytes()) {
            let cert = cert.map_err(|e| root_cert_invalid(format!("(test roots) is not valid PEM ({e})")))?;
            store.add(cert).map_err(|e| root_cert_invalid(format!("(test roots) cannot be used ({e})")))?;
        }
        Self::build(mode, root_cert, store.roots)
    }

    fn build(
        mode: SslMode,
        root_cert: Option<PathBuf>,
        public: Vec<rustls::pki_types::TrustAnchor<'static>>,
    ) -> Result<Self, TlsError> {
        let system = root_cert.as_deref().is_some_and(|p| p == Path::new(SYSTEM_ROOTS));
        if system && mode != SslMode::VerifyFull {
            return Err(TlsError::SystemRootsNeedVerifyFull { mode });
        }
        let root_file = root_cert.filter(|_| !system);
        let effective = match (mode, &root_file) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            _ => mode,
        };
        // ring, explicitly: with an AWS feature rustls also has aws-lc-rs
        // (the SDK's HTTPS client picks it explicitly too), and no process
        // default is installed.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut public_roots = false;
        let verifier: Arc<dyn ServerCertVerifier> = match effective {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(EncryptOnly { provider: provider.clone() })
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = match &root_file {
                    Some(path) => roots_from(path)?,
                    None if effective == SslMode::VerifyFull => {
                        public_roots = true;
                        RootCertStore { roots: public }
                    }
                    None => return Err(TlsError::RootCertMissing),
                };
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| root_cert_invalid(format!("cannot be used ({e})")))?;
                if effective == SslMode::VerifyCa {
                    Arc::new(CaOnly { inner: webpki })
                } else {
                    webpki
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| root_cert_invalid(format!("cannot be used ({e})")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self { mode, effective, root_cert: root_file, public_roots, connector: MakeRustlsConnect::new(config) })
    }

    /// The `sslmode` asked for.
    #[must_use]
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The checks actually made: `require` with `DB_SSL_ROOT_CERT` verifies
    /// the CA, as libpq does with a root certificate file.
    #[must_use]
    pub fn effective_mode(&self) -> SslMode {
        self.effective
    }

    /// The `DB_SSL_ROOT_CERT` bundle, if it names a file.
    #[must_use]
    pub fn root_cert(&self) -> Option<&Path> {
        self.root_cert.as_deref()
    }

    /// Whether publicly trusted CAs are accepted: only with `verify-full`
    /// and no `DB_SSL_ROOT_CERT` file (or `DB_SSL_ROOT_CERT=system`).
    #[must_use]
    pub fn trusts_public_roots(&self) -> bool {
        self.public_roots
    }

    /// Whether the server's certificate is checked at all.
    #[must_use]
    pub fn verifies(&self) -> bool {
        matches!(self.effective, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// The connector every connection, and every cancel request, uses.
    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }
}

fn root_cert_invalid(problem: String) -> TlsError {
    TlsError::RootCert { problem }
}

/// The CAs of the PEM file `path`, alone.
fn roots_from(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| root_cert_invalid(format!("names {shown}, which cannot be read ({e})")))?;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| root_cert_invalid(format!("names {shown}, which is not valid PEM ({e})")))?;
        roots
            .add(cert)
            .map_err(|e| root_cert_invalid(format!("names {shown}, which holds an unusable certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(root_cert_invalid(format!("names {shown}, which holds no PEM certificate")));
    }
    Ok(roots)
}

/// `verify-ca`: the chain to a trusted CA is checked (validity dates
/// included), the host name is not.
#[derive(Debug)]
struct CaOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // WebPkiServerVerifier checks the chain first and the name last, so
        // a name mismatch means the chain passed.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` and `require` (libpq's meaning): encrypted, but any certificate
/// is accepted. The handshake's signatures are still checked, so the peer
/// holds the key of the certificate it sent.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Which check of the server's certificate failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsCheck {
    /// The certificate is not issued for the host name connected to
    /// (`verify-full`).
    HostName,
    /// The certificate does not chain to a trusted CA (`verify-ca`,
    /// `verify-full`).
    CertificateAuthority,
    /// The certificate has expired or is not valid yet.
    Validity,
    /// Anything else about the certificate (revoked, malformed, bad
    /// signature, wrong purpose).
    Other,
}

impl fmt::Display for TlsCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsCheck::HostName => {
                "the host name check failed: the server's certificate is not issued for this host name (use the name the certificate names, or sslmode=verify-ca to check only the CA)"
            }
            TlsCheck::CertificateAuthority => {
                "the CA check failed: the server's certificate is not signed by a trusted CA (add its CA, e.g. the RDS global bundle, to DB_SSL_ROOT_CERT)"
            }
            TlsCheck::Validity => "the server's certificate has expired or is not valid yet",
            TlsCheck::Other => "the server's certificate was rejected",
        })
    }
}

/// The certificate check that failed, if `error` is a certificate
/// verification failure during the TLS handshake. Read from rustls's typed
/// error, never from message text.
pub(crate) fn failed_check(error: &tokio_postgres::Error) -> Option<TlsCheck> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(s) = source {
        // io::Error's `source()` skips the error it wraps, so look inside.
        let inner = s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|e| e as &dyn std::error::Error);
        for candidate in [Some(s), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(cert)) = candidate.downcast_ref::<rustls::Error>() {
                return Some(match cert {
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                        TlsCheck::HostName
                    }
                    CertificateError::UnknownIssuer => TlsCheck::CertificateAuthority,
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. } => TlsCheck::Validity,
                    _ => TlsCheck::Other,
                });
            }
        }
        source = s.source();
    }
    None
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query,
/// since tokio-postgres refuses `verify-ca`/`verify-full` and knows no
/// `sslrootcert`. Returns the rest of the URL and the two values.
pub(crate) fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None, None) };
    let (mut mode, mut root_cert) = (None, None);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => mode = Some(value.to_owned()),
                "sslrootcert" => root_cert = Some(value.to_owned()),
                _ => return true,
            }
            false
        })
        .collect();
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, mode, root_cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmodes_parse_with_libpq_spellings() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(SslMode::parse(mode).map(SslMode::as_str), Some(mode));
        }
        assert_eq!(SslMode::parse("allow"), None);
        assert_eq!(SslMode::parse("verify_full"), None);
        assert!(!SslMode::Prefer.always_encrypts());
        assert!(SslMode::Require.always_encrypts());
    }

    #[test]
    fn tls_params_are_taken_out_of_the_url() {
        let (url, mode, root) =
            split_tls_params("postgres://u:p@h:5432/d?application_name=x&sslmode=verify-full&sslrootcert=/b.pem");
        assert_eq!(url, "postgres://u:p@h:5432/d?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/b.pem"));
        let (url, mode, _) = split_tls_params("postgres://u:p@h/d?sslmode=require");
        assert_eq!((url.as_str(), mode.as_deref()), ("postgres://u:p@h/d", Some("require")));
        assert_eq!(split_tls_params("postgres://u:p@h/d").0, "postgres://u:p@h/d");
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_ca_like_libpq() {
        let dir = tempfile_dir();
        let path = dir.join("none.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        let err = Tls::new(SslMode::Require, Some(path.clone())).expect_err("no certificate in it");
        assert!(
            matches!(&err, TlsError::RootCert { problem } if problem.starts_with("names ") && problem.ends_with("holds no PEM certificate")),
            "{err:?}"
        );
        let err = Tls::new(SslMode::VerifyFull, Some(dir.join("missing.pem"))).expect_err("missing");
        assert!(err.to_string().contains("cannot be read"), "{err}");
        assert_eq!(Tls::new(SslMode::Require, None).expect("plain").effective_mode(), SslMode::Require);
        assert_eq!(Tls::default().mode(), SslMode::Prefer);
    }

    #[test]
    fn public_roots_serve_only_verify_full() {
        let dir = tempfile_dir();
        let path = dir.join("ca.pem");
        std::fs::write(&path, include_str!("../tests/fixtures/ca.pem")).expect("write");

        let err = Tls::new(SslMode::VerifyCa, None).expect_err("verify-ca needs a root file");
        assert_eq!(err, TlsError::RootCertMissing);
        let file = |mode| Tls::new(mode, Some(path.clone())).expect("with a root file");
        for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            let tls = file(mode);
            assert!(!tls.trusts_public_roots(), "{mode}: the file alone");
            assert!(tls.verifies(), "{mode}");
        }
        let full = Tls::new(SslMode::VerifyFull, None).expect("verify-full, public roots");
        assert!(full.trusts_public_roots());
        let system = Tls::new(SslMode::VerifyFull, Some(SYSTEM_ROOTS.into())).expect("system");
        assert!(system.trusts_public_roots());
        assert_eq!(system.root_cert(), None);
        for weaker in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa] {
            let err = Tls::new(weaker, Some(SYSTEM_ROOTS.into())).expect_err("system implies verify-full");
            assert_eq!(err, TlsError::SystemRootsNeedVerifyFull { mode: weaker });
            let message = crate::ConfigError::from(err).to_string();
            assert!(
                message.contains("DB_SSL_ROOT_CERT=system") && message.contains("use sslmode=verify-full"),
                "{message}"
            );
        }
        assert!(!Tls::new(SslMode::Require, None).expect("unverified").verifies());
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runtime-adapter-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
