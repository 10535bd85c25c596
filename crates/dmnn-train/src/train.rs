//! The training driver: data, model, Burn's `SupervisedTraining`, checkpoints, resume, final
//! evaluation and the summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::data::dataloader::DataLoader;
use burn::module::{AutodiffModule, Module};
use burn::optim::momentum::MomentumConfig;
use burn::grad_clipping::GradientClippingConfig;
use burn::optim::SgdConfig;
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::renderer::MetricsRenderer;
use burn::train::metric::ItemLazy;
use burn::train::{Learner, SupervisedTraining};
use dmnn_core::{Dmnn, ExecutionMode, ForwardOptions};
use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, TrainConfig};
use crate::data::{
    fashion_mnist, EpochLoader, ImageFolder, ImageSource, LoaderConfig, SkippedSamples, Split,
    ValLabels,
};
use crate::metrics::{DmnnMetric, EvalSummary};
use crate::run::{timestamp, write_atomic, AtomicRecorder, EpochTable, PlainRenderer, RunLog};
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
    /// Wall time of the run in seconds (data loading, training, evaluation; build excluded).
    pub wall_seconds: f64,
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

/// Loads a split of the configured dataset.
pub fn load_split(data: &DataConfig, split: Split) -> Result<Arc<dyn ImageSource>, crate::data::DataError> {
    Ok(match data {
        DataConfig::FashionMnist { dir, augment } => Arc::new(fashion_mnist(dir, split)?.with_augment(*augment)),
        DataConfig::Cifar { dir } => Arc::new(crate::data::cifar(dir, split)?),
        DataConfig::ImageNet { dir, image_size, val_labels, val_synsets } => {
            let labels = ValLabels { file: val_labels.clone(), synsets: val_synsets.clone() };
            Arc::new(ImageFolder::imagenet(dir, split, *image_size, &labels)?)
        }
    })
}

fn check_data(config: &TrainConfig, source: &dyn ImageSource, what: &str) -> Result<()> {
    let path = config.data.path().display();
    if source.num_classes() != config.model.num_classes {
        bail!(
            "{what} data at {path} has {} classes but model '{}' has num_classes={}",
            source.num_classes(),
            config.model.name,
            config.model.num_classes
        );
    }
    let [c, ..] = source.image_shape();
    if c != config.model.in_channels {
        bail!("{what} data at {path} has {c}-channel images but model '{}' expects in_channels={}", config.model.name, config.model.in_channels);
    }
    Ok(())
}

/// Evaluates a network on a loader in the given execution mode (`Auto`: sparse without autodiff).
pub fn evaluate<B: Backend>(model: &Dmnn<B>, loader: &EpochLoader<B>, mode: ExecutionMode) -> EvalSummary {
    let classifier = DmnnClassifier::for_inference(model.clone(), crate::objective::ObjectiveConfig::new());
    let mut summary = EvalSummary::default();
    for batch in loader.iter() {
        let out = model.forward_with(batch.images, ForwardOptions::mode(mode));
        summary.add(&classifier.output_of(out, batch.targets).sync());
    }
    summary
}

/// BN recalibration (DESIGN §7): after masked training every path's batch norms have seen every
/// sample, also those the path does not serve at inference. Re-estimates the running statistics
/// by running `batches` training batches in sparse mode with the inference gates, so each path's
/// batch norms see exactly the samples it serves.
pub fn recalibrate_bn<B: AutodiffBackend>(model: Dmnn<B>, loader: &EpochLoader<B>, batches: usize) -> Dmnn<B> {
    for batch in loader.iter().take(batches) {
        let gates = model.valid().forward(batch.images.clone().inner()).gates;
        let gates = gates.into_iter().map(burn::tensor::Tensor::from_inner).collect();
        let _ = model.forward_with(batch.images, ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates));
    }
    model
}

/// Finds the latest epoch whose model, optimiser and scheduler checkpoints all exist.
fn latest_checkpoint(dir: &Path) -> Option<usize> {
    let ckpt = dir.join("checkpoint");
    let entries = std::fs::read_dir(&ckpt).ok()?;
    let mut epochs: Vec<usize> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("model-")?.strip_suffix(".mpk")?.parse().ok()
        })
        .filter(|k| ["optim", "scheduler"].iter().all(|n| ckpt.join(format!("{n}-{k}.mpk")).is_file()))
        .collect();
    epochs.sort();
    epochs.last().copied()
}

