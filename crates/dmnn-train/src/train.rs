//! The training driver, in three steps: [`prepare`] (data, run directory, loaders, the checkpoint
//! to resume from), [`launch`] (the model, the optimiser and schedule, Burn's
//! `SupervisedTraining`), [`finish`] (the final model, the test evaluation, the summary).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::grad_clipping::GradientClippingConfig;
use burn::module::{AutodiffModule, Module};
use burn::optim::momentum::MomentumConfig;
use burn::optim::SgdConfig;
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;
use burn::train::checkpoint::{CheckpointingAction, CheckpointingStrategy, KeepLastNCheckpoints};
use burn::train::metric::store::EventStoreClient;
use burn::train::renderer::MetricsRenderer;
use burn::train::{ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining};
use dmnn_core::{Dmnn, ExecutionMode, ForwardOptions};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::{EpochLoader, ImageSource, LoaderConfig, SkippedSamples, Split};
use crate::error::{Result, TrainError};
use crate::eval::{evaluate, recalibrate_bn};
use crate::init::initial_weights;
use crate::metrics::DmnnMetric;
use crate::run::{
    timestamp, write_atomic, AtomicRecorder, BoxedRenderer, CheckpointReads, CheckpointRecorder, EpochTable,
    PlainRenderer, RunDir, RunLog,
};
use crate::schedule::WarmupSchedule;
use crate::step::{DmnnClassifier, TrainProgress};

/// The end-of-run summary (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Model name.
    pub model: String,
    /// Top-1 accuracy on the test split, in [0, 1] (sparse execution, running BN statistics).
    pub test_accuracy: f64,
    /// Top-5 accuracy on the test split.
    pub test_top5: f64,
    /// Mean executed GMACs per test image.
    pub gmacs_mean: f64,
    /// Standard deviation of the executed GMACs per test image.
    pub gmacs_std: f64,
    /// GMACs of the same model with every path on.
    pub gmacs_full: f64,
    /// Mean executed MACs as a share of `gmacs_full`.
    pub macs_ratio_mean: f64,
    /// Open rate of every gated block on the test split.
    pub block_open_rates: Vec<f64>,
    /// Inference parameters (backbone and controllers).
    pub params: usize,
    /// Parameters of the auxiliary heads (training only).
    pub params_aux: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of this process in seconds (data loading, training, evaluation; build excluded).
    pub wall_seconds: f64,
    /// Wall time of the run over all its processes: this one's plus what earlier ones (stopped
    /// and resumed) spent up to their last finished epoch.
    #[serde(default)]
    pub wall_seconds_total: f64,
    /// Top-1 accuracy after BN recalibration in sparse mode, when it ran.
    pub test_accuracy_recalibrated: Option<f64>,
    /// Images that could not be decoded and were skipped.
    pub skipped_images: Vec<String>,
    /// The backend that ran.
    pub backend: String,
}

/// Options of a run that are not part of its configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Run directory; a timestamped one under `runs/` when `None`.
    pub out: Option<PathBuf>,
    /// Force plain progress lines even on a terminal.
    pub plain: bool,
    /// The backend's name, for the summary.
    pub backend: String,
}

/// A run ready to train: what [`prepare`] found and made.
pub struct Prepared<B: AutodiffBackend> {
    /// The configuration.
    pub config: TrainConfig,
    /// The run directory.
    pub dir: RunDir,
    /// The log.
    pub log: RunLog,
    /// The training split.
    pub train_source: Arc<dyn ImageSource>,
    /// The test split (validation every epoch, and the final evaluation).
    pub test_source: Arc<dyn ImageSource>,
    /// The training loader, set to the epoch to resume from.
    pub train_loader: EpochLoader<B>,
    /// The validation loader.
    pub valid_loader: EpochLoader<B::InnerBackend>,
    /// The checkpoint to resume from, if any.
    pub checkpoint: Option<usize>,
    /// Burn's terminal UI instead of plain lines.
    pub interactive: bool,
    /// The main device: the model, the optimiser and validation live here.
    pub device: B::Device,
    /// The device of every data-parallel replica, the main device first: one device for
    /// `config.replicas` replicas on it, or one device per replica.
    pub devices: Vec<B::Device>,
    start: Instant,
    earlier_seconds: f64,
    backend: String,
}

