//! The harness's error type.

use std::path::PathBuf;

/// Why the harness could not provide a server.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A required program is not installed.
    #[error("{program} not found ({hint})")]
    MissingProgram {
        /// The program that was looked for.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// A server did not start or did not become ready.
    #[error("{server} failed to start: {detail} (log: {log})", log = log.display())]
    Startup {
        /// Which server.
        server: String,
        /// What went wrong, with the tail of its log when there is one.
        detail: String,
        /// Where its log is.
        log: PathBuf,
    },
    /// A command run by the harness failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        detail: String,
    },
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