/// Trains per `config` on `device` and evaluates the result; see the module docs.
pub fn train<B: AutodiffBackend>(config: TrainConfig, device: B::Device, options: RunOptions, resume: bool) -> Result<Summary> {
    let start = Instant::now();
    config.validate().map_err(anyhow::Error::msg)?;
    // data first: a missing path or a class mismatch is an error before anything is written
    let train_source = load_split(&config.data, Split::Train)?;
    let valid_source = load_split(&config.data, Split::Test)?;
    check_data(&config, train_source.as_ref(), "training")?;
    check_data(&config, valid_source.as_ref(), "validation")?;
    let run_dir = match &options.out {
        Some(d) => d.clone(),
        None => PathBuf::from("runs").join(format!("{}-{}", timestamp(), config.run_name())),
    };
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
    let interactive = !options.plain && std::io::stdout().is_terminal();
    let log = RunLog::open(&run_dir.join("train.log"), interactive).context("opening train.log")?;

    let config_json = serde_json::to_string_pretty(&config)?;
    if !resume {
        write_atomic(&run_dir.join("config.json"), config_json.as_bytes())?;
    }
    log.line(&format!("dmnn train: model {} on {} ({} backend), run directory {}", config.model.name, train_source.describe(), options.backend, run_dir.display()));
    log.line(&format!("validation: {}", valid_source.describe()));

    B::seed(&device, config.seed);
    let mut train_loader_config = LoaderConfig::train(config.batch_size, config.seed);
    train_loader_config.max_batches = config.max_steps_per_epoch;
    train_loader_config.workers = config.workers;
    let mut eval_loader_config = LoaderConfig::eval(config.eval_batch_size);
    eval_loader_config.max_batches = config.max_eval_batches;
    eval_loader_config.workers = config.workers;
    let train_loader = EpochLoader::<B>::new(train_source.clone(), train_loader_config.clone(), device.clone());
    let valid_loader = EpochLoader::<B::InnerBackend>::new(valid_source.clone(), eval_loader_config.clone(), device.clone());
    let skipped: Vec<SkippedSamples> = vec![train_loader.skipped(), valid_loader.skipped()];
    let steps_per_epoch = train_loader.num_batches();

    let checkpoint = if resume { latest_checkpoint(&run_dir) } else { None };
    if let Some(k) = checkpoint {
        validate_checkpoint::<B>(&run_dir, k, &device)?;
        if k >= config.epochs {
            log.line(&format!("run {} already finished {k} epochs; evaluating", run_dir.display()));
        } else {
            log.line(&format!("resuming from the checkpoint of epoch {k} in {}", run_dir.display()));
        }
        train_loader.set_epoch(k);
        truncate_csv(&run_dir.join("metrics.csv"), k)?;
    } else if resume {
        log.line(&format!("no complete checkpoint in {}; starting from the beginning", run_dir.display()));
    }
    let start_epoch = checkpoint.unwrap_or(0);

    let progress = TrainProgress::new(config.epochs * steps_per_epoch, steps_per_epoch, start_epoch * steps_per_epoch);
    let mut model = config.model.init::<B>(&device);
    if let (Some(path), None) = (&config.initial_weights, checkpoint) {
        let (m, note) = initial_weights(model, path, config.new_head, &device)?;
        model = m;
        log.line(&note);
    }
    let cost = config.model.cost([config.model.image_size; 2]);
    let image_size = {
        let [_, h, w] = train_source.image_shape();
        [h, w]
    };
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
    };
    let mut sgd = SgdConfig::new().with_momentum(Some(
        MomentumConfig::new().with_momentum(config.momentum).with_dampening(0.0).with_nesterov(config.nesterov),
    ));
    if let Some(clip) = config.grad_clip {
        sgd = sgd.with_gradient_clipping(Some(GradientClippingConfig::Norm(clip as f32)));
    }
    let optim = sgd.init::<B, DmnnClassifier<B>>();
    let scheduler = WarmupSchedule {
        base_lr: config.lr,
        steps_per_epoch,
        epochs: config.epochs,
        warmup_epochs: config.warmup_epochs,
        decay: config.lr_decay,
        iteration: 0,
    };

    let table = EpochTable::new(run_dir.join("metrics.csv"));
    let mut training = SupervisedTraining::new(&run_dir, Arc::new(train_loader), Arc::new(valid_loader))
        .with_file_checkpointer(AtomicRecorder::default())
        .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
        .with_metric_logger(table.clone())
        .num_epochs(config.epochs);
    for metric in DmnnMetric::all(config.model.blocks().len() * usize::from(config.model.is_dynamic())) {
        training = training.metric_train_numeric(metric.clone()).metric_valid_numeric(metric);
    }
    if !interactive {
        training = training.renderer(PlainRenderer::new(log.clone(), config.epochs));
    } else {
        let renderer: Box<dyn MetricsRenderer> = Box::new(burn::train::renderer::tui::TuiMetricsRendererWrapper::new(
            training.interrupter(),
            checkpoint,
        ));
        training = training.renderer(BoxedRenderer(renderer));
    }
    if let Some(k) = checkpoint {
        training = training.checkpoint(k);
    }
    progress.set_interrupter(training.interrupter());

    let trained = if start_epoch < config.epochs {
        let result = training.launch(Learner::new(classifier, optim, scheduler));
        if let Some((step, value)) = progress.non_finite() {
            let last = latest_checkpoint(&run_dir);
            let keep = match last {
                Some(k) => format!("the last good checkpoint is epoch {k} in {}", run_dir.join("checkpoint").display()),
                None => "no epoch finished, so there is no checkpoint".into(),
            };
            log.line(&format!("stopped: non-finite loss ({value}) at step {step}; {keep}"));
            bail!("training stopped: non-finite loss ({value}) at step {step}; {keep}");
        }
        result.model.model
    } else {
        let record = AtomicRecorder::default()
            .load::<<DmnnClassifier<B> as Module<B>>::Record>(run_dir.join("checkpoint").join(format!("model-{start_epoch}")), &device)
            .with_context(|| format!("loading the checkpoint of epoch {start_epoch}"))?;
        classifier.load_record(record).model.valid()
    };
    let record_path = run_dir.join("model");
    Recorder::<B::InnerBackend>::record(&AtomicRecorder::default(), trained.clone().into_record(), record_path.clone())
        .with_context(|| format!("saving {}", record_path.display()))?;

    // final evaluation on the test split, sparse execution
    let test_loader = EpochLoader::<B::InnerBackend>::new(valid_source.clone(), eval_loader_config.clone(), device.clone());
    let eval = evaluate(&trained, &test_loader, ExecutionMode::Sparse);
    let mut recalibrated = None;
    if config.recalibrate_batches > 0 && config.model.is_dynamic() {
        let calib_loader = EpochLoader::<B>::new(train_source.clone(), train_loader_config, device.clone());
        let model = recalibrate_bn(trained.clone().train::<B>(), &calib_loader, config.recalibrate_batches).valid();
        let eval_r = evaluate(&model, &test_loader, ExecutionMode::Sparse);
        log.line(&format!(
            "BN recalibration ({} batches, sparse): top-1 {:.2} % -> {:.2} %",
            config.recalibrate_batches,
            100.0 * eval.top1(),
            100.0 * eval_r.top1()
        ));
        recalibrated = Some(eval_r.top1());
    }
    let (gmacs_mean, gmacs_std) = eval.gmacs();
    let cost = trained.cost(image_size);
    let skipped_images: Vec<String> = skipped.iter().flat_map(|s| s.list()).map(|e| format!("{}: {}", e.path, e.reason)).collect();
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
        wall_seconds: start.elapsed().as_secs_f64(),
        test_accuracy_recalibrated: recalibrated,
        skipped_images,
        backend: options.backend.clone(),
    };
    write_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    log.file_only(&serde_json::to_string(&summary)?);
    Ok(summary)
}