/// Checks that a split has the classes and channels of the model.
fn check_data(config: &TrainConfig, source: &dyn ImageSource, what: &str) -> Result<()> {
    let path = config.data.path().display();
    if source.num_classes() != config.model.num_classes {
        return Err(TrainError::Config(format!(
            "{what} data at {path} has {} classes but model '{}' has num_classes={}",
            source.num_classes(),
            config.model.name,
            config.model.num_classes
        )));
    }
    let [c, ..] = source.image_shape();
    if c != config.model.in_channels {
        return Err(TrainError::Config(format!(
            "{what} data at {path} has {c}-channel images but model '{}' expects in_channels={}",
            config.model.name, config.model.in_channels
        )));
    }
    check_images(config, source, what)
}

/// Checks that a split holds images, of the size the model takes.
pub(crate) fn check_images(config: &TrainConfig, source: &dyn ImageSource, what: &str) -> Result<()> {
    let path = config.data.path().display();
    if source.is_empty() {
        return Err(TrainError::Config(format!("{what} data at {path} holds no images ({})", source.describe())));
    }
    let (size, channels) = (config.model.image_size, config.model.in_channels);
    if source.image_shape() != [channels, size, size] {
        let [c, h, w] = source.image_shape();
        return Err(TrainError::Config(format!(
            "{what} data at {path} has {c}x{h}x{w} images but model '{}' takes {channels}x{size}x{size} ({})",
            config.model.name,
            source.describe()
        )));
    }
    Ok(())
}

/// The main device of `devices`: one device for every replica, or one per replica, each named
/// once.
fn check_devices<B: AutodiffBackend>(config: &TrainConfig, devices: &[B::Device]) -> Result<B::Device> {
    let Some(main) = devices.first() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    if devices.len() > 1 && devices.len() != config.replicas {
        return Err(TrainError::Config(format!(
            "{} devices ({devices:?}) for replicas={}: give one device per replica, or one device for all",
            devices.len(),
            config.replicas
        )));
    }
    if let Some((i, d)) = devices.iter().enumerate().find(|(i, d)| devices[..*i].contains(d)) {
        return Err(TrainError::Config(format!(
            "device {d:?} is named twice (as devices {} and {i}): each replica needs a device of its own",
            devices.iter().position(|e| e == d).unwrap_or(0)
        )));
    }
    // Burn 0.21 restores a checkpoint onto the backend's default device
    // (`SupervisedLearningStrategy::train` calls `load_checkpoint(.., &Default::default(), ..)`),
    // and a replica's model, optimiser state and gradients must then all be on the main device
    let default = B::Device::default();
    if devices.len() > 1 && *main != default {
        let hint = match devices.iter().position(|d| *d == default) {
            Some(i) => format!("name it first (it is device {i} of the list)"),
            None => "name it first (WGPU: `--devices default,...`; CUDA: `--devices 0,...`)".into(),
        };
        return Err(TrainError::Config(format!(
            "the main device (the first of {devices:?}) must be the backend's default device, {default:?}: Burn 0.21 \
             restores a checkpoint onto that device, so a run whose model lives elsewhere could not resume; {hint}"
        )));
    }
    Ok(main.clone())
}

/// The loader settings of a configuration: `(training, evaluation)`.
pub fn loader_configs(config: &TrainConfig) -> (LoaderConfig, LoaderConfig) {
    let mut train = LoaderConfig::train(config.batch_size / config.replicas.max(1), config.seed);
    train.max_batches = config.max_steps_per_epoch;
    train.workers = config.workers;
    let mut eval = LoaderConfig::eval(config.eval_batch_size);
    eval.max_batches = config.max_eval_batches;
    eval.workers = config.workers;
    (train, eval)
}

/// The run's SGD: PyTorch's momentum (no dampening), Nesterov and gradient clipping as set.
pub fn optimizer(config: &TrainConfig) -> SgdConfig {
    let momentum =
        MomentumConfig::new().with_momentum(config.momentum).with_dampening(0.0).with_nesterov(config.nesterov);
    let sgd = SgdConfig::new().with_momentum(Some(momentum));
    match config.grad_clip {
        Some(clip) => sgd.with_gradient_clipping(Some(GradientClippingConfig::Norm(clip as f32))),
        None => sgd,
    }
}

