//! The run directory: resolved configuration, checkpoints written atomically, a per-epoch CSV of
//! metrics, a log, and the final summary.
//!
//! ```text
//! runs/<timestamp>-<model>-<paths>p-t<target>/
//!   config.json        the resolved training configuration (what --resume reads)
//!   checkpoint/        model-<epoch>.mpk, optim-<epoch>.mpk, scheduler-<epoch>.mpk (Burn's Learner)
//!   metrics.csv        one row per epoch: train_* and valid_* columns
//!   train.log          progress lines and messages
//!   experiment.log     Burn's own log
//!   model.mpk          the final network (inference record)
//!   summary.json       test accuracy, GMACs mean ± std, params, wall time, ...
//! ```

mod log;
mod recorder;
mod renderer;

use std::path::{Path, PathBuf};

use burn::record::Recorder;
use burn::tensor::backend::Backend;
use dmnn_core::Dmnn;

pub use log::*;
pub use recorder::*;
pub use renderer::*;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::step::DmnnClassifier;

/// The names of the files of a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

/// The records of one checkpoint, as the Learner names them.
pub const CHECKPOINT_RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

impl RunDir {
    /// The run directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    /// `checkpoint/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// The record `name` (`model`, `optim`, `scheduler`) of checkpoint `epoch`, without its
    /// extension (as recorders take it).
    pub fn checkpoint(&self, name: &str, epoch: usize) -> PathBuf {
        self.checkpoints().join(format!("{name}-{epoch}"))
    }

    /// The final network's record, without its extension.
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    /// `metrics.csv`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }

    /// `summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    /// `wall.json`: the run's wall time over all its processes, up to its last epoch.
    pub fn wall_clock(&self) -> PathBuf {
        self.root.join("wall.json")
    }

    /// The wall time that earlier processes of this run spent, up to their last epoch (0 when
    /// there is no record of it).
    pub fn earlier_wall_seconds(&self) -> f64 {
        std::fs::read_to_string(self.wall_clock())
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["seconds"].as_f64())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(0.0)
    }

    /// `train.log`.
    pub fn log(&self) -> PathBuf {
        self.root.join("train.log")
    }

    /// The latest epoch whose model, optimiser and scheduler checkpoints all exist.
    pub fn latest_checkpoint(&self) -> Option<usize> {
        self.complete_checkpoints().first().copied()
    }

    /// Every epoch whose model, optimiser and scheduler checkpoints all exist, newest first.
    pub fn complete_checkpoints(&self) -> Vec<usize> {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else { return Vec::new() };
        let mut epochs: Vec<usize> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix("model-")?.strip_suffix(".mpk")?.parse().ok()
            })
            .filter(|&k| CHECKPOINT_RECORDS.iter().all(|n| self.checkpoint(n, k).with_extension("mpk").is_file()))
            .collect();
        epochs.sort_unstable_by(|a, b| b.cmp(a));
        epochs
    }

    /// Checks the three files of checkpoint `epoch` against their checksums. A checkpoint
    /// written with checksums needs all three (a file without one was being written when the
    /// run died); one of an older dmnn has none.
    ///
    /// # Errors
    /// The first file that is missing, damaged or without its checksum, named.
    pub fn verify_checkpoint(&self, epoch: usize) -> std::result::Result<(), String> {
        if let Some(path) = self.unfinished_checkpoint_file(epoch) {
            return Err(format!("{} has no checksum beside it (its write did not finish)", path.display()));
        }
        for name in CHECKPOINT_RECORDS {
            verify_file(&self.checkpoint(name, epoch).with_extension("mpk"))?;
        }
        Ok(())
    }

    /// The file of checkpoint `epoch` that was being written when the run stopped: it has no
    /// checksum while another file of the checkpoint has one (the checksum is renamed last, and a
    /// checkpoint of an older dmnn has none at all). `None` when every file has its checksum.
    pub fn unfinished_checkpoint_file(&self, epoch: usize) -> Option<PathBuf> {
        let paths = CHECKPOINT_RECORDS.map(|name| self.checkpoint(name, epoch).with_extension("mpk"));
        let summed = paths.clone().map(|p| checksum_file(&p).is_file());
        if !summed.iter().any(|&s| s) {
            return None;
        }
        paths.into_iter().zip(summed).find(|(_, s)| !s).map(|(p, _)| p)
    }

    /// The run's configuration.
    ///
    /// # Errors
    /// If the directory or its `config.json` is missing, or the file is not a configuration.
    pub fn read_config(&self) -> Result<TrainConfig> {
        if !self.root.is_dir() {
            return Err(TrainError::NotARun { path: self.root.clone(), reason: "no such directory".into() });
        }
        if !self.config().is_file() {
            return Err(TrainError::NotARun { path: self.root.clone(), reason: "it has no config.json".into() });
        }
        TrainConfig::read_run_config(&self.config())
    }

    /// The run's configuration and inference network: `model.mpk`, or the latest checkpoint's
    /// model when the run did not finish.
    ///
    /// # Errors
    /// A missing or damaged record, named.
    pub fn load_model<B: Backend>(&self, device: &B::Device) -> Result<(TrainConfig, Dmnn<B>)> {
        let config = self.read_config()?;
        let model = config.model.try_init::<B>(device)?;
        let final_path = self.model();
        let damaged = |path: &Path, e| TrainError::record(&path.with_extension("mpk"), e);
        let model = if final_path.with_extension("mpk").is_file() {
            let record = AtomicRecorder.load(final_path.clone(), device).map_err(|e| damaged(&final_path, e))?;
            load_record_checked(model, record, &final_path)?
        } else {
            let epoch = self.latest_checkpoint().ok_or_else(|| TrainError::NotARun {
                path: self.root.clone(),
                reason: "it has no model.mpk and no complete checkpoint".into(),
            })?;
            let path = self.checkpoint("model", epoch);
            let wrapper = DmnnClassifier::for_inference(model, config.objective.clone());
            let record = AtomicRecorder.load(path.clone(), device).map_err(|e| damaged(&path, e))?;
            load_record_checked(wrapper, record, &path)?.model
        };
        let bad = non_finite_values(&model);
        if bad > 0 {
            return Err(TrainError::Other(format!(
                "the network of {} is not finite ({bad} NaN or infinite values): the run diverged, nothing to evaluate",
                self.root.display()
            )));
        }
        Ok((config, model))
    }
}

/// Counts the parameter values that are not finite numbers.
struct NonFinite(usize);

impl<B: Backend> burn::module::ModuleVisitor<B> for NonFinite {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
        let values = param.val().into_data().convert::<f32>();
        self.0 += values.as_slice::<f32>().map_or(0, |v| v.iter().filter(|x| !x.is_finite()).count());
    }
}

/// How many parameter values (weights and batch-norm statistics) of `module` are NaN or infinite.
pub fn non_finite_values<B: Backend, M: burn::module::Module<B>>(module: &M) -> usize {
    let mut count = NonFinite(0);
    module.visit(&mut count);
    count.0
}

/// Loads the inference network of a run directory (`model.mpk`, or the latest checkpoint).
///
/// # Errors
/// See [`RunDir::load_model`].
pub fn load_run_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(TrainConfig, Dmnn<B>)> {
    RunDir::new(dir).load_model(device)
}
