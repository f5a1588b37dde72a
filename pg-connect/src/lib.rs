//! PostgreSQL connection settings from a URL, with TLS configured by libpq's own URL
//! parameters: the producer's SQL and replication connections and the PostgreSQL sink's
//! target connection read the same URLs the same way.
//!
//! | Parameter | Meaning |
//! |---|---|
//! | `sslmode=disable` / `allow` / `prefer` (the default) | no TLS |
//! | `sslmode=require` | TLS; the server certificate is not checked, unless `sslrootcert` is given (then as `verify-ca`, like libpq) |
//! | `sslmode=verify-ca` | TLS; the server certificate must chain to `sslrootcert` |
//! | `sslmode=verify-full` | as `verify-ca`, and the certificate must name the host |
//! | `sslrootcert=/path/ca.pem` | CA certificate(s), PEM |
//! | `sslcert=/path/client.pem`, `sslkey=/path/client.key` | client certificate and key (PEM) for mutual TLS / `cert` authentication |
//!
//! Unlike libpq, `prefer` never falls back silently from TLS to plain text: Walbrook
//! uses TLS only when asked to, and then insists on it. TLS is rustls (the same stack
//! async-nats uses) through `tokio-postgres-rustls` for SQL connections; the producer
//! hands the same settings to `pgwire-replication`'s own rustls support for its
//! replication connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How strictly TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text.
    Disable,
    /// Encrypted; the server's certificate is not checked.
    Require,
    /// Encrypted; the certificate must chain to the configured CA.
    VerifyCa,
    /// Encrypted; the certificate must chain to the CA and name the host.
    VerifyFull,
}

/// TLS settings taken from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    /// The mode.
    pub mode: TlsMode,
    /// `sslrootcert`.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A PostgreSQL URL split into what tokio-postgres understands and the TLS settings.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// Connection settings (host, port, user, password, database…).
    pub config: tokio_postgres::Config,
    /// TLS settings.
    pub tls: PgTls,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl PgTls {
    /// What an operator should hear about these settings over TCP: plaintext (`sslmode`
    /// absent, `disable`, `allow` or `prefer`: Walbrook never falls back, so these mean no
    /// TLS at all), or encryption without authenticating the server (`require`). `None` for
    /// `verify-ca` and `verify-full`, and for Unix sockets (`unix_socket`).
    pub fn warning(&self, unix_socket: bool) -> Option<String> {
        if unix_socket {
            return None;
        }
        match self.mode {
            TlsMode::Disable => Some(
                "no TLS (sslmode absent, disable, allow or prefer): the password and every row \
                 travel in plaintext; use sslmode=verify-full with sslrootcert=<CA file>"
                    .into(),
            ),
            TlsMode::Require => Some(
                "sslmode=require encrypts but does not authenticate the server (anyone in the \
                 path can impersonate it); use sslmode=verify-full with sslrootcert=<CA file>"
                    .into(),
            ),
            TlsMode::VerifyCa | TlsMode::VerifyFull => None,
        }
    }
}

impl PgSettings {
    /// [`PgTls::warning`] for these settings (no warning when every host is a Unix socket).
    pub fn tls_warning(&self) -> Option<String> {
        let unix = !self.config.get_hosts().is_empty()
            && self
                .config
                .get_hosts()
                .iter()
                .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        self.tls.warning(unix)
    }

    /// Parses a `postgres://` / `postgresql://` URL or a `key=value` connection string.
    /// Errors never contain the password.
    pub fn parse(url: &str) -> Result<PgSettings, String> {
        let mut found: Vec<(String, String)> = Vec::new();
        let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
            let mut kept = Vec::new();
            for (key, value) in parsed.query_pairs() {
                if TLS_KEYS.contains(&key.as_ref()) {
                    found.push((key.into_owned(), value.into_owned()));
                } else {
                    kept.push((key.into_owned(), value.into_owned()));
                }
            }
            if kept.is_empty() {
                parsed.set_query(None);
            } else {
                parsed.query_pairs_mut().clear().extend_pairs(kept);
            }
            parsed.to_string()
        } else {
            let mut kept = Vec::new();
            for token in url.split_whitespace() {
                match token.split_once('=') {
                    Some((key, value)) if TLS_KEYS.contains(&key.trim()) => {
                        found.push((key.trim().to_string(), value.trim_matches('\'').to_string()));
                    }
                    _ => kept.push(token),
                }
            }
            kept.join(" ")
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("cannot parse the connection settings: {e}"))?;
        let get = |key: &str| {
            found
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let root_cert = get("sslrootcert").map(PathBuf::from);
        let client_cert = match (get("sslcert"), get("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => return Err("sslcert and sslkey must be given together".into()),
        };
        let mode = match get("sslmode").as_deref() {
            None | Some("disable" | "allow" | "prefer") => TlsMode::Disable,
            Some("require") if root_cert.is_some() => TlsMode::VerifyCa,
            Some("require") => TlsMode::Require,
            Some("verify-ca") => TlsMode::VerifyCa,
            Some("verify-full") => TlsMode::VerifyFull,
            Some(other) => {
                return Err(format!(
                    "sslmode={other}: use disable, require, verify-ca or verify-full"
                ));
            }
        };
        if matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && root_cert.is_none() {
            return Err(
                "sslmode=verify-ca and verify-full need sslrootcert=<CA certificate file>".into(),
            );
        }
        if mode == TlsMode::Disable && (root_cert.is_some() || client_cert.is_some()) {
            return Err(
                "sslrootcert/sslcert/sslkey given without sslmode=require, verify-ca or verify-full"
                    .into(),
            );
        }
        config.ssl_mode(if mode == TlsMode::Disable {
            tokio_postgres::config::SslMode::Disable
        } else {
            tokio_postgres::config::SslMode::Require
        });
        Ok(PgSettings {
            config,
            tls: PgTls {
                mode,
                root_cert,
                client_cert,
            },
        })
    }

    /// Opens a SQL connection (TLS as configured); its connection task runs in the
    /// background and logs when the connection ends with an error. Errors are described
    /// in one line (see [`ConnectError`] to classify them).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, String> {
        self.open().await.map_err(|e| e.to_string())
    }