/// Lets a boxed renderer be handed to the builder.
struct BoxedRenderer(Box<dyn MetricsRenderer>);

impl burn::train::renderer::MetricsRendererTraining for BoxedRenderer {
    fn update_train(&mut self, state: burn::train::renderer::MetricState) {
        self.0.update_train(state)
    }
    fn update_valid(&mut self, state: burn::train::renderer::MetricState) {
        self.0.update_valid(state)
    }
    fn render_train(&mut self, item: burn::train::renderer::TrainingProgress, p: Vec<burn::train::renderer::ProgressType>) {
        self.0.render_train(item, p)
    }
    fn render_valid(&mut self, item: burn::train::renderer::TrainingProgress, p: Vec<burn::train::renderer::ProgressType>) {
        self.0.render_valid(item, p)
    }
    fn on_train_end(&mut self, summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn core::error::Error>> {
        self.0.on_train_end(summary)
    }
}

impl burn::train::renderer::MetricsRendererEvaluation for BoxedRenderer {
    fn update_test(&mut self, name: burn::train::renderer::EvaluationName, state: burn::train::renderer::MetricState) {
        self.0.update_test(name, state)
    }
    fn render_test(&mut self, item: burn::train::renderer::EvaluationProgress, p: Vec<burn::train::renderer::ProgressType>) {
        self.0.render_test(item, p)
    }
}

impl MetricsRenderer for BoxedRenderer {
    fn manual_close(&mut self) {
        self.0.manual_close()
    }
    fn register_metric(&mut self, definition: burn::train::metric::MetricDefinition) {
        self.0.register_metric(definition)
    }
}

/// Loads the three records of checkpoint `epoch` to make sure they are whole before the Learner
/// (which panics on a bad file) gets them.
fn validate_checkpoint<B: AutodiffBackend>(run_dir: &Path, epoch: usize, device: &B::Device) -> Result<()> {
    let dir = run_dir.join("checkpoint");
    let recorder = AtomicRecorder::default();
    let damaged = |file: &str, e: burn::record::RecorderError| {
        anyhow::anyhow!(
            "checkpoint {} cannot be loaded (truncated or damaged): {e}. Remove the files of epoch {epoch} \
             in {} to resume from an earlier epoch",
            dir.join(file).display(),
            dir.display()
        )
    };
    recorder
        .load::<<DmnnClassifier<B> as Module<B>>::Record>(dir.join(format!("model-{epoch}")), device)
        .map_err(|e| damaged(&format!("model-{epoch}.mpk"), e))?;
    Recorder::<B>::load_item::<serde::de::IgnoredAny>(&recorder, &mut dir.join(format!("optim-{epoch}")))
        .map_err(|e| damaged(&format!("optim-{epoch}.mpk"), e))?;
    Recorder::<B>::load_item::<serde::de::IgnoredAny>(&recorder, &mut dir.join(format!("scheduler-{epoch}")))
        .map_err(|e| damaged(&format!("scheduler-{epoch}.mpk"), e))?;
    Ok(())
}

/// Keeps the header and the rows of epochs `<= epoch` of a metrics CSV.
fn truncate_csv(path: &Path, epoch: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, line)| *i == 0 || line.split(',').next().and_then(|e| e.parse::<usize>().ok()).is_some_and(|e| e <= epoch))
        .map(|(_, l)| l)
        .collect();
    write_atomic(path, (kept.join("\n") + "\n").as_bytes())?;
    Ok(())
}

