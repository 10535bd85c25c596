//! The `dmnn` command line: argument groups and how they turn into a [`TrainConfig`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use dmnn_core::gate::{PrevState, TemperatureSchedule};
use dmnn_core::DmnnConfig;

use crate::backend::BackendKind;
use crate::config::{DataConfig, TrainConfig};
use crate::data::{default_fashion_mnist_dir, SmallAugment};
use crate::objective::{CostPenalty, ObjectiveConfig};
use crate::schedule::LrDecay;

/// Dynamic Multi-path Neural Networks: train, evaluate, measure.
#[derive(Parser, Debug)]
#[command(name = "dmnn", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train on the embedded Fashion-MNIST (the main job): no arguments needed.
    Train(TrainArgs),
    /// Train on ImageNet from a local directory with the ImageNet recipe.
    TrainImagenet(TrainArgs),
    /// Evaluate a run: top-1/top-5 error, params, GMACs mean ± std, per-block open rates.
    Eval(EvalArgs),
    /// Analytic parameters and GMACs of a model.
    Cost(CostArgs),
    /// Build a model from torchvision ResNet weights (paths sliced from the ResNet) into a run directory.
    InitFromTorchvision(InitArgs),
    /// Export a run's network as safetensors with torchvision key names.
    Export(ExportArgs),
    /// Sparse vs Masked vs static inference time, training throughput, ResNet-50 references.
    Bench(BenchArgs),
}

/// Arguments of `bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub backend: BackendArgs,
    /// CSV output (default: `results/bench-<backend>-<machine>.csv`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the small preset (seconds on a CPU).
    #[arg(long)]
    pub quick: bool,
    /// Timed rounds per case, exactly (default: at least 15, more for a fast case until 20 s are spent).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Also run scripts/bench_pytorch.py (torchvision resnet50, 2 threads) and print the ratios.
    #[arg(long)]
    pub compare_pytorch: bool,
    /// Measure the ImageNet input pipeline instead (decode + RandomResizedCrop + flip + normalise, one core).
    #[arg(long)]
    pub pipeline: bool,
    /// Run one inference case `model:image_size:batch:rate:mode` and print this process's peak
    /// resident memory (the benchmark runs each case so, in a fresh process).
    #[arg(long, hide = true)]
    pub memory_case: Option<crate::bench::MemoryCase>,
}

/// Backend and device.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Backend (wgpu and cuda need a binary built with that feature: `cargo xtask ... --backend X`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Device index (GPUs).
    #[arg(long)]
    pub device: Option<usize>,
}

/// Model options.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Model preset (see `dmnn cost --model list`).
    #[arg(long, help_heading = "Model")]
    pub model: Option<String>,
    /// Number of classes (default: the dataset's).
    #[arg(long, help_heading = "Model")]
    pub num_classes: Option<usize>,
    /// Scale every width of the preset (static baselines of equal MACs).
    #[arg(long, help_heading = "Model")]
    pub width_mult: Option<f64>,
}

/// Gating options.
#[derive(Args, Debug, Clone, Default)]
pub struct GatingArgs {
    /// Controller state handed between blocks.
    #[arg(long, value_parser = ["none", "gru", "lstm"], help_heading = "Gating")]
    pub prev_state: Option<String>,
    /// Auxiliary category heads on the controllers.
    #[arg(long, value_parser = ["on", "off"], help_heading = "Gating")]
    pub category_head: Option<String>,
    /// Controller width d.
    #[arg(long, help_heading = "Gating")]
    pub controller_width: Option<usize>,
    /// Target share of the gated MACs.
    #[arg(long, help_heading = "Gating")]
    pub target_rate: Option<f64>,
    /// Weight of the cost penalty.
    #[arg(long, help_heading = "Gating")]
    pub cost_loss_weight: Option<f64>,
    /// Weight of the auxiliary category loss.
    #[arg(long, help_heading = "Gating")]
    pub aux_loss_weight: Option<f64>,
    /// Network-wide or per-block cost penalty.
    #[arg(long, value_parser = ["network", "per-block"], help_heading = "Gating")]
    pub cost_penalty: Option<String>,
    /// Gumbel temperature (start of the schedule).
    #[arg(long, help_heading = "Gating")]
    pub temperature: Option<f64>,
    /// Anneal the temperature exponentially to this value by the last step.
    #[arg(long, help_heading = "Gating")]
    pub temperature_end: Option<f64>,
}

