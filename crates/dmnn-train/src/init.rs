//! Starting weights: a dmnn record, a torchvision checkpoint (multi-path models sliced from the
//! one-path ResNet of the same configuration), and `dmnn init-from-torchvision`.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::Module;
use burn::record::Recorder;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use dmnn_core::weights::{init_from_resnet, load_torchvision, read_checkpoint, ImportOptions};
use dmnn_core::{Dmnn, DmnnConfig, ExecutionMode, ForwardOptions};

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::run::{write_atomic, AtomicRecorder, RunDir};

/// Loads starting weights into `model`: a run directory or `.mpk` record of dmnn, or a
/// torchvision-format checkpoint (multi-path models are sliced from the one-path ResNet of the
/// same configuration, see [`dmnn_core::weights::init_from_resnet`]). Returns a note for the log.
///
/// # Errors
/// A file that cannot be read or does not fit the model, named.
pub fn initial_weights<B: Backend>(
    model: Dmnn<B>,
    path: &Path,
    new_head: bool,
    device: &B::Device,
) -> Result<(Dmnn<B>, String)> {
    let is_record = path.is_dir() || path.extension().is_some_and(|e| e == "mpk");
    if is_record {
        let file = if path.is_dir() { path.join("model.mpk") } else { path.to_path_buf() };
        let record = AtomicRecorder.load(file.with_extension(""), device).map_err(|e| {
            TrainError::Other(format!(
                "{} cannot be loaded as a dmnn model record of '{}': {e}",
                file.display(),
                model.config.name
            ))
        })?;
        let model = crate::run::load_record_checked(model, record, &file)?;
        return Ok((model, format!("initial weights: dmnn record {}", file.display())));
    }
    let options = ImportOptions { allow_new_head: new_head };
    if model.config.num_paths == 1 {
        let name = model.config.name.clone();
        let model = load_torchvision(model, path, options)?;
        return Ok((model, format!("initial weights: {} loaded into {name}", path.display())));
    }
    // a DMNN export of the same model loads directly; a ResNet is sliced into paths
    let direct = read_checkpoint(path)?.keys().any(|k| k.contains(".paths.") || k.starts_with("controller."));
    if direct {
        let model = load_torchvision(model, path, options)?;
        return Ok((model, format!("initial weights: dmnn export {}", path.display())));
    }
    let resnet = load_torchvision(model.config.source_resnet().try_init::<B>(device)?, path, options)?;
    let (model, report) = init_from_resnet(model, &resnet)?;
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

/// What `dmnn init-from-torchvision` did.
#[derive(Debug, Clone)]
pub struct InitFromTorchvision {
    /// How the weights were loaded.
    pub note: String,
    /// For a multi-path model, how far its all-paths-on network starts from the ResNet on four
    /// random images: the relative logit difference and on how many of them the top-1 agrees.
    pub parity: Option<(f32, i64)>,
    /// The run directory written.
    pub out: PathBuf,
}

/// Builds preset `model` from torchvision weights and writes it as a run directory
/// (`config.json`, `model.mpk`) that `dmnn eval`, `--initial-weights` and `export` read.
///
/// # Errors
/// An unknown preset, weights that do not fit, a directory that cannot be written.
pub fn init_from_torchvision(
    weights: &Path,
    model: &str,
    num_classes: Option<usize>,
    new_head: bool,
    out: &Path,
) -> Result<InitFromTorchvision> {
    let mut model_config = DmnnConfig::preset(model).map_err(dmnn_core::ConfigError::from)?;
    if let Some(k) = num_classes {
        model_config.num_classes = k;
    }
    let device = Default::default();
    let network = model_config.try_init::<Flex>(&device)?;
    let (network, note) = initial_weights(network, weights, new_head, &device)?;
    let parity = if model_config.is_dynamic() {
        let resnet = load_torchvision(
            model_config.source_resnet().try_init::<Flex>(&device)?,
            weights,
            ImportOptions { allow_new_head: new_head },
        )?;
        Some(all_paths_on_vs_resnet(&network, &resnet, &model_config, &device))
    } else {
        None
    };
    let imagenet = model_config.in_channels == 3 && model_config.image_size >= 64;
    let mut config = if imagenet { TrainConfig::imagenet(PathBuf::new()) } else { TrainConfig::fashion_mnist() };
    config.model = model_config;
    config.initial_weights = Some(weights.to_path_buf());
    config.new_head = new_head;
    let dir = RunDir::new(out);
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    write_atomic(&dir.config(), serde_json::to_string_pretty(&config)?.as_bytes())
        .map_err(|e| TrainError::io(&dir.config(), e))?;
    Recorder::<Flex>::record(&AtomicRecorder, network.into_record(), dir.model())
        .map_err(|e| TrainError::Other(format!("saving {}: {e}", dir.model().with_extension("mpk").display())))?;
    Ok(InitFromTorchvision { note, parity, out: out.to_path_buf() })
}

/// The all-paths-on network against the ResNet on the same four random images.
fn all_paths_on_vs_resnet(
    model: &Dmnn<Flex>,
    resnet: &Dmnn<Flex>,
    config: &DmnnConfig,
    device: &<Flex as burn::tensor::backend::BackendTypes>::Device,
) -> (f32, i64) {
    let size = config.image_size;
    let x = Tensor::<Flex, 4>::random([4, config.in_channels, size, size], Distribution::Normal(0.0, 1.0), device);
    let gates = (0..model.num_blocks()).map(|_| Tensor::<Flex, 2>::ones([4, config.num_paths], device)).collect();
    let a = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates)).logits;
    let b = resnet.forward(x).logits;
    let rel =
        ((a.clone() - b.clone()).powi_scalar(2).sum().sqrt() / b.clone().powi_scalar(2).sum().sqrt()).into_scalar();
    let agree = a.argmax(1).equal(b.argmax(1)).int().sum().into_scalar();
    (rel, agree as i64)
}