/// Step 1: the data (an error before anything is written), the run directory and its
/// configuration, the log, the loaders, and the checkpoint to resume from (verified).
///
/// # Errors
/// Invalid settings, missing data, data that does not fit the model, a damaged checkpoint.
pub fn prepare<B: AutodiffBackend>(
    config: TrainConfig,
    devices: Vec<B::Device>,
    options: &RunOptions,
    resume: bool,
) -> Result<Prepared<B>> {
    let start = Instant::now();
    config.validate()?;
    let device = check_devices::<B>(&config, &devices)?;
    let image_size = config.model.image_size;
    let train_source = config.data.open(Split::Train, image_size)?;
    let test_source = config.data.open(Split::Test, image_size)?;
    check_data(&config, train_source.as_ref(), "training")?;
    check_data(&config, test_source.as_ref(), "validation")?;
    let dir = match &options.out {
        Some(d) => {
            if !resume && holds_files(d) {
                let what = if RunDir::new(d).config().is_file() { "holds a run" } else { "is not empty" };
                return Err(TrainError::Config(format!(
                    "{} {what}: resume it with `--resume {}`, or give another --out (nothing was written)",
                    d.display(),
                    d.display()
                )));
            }
            std::fs::create_dir_all(d).map_err(|e| TrainError::io(d, e))?;
            RunDir::new(d)
        }
        None => new_run_dir(Path::new("runs"), &format!("{}-{}", timestamp(), config.run_name()))?,
    };
    let interactive = !options.plain && std::io::stdout().is_terminal();
    let log = RunLog::open(&dir.log(), interactive).map_err(|e| TrainError::io(&dir.log(), e))?;
    if !resume {
        let json = serde_json::to_string_pretty(&config)?;
        write_atomic(&dir.config(), json.as_bytes()).map_err(|e| TrainError::io(&dir.config(), e))?;
    }
    log.line(&format!(
        "dmnn train: model {} on {} ({} backend), run directory {}",
        config.model.name,
        train_source.describe(),
        options.backend,
        dir.root().display()
    ));
    log.line(&format!("validation: {}", test_source.describe()));
    if config.replicas > 1 {
        let place = match devices.len() {
            1 => format!("on device {device:?}"),
            _ => format!("on devices {devices:?}"),
        };
        log.line(&format!(
            "data parallel: {} replicas {place}, each {} of the {} images of a step; gradients summed on {device:?} \
             (each replica's loss divided by {}: the step follows the global batch's mean gradient)",
            config.replicas,
            config.batch_size / config.replicas,
            config.batch_size,
            config.replicas
        ));
    }

    B::seed(&device, config.seed);
    let (train_config, eval_config) = loader_configs(&config);
    let train_loader = EpochLoader::<B>::new(train_source.clone(), train_config, device.clone());
    let valid_loader = EpochLoader::<B::InnerBackend>::new(test_source.clone(), eval_config, device.clone());

    let checkpoint = if resume { usable_checkpoint::<B>(&config, &dir, &device, &log)? } else { None };
    if let Some(k) = checkpoint {
        if k >= config.epochs {
            log.line(&format!("run {} already finished {k} epochs; evaluating", dir.root().display()));
        } else {
            log.line(&format!("resuming from the checkpoint of epoch {k} in {}", dir.root().display()));
        }
        train_loader.set_epoch(k);
        truncate_csv(&dir.metrics(), k)?;
    } else if resume {
        log.line(&format!("no complete checkpoint in {}; starting from the beginning", dir.root().display()));
        truncate_csv(&dir.metrics(), 0)?;
    }
    let earlier_seconds = if resume { dir.earlier_wall_seconds() } else { 0.0 };
    Ok(Prepared {
        config,
        dir,
        log,
        train_source,
        test_source,
        train_loader,
        valid_loader,
        checkpoint,
        interactive,
        device,
        devices,
        start,
        earlier_seconds,
        backend: options.backend.clone(),
    })
}