/// Optimiser and schedule options.
#[derive(Args, Debug, Clone, Default)]
pub struct OptimArgs {
    /// Epochs.
    #[arg(long, help_heading = "Schedule")]
    pub epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long, help_heading = "Optimizer")]
    pub lr: Option<f64>,
    /// SGD momentum (no dampening).
    #[arg(long, help_heading = "Optimizer")]
    pub momentum: Option<f64>,
    /// Weight decay (convolution and linear weights only).
    #[arg(long, help_heading = "Optimizer")]
    pub weight_decay: Option<f64>,
    /// Nesterov momentum.
    #[arg(long, help_heading = "Optimizer")]
    pub nesterov: bool,
    /// Clip every gradient tensor to this L2 norm.
    #[arg(long, help_heading = "Optimizer")]
    pub grad_clip: Option<f64>,
    /// Decay after warm-up.
    #[arg(long, value_parser = ["step", "cosine"], help_heading = "Schedule")]
    pub lr_schedule: Option<String>,
    /// Epochs between step decays (x0.1).
    #[arg(long, help_heading = "Schedule")]
    pub lr_step_epochs: Option<usize>,
    /// Epochs of linear warm-up.
    #[arg(long, help_heading = "Schedule")]
    pub warmup_epochs: Option<f64>,
    /// Label smoothing.
    #[arg(long, help_heading = "Optimizer")]
    pub label_smoothing: Option<f64>,
}

/// Data options.
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Dataset directory (train: Fashion-MNIST, vendored by default; train-imagenet: required).
    #[arg(long, help_heading = "Data")]
    pub data: Option<PathBuf>,
    /// Dataset kind of `train` (`train-imagenet` is always ImageNet).
    #[arg(long, value_parser = ["fashion-mnist", "cifar"], help_heading = "Data")]
    pub dataset: Option<String>,
    /// Training batch size.
    #[arg(long, help_heading = "Data")]
    pub batch_size: Option<usize>,
    /// Evaluation batch size.
    #[arg(long, help_heading = "Data")]
    pub eval_batch_size: Option<usize>,
    /// Image side for ImageNet crops.
    #[arg(long, help_heading = "Data")]
    pub image_size: Option<usize>,
    /// Label file of a flat ImageNet `val/` folder.
    #[arg(long, help_heading = "Data")]
    pub val_labels: Option<PathBuf>,
    /// wnid of every ILSVRC2012_ID, for the devkit ground truth.
    #[arg(long, help_heading = "Data")]
    pub val_synsets: Option<PathBuf>,
    /// Decode threads (0: one per core).
    #[arg(long, help_heading = "Data")]
    pub workers: Option<usize>,
    /// No training augmentation (small datasets).
    #[arg(long, help_heading = "Data", conflicts_with = "augment")]
    pub no_augment: bool,
    /// Random crop (pad 2) and horizontal flip on small datasets.
    #[arg(long, help_heading = "Data")]
    pub augment: bool,
    /// Stop each training epoch after this many batches.
    #[arg(long, help_heading = "Data")]
    pub max_steps_per_epoch: Option<usize>,
    /// Evaluate on at most this many batches.
    #[arg(long, help_heading = "Data")]
    pub max_eval_batches: Option<usize>,
}

/// Arguments of `train` and `train-imagenet`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub backend: BackendArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub model: ModelArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub gating: GatingArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub optim: OptimArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub data: DataArgs,
    /// A configuration file (JSON, as written to a run's config.json); flags override it.
    #[arg(long, help_heading = "Run")]
    pub config: Option<PathBuf>,
    /// Run directory (default: `runs/<timestamp>-<model>-<paths>p-t<target>`).
    #[arg(long, help_heading = "Run")]
    pub out: Option<PathBuf>,
    /// Continue a stopped run from its last checkpoint (its config.json is used; other flags are ignored).
    #[arg(long, help_heading = "Run")]
    pub resume: Option<PathBuf>,
    /// Seed of initialisation, data order, augmentation and Gumbel noise.
    #[arg(long, help_heading = "Run")]
    pub seed: Option<u64>,
    /// BN recalibration batches after training (sparse mode), reported beside the plain result.
    #[arg(long, help_heading = "Run")]
    pub recalibrate_batches: Option<usize>,
    /// Start from these weights: torchvision .pth/.safetensors (sliced into paths for DMNN
    /// presets), a dmnn export, or a run's model.mpk.
    #[arg(long, help_heading = "Model")]
    pub initial_weights: Option<PathBuf>,
    /// With --initial-weights: train a fresh classifier when the class count differs.
    #[arg(long, help_heading = "Model")]
    pub new_head: bool,
    /// Plain progress lines even on a terminal (no TUI).
    #[arg(long, help_heading = "Run")]
    pub plain: bool,
}

