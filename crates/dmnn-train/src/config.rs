//! The training configuration: one serialisable struct, written to `config.json` in the run
//! directory (what `--resume` reads back), and the two recipes as constructors.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::config::Config;
use dmnn_core::gate::{ControllerConfig, PrevState, TemperatureSchedule};
use dmnn_core::{DmnnConfig, ObjectiveConfig};
use serde::{Deserialize, Serialize};

use crate::data::{
    cifar, default_fashion_mnist_dir, fashion_mnist, DataError, ImageFolder, ImageSource, SmallAugment, Split,
    ValLabels,
};
use crate::error::TrainError;
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
    /// An ImageNet-layout directory; crops are the model's `image_size`.
    ImageNet {
        /// Root holding `train/` and `val/`.
        dir: PathBuf,
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

    /// Points the configuration at another directory (evaluation on a copy of the data).
    pub fn set_path(&mut self, path: PathBuf) {
        match self {
            Self::FashionMnist { dir, .. } | Self::Cifar { dir } | Self::ImageNet { dir, .. } => *dir = path,
        }
    }

    /// Opens a split; ImageNet crops are `image_size` pixels square.
    ///
    /// # Errors
    /// A missing or unreadable dataset, naming the path.
    pub fn open(&self, split: Split, image_size: usize) -> Result<Arc<dyn ImageSource>, DataError> {
        Ok(match self {
            Self::FashionMnist { dir, augment } => Arc::new(fashion_mnist(dir, split)?.with_augment(*augment)),
            Self::Cifar { dir } => Arc::new(cifar(dir, split)?),
            Self::ImageNet { dir, val_labels, val_synsets } => {
                let labels = ValLabels { file: val_labels.clone(), synsets: val_synsets.clone() };
                Arc::new(ImageFolder::imagenet(dir, split, image_size, &labels)?)
            }
        })
    }

    /// Channels and side of the images of this dataset (`None` for ImageNet: any size).
    pub fn image_format(&self) -> Option<(usize, usize)> {
        match self {
            Self::FashionMnist { .. } => Some((1, 28)),
            Self::Cifar { .. } => Some((3, 32)),
            Self::ImageNet { .. } => None,
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
    /// Training batch size: the images of one optimiser step, over every replica.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Evaluation batch size.
    #[config(default = 256)]
    pub eval_batch_size: usize,
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
    /// Data-parallel replicas, with Burn's multi-device strategy: all on the training device
    /// (the device repeated), or one per device where the run is given several
    /// ([`train_on`](crate::train::train_on), `--devices`). Each replica takes
    /// `batch_size / replicas` images of every step on its own thread and normalises them with
    /// its own batch-norm statistics; the gradients of the replicas are summed into one
    /// optimiser step, each replica's loss divided by `replicas`, so the step follows the global
    /// batch's mean gradient. On a CPU two replicas keep two cores busy where one step alone
    /// leaves one mostly idle (docs/training.md).
    #[config(default = 1)]
    pub replicas: usize,
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
    /// The main job: `dmnn_small` on the vendored Fashion-MNIST, sized for the CPU (see
    /// docs/training.md).
    pub fn fashion_mnist() -> Self {
        let mut model = DmnnConfig::preset("dmnn_small").expect("a preset");
        // category heads without the state handed between controllers: 0.22 points better on
        // average in 6 epochs over three seeds, and the best controller of the 2-epoch study
        // (docs/decisions.md, "The main job's controller")
        model.controller = model.controller.map(|c| c.with_prev_state(PrevState::None));
        Self::new(
            model,
            // no augmentation: a 6-epoch schedule underfits, crops and flips cost accuracy here
            DataConfig::FashionMnist {
                dir: default_fashion_mnist_dir(),
                augment: SmallAugment { pad_crop: 0, hflip: false },
            },
            // t = 0.68: the executed MACs settle about 0.01 above the target
            ObjectiveConfig::new().with_target_rate(0.68).with_label_smoothing(0.1),
            6,
            128,
            // a short schedule wants a high rate: 0.2 and 0.3 gave 92.42 and 92.69 % (docs/results.md)
            0.3,
        )
        .with_nesterov(true)
        .with_weight_decay(5e-4)
        .with_replicas(2)
        .with_warmup_epochs(0.2)
        .with_lr_decay(LrDecay::Cosine)
    }

    /// The ImageNet recipe of DESIGN §5 on the ImageNet-layout directory `dir`.
    pub fn imagenet(dir: PathBuf) -> Self {
        let model = DmnnConfig::preset("dmnn50").expect("a preset");
        Self::new(
            model,
            DataConfig::ImageNet { dir, val_labels: None, val_synsets: None },
            ObjectiveConfig::new(),
            100,
            256,
            IMAGENET_LR_PER_256,
        )
        .with_lr_decay(LrDecay::Step { every_epochs: 30, gamma: 0.1 })
    }

    /// The learning rate of the ImageNet recipe for a batch size: `0.1 · batch / 256` (the
    /// linear scaling rule).
    pub fn imagenet_lr(batch_size: usize) -> f64 {
        IMAGENET_LR_PER_256 * batch_size as f64 / 256.0
    }

    /// Checks the values.
    ///
    /// # Errors
    /// The first value out of its domain, named.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model.validate()?;
        self.objective.validate()?;
        let invalid = |what: String| Err(TrainError::Config(what));
        if self.epochs == 0 || self.batch_size == 0 || self.eval_batch_size == 0 {
            return invalid(format!(
                "epochs={}, batch_size={}, eval_batch_size={} must be positive",
                self.epochs, self.batch_size, self.eval_batch_size
            ));
        }
        if self.max_steps_per_epoch == Some(0) {
            return invalid("max_steps_per_epoch=0 trains nothing: leave it out for whole epochs".into());
        }
        if self.max_eval_batches == Some(0) {
            return invalid("max_eval_batches=0 evaluates nothing: leave it out for the whole test split".into());
        }
        if self.replicas == 0 || self.batch_size % self.replicas != 0 {
            return invalid(format!(
                "replicas={} must be positive and divide batch_size={} (each replica takes an equal share)",
                self.replicas, self.batch_size
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return invalid(format!("lr={} must be a positive number", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return invalid(format!("momentum={} must lie in [0, 1)", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return invalid(format!("weight_decay={} must be a number, not negative", self.weight_decay));
        }
        if let Some(clip) = self.grad_clip.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return invalid(format!("grad_clip={clip} must be a positive number (leave it out for no clipping)"));
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            return invalid(format!("warmup_epochs={} must be a number, not negative", self.warmup_epochs));
        }
        if let LrDecay::Step { every_epochs, gamma } = self.lr_decay {
            if every_epochs == 0 || !(gamma.is_finite() && gamma > 0.0) {
                return invalid(format!(
                    "step schedule every_epochs={every_epochs}, gamma={gamma}: both must be positive"
                ));
            }
        }
        self.temperature.validate().map_err(dmnn_core::ConfigError::from)?;
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

    /// Reads a run's `config.json`, written by this or an older dmnn. Settings added since are
    /// completed from the declared defaults of [`TrainConfig`] and of the nested configurations
    /// ([`ObjectiveConfig`], the model's [`ControllerConfig`]) — never from a recipe; the model and
    /// the data are never filled in.
    ///
    /// # Errors
    /// A missing or unreadable file, or one that is not a training configuration.
    pub fn read_run_config(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::io(path, source))?;
        let not_config = |reason: String| TrainError::NotAConfig { path: path.to_path_buf(), reason };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| not_config(e.to_string()))?;
        let required = ["epochs", "batch_size", "lr", "model", "data", "objective"];
        if let Some(missing) = required.iter().find(|k| value.get(**k).is_none()) {
            return Err(not_config(format!("no '{missing}' (a configuration has {})", required.join(", "))));
        }
        complete_with_defaults(&mut value).map_err(|e| not_config(e.to_string()))?;
        serde_json::from_value(value).map_err(|e| not_config(e.to_string()))
    }
}

/// The ImageNet learning rate per 256 images.
const IMAGENET_LR_PER_256: f64 = 0.1;

/// Adds the declared defaults of every setting an older `config.json` lacks (see
/// [`TrainConfig::read_run_config`]).
fn complete_with_defaults(value: &mut serde_json::Value) -> Result<(), serde_json::Error> {
    // the required fields come from the file; any values do for the defaults' sake
    let placeholder = DmnnConfig::new("placeholder".into(), 1, dmnn_core::BlockKind::Basic, vec![1], vec![1]);
    let data = DataConfig::Cifar { dir: PathBuf::new() };
    let defaults = serde_json::to_value(TrainConfig::new(placeholder, data, ObjectiveConfig::new(), 1, 1, 1.0))?;
    fill_missing(value, &defaults, &["model", "data", "objective"]);
    if let Some(objective) = value.get_mut("objective") {
        fill_missing(objective, &serde_json::to_value(ObjectiveConfig::new())?, &[]);
    }
    if let Some(controller) = value.get_mut("model").and_then(|m| m.get_mut("controller")).filter(|c| c.is_object()) {
        fill_missing(controller, &serde_json::to_value(ControllerConfig::new())?, &[]);
    }
    Ok(())
}

/// Adds to the object `value` every key of the object `defaults` it lacks, except `skip`.
fn fill_missing(value: &mut serde_json::Value, defaults: &serde_json::Value, skip: &[&str]) {
    if let (Some(object), Some(defaults)) = (value.as_object_mut(), defaults.as_object()) {
        for (key, default) in defaults {
            if !skip.contains(&key.as_str()) && !object.contains_key(key) {
                object.insert(key.clone(), default.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ImageNet run's config.json from before `warmup_epochs`, `label_smoothing` and the
    /// controller's `logit_weight_std` existed: each missing setting gets its declared default,
    /// not the Fashion-MNIST recipe's (weight decay 5e-4, warm-up 0.2).
    #[test]
    fn an_old_imagenet_config_gets_the_declared_defaults() {
        let recipe = TrainConfig::imagenet(PathBuf::from("/data/imagenet")).with_weight_decay(3e-5);
        let mut value = serde_json::to_value(&recipe).unwrap();
        let object = value.as_object_mut().unwrap();
        for key in ["warmup_epochs", "weight_decay", "eval_batch_size"] {
            object.remove(key);
        }
        object["objective"].as_object_mut().unwrap().remove("label_smoothing");
        object["model"]["controller"].as_object_mut().unwrap().remove("logit_weight_std");
        let dir = std::env::temp_dir().join(format!("dmnn-old-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string(&value).unwrap()).unwrap();
        let read = TrainConfig::read_run_config(&path).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(read.warmup_epochs, 0.0);
        assert_eq!(read.weight_decay, 1e-4, "TrainConfig's declared default, not the main job's 5e-4");
        assert_eq!(read.eval_batch_size, 256);
        assert_eq!(read.objective.label_smoothing, 0.0);
        assert_eq!(read.model.controller.as_ref().unwrap().logit_weight_std, 0.01);
        assert_eq!(read.data, recipe.data);
        assert_eq!(read.model.name, "dmnn50");
    }

    #[test]
    fn a_file_that_is_not_a_config_names_what_is_missing() {
        let dir = std::env::temp_dir().join(format!("dmnn-no-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, "{\"epochs\": 3}").unwrap();
        let err = TrainConfig::read_run_config(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert!(err.contains("config.json") && err.contains("no 'batch_size'"), "{err}");
    }
}
