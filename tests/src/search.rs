//! An Elasticsearch/OpenSearch REST API server for sink tests.
//!
//! By default this is `osmem-server` (PyPI), an in-memory reimplementation of the
//! OpenSearch 3.x REST API written in Go: faithful for the REST semantics the sink
//! relies on (`_bulk` per-item statuses, external versioning, mappings), but not
//! Lucene. Set `WALBROOK_SEARCH_URL` to run the same tests against a real
//! Elasticsearch or OpenSearch node instead.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::os::unix::process::CommandExt;

use crate::process::{Reaper, ServerProcessInfo, shell_quote};
use crate::tools::{osmem_server_bin, temp_dir};
use crate::{HarnessError, Result};

/// A running OpenSearch-API server (or an external one from `WALBROOK_SEARCH_URL`).
#[derive(Debug)]
pub struct SearchServer {
    url: String,
    engine: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
    reaper: Option<Reaper>,
}

impl SearchServer {
    /// Starts `osmem-server` on a random port, or uses `WALBROOK_SEARCH_URL`.
    pub fn start() -> Result<SearchServer> {
        if let Ok(url) = std::env::var("WALBROOK_SEARCH_URL")
            && !url.is_empty()
        {
            return Ok(SearchServer {
                url: url.trim_end_matches('/').to_string(),
                engine: "external (WALBROOK_SEARCH_URL)".into(),
                child: None,
                dir: None,
                reaper: None,
            });
        }
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
