//! Reading and writing weight files: PyTorch (`.pth`, zip or legacy pickle) and safetensors in,
//! safetensors with torchvision key names out ([`super::keys`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use burn_store::{
    BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
    TensorSnapshot,
};

use super::keys::{dmnn_to_torchvision, torchvision_to_dmnn, KeyMapping};
use crate::network::Dmnn;

/// A checkpoint that cannot be used; every message names the file and, where there is one, the
/// key.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file does not exist or cannot be read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error, whose message this one includes (not a `source`: it would be printed twice).
        error: std::io::Error,
    },
    /// The file is neither a PyTorch checkpoint nor a safetensors file.
    #[error("{}: not a PyTorch (.pth) or safetensors checkpoint: {reason}", path.display())]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What the readers said.
        reason: String,
    },
    /// A key of the checkpoint has no place in the model.
    #[error("{}: unexpected key '{key}' (the model has no such tensor)", path.display())]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The key, as written in the file.
        key: String,
    },
    /// A tensor of the model is not in the checkpoint.
    #[error("{}: missing key '{key}'", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key, in the file's naming.
        key: String,
    },
    /// A tensor has another shape in the checkpoint than in the model.
    #[error("{}: key '{key}' has shape {found:?} in the checkpoint but {expected:?} in the model{hint}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The key, as written in the file.
        key: String,
        /// Shape in the model (PyTorch layout).
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
        /// A suggestion.
        hint: String,
    },
    /// A network that cannot be sliced from the given ResNet ([`super::init_from_resnet`]).
    #[error("init_from_resnet: '{model}' cannot be sliced from '{resnet}': {reason}")]
    NotASlice {
        /// The multi-path model.
        model: String,
        /// The ResNet.
        resnet: String,
        /// Why not.
        reason: String,
    },
    /// Writing the file failed.
    #[error("{}: {reason}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Options of [`load_torchvision`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Keep the model's own (fresh) classifier when the checkpoint's has another class count.
    pub allow_new_head: bool,
}

/// Reads every tensor of a PyTorch (`.pth`, zip or legacy pickle) or safetensors file, by
/// content.
pub fn read_checkpoint(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>, WeightsError> {
    let head = {
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), error: source })?;
        let mut b = [0u8; 9];
        let n = f.read(&mut b).map_err(|source| WeightsError::Io { path: path.to_path_buf(), error: source })?;
        b[..n].to_vec()
    };
    let not_ckpt = |reason: String| WeightsError::NotACheckpoint { path: path.to_path_buf(), reason };
    // safetensors: a little-endian u64 header length, then the JSON header
    let is_safetensors = head.len() == 9 && head[8] == b'{';
    let is_zip = head.starts_with(b"PK\x03\x04");
    let is_pickle = !is_safetensors && head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    let snapshots = if is_safetensors {
        let mut store = SafetensorsStore::from_file(path);
        match store.get_all_snapshots() {
            Ok(m) => m.clone(),
            Err(e) => return Err(not_ckpt(e.to_string())),
        }
    } else if is_zip || is_pickle {
        let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
        let snaps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.get_all_snapshots().cloned()));
        match snaps {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Err(not_ckpt(e.to_string())),
            Err(_) => return Err(not_ckpt("the PyTorch reader failed on this file".into())),
        }
    } else {
        return Err(not_ckpt("neither a zip (torch.save), a pickle nor a safetensors header".into()));
    };
    if snapshots.is_empty() {
        return Err(not_ckpt("it holds no tensors".into()));
    }
    Ok(snapshots)
}

fn pytorch_shape(key: &str, shape: &[usize]) -> Vec<usize> {
    // Burn's Linear keeps [in, out]; PyTorch [out, in]
    let is_linear =
        key == "fc.weight" || (key.starts_with("controller.") && key.ends_with(".weight") && shape.len() == 2);
    if is_linear {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    }
}

/// Loads a torchvision-format checkpoint (or a dmnn export) into `model` and returns it
/// ([`load_torchvision_into`] keeps the model when the load fails).
///
/// # Errors
/// An unreadable file, a key the model does not have, a missing key or a tensor of the wrong
/// shape, each named; a classifier with another class count unless `allow_new_head`.
pub fn load_torchvision<B: Backend>(
    mut model: Dmnn<B>,
    path: &Path,
    options: ImportOptions,
) -> Result<Dmnn<B>, WeightsError> {
    load_torchvision_into(&mut model, path, options)?;
    Ok(model)
}