/// Step 2: builds the model (from the initial weights when asked), the optimiser and the
/// learning-rate schedule, and trains the remaining epochs with Burn's `SupervisedTraining`.
/// Returns the inference network.
///
/// # Errors
/// Unusable initial weights, a non-finite loss, a checkpoint that does not load.
pub fn launch<B: AutodiffBackend>(run: &Prepared<B>) -> Result<Dmnn<B::InnerBackend>> {
    let (config, device, log) = (&run.config, &run.device, &run.log);
    let steps_per_epoch = run.train_loader.steps_per_epoch(config.replicas);
    let start_epoch = run.checkpoint.unwrap_or(0);
    let progress = TrainProgress::new(config.epochs * steps_per_epoch, steps_per_epoch, config.replicas);
    let mut model = config.model.try_init::<B>(device)?;
    if let (Some(path), None) = (&config.initial_weights, run.checkpoint) {
        let (m, note) = initial_weights(model, path, config.new_head, device)?;
        model = m;
        log.line(&note);
    }
    let cost = config.model.cost([config.model.image_size; 2]);
    let image_size = image_size(run.train_source.as_ref());
    let cost_here = config.model.cost(image_size);
    log.line(&format!(
        "{}: {:.3} M params (+{:.3} M auxiliary heads), {:.4} GMACs with every path on at {}x{} px (MACs: multiply-accumulates, the paper's FLOPs)",
        config.model.name,
        cost.params() as f64 / 1e6,
        cost.params_aux as f64 / 1e6,
        cost_here.macs_full() as f64 / 1e9,
        image_size[0],
        image_size[1]
    ));
    let classifier = DmnnClassifier {
        model,
        objective: config.objective.clone(),
        weight_decay: config.weight_decay,
        temperature: config.temperature,
        progress: progress.clone(),
        home: None,
    };
    if start_epoch >= config.epochs {
        let path = run.dir.checkpoint("model", start_epoch);
        let record = AtomicRecorder
            .load::<<DmnnClassifier<B> as Module<B>>::Record>(path.clone(), device)
            .map_err(|e| TrainError::record(&path.with_extension("mpk"), e))?;
        return Ok(classifier.load_record(record).model.valid());
    }
    let optim = optimizer(config).init::<B, DmnnClassifier<B>>();
    let scheduler = WarmupSchedule {
        base_lr: config.lr,
        steps_per_epoch,
        epochs: config.epochs,
        warmup_epochs: config.warmup_epochs,
        decay: config.lr_decay,
        iteration: 0,
    };

    let train_loader = Arc::new(run.train_loader.clone_loader());
    let valid_loader = Arc::new(run.valid_loader.clone_loader());
    let table =
        EpochTable::new(run.dir.metrics()).with_wall_clock(run.dir.wall_clock(), run.earlier_seconds, run.start);
    let mut training = SupervisedTraining::new(run.dir.root(), train_loader, valid_loader)
        .with_file_checkpointer(CheckpointRecorder::new(progress.checkpoint_reads()))
        .with_checkpointing_strategy(CountedCheckpoints {
            keep: KeepLastNCheckpoints::new(2),
            reads: progress.checkpoint_reads(),
        })
        .with_metric_logger(table.clone())
        .num_epochs(config.epochs);
    for metric in DmnnMetric::all(config.model.blocks().len() * usize::from(config.model.is_dynamic())) {
        training = training.metric_train_numeric(metric.clone()).metric_valid_numeric(metric);
    }
    if run.interactive {
        let renderer: Box<dyn MetricsRenderer> = Box::new(burn::train::renderer::tui::TuiMetricsRendererWrapper::new(
            training.interrupter(),
            run.checkpoint,
        ));
        training = training.renderer(BoxedRenderer(renderer));
    } else {
        training = training.renderer(PlainRenderer::new(log.clone(), config.epochs));
    }
    if let Some(k) = run.checkpoint {
        training = training.checkpoint(k);
    }
    if config.replicas > 1 {
        let devices = match run.devices.len() {
            1 => vec![device.clone(); config.replicas],
            _ => run.devices.clone(),
        };
        let strategy = ExecutionStrategy::MultiDevice(devices, MultiDeviceOptim::OptimMainDevice);
        training = training.with_training_strategy(strategy.into());
    }
    let interrupter = training.interrupter();
    progress.set_interrupter(interrupter.clone());
    if let Some(epoch) = crate::run::fault::stop_after_epoch() {
        let _ = table.clone().with_stop_after(epoch, interrupter.clone());
    }

    let result = training.launch(Learner::new(classifier, optim, scheduler));
    if let Some((step, value)) = progress.non_finite() {
        let checkpoint = match run.dir.latest_checkpoint() {
            Some(k) => format!("the last good checkpoint is epoch {k} in {}", run.dir.checkpoints().display()),
            None => "no epoch finished, so there is no checkpoint".into(),
        };
        log.line(&format!("stopped: non-finite loss ({value}) at step {step}; {checkpoint}"));
        return Err(TrainError::NonFinite { step, value, checkpoint });
    }
    // the Learner returns normally when it was interrupted: by a checkpoint that could not be
    // written (its error is the reason) or by a stop in the terminal UI
    let write_error = table.write_error();
    if interrupter.should_stop() || write_error.is_some() {
        let reason = match (interrupter.get_message(), write_error) {
            (Some(m), _) => format!("a checkpoint could not be written: {}", unwrap_burn_error(&m)),
            (None, Some(e)) => format!("the metrics could not be written: {e}"),
            (None, None) => "stopped in the terminal UI".into(),
        };
        let epoch = run.dir.complete_checkpoints().into_iter().find(|&k| run.dir.verify_checkpoint(k).is_ok());
        let checkpoint = match epoch {
            Some(k) => format!(
                "the checkpoint of epoch {k} is in {}; `dmnn train --resume {}` goes on from it",
                run.dir.checkpoints().display(),
                run.dir.root().display()
            ),
            None => "no epoch was checkpointed".into(),
        };
        let err = TrainError::Stopped { epoch: epoch.unwrap_or(0), epochs: config.epochs, reason, checkpoint };
        log.line(&err.to_string());
        return Err(err);
    }
    // the last update can overflow the weights without any loss seeing it
    let model = result.model.model;
    let bad = crate::run::non_finite_values(&model);
    if bad > 0 {
        let step = config.epochs * steps_per_epoch;
        let msg = format!(
            "training diverged: the weights are not finite after step {step} (the last, epoch {}): {bad} NaN or \
             infinite values; no accuracy is reported",
            config.epochs
        );
        log.line(&msg);
        return Err(TrainError::Other(msg));
    }
    Ok(model)
}

