//! PyTorch interop: torchvision ResNet checkpoints in, safetensors with torchvision names out.
//!
//! Keys are translated by a few rules, not a table (see [`torchvision_to_dmnn`]):
//!
//! | torchvision | dmnn |
//! |---|---|
//! | `conv1.*`, `bn1.*`, `fc.*` | the same |
//! | `layer{s}.{b}.{conv,bn}{k}.*` | `layers.{s-1}.{b}.paths.0.{conv,bn}{k}.*` |
//! | `layer{s}.{b}.downsample.0.*` / `.1.*` | `layers.{s-1}.{b}.downsample.conv.*` / `.bn.*` |
//! | batch norm `weight` / `bias` | `gamma` / `beta` |
//! | `*.num_batches_tracked` | dropped (written back as 0 on export) |
//!
//! Linear weights are transposed by burn-store's PyTorch adapters. Multi-path models export
//! their extra paths as `layer{s}.{b}.paths.{i}.*` and controllers as `controller.*`, so an
//! export of any dmnn model imports back bit for bit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use burn::module::ParamId;
use burn_store::{
    BurnToPyTorchAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
    TensorSnapshot,
};
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;

use crate::network::Dmnn;

/// A checkpoint that cannot be used; every message names the file and, where there is one, the
/// key.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file does not exist or cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
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

fn bn_param(p: &str) -> Option<&str> {
    match p {
        "weight" => Some("gamma"),
        "bias" => Some("beta"),
        "running_mean" | "running_var" => Some(p),
        _ => None,
    }
}

fn bn_param_back(p: &str) -> &str {
    match p {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

/// What a torchvision key becomes in dmnn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMapping {
    /// The dmnn key.
    To(String),
    /// A buffer dmnn does not keep (`num_batches_tracked`).
    Dropped,
    /// No rule applies.
    Unknown,
}

/// Translates a torchvision ResNet state-dict key into the dmnn key (see the module docs).
pub fn torchvision_to_dmnn(key: &str) -> KeyMapping {
    let parts: Vec<&str> = key.split('.').collect();
    let last = *parts.last().unwrap_or(&"");
    if last == "num_batches_tracked" {
        return KeyMapping::Dropped;
    }
    let norm = |module: &str, param: &str, prefix: String| -> KeyMapping {
        let is_bn = module.starts_with("bn") || module == "downsample.bn";
        if is_bn {
            match bn_param(param) {
                Some(p) => KeyMapping::To(format!("{prefix}{module}.{p}")),
                None => KeyMapping::Unknown,
            }
        } else if param == "weight" || param == "bias" {
            KeyMapping::To(format!("{prefix}{module}.{param}"))
        } else {
            KeyMapping::Unknown
        }
    };
    match parts.as_slice() {
        ["conv1", "weight"] => KeyMapping::To(key.to_string()),
        ["bn1", p] => norm("bn1", p, String::new()),
        ["fc", p @ ("weight" | "bias")] => KeyMapping::To(format!("fc.{p}")),
        ["controller", "blocks", l, "embed_norm", p] => match bn_param(p) {
            Some(p) => KeyMapping::To(format!("controller.blocks.{l}.embed_norm.{p}")),
            None => KeyMapping::Unknown,
        },
        ["controller", ..] => KeyMapping::To(key.to_string()),
        [layer, block, rest @ ..] if layer.starts_with("layer") => {
            let (Ok(stage), Ok(block)) = (layer["layer".len()..].parse::<usize>(), block.parse::<usize>()) else {
                return KeyMapping::Unknown;
            };
            if stage == 0 {
                return KeyMapping::Unknown;
            }
            let base = format!("layers.{}.{block}.", stage - 1);
            match rest {
                ["downsample", "0", "weight"] => KeyMapping::To(format!("{base}downsample.conv.weight")),
                ["downsample", "1", p] => norm("downsample.bn", p, base),
                ["paths", path, m, p] if path.parse::<usize>().is_ok() && is_path_module(m) => {
                    norm(m, p, format!("{base}paths.{path}."))
                }
                [m, p] if is_path_module(m) => norm(m, p, format!("{base}paths.0.")),
                _ => KeyMapping::Unknown,
            }
        }
        _ => KeyMapping::Unknown,
    }
}

fn is_path_module(m: &str) -> bool {
    matches!(m, "conv1" | "conv2" | "conv3" | "bn1" | "bn2" | "bn3")
}

/// Translates a dmnn key into the exported (torchvision) key; `single_path` models drop the
/// `paths.0` level as torchvision has none.
pub fn dmnn_to_torchvision(key: &str, single_path: bool) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.as_slice() {
        ["bn1", p] => format!("bn1.{}", bn_param_back(p)),
        ["layers", stage, block, rest @ ..] => {
            let stage = stage.parse::<usize>().map(|s| s + 1).unwrap_or(0);
            let base = format!("layer{stage}.{block}");
            match rest {
                ["downsample", "conv", p] => format!("{base}.downsample.0.{p}"),
                ["downsample", "bn", p] => format!("{base}.downsample.1.{}", bn_param_back(p)),
                ["paths", path, m, p] => {
                    let p = if m.starts_with("bn") { bn_param_back(p) } else { p };
                    if single_path && *path == "0" {
                        format!("{base}.{m}.{p}")
                    } else {
                        format!("{base}.paths.{path}.{m}.{p}")
                    }
                }
                _ => key.to_string(),
            }
        }
        _ => key.to_string(),
    }
}

