//! Throwaway PostgreSQL clusters.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{Reaper, ServerProcessInfo, shell_quote};
use crate::tls::{CertFiles, TestCa};
use crate::tools::{self, free_port, log_tail, pg_bin_dir, running_as_root, temp_dir};
use crate::{HarnessError, Result};

/// Server settings every harness cluster gets.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("max_replication_slots", "64"),
    ("max_wal_senders", "64"),
    ("max_connections", "300"),
    ("max_logical_replication_workers", "16"),
    ("max_worker_processes", "32"),
    // Throwaway data: durability across an OS crash is not needed.
    ("fsync", "off"),
    ("full_page_writes", "off"),
    ("log_min_messages", "warning"),
];

/// A PostgreSQL server for tests: either a throwaway cluster owned by this process or
/// an external server named by `TEST_PG_URL`.
#[derive(Debug)]
pub struct PgServer {
    host: String,
    port: u16,
    user: String,
    /// URL of the server's maintenance database, used for administration.
    admin_url: String,
    /// Query parameters of every URL (`sslmode=…`).
    url_params: String,
    cluster: Option<OwnedCluster>,
}

#[derive(Debug)]
struct OwnedCluster {
    dir: PathBuf,
    bin: PathBuf,
    reaper: Reaper,
}

static SHARED: OnceLock<PgServer> = OnceLock::new();
static SHARED_HIGH_LSN: OnceLock<PgServer> = OnceLock::new();

/// Where [`PgServer::shared_high_lsn`]'s WAL starts: `900/0`, past `800/0` (2^43 bytes,
/// 8 TiB of WAL), where a position shifted left by 20 bits no longer fits an `i64`.
pub const HIGH_WAL_START: u64 = 0x900_0000_0000;
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

