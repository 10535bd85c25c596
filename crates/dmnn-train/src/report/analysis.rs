//! What a report needs from a trained network, measured once and cached in the run directory:
//! every test image's label, prediction, executed MACs and open paths per block, and the
//! run-time threshold sweep.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use dmnn_core::gate::GateOptions;
use dmnn_core::{Dmnn, ExecutionMode, ForwardOptions};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::data::{ImageSource, Split};
use crate::error::{Result, TrainError};
use crate::run::{write_atomic, RunDir};

/// The thresholds of the run-time sweep of a dynamic network (0 opens every path; the default,
/// 0.5, is the run's own operating point).
pub const SWEEP_THRESHOLDS: [f64; 6] = [0.0, 0.3, 0.5, 0.7, 0.85, 0.95];

/// Bumped when [`RunAnalysis`] changes meaning, so older caches are recomputed.
pub const CACHE_VERSION: u32 = 1;

/// Every evaluated test image, in dataset order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageRecords {
    /// Index of the image in the test split.
    pub index: Vec<u32>,
    /// Its label.
    pub label: Vec<u32>,
    /// The network's top-1 class.
    pub pred: Vec<u32>,
    /// Executed MACs.
    pub macs: Vec<f64>,
    /// Open paths of every gated block, `open[image][block]` (empty for a static network).
    pub open: Vec<Vec<u8>>,
}

impl ImageRecords {
    /// Images evaluated.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no image was evaluated.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Top-1 accuracy in [0, 1].
    pub fn top1(&self) -> f64 {
        let correct = self.label.iter().zip(&self.pred).filter(|(l, p)| l == p).count();
        correct as f64 / self.len().max(1) as f64
    }

    /// Mean and standard deviation of the executed GMACs per image.
    pub fn gmacs(&self) -> (f64, f64) {
        let n = self.len().max(1) as f64;
        let mean = self.macs.iter().sum::<f64>() / n;
        let var = self.macs.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / n;
        (mean / 1e9, var.sqrt() / 1e9)
    }
}

/// One operating point of the threshold sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The inference threshold.
    pub threshold: f64,
    /// Top-1 accuracy in [0, 1].
    pub top1: f64,
    /// Mean executed GMACs per image.
    pub gmacs_mean: f64,
    /// Their standard deviation over the images.
    pub gmacs_std: f64,
}

/// What a report reads of one run, cached as `report/analysis.json` in the run directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAnalysis {
    /// [`CACHE_VERSION`] of the writer.
    pub version: u32,
    /// SHA-256 of the network's record: the cache belongs to these weights only.
    pub model_sha256: String,
    /// Paths per gated block.
    pub num_paths: usize,
    /// GMACs of the network with every path on.
    pub gmacs_full: f64,
    /// The test images at the default threshold (the run's own evaluation).
    pub images: ImageRecords,
    /// The threshold sweep (dynamic networks; empty for static ones).
    pub sweep: Vec<SweepPoint>,
}

/// The network record a run's analysis is made from: `model.mpk`.
fn model_file(dir: &RunDir) -> PathBuf {
    dir.model().with_extension("mpk")
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// The cache file of a run's analysis.
pub fn analysis_file(dir: &RunDir) -> PathBuf {
    dir.root().join("report").join("analysis.json")
}

/// The run's analysis: read from its cache when that belongs to the run's current weights,
/// measured (and cached) otherwise. `progress` hears what is being measured.
///
/// # Errors
/// A run without a final network, data that cannot be opened, a cache that cannot be written.
pub fn analyse_run<B: Backend>(dir: &RunDir, device: &B::Device, progress: &dyn Fn(&str)) -> Result<RunAnalysis> {
    let model_path = model_file(dir);
    if !model_path.is_file() {
        return Err(TrainError::NotARun {
            path: dir.root().to_path_buf(),
            reason: "it has no final network (model.mpk): the run has not finished".into(),
        });
    }
    let digest = sha256_file(&model_path)?;
    let cache = analysis_file(dir);
    if let Ok(text) = std::fs::read_to_string(&cache) {
        match serde_json::from_str::<RunAnalysis>(&text) {
            Ok(a) if a.version == CACHE_VERSION && a.model_sha256 == digest => return Ok(a),
            Ok(_) => {
                progress(&format!("{}: the weights changed since it was cached; measuring again", cache.display()))
            }
            Err(e) => progress(&format!("{}: unreadable ({e}); measuring again", cache.display())),
        }
    }
    let (config, model) = dir.load_model::<B>(device)?;
    let source = config.data.open(Split::Test, config.model.image_size)?;
    crate::train::check_images(&config, source.as_ref(), "test")?;
    let batches =
        Batches { source: source.as_ref(), batch_size: config.eval_batch_size, max_batches: config.max_eval_batches };
    progress(&format!("evaluating {} on {} images (sparse)", config.model.name, batches.count()));
    let images = evaluate_images(&model, &batches, GateOptions::default(), device);
    if images.is_empty() {
        return Err(TrainError::Other(format!("no image of {} could be read: nothing to report", source.describe())));
    }
    let mut sweep = Vec::new();
    if config.model.is_dynamic() {
        for &threshold in &SWEEP_THRESHOLDS {
            let point = if threshold == GateOptions::default().threshold() {
                &images
            } else {
                progress(&format!("threshold {threshold}"));
                let gate =
                    GateOptions::default().with_threshold(threshold).map_err(|e| TrainError::Config(e.to_string()))?;
                &evaluate_images(&model, &batches, gate, device)
            };
            let (gmacs_mean, gmacs_std) = point.gmacs();
            sweep.push(SweepPoint { threshold, top1: point.top1(), gmacs_mean, gmacs_std });
        }
    }
    let [_, h, w] = source.image_shape();
    let analysis = RunAnalysis {
        version: CACHE_VERSION,
        model_sha256: digest,
        num_paths: config.model.num_paths,
        gmacs_full: model.cost([h, w]).macs_full() as f64 / 1e9,
        images,
        sweep,
    };
    let parent = cache.parent().expect("the cache lies in report/");
    std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    write_atomic(&cache, serde_json::to_string(&analysis)?.as_bytes()).map_err(|e| TrainError::io(&cache, e))?;
    Ok(analysis)
}

/// The test images in evaluation batches, in dataset order (the run's evaluation batch size and
/// batch limit, so the numbers are those of the run's own test pass).
pub(crate) struct Batches<'a> {
    pub source: &'a dyn ImageSource,
    pub batch_size: usize,
    pub max_batches: Option<usize>,
}

