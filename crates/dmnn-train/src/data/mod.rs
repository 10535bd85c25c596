//! Datasets and the data loader.
//!
//! Every dataset is an [`ImageSource`]: it knows its length and classes, and writes one
//! normalised `[channels, height, width]` image into a buffer, augmented when asked. The
//! [`EpochLoader`] turns a source into Burn batches: shuffled by `(seed, epoch)`, decoded in
//! parallel workers ahead of the training step, bad samples reported with their path and skipped.

mod cifar;
mod fashion_mnist;
mod imagenet;
mod loader;
mod source;
mod synthetic;
mod transform;

pub use cifar::*;
pub use fashion_mnist::*;
pub use imagenet::*;
pub use loader::*;
pub use source::*;
pub use synthetic::*;
pub use transform::*;

use std::path::PathBuf;

/// A dataset that cannot be used; raised before training starts.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory that should exist does not.
    #[error("{what} not found: {}", path.display())]
    Missing {
        /// What was looked for.
        what: String,
        /// Where.
        path: PathBuf,
    },
    /// A split without a single sample.
    #[error("{what} is empty: no images under {}", path.display())]
    EmptySplit {
        /// Which split.
        what: String,
        /// Where.
        path: PathBuf,
    },
    /// A file whose content is not what its format promises.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error on a file.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error, whose message this one includes (not a `source`: it would be printed twice).
        error: std::io::Error,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Self::Missing { what: "file".into(), path }
            } else {
                Self::Io { path, error: source }
            }
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Format { path: path.into(), reason: reason.into() }
    }
}