impl PgServer {
    /// The server shared by every test of this process: the external server in
    /// `TEST_PG_URL` if set, else a throwaway cluster started on first use (and
    /// removed by its reaper when the process exits).
    ///
    /// # Panics
    /// If the cluster cannot be started; the message says why and what to install.
    ///
    /// `TEST_PG_WAL_START` (an LSN such as `900/0`) starts that cluster with its WAL past
    /// that position ([`PgServer::start_with_wal_start`]), so a whole suite runs on a
    /// database whose positions need more than 43 bits.
    pub fn shared() -> &'static PgServer {
        SHARED.get_or_init(|| match std::env::var("TEST_PG_URL") {
            Ok(url) if !url.is_empty() => PgServer::external(&url),
            _ => {
                let wal_start = std::env::var("TEST_PG_WAL_START")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| match v.parse::<walbrook_protocol::Lsn>() {
                        Ok(lsn) => lsn.0,
                        Err(e) => panic!("TEST_PG_WAL_START: {e}"),
                    });
                PgServer::start_inner(&[], None, wal_start)
                    .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"))
            }
        })
    }

    /// A second shared cluster, started on first use, whose WAL begins past
    /// [`HIGH_WAL_START`] (`900/0`): for tests of positions that need more than 43 bits,
    /// whatever `TEST_PG_WAL_START` says for [`PgServer::shared`].
    ///
    /// # Panics
    /// If the cluster cannot be started.
    pub fn shared_high_lsn() -> &'static PgServer {
        SHARED_HIGH_LSN.get_or_init(|| {
            PgServer::start_with_wal_start(&[], HIGH_WAL_START)
                .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e}"))
        })
    }

    /// Uses an existing server (the URL must name a superuser with replication rights).
    pub fn external(url: &str) -> PgServer {
        let (host, port, user) = parse_url_authority(url);
        PgServer {
            host,
            port,
            user,
            admin_url: url.to_string(),
            url_params: String::new(),
            cluster: None,
        }
    }

    /// Starts a throwaway cluster with the harness's default settings.
    pub fn start() -> Result<PgServer> {
        Self::start_with(&[])
    }

    /// Starts a throwaway cluster; `settings` are extra `postgresql.conf` settings that
    /// override the defaults (for example `("wal_sender_timeout", "5s")`).
    pub fn start_with(settings: &[(&str, &str)]) -> Result<PgServer> {
        Self::start_inner(settings, None, None)
    }

    /// Starts a throwaway cluster whose write-ahead log begins at the segment holding
    /// `wal_start` (an LSN as a number; `0x900_0000_0000` is `900/0`): `pg_resetwal -l`
    /// on the fresh cluster before its first start. A long-lived production database has
    /// such positions; tests use it so no position arithmetic overflows unnoticed.
    pub fn start_with_wal_start(settings: &[(&str, &str)], wal_start: u64) -> Result<PgServer> {
        Self::start_inner(settings, None, Some(wal_start))
    }

    /// Starts a throwaway cluster that accepts only TLS connections with a client
    /// certificate signed by `ca` (`hostssl … clientcert=verify-ca`; plain connections
    /// are rejected), with a server certificate from `ca` for `localhost`/`127.0.0.1`.
    /// Its URLs carry `sslmode=require&sslcert=…&sslkey=…` (a client certificate for
    /// user `postgres`); add `sslrootcert` and `sslmode=verify-full` to verify the server.
    pub fn start_tls(ca: &TestCa) -> Result<PgServer> {
        Self::start_inner(&[], Some(ca), None)
    }

    fn start_inner(
        settings: &[(&str, &str)],
        tls: Option<&TestCa>,
        wal_start: Option<u64>,
    ) -> Result<PgServer> {
        let bin = pg_bin_dir()?;
        let dir = temp_dir("pg")?;
        let as_postgres = running_as_root();
        if as_postgres {
            tools::run(Command::new("chown").arg("postgres:postgres").arg(&dir))?;
        }
        let data = dir.join("data");
        let cleanup = format!(
            "{} {} -D {} -m immediate -w stop; rm -rf {}",
            if as_postgres {
                "runuser -u postgres --"
            } else {
                ""
            },
            shell_quote(&bin.join("pg_ctl").to_string_lossy()),
            shell_quote(&data.to_string_lossy()),
            shell_quote(&dir.to_string_lossy()),
        );
        // From here on the reaper owns the directory, also if initdb fails.
        let reaper = Reaper::spawn(cleanup)?;
        let mut cluster = OwnedCluster { dir, bin, reaper };
        cluster.initdb(as_postgres)?;
        if let Some(lsn) = wal_start {
            cluster.reset_wal(as_postgres, lsn)?;
        }
        let mut settings = settings.to_vec();
        let url_params = match tls {
            None => "sslmode=disable".to_string(),
            Some(ca) => {
                let client = cluster.enable_tls(as_postgres, ca)?;
                settings.extend([
                    ("ssl", "on"),
                    ("ssl_cert_file", "server.crt"),
                    ("ssl_key_file", "server.key"),
                    ("ssl_ca_file", "root.crt"),
                ]);
                format!(
                    "sslmode=require&sslcert={}&sslkey={}",
                    client.cert.display(),
                    client.key.display()
                )
            }
        };
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            match cluster.pg_ctl_start(as_postgres, port, &settings) {
                Ok(()) => {
                    let user = "postgres".to_string();
                    return Ok(PgServer {
                        host: "127.0.0.1".into(),
                        port,
                        admin_url: url_for("127.0.0.1", port, &user, "postgres", &url_params),
                        url_params,
                        user,
                        cluster: Some(cluster),
                    });
                }
                // Another process took the port between probe and bind: try another.
                Err(e) if e.to_string().contains("could not bind") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("the loop ran at least once"))
    }

    /// Host name of the server.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the maintenance database `postgres`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        match &self.cluster {
            Some(_) => url_for(&self.host, self.port, &self.user, db, &self.url_params),
            None => replace_url_database(&self.admin_url, db),
        }
    }

    /// Directory of PostgreSQL's programs (`psql`, `pg_recvlogical`, …), when known.
    pub fn bin_dir(&self) -> Option<&Path> {
        self.cluster.as_ref().map(|c| c.bin.as_path())
    }

    /// Runs SQL with `psql` against database `db` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let psql = match &self.cluster {
            Some(c) => c.bin.join("psql"),
            None => tools::which("psql").unwrap_or_else(|| PathBuf::from("psql")),
        };
        tools::run(
            Command::new(psql)
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(self.url_for(db))
                .arg("-c")
                .arg(sql),
        )
    }

    /// Creates a database with a unique name for one test; it is dropped (with its
    /// replication slots) when the returned [`TestDb`] is dropped.
    ///
    /// # Panics
    /// If the database cannot be created.
    pub fn fresh_database(&self, prefix: &str) -> TestDb<'_> {
        self.try_fresh_database(prefix)
            .unwrap_or_else(|e| panic!("cannot create a test database: {e}"))
    }

    /// Fallible form of [`PgServer::fresh_database`].
    pub fn try_fresh_database(&self, prefix: &str) -> Result<TestDb<'_>> {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!(
            "wb_{clean}_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(TestDb { server: self, name })
    }

    /// Where the server process and its directory are (`None` for external servers).
    pub fn process_info(&self) -> Option<ServerProcessInfo> {
        let cluster = self.cluster.as_ref()?;
        let pid_file = std::fs::read_to_string(cluster.dir.join("data/postmaster.pid")).ok()?;
        let pid = pid_file.lines().next()?.trim().parse().ok()?;
        Some(ServerProcessInfo {
            kind: "postgres".into(),
            pid,
            dir: cluster.dir.clone(),
        })
    }

    /// Stops the cluster now and deletes its directory (also done on drop).
    pub fn stop(mut self) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.reaper.cleanup_now();
        }
    }
}

