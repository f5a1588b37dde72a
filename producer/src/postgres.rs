//! PostgreSQL connection settings: the URL with libpq's TLS parameters, read by
//! [`walbrook_pg_connect`] (shared with the PostgreSQL sink), and the same TLS settings for
//! the replication connection.

pub use walbrook_pg_connect::{PgSettings, PgTls, TlsMode};

/// The TLS settings of the replication connection (`pgwire-replication`).
pub fn replication_tls(settings: &PgSettings) -> pgwire_replication::TlsConfig {
    use pgwire_replication::TlsConfig;
    let tls = match settings.tls.mode {
        TlsMode::Disable => TlsConfig::disabled(),
        TlsMode::Require => TlsConfig::require(),
        TlsMode::VerifyCa => TlsConfig::verify_ca(settings.tls.root_cert.clone()),
        TlsMode::VerifyFull => TlsConfig::verify_full(settings.tls.root_cert.clone()),
    };
    match &settings.tls.client_cert {
        Some((cert, key)) => tls.with_client_cert(cert, key),
        None => tls,
    }
}