/// Reads every tensor of a PyTorch (`.pth`, zip or legacy pickle) or safetensors file, by
/// content.
pub fn read_checkpoint(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>, WeightsError> {
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
        let mut b = [0u8; 9];
        let n = f.read(&mut b).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
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
        let snaps = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.get_all_snapshots().map(|m| m.clone())));
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
    let is_linear = key == "fc.weight" || (key.starts_with("controller.") && key.ends_with(".weight") && shape.len() == 2);
    if is_linear {
        vec![shape[1], shape[0]]
    } else {
        shape.to_vec()
    }
}

/// Loads a torchvision-format checkpoint (or a dmnn export) into `model`.
///
/// # Errors
/// An unreadable file, a key the model does not have, a missing key or a tensor of the wrong
/// shape, each named; a classifier with another class count unless `allow_new_head`.
pub fn load_torchvision<B: Backend>(mut model: Dmnn<B>, path: &Path, options: ImportOptions) -> Result<Dmnn<B>, WeightsError> {
    let file = read_checkpoint(path)?;
    let expected: BTreeMap<String, Vec<usize>> = model
        .collect(None, None, false)
        .into_iter()
        .map(|s| (s.full_path(), s.shape.to_vec()))
        .collect();
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
            if ours.starts_with("fc.") && options.allow_new_head {
                continue;
            }
            let hint = if ours.starts_with("fc.") {
                " (another number of classes: pass allow_new_head / --new-head to train a fresh classifier)".to_string()
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
        if !provided.contains(key) && !skipped_head {
            return Err(WeightsError::MissingKey { path: path.into(), key: dmnn_to_torchvision(key, single_path) });
        }
    }
    let result = model.apply(renamed, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if let Some(e) = result.errors.first() {
        return Err(WeightsError::NotACheckpoint { path: path.into(), reason: e.to_string() });
    }
    Ok(model)
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

/// Writes `model` as safetensors with torchvision key names (plus `num_batches_tracked = 0` for
/// every batch norm of the backbone, so `torchvision.models.resnet50().load_state_dict` takes a
/// one-path export strictly).
pub fn save_torchvision<B: Backend>(model: &Dmnn<B>, path: &Path) -> Result<(), WeightsError> {
    let single_path = model.config.num_paths == 1;
    let write_err = |reason: String| WeightsError::Write { path: path.into(), reason };
    let mut blobs: BTreeMap<String, Blob> = BTreeMap::new();
    for snapshot in model.collect(None, Some(Box::new(BurnToPyTorchAdapter)), false) {
        let ours = snapshot.full_path();
        let data: TensorData = snapshot.to_data().map_err(|e| write_err(format!("{ours}: {e:?}")))?.convert::<f32>();
        let key = dmnn_to_torchvision(&ours, single_path);
        if key.ends_with(".running_var") && !key.starts_with("controller.") {
            let nbt = key.trim_end_matches("running_var").to_string() + "num_batches_tracked";
            blobs.insert(nbt, Blob { dtype: safetensors::Dtype::I64, shape: vec![], bytes: 0i64.to_le_bytes().to_vec() });
        }
        let shape = data.shape.to_vec();
        blobs.insert(key, Blob { dtype: safetensors::Dtype::F32, shape, bytes: data.into_bytes().to_vec() });
    }
    let metadata: HashMap<String, String> =
        [("format".to_string(), "pt".to_string()), ("dmnn_model".to_string(), model.config.name.clone())].into();
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(blobs.iter().map(|(k, b)| (k.clone(), b)), Some(metadata), &tmp)
        .map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| write_err(e.to_string()))
}

/// A row-major float tensor on the host.
#[derive(Debug, Clone)]
struct HostTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl HostTensor {
    fn of(snapshot: &TensorSnapshot) -> Self {
        let data = snapshot.to_data().expect("tensor data").convert::<f32>();
        Self { shape: data.shape.to_vec(), data: data.to_vec::<f32>().expect("f32 values") }
    }

    /// Strides of the shape.
    fn strides(&self) -> Vec<usize> {
        let mut s = vec![1; self.shape.len()];
        for d in (0..self.shape.len().saturating_sub(1)).rev() {
            s[d] = s[d + 1] * self.shape[d + 1];
        }
        s
    }

    /// Copies `src[src_start0.., src_start1..]` into `self[0..n0, 0..n1]` over the first two
    /// dimensions (the rest whole).
    fn copy_block(&mut self, src: &HostTensor, n: [usize; 2], src_start: [usize; 2], dst_start: [usize; 2]) {
        let inner: usize = self.shape.get(2..).map_or(1, |s| s.iter().product());
        let (ds, ss) = (self.strides(), src.strides());
        for a in 0..n[0] {
            for b in 0..n[1] {
                let d = (dst_start[0] + a) * ds[0] + if self.shape.len() > 1 { (dst_start[1] + b) * ds[1] } else { 0 };
                let s = (src_start[0] + a) * ss[0] + if src.shape.len() > 1 { (src_start[1] + b) * ss[1] } else { 0 };
                self.data[d..d + inner].copy_from_slice(&src.data[s..s + inner]);
            }
        }
    }

    /// Sets `self[r0.., c0..]` (first two dimensions) to zero.
    fn zero_block(&mut self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) {
        let inner: usize = self.shape.get(2..).map_or(1, |s| s.iter().product());
        let st = self.strides();
        for a in rows {
            for b in cols.clone() {
                let d = a * st[0] + b * st[1];
                self.data[d..d + inner].fill(0.0);
            }
        }
    }
}

/// How [`init_from_resnet`] built the multi-path network.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    /// Channels of every path taken from the ResNet (its width divided by the number of paths).
    pub shared_width: Vec<usize>,
    /// Channels of every path that start fresh (path width − shared width), per stage.
    pub fresh_width: Vec<usize>,
    /// Parameters of the ResNet's 3x3 bottleneck convolutions that no path receives (the
    /// off-diagonal blocks): the only part of a same-width ResNet that is lost.
    pub dropped_params: usize,
}

