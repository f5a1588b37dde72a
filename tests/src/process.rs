//! Process supervision: the reaper that cleans up after a vanished test process.
//!
//! Rust never drops statics, and a test binary killed with SIGKILL drops nothing. So
//! every server the harness starts gets a reaper: a tiny `sh` loop in its own process
//! group that waits for the test process to disappear and then runs the server's
//! cleanup command (stop the server, delete its directory). A normal drop kills the
//! reaper and runs the same cleanup command itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::os::unix::process::CommandExt;

use crate::{HarnessError, Result};

/// Where a started server lives: for tests that check nothing is left behind.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ServerProcessInfo {
    /// What kind of server (`postgres`, `nats`, `search`).
    pub kind: String,
    /// Its main process id.
    pub pid: u32,
    /// Its temporary directory.
    pub dir: PathBuf,
}

impl ServerProcessInfo {
    /// Whether the process still exists (a zombie counts as gone).
    pub fn process_alive(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            // Field 3 of /proc/PID/stat is the state; Z = zombie, X = dead.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z" && state != "X"),
            Err(_) => false,
        }
    }
}

/// Runs `cleanup` (a shell command) when this process is gone, unless disarmed first.
#[derive(Debug)]
pub(crate) struct Reaper {
    child: Option<Child>,
    cleanup: String,
    done: bool,
}

impl Reaper {
    /// Starts a reaper that runs `cleanup` once the current process has exited.
    pub(crate) fn spawn(cleanup: String) -> Result<Self> {
        let owner = std::process::id().to_string();
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                r#"owner="$1"; cleanup="$2"
                   while kill -0 "$owner" 2>/dev/null; do sleep 0.2; done
                   sh -c "$cleanup""#,
            )
            .arg("walbrook-reaper")
            .arg(&owner)
            .arg(&cleanup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: a Ctrl-C in the terminal must not kill the reaper
            // before it has cleaned up.
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::io("starting the cleanup reaper (sh)", e))?;
        Ok(Self {
            child: Some(child),
            cleanup,
            done: false,
        })
    }

    /// Stops the reaper and runs the cleanup now, in this process.
    pub(crate) fn cleanup_now(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg(&self.cleanup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = status {
            eprintln!("walbrook-harness: cleanup `{}` failed: {e}", self.cleanup);
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.cleanup_now();
    }
}

/// Quotes a string for `sh`.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