/// Adds to `value` every object key of `defaults` it lacks (recursively): configurations written
/// by an older dmnn gain the settings added since, at their defaults.
fn fill_missing(value: &mut serde_json::Value, defaults: &serde_json::Value) {
    if let (Some(obj), Some(def)) = (value.as_object_mut(), defaults.as_object()) {
        for (k, d) in def {
            match obj.get_mut(k) {
                Some(v) => fill_missing(v, d),
                None => {
                    obj.insert(k.clone(), d.clone());
                }
            }
        }
    }
}

/// The run directory of a finished or stopped run: its configuration.
pub fn read_run_config(dir: &Path) -> Result<TrainConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let defaults = serde_json::to_value(crate::cli::fashion_mnist_defaults())?;
    let top_level: Vec<&str> = ["epochs", "batch_size", "lr", "model", "data", "objective"].to_vec();
    if top_level.iter().any(|k| value.get(k).is_none()) {
        bail!("{} is not a dmnn training configuration (no {})", path.display(), top_level.join("/"));
    }
    // fill only settings, never the model or data themselves
    if let (Some(obj), Some(def)) = (value.as_object_mut(), defaults.as_object()) {
        for (k, d) in def {
            if k == "model" || k == "data" {
                continue;
            }
            match obj.get_mut(k) {
                Some(v) => fill_missing(v, d),
                None => {
                    obj.insert(k.clone(), d.clone());
                }
            }
        }
    }
    serde_json::from_value(value).with_context(|| format!("{} is not a dmnn training configuration", path.display()))
}