    /// As [`PgSettings::connect`], keeping the driver's error (its SQLSTATE tells a refused
    /// login from an unreachable server).
    pub async fn open(&self) -> Result<tokio_postgres::Client, ConnectError> {
        if self.tls.mode == TlsMode::Disable {
            let (client, connection) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(ConnectError::Postgres)?;
            tokio::spawn(log_end(connection));
            return Ok(client);
        }
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            self.rustls_config().map_err(ConnectError::Settings)?,
        );
        let (client, connection) = self
            .config
            .connect(tls)
            .await
            .map_err(ConnectError::Postgres)?;
        tokio::spawn(log_end(connection));
        Ok(client)
    }

    /// The rustls client configuration for this mode.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.tls.mode {
            TlsMode::Disable | TlsMode::Require => Arc::new(AnyCertificate(provider)),
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let path = self.tls.root_cert.as_deref().expect("checked by parse");
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                }
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                if self.tls.mode == TlsMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match &self.tls.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert/sslkey: {e}"))
            }
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The TLS settings cannot be used (a certificate file missing or invalid).
    Settings(String),
    /// The server refused or could not be reached.
    Postgres(tokio_postgres::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Settings(text) => f.write_str(text),
            ConnectError::Postgres(e) => f.write_str(&describe(e)),
        }
    }
}

impl std::error::Error for ConnectError {}

/// A driver error in one line: the server's message, or the error and its causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })
}

async fn log_end<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "SQL connection closed");
    }
}

/// `sslmode=require`: encryption without authentication of the server (libpq's meaning).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to the CA; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod warning_tests {
    use super::*;

    #[test]
    fn plaintext_and_unauthenticated_tls_are_warned_about() {
        let warning = |url: &str| PgSettings::parse(url).unwrap().tls_warning();
        for plain in [
            "postgresql://u@db.example/shop",
            "postgresql://u@db.example/shop?sslmode=prefer",
            "postgresql://u@db.example/shop?sslmode=allow",
            "postgresql://u@127.0.0.1/shop?sslmode=disable",
        ] {
            assert!(warning(plain).unwrap().contains("plaintext"), "{plain}");
        }
        assert!(
            warning("postgresql://u@db.example/shop?sslmode=require")
                .unwrap()
                .contains("does not authenticate the server")
        );
        assert_eq!(
            warning("postgresql://u@db.example/shop?sslmode=verify-full&sslrootcert=/ca.pem"),
            None
        );
        assert_eq!(warning("host=/var/run/postgresql dbname=shop user=u"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url() {
        let s = PgSettings::parse(
            "postgresql://u:pw@db.example:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(s.tls.mode, TlsMode::VerifyFull);
        assert_eq!(s.tls.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(s.config.get_dbname(), Some("shop"));
        assert_eq!(s.config.get_application_name(), Some("x"));
        assert_eq!(
            s.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );

        let s = PgSettings::parse("postgresql://u@h/db").unwrap();
        assert_eq!(s.tls.mode, TlsMode::Disable);
        let s = PgSettings::parse("postgresql://u@h/db?sslmode=prefer").unwrap();
        assert_eq!(s.tls.mode, TlsMode::Disable);
        let s = PgSettings::parse("postgresql://u@h/db?sslmode=require").unwrap();
        assert_eq!(s.tls.mode, TlsMode::Require);
        // libpq: require with a root certificate verifies the chain.
        let s = PgSettings::parse("postgresql://u@h/db?sslmode=require&sslrootcert=/ca").unwrap();
        assert_eq!(s.tls.mode, TlsMode::VerifyCa);
        let s = PgSettings::parse(
            "host=h user=u dbname=db sslmode=verify-ca sslrootcert=/ca.pem sslcert=/c.pem sslkey=/c.key",
        )
        .unwrap();
        assert_eq!(s.tls.mode, TlsMode::VerifyCa);
        assert_eq!(
            s.tls.client_cert,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/c.key")))
        );
    }

    #[test]
    fn inconsistent_tls_parameters_are_refused_without_leaking_the_password() {
        for url in [
            "postgresql://u:secret-pw@h/db?sslmode=verify-full",
            "postgresql://u:secret-pw@h/db?sslmode=bogus",
            "postgresql://u:secret-pw@h/db?sslmode=require&sslcert=/c.pem",
            "postgresql://u:secret-pw@h/db?sslrootcert=/ca.pem",
        ] {
            let error = PgSettings::parse(url).unwrap_err();
            assert!(!error.contains("secret-pw"), "{error}");
            assert!(error.contains("ssl"), "{error}");
        }
    }
}
