//! How the reading commands (`walbrook tail`, `walbrook schema`) reach Walbrook's subjects:
//! the NATS options shared with the producer's environment variables.

use std::path::PathBuf;

use anyhow::Context;
use walbrook_client::{Client, ClientOptions, Credentials};

/// NATS connection options of the reading commands. The environment variables are the
/// producer's, so a shell set up for `walbrook produce` can tail its stream as is.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URLs, comma-separated.
    #[arg(
        long,
        env = "WALBROOK_NATS_URL",
        value_delimiter = ',',
        required = true
    )]
    nats_url: Vec<String>,
    /// The source database (default: the database of WALBROOK_PG_URL).
    #[arg(long, short)]
    database: Option<String>,
    /// The producer's subject root.
    #[arg(long, env = "WALBROOK_ROOT", default_value = "WALBROOK")]
    root: String,
    /// NATS user (with --password).
    #[arg(long, env = "WALBROOK_NATS_USER", requires = "password")]
    user: Option<String>,
    /// NATS password.
    #[arg(long, env = "WALBROOK_NATS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// NATS token.
    #[arg(long, env = "WALBROOK_NATS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// NATS credentials file (JWT + NKey seed).
    #[arg(long, env = "WALBROOK_NATS_CREDS")]
    creds: Option<PathBuf>,
    /// NATS NKey seed.
    #[arg(long, env = "WALBROOK_NATS_NKEY", hide_env_values = true)]
    nkey: Option<String>,
    /// CA certificate (PEM) of the NATS servers; implies TLS.
    #[arg(long, env = "WALBROOK_NATS_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

/// The database name in a PostgreSQL URL (`postgresql://host/db?…`), if any.
fn database_of_url(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let name = path.split(['?', '#']).next()?;
    (!name.is_empty()).then(|| name.to_string())
}

impl ConnectArgs {
    /// The client options these arguments describe.
    pub fn options(&self) -> anyhow::Result<ClientOptions> {
        let database = match &self.database {
            Some(d) => d.clone(),
            None => std::env::var("WALBROOK_PG_URL")
                .ok()
                .as_deref()
                .and_then(database_of_url)
                .context("no database: pass --database (or set WALBROOK_PG_URL)")?,
        };
        let mut servers = self.nats_url.iter().map(|s| s.trim().to_string());
        let first = servers.next().context("no NATS server given")?;
        let mut options = ClientOptions::new(first, database).root(&self.root);
        for server in servers {
            options = options.server(server);
        }
        let credentials = match (&self.user, &self.token, &self.creds, &self.nkey) {
            (Some(user), None, None, None) => Credentials::UserPassword {
                user: user.clone(),
                password: self.password.clone().unwrap_or_default(),
            },
            (None, Some(token), None, None) => Credentials::Token(token.clone()),
            (None, None, Some(path), None) => Credentials::CredsFile(path.clone()),
            (None, None, None, Some(seed)) => Credentials::NKey(seed.clone()),
            (None, None, None, None) => Credentials::None,
            _ => anyhow::bail!("give one of --user/--password, --token, --creds, --nkey"),
        };
        options = options.credentials(credentials);
        if let Some(ca) = &self.tls_ca {
            options = options.tls_ca(ca);
        }
        Ok(options)
    }

    /// Connects.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let options = self.options()?;
        Client::connect(options.clone())
            .await
            .with_context(|| format!("connecting to {:?}", options.servers))
    }
}

#[cfg(test)]
mod tests {
    use super::database_of_url;

    #[test]
    fn the_database_comes_from_the_postgres_url() {
        assert_eq!(
            database_of_url("postgresql://u:p@host:5432/shop?sslmode=disable").as_deref(),
            Some("shop")
        );
        assert_eq!(database_of_url("postgres://host/").as_deref(), None);
        assert_eq!(database_of_url("postgres://host").as_deref(), None);
    }
}