/// Loads the inference network of a run directory (`model.mpk`, or the latest checkpoint).
pub fn load_run_model<B: Backend>(dir: &Path, device: &B::Device) -> Result<(TrainConfig, Dmnn<B>)> {
    if !dir.is_dir() {
        bail!("run directory not found: {}", dir.display());
    }
    let config = read_run_config(dir)?;
    let model = config.model.init::<B>(device);
    let recorder = AtomicRecorder::default();
    let final_path = dir.join("model.mpk");
    let model = if final_path.is_file() {
        let record = recorder
            .load(dir.join("model"), device)
            .with_context(|| format!("{} cannot be loaded (truncated or damaged)", final_path.display()))?;
        model.load_record(record)
    } else {
        let epoch = latest_checkpoint(dir).with_context(|| format!("no model.mpk and no checkpoint in {}", dir.display()))?;
        let wrapper = DmnnClassifier::for_inference(model, config.objective.clone());
        let path = dir.join("checkpoint").join(format!("model-{epoch}"));
        let record = recorder
            .load(path.clone(), device)
            .with_context(|| format!("{}.mpk cannot be loaded (truncated or damaged)", path.display()))?;
        wrapper.load_record(record).model
    };
    Ok((config, model))
}

/// Loads starting weights into `model`: a run directory or `.mpk` record of dmnn, or a
/// torchvision-format checkpoint (multi-path models are sliced from the one-path ResNet of the
/// same configuration, see [`dmnn_core::weights::init_from_resnet`]). Returns a note for the log.
pub fn initial_weights<B: Backend>(model: Dmnn<B>, path: &Path, new_head: bool, device: &B::Device) -> Result<(Dmnn<B>, String)> {
    use dmnn_core::weights::{init_from_resnet, load_torchvision, ImportOptions};
    let is_record = path.is_dir() || path.extension().is_some_and(|e| e == "mpk");
    if is_record {
        let file = if path.is_dir() { path.join("model.mpk") } else { path.to_path_buf() };
        let record = AtomicRecorder::default()
            .load(file.with_extension(""), device)
            .with_context(|| format!("{} cannot be loaded as a dmnn model record of '{}'", file.display(), model.config.name))?;
        return Ok((model.load_record(record), format!("initial weights: dmnn record {}", file.display())));
    }
    let options = ImportOptions { allow_new_head: new_head };
    if model.config.num_paths == 1 {
        let name = model.config.name.clone();
        let model = load_torchvision(model, path, options)?;
        return Ok((model, format!("initial weights: {} loaded into {name}", path.display())));
    }
    // a DMNN export of the same model loads directly; a ResNet is sliced into paths
    let direct = dmnn_core::weights::read_checkpoint(path)?.keys().any(|k| k.contains(".paths.") || k.starts_with("controller."));
    if direct {
        let model = load_torchvision(model, path, options)?;
        return Ok((model, format!("initial weights: dmnn export {}", path.display())));
    }
    let resnet = load_torchvision(model.config.source_resnet().init::<B>(device), path, options)?;
    let (model, report) = init_from_resnet(model, &resnet);
    let note = format!(
        "initial weights: {} sliced from the ResNet in {}: per path {:?} channels from the ResNet, {:?} fresh; {} weights of 3x3 convolutions dropped (off-diagonal blocks)",
        model.config.name,
        path.display(),
        report.shared_width,
        report.fresh_width,
        report.dropped_params
    );
    Ok((model, note))
}
