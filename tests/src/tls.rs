//! Throwaway certificate authorities for TLS tests: a CA and the server and client
//! certificates it signs, written as PEM files into a temporary directory (removed on
//! drop).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::{HarnessError, Result};

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, mode 0600).
    pub key: PathBuf,
}

/// A test certificate authority.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::io(what, std::io::Error::other(e.to_string()))
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<TestCa> {
        let dir = tempfile::Builder::new()
            .prefix("walbrook-test-tls-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a TLS directory", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .map_err(|e| tls_error("CA parameters", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(|e| tls_error("CA key", e))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_error("CA certificate", e))?;
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem())
            .map_err(|e| HarnessError::io("writing the CA certificate", e))?;
        Ok(TestCa {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `localhost` and `127.0.0.1`, files `<name>.pem/.key`.
    pub fn server(&self, name: &str) -> Result<CertFiles> {
        self.issue(
            name,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `common_name`, files `<name>.pem/.key`.
    pub fn client(&self, name: &str, common_name: &str) -> Result<CertFiles> {
        let files = self.issue_with(
            name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            Some(common_name),
        )?;
        Ok(files)
    }

    fn issue(
        &self,
        name: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles> {
        self.issue_with(name, sans, usage, None)
    }

    fn issue_with(
        &self,
        name: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        common_name: Option<&str>,
    ) -> Result<CertFiles> {
        let mut params =
            CertificateParams::new(sans).map_err(|e| tls_error("certificate parameters", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name.unwrap_or(name));
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(|e| tls_error("key", e))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| tls_error("certificate", e))?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem())
            .map_err(|e| HarnessError::io("writing a certificate", e))?;
        write_private(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}

/// Writes a private key readable by its owner only (PostgreSQL and libpq insist).
pub(crate) fn write_private(path: &Path, pem: String) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| HarnessError::io("writing a private key", e))?;
    file.write_all(pem.as_bytes())
        .map_err(|e| HarnessError::io("writing a private key", e))
}
