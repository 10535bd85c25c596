//! Training, evaluation and datasets for dmnn, and the `dmnn` command-line tool.
#![warn(missing_docs)]

pub mod data;
