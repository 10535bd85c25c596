//! The `dmnn` command line: argument groups, each applied to a [`TrainConfig`] by its own
//! `apply`, and the settings derived from the others computed in one place ([`derive()`]).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dmnn_core::gate::{PrevState, TemperatureSchedule};
use dmnn_core::{CostPenalty, DmnnConfig, ExecutionMode};
use dmnn_train::bench::MemoryCase;
use dmnn_train::config::{DataConfig, TrainConfig};
use dmnn_train::data::SmallAugment;
use dmnn_train::schedule::LrDecay;

use crate::backend::{BackendKind, DeviceSpec};

/// Dynamic Multi-path Neural Networks: train, evaluate, measure.
#[derive(Parser, Debug)]
#[command(
    name = "dmnn",
    version,
    about = "Dynamic Multi-path Neural Networks: train, evaluate and measure gated ResNets"
)]
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
    #[command(
        mut_arg("data", |a| a
            .help("ImageNet root, with train/<wnid>/ and val/ (docs/training.md)")
            .required_unless_present_any(["config", "resume"])),
        mut_arg("dataset", |a| a.hide(true)),
        mut_arg("augment", |a| a.hide(true)),
        mut_arg("no_augment", |a| a.hide(true))
    )]
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
    /// Figures and a report.md of run directories: error vs GMACs, easy and hard images, gate
    /// maps, GMACs histogram, training curves.
    Report(ReportArgs),
    /// Runs a grid of training runs one after another (skips finished runs, resumes a stopped
    /// one), then reports on all of them.
    Sweep(SweepArgs),
    /// Writes a synthetic tree in ImageNet's layout of real JPEG files (a colour and stripe
    /// angle per class): input-pipeline and GPU checks without a dataset.
    SynthImagenet(SynthArgs),
}

/// Arguments of `synth-imagenet`.
#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Root of the tree (must not exist or be empty): `train/<wnid>/`, `val/<wnid>/`.
    #[arg(long)]
    pub out: PathBuf,
    /// Classes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Training images per class.
    #[arg(long, default_value_t = 100)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 10)]
    pub val_per_class: usize,
    /// Seed of the pixels.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Arguments of `report`.
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub backend: BackendArgs,
    /// A finished run directory (repeat for several).
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Output directory (default: `report/` in the run directory for one run, beside the runs for several).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The report's title.
    #[arg(long)]
    pub title: Option<String>,
}

/// Arguments of `sweep`.
#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The grid (TOML or JSON: out, seeds, epochs, args, `[[group]]` models × target_rates ×
    /// controllers × width_mults).
    #[arg(long)]
    pub config: PathBuf,
    /// List the runs and where each stands; train nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// How the controllers hand their state from block to block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrevStateArg {
    /// Every block decides from its own input.
    None,
    /// A shared GRU cell.
    Gru,
    /// A shared LSTM cell.
    Lstm,
}

impl From<PrevStateArg> for PrevState {
    fn from(arg: PrevStateArg) -> Self {
        match arg {
            PrevStateArg::None => Self::None,
            PrevStateArg::Gru => Self::Gru,
            PrevStateArg::Lstm => Self::Lstm,
        }
    }
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Which cost penalty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostPenaltyArg {
    /// `(mean executed share of the gated MACs − t)²`.
    Network,
    /// `mean_l (open rate of block l − t)²`.
    PerBlock,
}

impl From<CostPenaltyArg> for CostPenalty {
    fn from(arg: CostPenaltyArg) -> Self {
        match arg {
            CostPenaltyArg::Network => Self::Network,
            CostPenaltyArg::PerBlock => Self::PerBlock,
        }
    }
}

/// The decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LrScheduleArg {
    /// x0.1 every `--lr-step-epochs` (30).
    Step,
    /// Cosine to 0.
    Cosine,
}

/// The dataset of `train`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetArg {
    /// Fashion-MNIST gzip IDX files (vendored).
    FashionMnist,
    /// CIFAR-10/100 binary files.
    Cifar,
}

/// Execution mode of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Each path only on the samples whose gate is on.
    Sparse,
    /// Every path on the whole batch, times its gate.
    Masked,
}