/// [`load_torchvision`] in place: on success `model` holds the checkpoint's weights; on an error
/// it is left as it was (the weights are applied to a copy that replaces it only when every
/// tensor loaded).
///
/// # Errors
/// As [`load_torchvision`].
pub fn load_torchvision_into<B: Backend>(
    model: &mut Dmnn<B>,
    path: &Path,
    options: ImportOptions,
) -> Result<(), WeightsError> {
    let file = read_checkpoint(path)?;
    let expected: BTreeMap<String, Vec<usize>> =
        model.collect(None, None, true).into_iter().map(|s| (s.full_path(), s.shape.to_vec())).collect();
    let single_path = model.config.num_paths == 1;
    let mut renamed = Vec::new();
    let mut provided = BTreeSet::new();
    for (key, snapshot) in &file {
        let ours = match torchvision_to_dmnn(key) {
            KeyMapping::Dropped => continue,
            KeyMapping::Unknown => return Err(WeightsError::UnexpectedKey { path: path.into(), key: key.clone() }),
            KeyMapping::To(k) => k,
        };
        let Some(shape) = expected.get(&ours) else {
            return Err(WeightsError::UnexpectedKey { path: path.into(), key: key.clone() });
        };
        let want = pytorch_shape(&ours, shape);
        let found = snapshot.shape.to_vec();
        if want != found {
            // the classifier's first dimension is the class count, its second the feature width
            let other_classes = ours.starts_with("fc.") && want.first() != found.first();
            if other_classes && options.allow_new_head {
                continue;
            }
            let hint = if other_classes {
                " (another number of classes: pass allow_new_head / --new-head to train a fresh classifier)".to_string()
            } else if ours == "fc.weight" {
                format!(
                    " (the checkpoint's classifier reads {} features, this model's {}: a network of another depth \
                     or width, not another number of classes)",
                    found.get(1).copied().unwrap_or(0),
                    want.get(1).copied().unwrap_or(0)
                )
            } else {
                String::new()
            };
            return Err(WeightsError::Shape { path: path.into(), key: key.clone(), expected: want, found, hint });
        }
        provided.insert(ours.clone());
        let path_stack: Vec<String> = ours.split('.').map(String::from).collect();
        renamed.push(TensorSnapshot::from_closure(
            snapshot.clone_data_fn(),
            snapshot.dtype,
            snapshot.shape.clone(),
            path_stack,
            Vec::new(),
            ParamId::new(),
        ));
    }
    for key in expected.keys() {
        let skipped_head = key.starts_with("fc.") && options.allow_new_head;
        // the auxiliary heads are training-only: a model built with them keeps their fresh values
        if !provided.contains(key) && !skipped_head && !is_aux_head(key) {
            return Err(WeightsError::MissingKey { path: path.into(), key: dmnn_to_torchvision(key, single_path) });
        }
    }
    let mut loaded = model.clone();
    let result = loaded.apply(renamed, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if let Some(e) = result.errors.first() {
        return Err(WeightsError::NotACheckpoint { path: path.into(), reason: e.to_string() });
    }
    *model = loaded;
    Ok(())
}

struct Blob {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl safetensors::View for &Blob {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Whether a dmnn parameter path is a controller's auxiliary category head: trained, never used
/// at inference (DESIGN §4), so neither exported nor required on import.
fn is_aux_head(ours: &str) -> bool {
    ours.starts_with("controller.") && ours.contains(".aux_head.")
}

/// Writes `model` as safetensors with torchvision key names (plus `num_batches_tracked = 0` for
/// every batch norm of the backbone, so `torchvision.models.resnet50().load_state_dict` takes a
/// one-path export strictly). The inference network only: the auxiliary category heads are
/// left out. The file is a function of the weights: two exports of one model are byte-identical
/// (tensors in key order, one metadata entry).
pub fn save_torchvision<B: Backend>(model: &Dmnn<B>, path: &Path) -> Result<(), WeightsError> {
    let single_path = model.config.num_paths == 1;
    let write_err = |reason: String| WeightsError::Write { path: path.into(), reason };
    let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
    for snapshot in model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true) {
        let ours = snapshot.full_path();
        if is_aux_head(&ours) {
            continue;
        }
        let data: TensorData = snapshot.to_data().map_err(|e| write_err(format!("{ours}: {e:?}")))?.convert::<f32>();
        let key = dmnn_to_torchvision(&ours, single_path);
        if key.ends_with(".running_var") && !key.starts_with("controller.") {
            let nbt = key.trim_end_matches("running_var").to_string() + "num_batches_tracked";
            blobs.insert(
                nbt,
                Blob { dtype: safetensors::Dtype::I64, shape: vec![], bytes: 0i64.to_le_bytes().to_vec() },
            );
        }
        let shape = data.shape.to_vec();
        blobs.insert(key, Blob { dtype: safetensors::Dtype::F32, shape, bytes: data.into_bytes().to_vec() });
    }
    // one entry: safetensors writes its metadata map in the map's (random) iteration order
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(blobs.iter().map(|(k, b)| (k.clone(), b)), Some(metadata), &tmp)
        .map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
}
