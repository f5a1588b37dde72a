//! Connection options.

use std::path::PathBuf;
use std::time::Duration;

/// How to authenticate to NATS.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// No credentials.
    #[default]
    None,
    /// User name and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// A token.
    Token(String),
    /// A `.creds` file (JWT and NKey seed), as `nsc` writes it.
    CredsFile(PathBuf),
    /// An NKey seed (`SU…`).
    NKey(String),
}

impl std::fmt::Debug for Credentials {
    /// Never prints secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: <redacted> }}")
            }
            Credentials::Token(_) => f.write_str("Token(<redacted>)"),
            Credentials::CredsFile(path) => write!(f, "CredsFile({path:?})"),
            Credentials::NKey(_) => f.write_str("NKey(<redacted>)"),
        }
    }
}

/// Options of [`Client::connect`](crate::Client::connect).
///
/// ```
/// use walbrook_client::{ClientOptions, Credentials};
///
/// let options = ClientOptions::new("nats://127.0.0.1:4222", "shop")
///     .credentials(Credentials::Token("s3cret".into()))
///     .root("WALBROOK");
/// assert_eq!(options.database, "shop");
/// ```
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`); several for a cluster.
    pub servers: Vec<String>,
    /// Credentials.
    pub credentials: Credentials,
    /// PEM file of the CA that signed the server certificate; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// Require TLS even without a CA file (the system roots are used).
    pub require_tls: bool,
    /// The producer's subject root (`root` in its config); default `WALBROOK`.
    pub root: String,
    /// The source database name.
    pub database: String,
    /// The connection name shown by the NATS server (default `walbrook-client`).
    pub name: String,
    /// How long a schema lookup waits for its answer (default 5 s).
    pub request_timeout: Duration,
    /// How long connecting may take (default 10 s).
    pub connect_timeout: Duration,
    /// Feed the schema cache with the producer's schema announcements
    /// (`<root>.<db>.schema.>`) received while connected, so that the first event of a new
    /// table version needs no lookup (default `true`).
    pub schema_feed: bool,
}

impl ClientOptions {
    /// Options for database `database` on `server`, with the defaults.
    pub fn new(server: impl Into<String>, database: impl Into<String>) -> ClientOptions {
        ClientOptions {
            servers: vec![server.into()],
            credentials: Credentials::None,
            tls_ca: None,
            require_tls: false,
            root: "WALBROOK".into(),
            database: database.into(),
            name: "walbrook-client".into(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            schema_feed: true,
        }
    }

    /// Sets the credentials.
    pub fn credentials(mut self, credentials: Credentials) -> ClientOptions {
        self.credentials = credentials;
        self
    }

    /// Adds a server URL.
    pub fn server(mut self, url: impl Into<String>) -> ClientOptions {
        self.servers.push(url.into());
        self
    }

    /// Sets the CA certificate file (and requires TLS).
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> ClientOptions {
        self.tls_ca = Some(path.into());
        self.require_tls = true;
        self
    }

    /// Sets the subject root.
    pub fn root(mut self, root: impl Into<String>) -> ClientOptions {
        self.root = root.into();
        self
    }

    /// Whether the schema cache is fed by the schema announcements (default `true`).
    pub fn schema_feed(mut self, on: bool) -> ClientOptions {
        self.schema_feed = on;
        self
    }

    /// Sets the schema lookup timeout.
    pub fn request_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.request_timeout = timeout;
        self
    }
}