impl From<ModeArg> for ExecutionMode {
    fn from(arg: ModeArg) -> Self {
        match arg {
            ModeArg::Sparse => Self::Sparse,
            ModeArg::Masked => Self::Masked,
        }
    }
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
    #[arg(long, conflicts_with = "train")]
    pub quick: bool,
    /// Only the training benchmark: one optimiser step of resnet50 and dmnn50 (224 px, batch
    /// 16) and of the main job (28 px, batch 128), against the old path (fast paths off).
    #[arg(long)]
    pub train: bool,
    /// Run one training case `model:image_size:batch:replicas` in this process and print its
    /// CSV row (the old path of the training benchmark runs so, with the fast paths off).
    #[arg(long, hide = true)]
    pub train_case: Option<dmnn_train::bench::TrainCase>,
    /// Timed rounds per case, exactly (default: at least 15, more for a fast case until 20 s are spent).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Also run scripts/bench_pytorch.py (torchvision resnet50 and a resnet_small-shaped network,
    /// 2 threads) and print the ratios.
    #[arg(long)]
    pub compare_pytorch: bool,
    /// Measure the ImageNet input pipeline instead (decode + RandomResizedCrop + flip + normalise, one core).
    #[arg(long)]
    pub pipeline: bool,
    /// Run one inference case `model:image_size:batch:rate:mode` and print this process's peak
    /// resident memory (the benchmark runs each case so, in a fresh process).
    #[arg(long, hide = true)]
    pub memory_case: Option<MemoryCase>,
    /// Inference cases `model:image_size:batch,batch,...` in place of the default ones (repeat
    /// for several), e.g. `--cases dmnn50:224:1,16,64,256`.
    #[arg(long = "cases", conflicts_with = "quick")]
    pub cases: Vec<dmnn_train::bench::InferenceCases>,
    /// Static reference cases `model:image_size:batch,...` in place of the default ones (repeat
    /// for several; `none` for no reference).
    #[arg(long = "references", conflicts_with = "quick")]
    pub references: Vec<dmnn_train::bench::InferenceCases>,
    /// Gate rates, comma-separated, in place of 0.25,0.5,0.75,1.
    #[arg(long, value_delimiter = ',')]
    pub rates: Vec<f64>,
    /// Skip the training benchmark that follows the inference one.
    #[arg(long, conflicts_with = "train")]
    pub no_train: bool,
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
    /// Start from these weights: torchvision .pth/.safetensors (sliced into paths for DMNN
    /// presets), a dmnn export, or a run's model.mpk.
    #[arg(long, help_heading = "Model")]
    pub initial_weights: Option<PathBuf>,
    /// With --initial-weights: train a fresh classifier when the class count differs.
    #[arg(long, help_heading = "Model")]
    pub new_head: bool,
}

/// Gating options.
#[derive(Args, Debug, Clone, Default)]
pub struct GatingArgs {
    /// Controller state handed between blocks.
    #[arg(long, value_enum, help_heading = "Gating")]
    pub prev_state: Option<PrevStateArg>,
    /// Auxiliary category heads on the controllers.
    #[arg(long, value_enum, help_heading = "Gating")]
    pub category_head: Option<Switch>,
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
    #[arg(long, value_enum, help_heading = "Gating")]
    pub cost_penalty: Option<CostPenaltyArg>,
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
    /// Nesterov momentum (the Fashion-MNIST recipe's default).
    #[arg(long, help_heading = "Optimizer")]
    pub nesterov: bool,
    /// Plain momentum instead of Nesterov's.
    #[arg(long, conflicts_with = "nesterov", help_heading = "Optimizer")]
    pub no_nesterov: bool,
    /// Clip every gradient tensor to this L2 norm.
    #[arg(long, help_heading = "Optimizer")]
    pub grad_clip: Option<f64>,
    /// Decay after warm-up.
    #[arg(long, value_enum, help_heading = "Schedule")]
    pub lr_schedule: Option<LrScheduleArg>,
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
    #[arg(long, value_enum, help_heading = "Data")]
    pub dataset: Option<DatasetArg>,
    /// Training batch size (of one optimiser step, over every replica).
    #[arg(long, help_heading = "Data")]
    pub batch_size: Option<usize>,
    /// Data-parallel replicas on the device, each with `batch_size / replicas` images of a step
    /// (the main job: 2, one per core).
    #[arg(long, help_heading = "Data")]
    pub replicas: Option<usize>,
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

/// Run options.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
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
    /// Plain progress lines even on a terminal (no TUI).
    #[arg(long, help_heading = "Run")]
    pub plain: bool,
}