/// Step 3: saves the final network, evaluates it on the test split in sparse execution (and
/// after BN recalibration when asked), and writes `summary.json`.
///
/// # Errors
/// A record or summary that cannot be written.
pub fn finish<B: AutodiffBackend>(run: Prepared<B>, trained: Dmnn<B::InnerBackend>) -> Result<Summary> {
    let (config, device, log) = (&run.config, &run.device, &run.log);
    let record_path = run.dir.model();
    Recorder::<B::InnerBackend>::record(&AtomicRecorder, trained.clone().into_record(), record_path.clone())
        .map_err(|e| TrainError::Other(format!("saving {}: {e}", record_path.with_extension("mpk").display())))?;

    let (train_config, _) = loader_configs(config);
    // the validation loader's own data: an unreadable test image is one skipped image, reported once
    let test_loader = run.valid_loader.clone_loader();
    let eval = evaluate(&trained, &test_loader, ForwardOptions::mode(ExecutionMode::Sparse));
    if eval.samples == 0 {
        return Err(TrainError::Other(format!(
            "the test evaluation saw no images ({} could not be read): no accuracy to report",
            run.test_source.describe()
        )));
    }
    let mut recalibrated = None;
    if config.recalibrate_batches > 0 && config.model.is_dynamic() {
        let calib_loader = EpochLoader::<B>::new(run.train_source.clone(), train_config, device.clone());
        let model = recalibrate_bn(trained.clone().train::<B>(), &calib_loader, config.recalibrate_batches).valid();
        let eval_r = evaluate(&model, &test_loader, ForwardOptions::mode(ExecutionMode::Sparse));
        log.line(&format!(
            "BN recalibration ({} batches, sparse): top-1 {:.2} % -> {:.2} %",
            config.recalibrate_batches,
            100.0 * eval.top1(),
            100.0 * eval_r.top1()
        ));
        recalibrated = Some(eval_r.top1());
    }
    let (gmacs_mean, gmacs_std) = eval.gmacs();
    let cost = trained.cost(image_size(run.train_source.as_ref()));
    let skipped: Vec<SkippedSamples> = vec![run.train_loader.skipped(), run.valid_loader.skipped()];
    let skipped_images = skipped.iter().flat_map(|s| s.list()).map(|e| format!("{}: {}", e.path, e.reason)).collect();
    let summary = Summary {
        model: config.model.name.clone(),
        test_accuracy: eval.top1(),
        test_top5: eval.top5(),
        gmacs_mean,
        gmacs_std,
        gmacs_full: cost.macs_full() as f64 / 1e9,
        macs_ratio_mean: eval.macs_ratio(),
        block_open_rates: eval.block_rates(),
        params: cost.params(),
        params_aux: cost.params_aux,
        epochs: config.epochs,
        wall_seconds: run.start.elapsed().as_secs_f64(),
        wall_seconds_total: run.earlier_seconds + run.start.elapsed().as_secs_f64(),
        test_accuracy_recalibrated: recalibrated,
        skipped_images,
        backend: run.backend.clone(),
    };
    let json = serde_json::to_string_pretty(&summary)?;
    write_atomic(&run.dir.summary(), json.as_bytes()).map_err(|e| TrainError::io(&run.dir.summary(), e))?;
    log.file_only(&serde_json::to_string(&summary)?);
    Ok(summary)
}