/// Starts a multi-path network from a trained ResNet of the same depth (DESIGN §3 layout).
///
/// Path `i` of a block takes the ResNet's channels `[i·w/N, (i+1)·w/N)`: those output channels of
/// `conv1`, the matching diagonal block of the bottleneck's `conv2` (its off-diagonal blocks are
/// lost), those input columns of the last convolution, and the matching slices of the inner batch
/// norms. The last batch norm of every path gets the ResNet's scale and variance and `1/N` of its
/// shift and mean, so that with every path on, in eval mode, the paths sum to the ResNet's block
/// exactly (a basic block is reproduced exactly; a bottleneck up to the lost off-diagonal blocks).
/// Wider paths (e.g. 2x40d from a 64-wide ResNet) keep their extra channels freshly initialised,
/// with zero weights from them into the shared channels and into the block output, so the network
/// starts as the sliced ResNet and the extra channels grow in training. Stem, shortcuts and
/// classifier are copied; controllers start fresh.
///
/// # Panics
/// If the two configurations differ in anything but the paths and the controller, or the ResNet
/// width is not divisible by the number of paths, or a path is narrower than its share.
pub fn init_from_resnet<B: Backend>(dmnn: Dmnn<B>, resnet: &Dmnn<B>) -> (Dmnn<B>, InitReport) {
    let (d, r) = (&dmnn.config, &resnet.config);
    assert!(
        r.num_paths == 1 && d.block == r.block && d.stage_depths == r.stage_depths && d.stage_widths == r.stage_widths
            && d.stem == r.stem && d.stem_width == r.stem_width && d.in_channels == r.in_channels,
        "init_from_resnet: '{}' (blocks {:?}, widths {:?}) is not a multi-path version of the one-path '{}' (blocks {:?}, widths {:?})",
        d.name, d.stage_depths, d.stage_widths, r.name, r.stage_depths, r.stage_widths
    );
    let n = d.num_paths;
    let mut shared_width = Vec::new();
    let mut fresh_width = Vec::new();
    for (s, &w) in r.stage_widths.iter().enumerate() {
        let p = d.path_width(s);
        assert!(w % n == 0, "init_from_resnet: stage width {w} of '{}' is not divisible by num_paths={n}", r.name);
        assert!(p >= w / n, "init_from_resnet: path width {p} of '{}' is narrower than its share {} of stage {s}", d.name, w / n);
        shared_width.push(w / n);
        fresh_width.push(p - w / n);
    }
    let source: HashMap<String, HostTensor> =
        resnet.collect(None, None, false).iter().map(|s| (s.full_path(), HostTensor::of(s))).collect();
    let mut dropped_params = 0;
    let mut out = Vec::new();
    for snap in dmnn.collect(None, None, false) {
        let key = snap.full_path();
        let mut t = HostTensor::of(&snap);
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["controller", ..] => continue, // fresh
            ["layers", s, b, "paths", i, module, param] => {
                let (stage, i): (usize, usize) = (s.parse().unwrap(), i.parse().unwrap());
                let ps = shared_width[stage];
                let src = &source[&format!("layers.{s}.{b}.paths.0.{module}.{param}")];
                let last = matches!((d.block, *module), (crate::BlockKind::Bottleneck, "conv3" | "bn3") | (crate::BlockKind::Basic, "conv2" | "bn2"));
                match (*module, last) {
                    (m, true) if m.starts_with("bn") => {
                        t = src.clone();
                        if *param == "beta" || *param == "running_mean" {
                            t.data.iter_mut().for_each(|v| *v /= n as f32);
                        }
                    }
                    (_, true) => {
                        // [C_out, p, k, k]: take the input columns of this path, zero the fresh ones
                        let c_out = t.shape[0];
                        t.copy_block(src, [c_out, ps], [0, i * ps], [0, 0]);
                        t.zero_block(0..c_out, ps..t.shape[1]);
                    }
                    (m, false) if m.starts_with("bn") => {
                        t.copy_block(src, [ps, 1], [i * ps, 0], [0, 0]);
                    }
                    ("conv1", false) => {
                        let c_in = t.shape[1];
                        t.copy_block(src, [ps, c_in], [i * ps, 0], [0, 0]);
                    }
                    _ => {
                        // bottleneck conv2 [p, p, 3, 3]: the diagonal block; fresh inputs to
                        // shared outputs start at zero
                        t.copy_block(src, [ps, ps], [i * ps, i * ps], [0, 0]);
                        t.zero_block(0..ps, ps..t.shape[1]);
                        if i == 0 {
                            let w = src.shape[0];
                            dropped_params += (w * w - n * ps * ps) * src.shape[2] * src.shape[3];
                        }
                    }
                }
            }
            _ => {
                t = source.get(&key).unwrap_or_else(|| panic!("init_from_resnet: '{}' has no tensor '{key}'", r.name)).clone();
            }
        }
        let data = TensorData::new(t.data, t.shape);
        out.push(TensorSnapshot::from_data(data, parts.iter().map(|p| p.to_string()).collect(), Vec::new(), ParamId::new()));
    }
    let mut dmnn = dmnn;
    let result = dmnn.apply(out, None, None, false);
    assert!(result.errors.is_empty(), "init_from_resnet: {:?}", result.errors);
    (dmnn, InitReport { shared_width, fresh_width, dropped_params })
}