/// Arguments of `train` and `train-imagenet`.
#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[allow(missing_docs)]
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Train data-parallel on these devices, one replica each, the first the main one (it holds
    /// the model, steps the optimiser and validates): GPU indices (`0,1,2,3`) or WGPU adapters
    /// (`cpu,default`: two logical devices of one CPU adapter such as lavapipe). `--batch-size`
    /// is the global batch, split evenly; the learning rate is that of one device on it.
    #[arg(long, value_delimiter = ',', conflicts_with = "device", num_args = 1..)]
    pub devices: Vec<DeviceSpec>,
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
    #[allow(missing_docs)]
    #[command(flatten)]
    pub run: RunArgs,
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
    #[arg(long, value_enum, default_value = "sparse")]
    pub mode: ModeArg,
    /// Inference gate threshold (on-probability above which a path runs), in [0, 1).
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

impl TrainArgs {
    /// The configuration of this run: the recipe (or `--config`), then every argument group,
    /// then the derived settings.
    pub fn resolve(&self, imagenet: bool) -> Result<TrainConfig> {
        let mut c = match &self.run.config {
            Some(path) => TrainConfig::read_run_config(path)?,
            None if imagenet => {
                let data = self
                    .data
                    .data
                    .clone()
                    .context("train-imagenet needs --data DIR (the ImageNet root with train/ and val/)")?;
                TrainConfig::imagenet(data)
            }
            None => TrainConfig::fashion_mnist(),
        };
        self.data.apply(&mut c, imagenet)?;
        self.model.apply(&mut c, imagenet)?;
        self.gating.apply(&mut c)?;
        self.optim.apply(&mut c)?;
        self.run.apply(&mut c);
        derive(&mut c, &self.data, &self.optim, imagenet && self.run.config.is_none());
        c.validate()?;
        Ok(c)
    }
}

impl DataArgs {
    fn apply(&self, c: &mut TrainConfig, imagenet: bool) -> Result<()> {
        if imagenet {
            let DataConfig::ImageNet { dir, val_labels, val_synsets } = &mut c.data else {
                bail!("the configuration's data is not ImageNet; use `dmnn train` for it");
            };
            if let Some(p) = &self.data {
                dir.clone_from(p);
            }
            if self.val_labels.is_some() {
                val_labels.clone_from(&self.val_labels);
            }
            if self.val_synsets.is_some() {
                val_synsets.clone_from(&self.val_synsets);
            }
            if let Some(s) = self.image_size {
                c.model.image_size = s;
            }
        } else {
            match self.dataset {
                Some(DatasetArg::Cifar) => {
                    let dir = self.data.clone().context("--dataset cifar needs --data DIR")?;
                    c.data = DataConfig::Cifar { dir };
                }
                _ => {
                    if let (Some(p), DataConfig::FashionMnist { dir, .. }) = (&self.data, &mut c.data) {
                        dir.clone_from(p);
                    }
                }
            }
            if let (Some(size), Some((_, side))) = (self.image_size, c.data.image_format()) {
                bail!(
                    "--image-size {size} applies to ImageNet-layout data; the images of {} are {side}x{side} and \
                     the model takes them as they are",
                    c.data.path().display()
                );
            }
            if let DataConfig::FashionMnist { augment, .. } = &mut c.data {
                if self.no_augment {
                    *augment = SmallAugment { pad_crop: 0, hflip: false };
                } else if self.augment {
                    *augment = SmallAugment::default();
                }
            }
        }
        if let Some(v) = self.batch_size {
            c.batch_size = v;
        }
        if let Some(v) = self.replicas {
            c.replicas = v;
        }
        if let Some(v) = self.eval_batch_size {
            c.eval_batch_size = v;
        }
        if let Some(v) = self.workers {
            c.workers = v;
        }
        if self.max_steps_per_epoch.is_some() {
            c.max_steps_per_epoch = self.max_steps_per_epoch;
        }
        if self.max_eval_batches.is_some() {
            c.max_eval_batches = self.max_eval_batches;
        }
        Ok(())
    }
}

impl ModelArgs {
    fn apply(&self, c: &mut TrainConfig, imagenet: bool) -> Result<()> {
        if let Some(name) = &self.model {
            let mut preset = DmnnConfig::preset(name)?;
            preset.num_classes = if imagenet { 1000 } else { c.model.num_classes };
            preset.in_channels = c.model.in_channels;
            preset.image_size = c.model.image_size;
            c.model = preset;
        }
        if let Some(k) = self.num_classes {
            c.model.num_classes = k;
        }
        if let Some(f) = self.width_mult {
            if !(f.is_finite() && f > 0.0) {
                bail!("--width-mult {f} must be positive");
            }
            c.model = c.model.clone().scale_width(f);
            c.model.name = format!("{}_w{f}", c.model.name);
        }
        if self.initial_weights.is_some() {
            c.initial_weights.clone_from(&self.initial_weights);
        }
        if self.new_head {
            c.new_head = true;
        }
        Ok(())
    }
}

impl GatingArgs {
    fn apply(&self, c: &mut TrainConfig) -> Result<()> {
        match c.model.controller.as_mut() {
            Some(ctrl) => {
                if let Some(p) = self.prev_state {
                    ctrl.prev_state = p.into();
                }
                if let Some(h) = self.category_head {
                    ctrl.category_head = h == Switch::On;
                }
                if let Some(w) = self.controller_width {
                    ctrl.hidden_size = w;
                }
            }
            None if self.prev_state.is_some() || self.category_head.is_some() || self.controller_width.is_some() => {
                bail!(
                    "model '{}' is static (no controllers): --prev-state, --category-head and --controller-width do not apply",
                    c.model.name
                );
            }
            None => {}
        }
        let o = &mut c.objective;
        if let Some(v) = self.target_rate {
            o.target_rate = v;
        }
        if let Some(v) = self.cost_loss_weight {
            o.cost_loss_weight = v;
        }
        if let Some(v) = self.aux_loss_weight {
            o.aux_loss_weight = v;
        }
        if let Some(v) = self.cost_penalty {
            o.cost_penalty = v.into();
        }
        match (self.temperature, self.temperature_end) {
            (Some(t), None) => c.temperature = TemperatureSchedule::Constant { temperature: t },
            (t, Some(end)) => c.temperature = TemperatureSchedule::Exponential { start: t.unwrap_or(1.0), end },
            (None, None) => {}
        }
        Ok(())
    }
}

impl OptimArgs {
    fn apply(&self, c: &mut TrainConfig) -> Result<()> {
        if let Some(v) = self.epochs {
            c.epochs = v;
        }
        if let Some(v) = self.lr {
            c.lr = v;
        }
        if let Some(v) = self.momentum {
            c.momentum = v;
        }
        if let Some(v) = self.weight_decay {
            c.weight_decay = v;
        }
        if self.nesterov || self.no_nesterov {
            c.nesterov = self.nesterov;
        }
        if self.grad_clip.is_some() {
            c.grad_clip = self.grad_clip;
        }
        match self.lr_schedule {
            Some(LrScheduleArg::Cosine) => c.lr_decay = LrDecay::Cosine,
            Some(LrScheduleArg::Step) => c.lr_decay = LrDecay::Step { every_epochs: 30, gamma: 0.1 },
            None => {}
        }
        match (self.lr_step_epochs, &mut c.lr_decay) {
            (Some(n), LrDecay::Step { every_epochs, .. }) => *every_epochs = n,
            (Some(n), LrDecay::Cosine) => {
                bail!("--lr-step-epochs {n} applies to the step schedule; this run's schedule is cosine (--lr-schedule step)")
            }
            (None, _) => {}
        }
        if let Some(v) = self.warmup_epochs {
            c.warmup_epochs = v;
        }
        if let Some(v) = self.label_smoothing {
            c.objective.label_smoothing = v;
        }
        Ok(())
    }
}

impl RunArgs {
    fn apply(&self, c: &mut TrainConfig) {
        if let Some(v) = self.seed {
            c.seed = v;
        }
        if let Some(v) = self.recalibrate_batches {
            c.recalibrate_batches = v;
        }
    }
}

/// The settings that follow from others, in one place: the model's input channels and image
/// size from a small dataset's format, and the ImageNet recipe's learning rate from the batch
/// size (the linear scaling rule) when neither `--lr` nor `--config` sets it.
fn derive(c: &mut TrainConfig, data: &DataArgs, optim: &OptimArgs, imagenet_recipe: bool) {
    if let Some((channels, side)) = c.data.image_format() {
        c.model.in_channels = channels;
        c.model.image_size = side;
    }
    if let (true, Some(batch), None) = (imagenet_recipe, data.batch_size, optim.lr) {
        c.lr = TrainConfig::imagenet_lr(batch);
    }
}
