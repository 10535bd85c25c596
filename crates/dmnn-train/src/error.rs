//! The errors of dmnn-train's library: every message names the file, directory or value at
//! fault.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::data::DataError;

/// What can stop a training run, an evaluation or a benchmark.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A setting out of its domain.
    #[error("{0}")]
    Config(String),
    /// A model or objective configuration that cannot be built.
    #[error(transparent)]
    Model(#[from] dmnn_core::ConfigError),
    /// A dataset that cannot be used.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A weight file that cannot be used.
    #[error(transparent)]
    Weights(#[from] dmnn_core::weights::WeightsError),
    /// A file that is not a dmnn training configuration.
    #[error("{}: not a dmnn training configuration: {reason}", path.display())]
    NotAConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A directory that is not a run directory.
    #[error("{}: not a dmnn run directory: {reason}", path.display())]
    NotARun {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A record (checkpoint or model) that cannot be loaded.
    #[error("{} cannot be loaded (truncated or damaged): {reason}", path.display())]
    Record {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file that cannot be read or written.
    #[error("{}", io_message(path, error))]
    Io {
        /// The file.
        path: PathBuf,
        /// The error, whose message this one includes (not a `source`: it would be printed twice).
        error: std::io::Error,
    },
    /// A training loss that is not a finite number.
    #[error("training stopped: non-finite loss ({value}) at step {step}; {checkpoint}")]
    NonFinite {
        /// The 1-based step.
        step: usize,
        /// The loss value.
        value: f64,
        /// Where the last good checkpoint is, or that there is none.
        checkpoint: String,
    },
    /// Training that ended before its last epoch for another reason than the loss: a
    /// checkpoint that could not be written (a full disk), or a stop asked in the terminal UI.
    #[error("training stopped after epoch {epoch} of {epochs}: {reason}; {checkpoint}")]
    Stopped {
        /// The last epoch trained.
        epoch: usize,
        /// The epochs asked.
        epochs: usize,
        /// Why.
        reason: String,
        /// Where the last good checkpoint is, and how to go on.
        checkpoint: String,
    },
    /// Anything else, with what was being done.
    #[error("{0}")]
    Other(String),
}

/// Whether `e` says the disk or the quota is full (ENOSPC, EDQUOT).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122)) || e.kind() == std::io::ErrorKind::StorageFull
}

/// `PATH: error`, worded plainly when the disk is full.
pub fn io_message(path: &Path, e: &std::io::Error) -> String {
    if is_disk_full(e) {
        format!("no space left on device: {} ({e})", path.display())
    } else {
        format!("{}: {e}", path.display())
    }
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), error: source }
    }

    /// A record at `path` that cannot be loaded.
    pub fn record(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Record { path: path.to_path_buf(), reason: reason.to_string() }
    }
}

impl From<serde_json::Error> for TrainError {
    fn from(e: serde_json::Error) -> Self {
        Self::Other(format!("JSON: {e}"))
    }
}

/// The result of dmnn-train's library functions.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