/// Arguments of `eval`.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Run directory (with config.json and model.mpk or checkpoints).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset directory (default: the run's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Label file of a flat ImageNet `val/` folder.
    #[arg(long)]
    pub val_labels: Option<PathBuf>,
    /// wnid of every ILSVRC2012_ID, for the devkit ground truth.
    #[arg(long)]
    pub val_synsets: Option<PathBuf>,
    /// Execution mode.
    #[arg(long, value_parser = ["sparse", "masked"], default_value = "sparse")]
    pub mode: String,
    /// Inference gate threshold (on-probability above which a path runs).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Evaluate on at most this many batches.
    #[arg(long)]
    pub max_batches: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Recalibrate batch norms on this many training batches (sparse mode) and report both.
    #[arg(long, default_value_t = 0)]
    pub recalibrate_batches: usize,
    /// Evaluate these weights instead of the run's (torchvision or dmnn; see train --initial-weights).
    #[arg(long)]
    pub initial_weights: Option<PathBuf>,
}

/// Arguments of `init-from-torchvision`.
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// torchvision checkpoint (.pth or .safetensors), read from a local path.
    #[arg(long)]
    pub weights: PathBuf,
    /// Model preset to build (resnet* load directly; dmnn* are sliced from the ResNet of the same depth).
    #[arg(long)]
    pub model: String,
    /// Run directory to write (config.json, model.mpk).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes (default: the preset's).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Keep a fresh classifier when the checkpoint's class count differs.
    #[arg(long)]
    pub new_head: bool,
}

