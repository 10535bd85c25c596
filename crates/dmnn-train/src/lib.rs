//! Training, evaluation and datasets for dmnn; the `dmnn` command-line tool sits on top
//! (`src/bin/dmnn`) and only parses and prints.
//!
//! - [`config`]: [`TrainConfig`](config::TrainConfig) and its recipes
//!   ([`TrainConfig::fashion_mnist`](config::TrainConfig::fashion_mnist),
//!   [`TrainConfig::imagenet`](config::TrainConfig::imagenet)).
//! - [`train`]: prepare → launch → finish, on Burn's `SupervisedTraining`.
//! - [`step`], [`metrics`], [`schedule`]: what the Learner runs and reports.
//! - [`eval`], [`init`]: evaluation of a run, starting weights.
//! - [`run`]: the run directory, its recorder, log and renderers.
//! - [`data`]: datasets and the reproducible loader.
//! - [`report`], [`sweep`]: figures and a markdown report of runs; grids of runs.
//! - [`bench`](mod@bench): the benchmark.
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod init;
pub mod metrics;
pub mod report;
pub mod run;
pub mod schedule;
pub mod step;
pub mod sweep;
pub mod train;

pub use error::{Result, TrainError};
