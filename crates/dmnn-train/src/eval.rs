//! Evaluation of a network on a loader, BN recalibration, and `dmnn eval` of a run directory.

use std::path::PathBuf;

use burn::data::dataloader::DataLoader;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use dmnn_core::gate::GateOptions;
use dmnn_core::{CostReport, Dmnn, ExecutionMode, ForwardOptions, ObjectiveConfig};

use crate::data::{EpochLoader, LoaderConfig, Split};
use crate::error::{Result, TrainError};
use crate::init::initial_weights;
use crate::metrics::EvalSummary;
use crate::run::RunDir;
use crate::step::DmnnClassifier;

/// Evaluates a network on a loader with `options` (mode `Auto` is sparse without autodiff).
pub fn evaluate<B: Backend>(model: &Dmnn<B>, loader: &EpochLoader<B>, options: ForwardOptions<B>) -> EvalSummary {
    let classifier = DmnnClassifier::for_inference(model.clone(), ObjectiveConfig::new());
    let mut summary = EvalSummary::default();
    for batch in loader.iter() {
        let out = model.forward_with(batch.images, options.clone());
        summary.add(&burn::train::metric::ItemLazy::sync(classifier.output_of(out, batch.targets)));
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

/// What `dmnn eval` is asked.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The run directory.
    pub run: PathBuf,
    /// Another copy of the run's dataset.
    pub data: Option<PathBuf>,
    /// Label file of a flat ImageNet `val/` folder.
    pub val_labels: Option<PathBuf>,
    /// wnid of every ILSVRC2012_ID, for the devkit ground truth.
    pub val_synsets: Option<PathBuf>,
    /// Execution mode.
    pub mode: ExecutionMode,
    /// The inference threshold.
    pub gate: GateOptions,
    /// Batch size.
    pub batch_size: usize,
    /// Evaluate on at most this many batches.
    pub max_batches: Option<usize>,
    /// Recalibrate batch norms on this many training batches first (dynamic models).
    pub recalibrate_batches: usize,
    /// Evaluate these weights instead of the run's.
    pub initial_weights: Option<PathBuf>,
}

impl EvalRequest {
    /// Checks the values that need no run directory.
    ///
    /// # Errors
    /// The first value out of its domain, named.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(TrainError::Config("batch_size=0 must be positive".into()));
        }
        if self.max_batches == Some(0) {
            return Err(TrainError::Config("max_batches=0 must be positive (leave it out for every batch)".into()));
        }
        Ok(())
    }
}

/// What `dmnn eval` measured.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// The model's name.
    pub model: String,
    /// The test split, described.
    pub data: String,
    /// The evaluation.
    pub summary: EvalSummary,
    /// The evaluation after BN recalibration, when asked.
    pub recalibrated: Option<EvalSummary>,
    /// The analytic cost at the data's image size.
    pub cost: CostReport,
    /// Images that could not be decoded.
    pub skipped: usize,
    /// A note on the weights used, when they were not the run's.
    pub weights_note: Option<String>,
}

/// Evaluates a run directory on its test split (`dmnn eval`).
///
/// # Errors
/// A run directory, dataset or weight file that cannot be used.
pub fn eval_run<B: AutodiffBackend>(request: &EvalRequest, device: B::Device) -> Result<EvalReport> {
    request.validate()?;
    let (config, model) = RunDir::new(&request.run).load_model::<B::InnerBackend>(&device)?;
    if request.recalibrate_batches > 0 && !config.model.is_dynamic() {
        return Err(TrainError::Config(format!(
            "recalibrate_batches={}: model '{}' is static (no gates), so there is nothing to recalibrate; \
             its batch norms already saw every sample",
            request.recalibrate_batches, config.model.name
        )));
    }
    let (model, weights_note) = match &request.initial_weights {
        Some(path) => {
            let (m, note) = initial_weights(model, path, false, &device)?;
            (m, Some(note))
        }
        None => (model, None),
    };
    let mut data = config.data.clone();
    if let Some(p) = &request.data {
        data.set_path(p.clone());
    }
    if let crate::config::DataConfig::ImageNet { val_labels, val_synsets, .. } = &mut data {
        if request.val_labels.is_some() {
            val_labels.clone_from(&request.val_labels);
        }
        if request.val_synsets.is_some() {
            val_synsets.clone_from(&request.val_synsets);
        }
    }
    let source = data.open(Split::Test, config.model.image_size)?;
    if source.num_classes() != config.model.num_classes {
        return Err(TrainError::Config(format!(
            "data at {} has {} classes but the model has {}",
            data.path().display(),
            source.num_classes(),
            config.model.num_classes
        )));
    }
    crate::train::check_images(&config, source.as_ref(), "test")?;
    let mut loader_config = LoaderConfig::eval(request.batch_size);
    loader_config.max_batches = request.max_batches;
    let loader = EpochLoader::<B::InnerBackend>::new(source.clone(), loader_config, device.clone());
    let options = ForwardOptions::mode(request.mode).with_gate_options(request.gate);
    let summary = evaluate(&model, &loader, options.clone());
    if summary.samples == 0 {
        return Err(TrainError::Other(format!(
            "no image of {} could be read: nothing was evaluated",
            source.describe()
        )));
    }
    let recalibrated = if request.recalibrate_batches > 0 && config.model.is_dynamic() {
        let train_source = data.open(Split::Train, config.model.image_size)?;
        let calib = EpochLoader::<B>::new(train_source, LoaderConfig::train(config.batch_size, config.seed), device);
        let model = recalibrate_bn(model.clone().train::<B>(), &calib, request.recalibrate_batches).valid();
        Some(evaluate(&model, &loader, options))
    } else {
        None
    };
    let [_, h, w] = source.image_shape();
    Ok(EvalReport {
        model: config.model.name.clone(),
        data: source.describe(),
        summary,
        recalibrated,
        cost: model.cost([h, w]),
        skipped: loader.skipped().list().len(),
        weights_note,
    })
}
