//! The training configuration: one serialisable struct, written to `config.json` in the run
//! directory (what `--resume` reads back).

use std::path::PathBuf;

use burn::config::Config;
use dmnn_core::gate::TemperatureSchedule;
use dmnn_core::DmnnConfig;
use serde::{Deserialize, Serialize};

use crate::data::SmallAugment;
use crate::objective::ObjectiveConfig;
use crate::schedule::LrDecay;

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DataConfig {
    /// Fashion-MNIST gzip IDX files (the vendored copy by default).
    FashionMnist {
        /// Directory of the four `.gz` files.
        dir: PathBuf,
        /// Training augmentation.
        augment: SmallAugment,
    },
    /// CIFAR-10 or CIFAR-100 binary files.
    Cifar {
        /// Directory of the `.bin` files (or its parent).
        dir: PathBuf,
    },
    /// An ImageNet-layout directory.
    ImageNet {
        /// Root holding `train/` and `val/`.
        dir: PathBuf,
        /// Side of the training and evaluation crops.
        image_size: usize,
        /// Label file of a flat `val/` folder (found automatically when absent).
        val_labels: Option<PathBuf>,
        /// wnid of every ILSVRC2012_ID, for the devkit's ground truth.
        val_synsets: Option<PathBuf>,
    },
}

impl DataConfig {
    /// The data path, for messages.
    pub fn path(&self) -> &PathBuf {
        match self {
            Self::FashionMnist { dir, .. } | Self::Cifar { dir } | Self::ImageNet { dir, .. } => dir,
        }
    }
}

/// Everything that defines a training run.
#[derive(Config, Debug)]
pub struct TrainConfig {
    /// The network.
    pub model: DmnnConfig,
    /// The data.
    pub data: DataConfig,
    /// The objective.
    pub objective: ObjectiveConfig,
    /// Epochs.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    #[config(default = 256)]
    pub eval_batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum (PyTorch semantics: no dampening).
    #[config(default = 0.9)]
    pub momentum: f64,
    /// Nesterov momentum.
    #[config(default = false)]
    pub nesterov: bool,
    /// Weight decay of convolution and linear weights (not batch norm, not biases).
    #[config(default = 1e-4)]
    pub weight_decay: f64,
    /// Decay after warm-up.
    #[config(default = "LrDecay::Cosine")]
    pub lr_decay: LrDecay,
    /// Epochs of linear warm-up.
    #[config(default = 0.0)]
    pub warmup_epochs: f64,
    /// Clip every gradient tensor to this L2 norm (Burn's per-parameter clipping).
    #[config(default = "None")]
    pub grad_clip: Option<f64>,
    /// Gumbel temperature over training.
    #[config(default = "TemperatureSchedule::Constant { temperature: 1.0 }")]
    pub temperature: TemperatureSchedule,
    /// Seed of the initialisation, data order, augmentation and Gumbel noise.
    #[config(default = 42)]
    pub seed: u64,
    /// Stop every training epoch after this many batches (quick runs, tests).
    #[config(default = "None")]
    pub max_steps_per_epoch: Option<usize>,
    /// Evaluate on at most this many batches (quick runs, tests).
    #[config(default = "None")]
    pub max_eval_batches: Option<usize>,
    /// Batches of BN recalibration in sparse mode after training (0: none).
    #[config(default = 0)]
    pub recalibrate_batches: usize,
    /// Data decoding threads (0: one per core).
    #[config(default = 0)]
    pub workers: usize,
    /// Start from these weights: a torchvision checkpoint (.pth / .safetensors; multi-path
    /// models are sliced from it), a dmnn export, or a run's `model.mpk`.
    #[config(default = "None")]
    pub initial_weights: Option<PathBuf>,
    /// With `initial_weights`: keep a fresh classifier when the class count differs.
    #[config(default = false)]
    pub new_head: bool,
}

impl TrainConfig {
    /// Checks the values; messages name the offending ones.
    pub fn validate(&self) -> Result<(), String> {
        self.model.validate()?;
        self.objective.validate()?;
        if self.epochs == 0 || self.batch_size == 0 || self.eval_batch_size == 0 {
            return Err(format!(
                "epochs={}, batch_size={}, eval_batch_size={} must be positive",
                self.epochs, self.batch_size, self.eval_batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("lr={} must be a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum={} must lie in [0, 1)", self.momentum));
        }
        if self.weight_decay < 0.0 {
            return Err(format!("weight_decay={} must not be negative", self.weight_decay));
        }
        self.temperature.validate()?;
        Ok(())
    }

    /// The default run name: model, paths, target rate.
    pub fn run_name(&self) -> String {
        let m = &self.model;
        if m.is_dynamic() {
            format!("{}-{}p-t{}", m.name, m.num_paths, self.objective.target_rate)
        } else {
            format!("{}-static", m.name)
        }
    }
}