impl Batches<'_> {
    /// Images the batches hold.
    fn count(&self) -> usize {
        let n = self.source.len();
        self.max_batches.map_or(n, |b| n.min(b * self.batch_size))
    }

    /// The indices of every batch.
    fn chunks(&self) -> Vec<Vec<usize>> {
        let all: Vec<usize> = (0..self.count()).collect();
        all.chunks(self.batch_size.max(1)).map(<[usize]>::to_vec).collect()
    }

    /// Batch `indices` as one tensor with the images' `(index, label)`, without the images
    /// that do not load.
    fn load<B: Backend>(&self, indices: &[usize], device: &B::Device) -> Option<LoadedBatch<B>> {
        let shape = self.source.image_shape();
        let per = shape.iter().product::<usize>();
        let loaded: Vec<(usize, usize, Vec<f32>)> = indices
            .par_iter()
            .filter_map(|&i| {
                let mut out = vec![0f32; per];
                self.source.load(i, None, &mut out).ok().map(|label| (i, label, out))
            })
            .collect();
        if loaded.is_empty() {
            return None;
        }
        let kept: Vec<(usize, usize)> = loaded.iter().map(|(i, l, _)| (*i, *l)).collect();
        let pixels: Vec<f32> = loaded.into_iter().flat_map(|(_, _, p)| p).collect();
        let data = TensorData::new(pixels, [kept.len(), shape[0], shape[1], shape[2]]);
        Some((kept, Tensor::from_data(data, device)))
    }
}

/// A batch of test images with the `(index, label)` of each.
type LoadedBatch<B> = (Vec<(usize, usize)>, Tensor<B, 4>);

/// Runs the network in sparse mode over `batches` and records every image.
fn evaluate_images<B: Backend>(
    model: &Dmnn<B>,
    batches: &Batches<'_>,
    gate: GateOptions,
    device: &B::Device,
) -> ImageRecords {
    let mut records = ImageRecords::default();
    for chunk in batches.chunks() {
        let Some((samples, images)) = batches.load::<B>(&chunk, device) else { continue };
        let out = model.forward_with(images, ForwardOptions::mode(ExecutionMode::Sparse).with_gate_options(gate));
        let classes = out.logits.dims()[1];
        let logits = out.logits.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
        let macs = out.macs.into_data().convert::<f64>().to_vec::<f64>().unwrap_or_default();
        let gates: Vec<(usize, Vec<f32>)> = out
            .gates
            .into_iter()
            .map(|g| (g.dims()[1], g.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()))
            .collect();
        for (k, &(index, label)) in samples.iter().enumerate() {
            let row = &logits[k * classes..(k + 1) * classes];
            // a NaN logit never wins: the prediction is the largest finite one (or class 0)
            let pred = row
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .fold(None, |best: Option<(usize, f32)>, (c, &v)| match best {
                    Some((_, b)) if b >= v => best,
                    _ => Some((c, v)),
                })
                .map_or(0, |(c, _)| c);
            records.index.push(index as u32);
            records.label.push(label as u32);
            records.pred.push(pred as u32);
            records.macs.push(macs[k]);
            records.open.push(
                gates.iter().map(|(n, g)| g[k * n..(k + 1) * n].iter().filter(|&&v| v > 0.5).count() as u8).collect(),
            );
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_summarise_accuracy_and_gmacs() {
        let r = ImageRecords {
            index: vec![0, 1, 2, 3],
            label: vec![1, 2, 3, 4],
            pred: vec![1, 2, 0, 4],
            macs: vec![1e9, 3e9, 1e9, 3e9],
            open: vec![],
        };
        assert_eq!(r.top1(), 0.75);
        assert_eq!(r.gmacs(), (2.0, 1.0));
    }
}
