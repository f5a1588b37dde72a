//! Decentralized (operator / JWT) authentication for nats-server tests, without `nsc`: an
//! operator, a system account and an application account with JetStream, signed here with
//! NKeys, plus user JWTs written as `.creds` files.
//!
//! A NATS JWT is `base64url(header).base64url(claims).base64url(signature)` (no padding)
//! with the header `{"typ":"JWT","alg":"ed25519-nkey"}`; the signature is the issuer's
//! ed25519 NKey signature of the first two parts. The operator signs itself and the
//! accounts, an account signs its users. The server trusts the operator JWT and learns the
//! accounts from `resolver: MEMORY` + `resolver_preload` ([`NatsAuth::server_config`]).
//!
//! ```no_run
//! use walbrook_harness::{NatsAuth, NatsServer};
//!
//! let auth = NatsAuth::new("walbrook").unwrap();
//! let server = NatsServer::start_with_config(&auth.server_config()).unwrap();
//! let creds = auth.user_creds_file("producer").unwrap();
//! // connect with async_nats::ConnectOptions::with_credentials_file(creds)
//! # let _ = (server, creds);
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

use crate::{HarnessError, Result};

/// An operator with a system account and one application account (JetStream enabled,
/// no limits), able to issue user credentials of the application account.
pub struct NatsAuth {
    dir: tempfile::TempDir,
    operator: KeyPair,
    operator_jwt: String,
    system: KeyPair,
    system_jwt: String,
    account: KeyPair,
    account_jwt: String,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("operator", &self.operator.public_key())
            .field("account", &self.account.public_key())
            .finish()
    }
}

fn auth_error(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::io(what, std::io::Error::other(e.to_string()))
}

static JWT_IDS: AtomicU64 = AtomicU64::new(0);

/// Signs `nats` claims about `subject` (a public key) by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let claims = json!({
        "jti": format!(
            "{:X}{:X}",
            now.as_nanos(),
            JWT_IDS.fetch_add(1, Ordering::Relaxed)
        ),
        "iat": now.as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{body}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| auth_error("signing a JWT", e))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

fn account_jwt(
    operator: &KeyPair,
    account: &KeyPair,
    name: &str,
    jetstream: bool,
) -> Result<String> {
    let storage = if jetstream { -1 } else { 0 };
    jwt(
        operator,
        &account.public_key(),
        name,
        json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": storage, "disk_storage": storage,
                "streams": -1, "consumer": -1,
            },
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }),
    )
}

impl NatsAuth {
    /// A new operator named `name`, its system account `SYS` and application account `APP`.
    pub fn new(name: &str) -> Result<NatsAuth> {
        let dir = tempfile::Builder::new()
            .prefix("walbrook-test-nats-auth-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating a NATS auth directory", e))?;
        let operator = KeyPair::new_operator();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            name,
            json!({"type": "operator", "version": 2}),
        )?;
        let system = KeyPair::new_account();
        let system_jwt = account_jwt(&operator, &system, "SYS", false)?;
        let account = KeyPair::new_account();
        let account_jwt = account_jwt(&operator, &account, "APP", true)?;
        Ok(NatsAuth {
            dir,
            operator,
            operator_jwt,
            system,
            system_jwt,
            account,
            account_jwt,
        })
    }

    /// nats-server configuration text trusting the operator, with both accounts preloaded
    /// into a memory resolver (pass it to [`NatsServer::start_with_config`](crate::NatsServer)).
    pub fn server_config(&self) -> String {
        format!(
            "operator: \"{}\"\nsystem_account: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  \"{}\": \"{}\"\n  \"{}\": \"{}\"\n}}\n",
            self.operator_jwt,
            self.system.public_key(),
            self.system.public_key(),
            self.system_jwt,
            self.account.public_key(),
            self.account_jwt,
        )
    }

    /// The public key of the application account.
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    /// The `.creds` text of a new user `name` of the application account (its JWT and NKey
    /// seed), as `nsc generate creds` writes it.
    pub fn user_creds(&self, name: &str) -> Result<String> {
        let user = KeyPair::new_user();
        let user_jwt = jwt(
            &self.account,
            &user.public_key(),
            name,
            json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2,
            }),
        )?;
        let seed = user.seed().map_err(|e| auth_error("a user seed", e))?;
        Ok(format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        ))
    }

    /// [`NatsAuth::user_creds`] written to `<name>.creds` (mode 0600) in a directory removed
    /// with this value.
    pub fn user_creds_file(&self, name: &str) -> Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.path().join(format!("{name}.creds"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HarnessError::io("writing a creds file", e))?;
        file.write_all(self.user_creds(name)?.as_bytes())
            .map_err(|e| HarnessError::io("writing a creds file", e))?;
        Ok(path)
    }

    /// The `.creds` text of a user signed by an account the server does not know (it must
    /// be refused).
    pub fn foreign_user_creds_file(&self, name: &str) -> Result<PathBuf> {
        let other = NatsAuth::new("impostor")?;
        let text = other.user_creds(name)?;
        let path = self.dir.path().join(format!("{name}-foreign.creds"));
        std::fs::write(&path, text).map_err(|e| HarnessError::io("writing a creds file", e))?;
        Ok(path)
    }
}
