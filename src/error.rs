//! Errors that mean "the user's input is wrong": a bad experiment file, key, value or data file.
//!
//! Every such error names where the input came from (a file, an environment variable or a
//! `--set`) and what was expected. `main` maps any of these anywhere in an error chain to
//! exit code 2; everything else (a failed run, an I/O error in the runs dir) is exit code 1.

use std::path::PathBuf;

/// A user-input error. Displayed as one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A configuration key has a problem. `origin` is the file path, `VQLAB_…` variable or
    /// `--set k=v` that supplied it.
    #[error("{origin}: key `{key}`: {message}")]
    Config { origin: String, key: String, message: String },

    /// Several configuration problems found at once (validation reports all of them).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<InputError>),

    /// A problem with a whole file: missing, unreadable, wrong format.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    /// A problem with a dataset file or directory.
    #[error("dataset {}: {message}", path.display())]
    Data { path: PathBuf, message: String },

    /// A command-line usage problem not tied to a file.
    #[error("{0}")]
    Usage(String),
}

impl InputError {
    pub fn config(origin: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        InputError::Config { origin: origin.into(), key: key.into(), message: message.into() }
    }
    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        InputError::Data { path: path.into(), message: message.into() }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        InputError::File { path: path.into(), message: message.into() }
    }
}

/// How a command ended, as the process exit status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: everything asked for was done.
    Success,
    /// 1: some run failed (or an error that is not the input's fault).
    Failed,
    /// 2: bad usage or bad input.
    BadInput,
    /// 130: stopped by SIGINT/SIGTERM; the runs resume on the next `vqlab run`.
    Interrupted,
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failed => 1,
            ExitStatus::BadInput => 2,
            ExitStatus::Interrupted => 130,
        }
    }

    /// Success unless some of the runs failed.
    pub fn from_failures(failed: usize) -> Self {
        if failed > 0 {
            ExitStatus::Failed
        } else {
            ExitStatus::Success
        }
    }
}

/// The exit status of an error chain: bad input if any link is an [`InputError`], else failed.
pub fn exit_status_for(err: &anyhow::Error) -> ExitStatus {
    if err.chain().any(|e| e.downcast_ref::<InputError>().is_some()) {
        ExitStatus::BadInput
    } else {
        ExitStatus::Failed
    }
}