/// Trains per `config` on `device` and evaluates the result: [`prepare`], [`launch`],
/// [`finish`]. Returns the summary and the run directory.
///
/// # Errors
/// See the three steps.
pub fn train<B: AutodiffBackend>(
    config: TrainConfig,
    device: B::Device,
    options: RunOptions,
    resume: bool,
) -> Result<(Summary, RunDir)> {
    train_on::<B>(config, vec![device], options, resume)
}

/// [`train`] with the data-parallel replicas on `devices`, the main device first: one device
/// for `config.replicas` replicas on it (the CPU's cores), or one device per replica (GPUs).
///
/// # Errors
/// A device list that does not fit `config.replicas`, and see [`train`].
pub fn train_on<B: AutodiffBackend>(
    config: TrainConfig,
    devices: Vec<B::Device>,
    options: RunOptions,
    resume: bool,
) -> Result<(Summary, RunDir)> {
    let run = prepare::<B>(config, devices, &options, resume)?;
    let trained = launch(&run)?;
    let dir = run.dir.clone();
    Ok((finish(run, trained)?, dir))
}

/// Whether `dir` holds a file, directly or in a subdirectory (empty directories, such as a
/// `checkpoint/` made ready or a mount point, do not count).
fn holds_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| !e.path().is_dir() || holds_files(&e.path()))
}