impl OwnedCluster {
    fn command(&self, as_postgres: bool, program: &str) -> Command {
        let program = self.bin.join(program);
        if as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Puts a server certificate, its key and the CA into the data directory and makes
    /// pg_hba accept TLS connections with a client certificate only. Returns the client
    /// certificate the harness itself connects with.
    fn enable_tls(&mut self, as_postgres: bool, ca: &TestCa) -> Result<CertFiles> {
        let data = self.dir.join("data");
        let server = ca.server("pg-server")?;
        let client = ca.client("pg-client", "postgres")?;
        let copy = |from: &Path, to: &str| {
            std::fs::copy(from, data.join(to))
                .map_err(|e| HarnessError::io(format!("copying {to}"), e))
        };
        copy(&server.cert, "server.crt")?;
        copy(ca.ca_file(), "root.crt")?;
        let key = std::fs::read_to_string(&server.key)
            .map_err(|e| HarnessError::io("reading the server key", e))?;
        crate::tls::write_private(&data.join("server.key"), key)?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n\
             hostssl replication all 127.0.0.1/32 trust clientcert=verify-ca\n\
             hostnossl all all 0.0.0.0/0 reject\n\
             hostnossl replication all 0.0.0.0/0 reject\n",
        )
        .map_err(|e| HarnessError::io("writing pg_hba.conf", e))?;
        if as_postgres {
            for file in ["server.crt", "server.key", "root.crt", "pg_hba.conf"] {
                tools::run(
                    Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(data.join(file)),
                )?;
            }
        }
        Ok(client)
    }

    fn initdb(&mut self, as_postgres: bool) -> Result<()> {
        let log = self.dir.join("initdb.log");
        let output = self
            .command(as_postgres, "initdb")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ])
            .output()
            .map_err(|e| HarnessError::io("running initdb", e))?;
        let _ = std::fs::write(&log, [output.stdout, output.stderr].concat());
        if !output.status.success() {
            return Err(HarnessError::Startup {
                server: "PostgreSQL (initdb)".into(),
                detail: log_tail(&log, 20),
                log,
            });
        }
        Ok(())
    }

    /// Moves the (never started) cluster's WAL to the segment holding `lsn`.
    fn reset_wal(&mut self, as_postgres: bool, lsn: u64) -> Result<()> {
        // 16 MiB segments (initdb's default): timeline 1, then the LSN's high 32 bits, then
        // the segment number within them.
        const SEGMENT: u64 = 16 << 20;
        let file = format!(
            "{:08X}{:08X}{:08X}",
            1,
            lsn >> 32,
            (lsn & 0xFFFF_FFFF) / SEGMENT
        );
        let log = self.dir.join("pg_resetwal.log");
        let output = self
            .command(as_postgres, "pg_resetwal")
            .args(["-l", &file])
            .arg(self.dir.join("data"))
            .output()
            .map_err(|e| HarnessError::io("running pg_resetwal", e))?;
        let _ = std::fs::write(&log, [output.stdout, output.stderr].concat());
        if !output.status.success() {
            return Err(HarnessError::Startup {
                server: format!("PostgreSQL (pg_resetwal -l {file})"),
                detail: log_tail(&log, 20),
                log,
            });
        }
        Ok(())
    }

    fn pg_ctl_start(&mut self, as_postgres: bool, port: u16, extra: &[(&str, &str)]) -> Result<()> {
        let log = self.dir.join("pg.log");
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={}",
            self.dir.display()
        );
        for (key, value) in BASE_SETTINGS
            .iter()
            .filter(|(key, _)| !extra.iter().any(|(k, _)| k == key))
            .chain(extra)
        {
            options.push_str(&format!(" -c {key}={value}"));
        }
        let status = self
            .command(as_postgres, "pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(options)
            .arg("start")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| HarnessError::io("running pg_ctl start", e))?;
        if status.success() {
            return Ok(());
        }
        let detail = log_tail(&log, 20);
        // Let the next attempt start from an empty log.
        let _ = std::fs::remove_file(&log);
        std::thread::sleep(Duration::from_millis(50));
        Err(HarnessError::Startup {
            server: "PostgreSQL".into(),
            detail,
            log,
        })
    }
}

