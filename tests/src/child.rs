//! Product processes under test (`walbrook produce`, a sink…): started with a clean
//! Walbrook environment, logged to a file, killed on drop, and explained when a test fails.
//!
//! A test process's own environment is not the product's configuration: a `WALBROOK_*`
//! variable set in the developer's shell (or by CI) must not reach a process under test,
//! and the harness's own knobs are named `TEST_*` so that no product command reads them.
//! [`product_command`] therefore removes every inherited `WALBROOK_*` variable; the test
//! sets the ones it means with [`Command::env`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::tools::log_tail;
use crate::{HarnessError, Result};

/// Lines of a child's log printed when a test fails while the child is alive.
pub const LOG_TAIL_LINES: usize = 40;

/// A [`Command`] for `program` without any `WALBROOK_*` variable of this process's
/// environment (the test adds the ones it means).
pub fn product_command(program: impl AsRef<OsStr>) -> Command {
    product_command_from(program, std::env::vars_os())
}

/// [`product_command`] for a parent environment `parent` (what the child would inherit).
pub fn product_command_from<I>(program: impl AsRef<OsStr>, parent: I) -> Command
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    let mut command = Command::new(program);
    for (name, _) in parent {
        if name.to_string_lossy().starts_with("WALBROOK_") {
            command.env_remove(name);
        }
    }
    command
}

/// A running product process whose stdout and stderr go (appended) to a log file.
///
/// Dropping it SIGKILLs and reaps the process. When it is dropped while the thread
/// panics (a failing test), the last [`LOG_TAIL_LINES`] lines of its log are printed to
/// stderr first, so a failure such as "never started streaming" shows why.
#[derive(Debug)]
pub struct ProductProcess {
    child: Child,
    name: String,
    log: PathBuf,
}

impl ProductProcess {
    /// Starts `command` (stdin closed, output appended to `log`); `name` labels it in
    /// failure reports.
    pub fn spawn(mut command: Command, name: &str, log: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| HarnessError::io(format!("opening {}", log.display()), e))?;
        let stderr = file
            .try_clone()
            .map_err(|e| HarnessError::io(format!("opening {}", log.display()), e))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {name}"), e))?;
        Ok(Self {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait()
    }

    /// Sends `signal` (without waiting) unless it has been reaped already.
    pub fn signal(&mut self, signal: Signal) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        }
    }

    /// SIGKILLs and reaps it (nothing is sent once it has been reaped: its pid may be
    /// another process's by then).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What a failing test should show about this process: its name, state and the
    /// last lines of its log.
    pub fn report(&mut self) -> String {
        let state = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            Ok(None) => "running".to_string(),
            Err(e) => format!("state unknown: {e}"),
        };
        format!(
            "--- {} (pid {}, {state}), last {LOG_TAIL_LINES} lines of {} ---\n{}\n--- end of {} ---",
            self.name,
            self.child.id(),
            self.log.display(),
            log_tail(&self.log, LOG_TAIL_LINES),
            self.name,
        )
    }
}

impl Drop for ProductProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        self.kill();
    }
}