/// A directory `parent/name` made by this process alone: two runs started in the same second get
/// `name` and `name-2` (creating a directory is atomic, so they cannot both take one).
fn new_run_dir(parent: &Path, name: &str) -> Result<RunDir> {
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    for k in 1.. {
        let dir = if k == 1 { parent.join(name) } else { parent.join(format!("{name}-{k}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(RunDir::new(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(TrainError::io(&dir, e)),
        }
    }
    unreachable!("some suffix is free")
}

/// `[height, width]` of a source's images.
fn image_size(source: &dyn ImageSource) -> [usize; 2] {
    let [_, h, w] = source.image_shape();
    [h, w]
}

/// The newest checkpoint a resume can start from: its three files match their checksums and
/// load as this run's records (the model's into this architecture). A newer one that does not
/// is reported and the one before it tried, so a damaged last epoch costs one epoch, not the run.
/// A checkpoint whose write had not finished when the run died (a file without its checksum) is
/// one the run never made: skipped, it leaves the one before it or, for the first, the start.
///
/// # Errors
/// Checkpoints that exist but none of which can be used, each with its reason.
fn usable_checkpoint<B: AutodiffBackend>(
    config: &TrainConfig,
    dir: &RunDir,
    device: &B::Device,
    log: &RunLog,
) -> Result<Option<usize>> {
    let epochs = dir.complete_checkpoints();
    let mut refused: Vec<String> = Vec::new();
    for &k in &epochs {
        if let Some(path) = dir.unfinished_checkpoint_file(k) {
            log.line(&format!(
                "the checkpoint of epoch {k} was being written when the run stopped ({} has no checksum beside it): skipped",
                path.display()
            ));
            continue;
        }
        match validate_checkpoint::<B>(config, dir, k, device) {
            Ok(()) => {
                if !refused.is_empty() {
                    log.line(&format!("falling back to the checkpoint of epoch {k}: {}", refused.join("; ")));
                }
                return Ok(Some(k));
            }
            Err(reason) => {
                log.line(&format!("the checkpoint of epoch {k} cannot be used: {reason}"));
                refused.push(format!("epoch {k}: {reason}"));
            }
        }
    }
    if refused.is_empty() {
        return Ok(None);
    }
    Err(TrainError::Other(format!(
        "no checkpoint in {} can be used ({}); remove the directory's checkpoint/ to train the run again from the start",
        dir.checkpoints().display(),
        refused.join("; ")
    )))
}

/// Burn's keep-the-last-N checkpoint strategy, telling [`CheckpointReads`] of the records each
/// save it orders will hand to the checkpointer's threads (before they are handed over: this
/// runs on the training thread, just before the saves).
struct CountedCheckpoints {
    keep: KeepLastNCheckpoints,
    reads: Arc<CheckpointReads>,
}

impl CheckpointingStrategy for CountedCheckpoints {
    fn checkpointing(&mut self, epoch: usize, store: &EventStoreClient) -> Vec<CheckpointingAction> {
        let actions = self.keep.checkpointing(epoch, store);
        let saves = actions.iter().filter(|a| **a == CheckpointingAction::Save).count();
        self.reads.expect(saves * CheckpointReads::PER_CHECKPOINT);
        actions
    }
}

/// Checks checkpoint `epoch` before the Learner (which panics on a bad file) gets it: checksums,
/// then the three records loaded as their types, the model's into this run's architecture.
fn validate_checkpoint<B: AutodiffBackend>(
    config: &TrainConfig,
    dir: &RunDir,
    epoch: usize,
    device: &B::Device,
) -> std::result::Result<(), String> {
    dir.verify_checkpoint(epoch)?;
    let model_path = dir.checkpoint("model", epoch);
    let record =
        AtomicRecorder.load::<<DmnnClassifier<B> as Module<B>>::Record>(model_path.clone(), device).map_err(|e| {
            format!("{} cannot be loaded (truncated or damaged): {e}", model_path.with_extension("mpk").display())
        })?;
    let model = config.model.try_init::<B>(device).map_err(|e| e.to_string())?;
    crate::run::load_record_checked(
        DmnnClassifier::for_inference(model, config.objective.clone()),
        record,
        &model_path,
    )
    .map_err(|e| e.to_string())?;
    let optim = optimizer(config).init::<B, DmnnClassifier<B>>();
    let optim_path = dir.checkpoint("optim", epoch);
    load_record_like(&optim, optim_path.clone(), device).map_err(|e| {
        format!("{} cannot be loaded (truncated or damaged): {e}", optim_path.with_extension("mpk").display())
    })?;
    let scheduler_path = dir.checkpoint("scheduler", epoch);
    Recorder::<B>::load::<usize>(&AtomicRecorder, scheduler_path.clone(), device).map_err(|e| {
        format!("{} cannot be loaded (truncated or damaged): {e}", scheduler_path.with_extension("mpk").display())
    })?;
    Ok(())
}

/// The message inside Burn's wrapping of a recorder error (``Recorder error: `Unknown("…")` ``).
fn unwrap_burn_error(message: &str) -> String {
    match (message.find("(\""), message.rfind("\")")) {
        (Some(a), Some(b)) if b > a + 2 => message[a + 2..b].replace("\\\"", "\""),
        _ => message.to_string(),
    }
}

/// Loads the record of optimiser `_optim` from `path`.
fn load_record_like<B: AutodiffBackend, M: burn::module::AutodiffModule<B>, O: burn::optim::Optimizer<M, B>>(
    _optim: &O,
    path: PathBuf,
    device: &B::Device,
) -> std::result::Result<O::Record, burn::record::RecorderError> {
    AtomicRecorder.load::<O::Record>(path, device)
}

/// Keeps the header and the rows of epochs `<= epoch` of a metrics CSV.
fn truncate_csv(path: &std::path::Path, epoch: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, line)| {
            *i == 0 || line.split(',').next().and_then(|e| e.parse::<usize>().ok()).is_some_and(|e| e <= epoch)
        })
        .map(|(_, l)| l)
        .collect();
    write_atomic(path, (kept.join("\n") + "\n").as_bytes()).map_err(|e| TrainError::io(path, e))
}