/// A database for one test, with unique replication slot and publication names.
/// Dropping it drops the database and every replication slot in it.
#[derive(Debug)]
pub struct TestDb<'a> {
    server: &'a PgServer,
    name: String,
}

impl TestDb<'_> {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL for this database.
    pub fn url(&self) -> String {
        self.server.url_for(&self.name)
    }

    /// A logical replication slot name unique to this database (not created).
    pub fn slot_name(&self) -> String {
        format!("{}_slot", self.name)
    }

    /// A publication name unique to this database (not created).
    pub fn publication_name(&self) -> String {
        format!("{}_pub", self.name)
    }

    /// The server this database lives on.
    pub fn server(&self) -> &PgServer {
        self.server
    }

    /// Runs SQL in this database with `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.server.psql(&self.name, sql)
    }
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        let name = self.name.replace('\'', "''");
        let sql = format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
               WHERE database = '{name}' AND active_pid IS NOT NULL; \
             SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
               WHERE database = '{name}' AND NOT active; \
             SELECT count(*) FROM pg_replication_slots WHERE database = '{name}';"
        );
        // A terminated walsender releases its slot asynchronously: retry briefly.
        let dropped_slots = tools::wait_for(Duration::from_secs(10), || {
            match self.server.psql("postgres", &sql) {
                Ok(out) if out.trim().ends_with('0') => Some(()),
                _ => None,
            }
        });
        if dropped_slots.is_none() {
            eprintln!(
                "walbrook-harness: could not drop the slots of {}",
                self.name
            );
        }
        let drop_db = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = self.server.psql("postgres", &drop_db) {
            eprintln!(
                "walbrook-harness: could not drop database {}: {e}",
                self.name
            );
        }
    }
}

fn url_for(host: &str, port: u16, user: &str, db: &str, params: &str) -> String {
    format!("postgresql://{user}@{host}:{port}/{db}?{params}")
}

/// Replaces the database part of a `postgresql://` URL.
fn replace_url_database(url: &str, db: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let query_start = url.find('?').unwrap_or(url.len());
    let path_start = url[after_scheme..query_start]
        .find('/')
        .map_or(query_start, |i| after_scheme + i);
    format!("{}/{db}{}", &url[..path_start], &url[query_start..])
}

/// Host, port and user of a `postgresql://user[:password]@host[:port]/db` URL.
fn parse_url_authority(url: &str) -> (String, u16, String) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (u, h),
        None => ("postgres", authority),
    };
    let user = userinfo.split(':').next().unwrap_or("postgres").to_string();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5432)),
        None => (hostport.to_string(), 5432),
    };
    (host, port, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            replace_url_database("postgresql://u:p@h:5/old?sslmode=disable", "new"),
            "postgresql://u:p@h:5/new?sslmode=disable"
        );
        assert_eq!(
            replace_url_database("postgres://h:5", "x"),
            "postgres://h:5/x"
        );
    }

    #[test]
    fn parses_the_authority_of_a_url() {
        assert_eq!(
            parse_url_authority("postgresql://alice:secret@db.local:6543/x"),
            ("db.local".into(), 6543, "alice".into())
        );
        assert_eq!(
            parse_url_authority("postgres://localhost/x"),
            ("localhost".into(), 5432, "postgres".into())
        );
    }
}
