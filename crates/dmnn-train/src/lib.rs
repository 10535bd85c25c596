//! Training, evaluation and datasets for dmnn, and the `dmnn` command-line tool.
#![warn(missing_docs)]

pub mod data;
pub mod metrics;
pub mod objective;
pub mod run;
pub mod schedule;
pub mod step;
pub mod config;
pub mod train;
pub mod backend;
pub mod cli;
pub mod bench;
