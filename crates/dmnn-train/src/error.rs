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
    #[error("{}: {error}", path.display())]
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
    /// Anything else, with what was being done.
    #[error("{0}")]
    Other(String),
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