/// Arguments of `export`.
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Run directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output .safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `cost`.
#[derive(Args, Debug, Clone)]
pub struct CostArgs {
    /// Model preset, or `list`.
    #[arg(long)]
    pub model: String,
    /// Input side in pixels (default: the preset's).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Number of classes (default: the preset's).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Print exactly one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Defaults of `train`: the Fashion-MNIST main job, sized for 15 minutes on two CPU cores.
pub fn fashion_mnist_defaults() -> TrainConfig {
    let model = DmnnConfig::preset("dmnn_small").expect("preset");
    TrainConfig::new(
        model,
        // no augmentation: a 6-epoch schedule underfits, crops and flips cost accuracy here
        DataConfig::FashionMnist { dir: default_fashion_mnist_dir(), augment: SmallAugment { pad_crop: 0, hflip: false } },
        ObjectiveConfig::new().with_target_rate(0.7),
        6,
        128,
        0.1,
    )
    .with_weight_decay(5e-4)
    .with_warmup_epochs(0.2)
    .with_lr_decay(LrDecay::Cosine)
}

/// Defaults of `train-imagenet`: DESIGN §5's recipe.
pub fn imagenet_defaults(data: PathBuf) -> TrainConfig {
    let model = DmnnConfig::preset("dmnn50").expect("preset");
    TrainConfig::new(
        model,
        DataConfig::ImageNet { dir: data, image_size: 224, val_labels: None, val_synsets: None },
        ObjectiveConfig::new(),
        100,
        256,
        0.1,
    )
    .with_lr_decay(LrDecay::Step { every_epochs: 30, gamma: 0.1 })
}

impl TrainArgs {
    /// The configuration of this run: defaults (or `--config`), then the flags.
    pub fn resolve(&self, imagenet: bool) -> Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str::<TrainConfig>(&text).with_context(|| format!("{} is not a dmnn training configuration", path.display()))?
            }
            None if imagenet => {
                let data = self.data.data.clone().context("train-imagenet needs --data DIR (the ImageNet root with train/ and val/)")?;
                imagenet_defaults(data)
            }
            None => fashion_mnist_defaults(),
        };
        // data
        let d = &self.data;
        if imagenet {
            if let DataConfig::ImageNet { dir, image_size, val_labels, val_synsets } = &mut c.data {
                if let Some(p) = &d.data {
                    *dir = p.clone();
                }
                if let Some(s) = d.image_size {
                    *image_size = s;
                    c.model.image_size = s;
                }
                if d.val_labels.is_some() {
                    *val_labels = d.val_labels.clone();
                }
                if d.val_synsets.is_some() {
                    *val_synsets = d.val_synsets.clone();
                }
            } else {
                bail!("the configuration's data is not ImageNet; use `dmnn train` for it");
            }
        } else {
            match d.dataset.as_deref() {
                Some("cifar") => {
                    let dir = d.data.clone().context("--dataset cifar needs --data DIR")?;
                    c.data = DataConfig::Cifar { dir };
                }
                _ => {
                    if let (Some(p), DataConfig::FashionMnist { dir, .. }) = (&d.data, &mut c.data) {
                        *dir = p.clone();
                    }
                }
            }
            if let DataConfig::FashionMnist { augment, .. } = &mut c.data {
                if d.no_augment {
                    *augment = SmallAugment { pad_crop: 0, hflip: false };
                } else if d.augment {
                    *augment = SmallAugment::default();
                }
            }
        }
        // model
        if let Some(name) = &self.model.model {
            let mut preset = DmnnConfig::preset(name)?;
            preset.num_classes = c.model.num_classes;
            preset.in_channels = c.model.in_channels;
            preset.image_size = c.model.image_size;
            c.model = preset;
            if imagenet {
                c.model.num_classes = 1000;
            }
        }
        if let Some(k) = self.model.num_classes {
            c.model.num_classes = k;
        }
        if matches!(c.data, DataConfig::Cifar { .. }) {
            c.model.in_channels = 3;
            c.model.image_size = 32;
        }
        if let Some(f) = self.model.width_mult {
            if !(f.is_finite() && f > 0.0) {
                bail!("--width-mult {f} must be positive");
            }
            c.model = c.model.scale_width(f);
            c.model.name = format!("{}_w{f}", c.model.name);
        }
        // gating
        let g = &self.gating;
        if let Some(ctrl) = c.model.controller.as_mut() {
            if let Some(p) = &g.prev_state {
                ctrl.prev_state = p.parse::<PrevState>().map_err(anyhow::Error::msg)?;
            }
            if let Some(h) = &g.category_head {
                ctrl.category_head = h == "on";
            }
            if let Some(w) = g.controller_width {
                ctrl.hidden_size = w;
            }
        } else if g.prev_state.is_some() || g.category_head.is_some() || g.controller_width.is_some() {
            bail!("model '{}' is static (no controllers): --prev-state, --category-head and --controller-width do not apply", c.model.name);
        }
        if let Some(v) = g.target_rate {
            c.objective.target_rate = v;
        }
        if let Some(v) = g.cost_loss_weight {
            c.objective.cost_loss_weight = v;
        }
        if let Some(v) = g.aux_loss_weight {
            c.objective.aux_loss_weight = v;
        }
        if let Some(v) = &g.cost_penalty {
            c.objective.cost_penalty = v.parse::<CostPenalty>().map_err(anyhow::Error::msg)?;
        }
        match (g.temperature, g.temperature_end) {
            (Some(t), None) => c.temperature = TemperatureSchedule::Constant { temperature: t },
            (t, Some(end)) => c.temperature = TemperatureSchedule::Exponential { start: t.unwrap_or(1.0), end },
            (None, None) => {}
        }
        // optimiser and schedule
        let o = &self.optim;
        if let Some(v) = o.epochs {
            c.epochs = v;
        }
        if let Some(v) = d.batch_size {
            if imagenet && o.lr.is_none() && self.config.is_none() {
                c.lr = 0.1 * v as f64 / 256.0; // linear scaling rule of the recipe
            }
            c.batch_size = v;
        }
        if let Some(v) = d.eval_batch_size {
            c.eval_batch_size = v;
        }
        if let Some(v) = o.lr {
            c.lr = v;
        }
        if let Some(v) = o.momentum {
            c.momentum = v;
        }
        if let Some(v) = o.weight_decay {
            c.weight_decay = v;
        }
        if o.nesterov {
            c.nesterov = true;
        }
        if o.grad_clip.is_some() {
            c.grad_clip = o.grad_clip;
        }
        if let Some(s) = &o.lr_schedule {
            c.lr_decay = s.parse::<LrDecay>().map_err(anyhow::Error::msg)?;
        }
        if let (Some(n), LrDecay::Step { every_epochs, .. }) = (o.lr_step_epochs, &mut c.lr_decay) {
            *every_epochs = n;
        }
        if let Some(v) = o.warmup_epochs {
            c.warmup_epochs = v;
        }
        if let Some(v) = o.label_smoothing {
            c.objective.label_smoothing = v;
        }
        // run
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.recalibrate_batches {
            c.recalibrate_batches = v;
        }
        if self.initial_weights.is_some() {
            c.initial_weights = self.initial_weights.clone();
        }
        if self.new_head {
            c.new_head = true;
        }
        if let Some(v) = d.workers {
            c.workers = v;
        }
        if d.max_steps_per_epoch.is_some() {
            c.max_steps_per_epoch = d.max_steps_per_epoch;
        }
        if d.max_eval_batches.is_some() {
            c.max_eval_batches = d.max_eval_batches;
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}
