//! `dmnn bench`: does skipping MACs save time? Sparse against Masked against the static network,
//! at random gate rates, plus training throughput and ResNet-50 references.
//!
//! Every timing is the median (and minimum) of several runs after warm-up, with the device
//! synchronised around each run. Before timing, the benchmark checks that Sparse and Masked give
//! the same logits (no autodiff, within 1e-4). Rows (also written as CSV):
//! `model,image_size,batch,rate,mode,ms_median,ms_min,macs_ratio,efficiency`, where `mode` is
//! `full` (the static all-paths-on network), `masked`, `sparse` or `train` (one optimiser step),
//! and `efficiency = (1 − t_sparse/t_full) / (1 − macs/macs_full)` on sparse rows.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::ToElement;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use dmnn_core::{Dmnn, DmnnConfig, ExecutionMode, ForwardOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One row of the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// Model preset.
    pub model: String,
    /// Input side.
    pub image_size: usize,
    /// Batch size.
    pub batch: usize,
    /// Gate rate the gates were drawn at (1 for static rows).
    pub rate: f64,
    /// `full`, `masked`, `sparse` or `train`.
    pub mode: String,
    /// Median time per run, ms.
    pub ms_median: f64,
    /// Fastest run, ms.
    pub ms_min: f64,
    /// Executed MACs as a share of the all-paths-on network.
    pub macs_ratio: f64,
    /// `(1 − t_sparse/t_full) / (1 − macs_ratio)` on sparse rows with `macs_ratio < 1`.
    pub efficiency: Option<f64>,
    /// Peak resident memory of the run, MiB (CPU only, where Linux reports it).
    pub peak_mib: Option<f64>,
}

/// The CSV header.
pub const CSV_HEADER: &str = "model,image_size,batch,rate,mode,ms_median,ms_min,macs_ratio,efficiency";

impl BenchRow {
    /// The row as CSV.
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{:.3},{:.3},{:.4},{}",
            self.model,
            self.image_size,
            self.batch,
            self.rate,
            self.mode,
            self.ms_median,
            self.ms_min,
            self.macs_ratio,
            self.efficiency.map(|e| format!("{e:.3}")).unwrap_or_default()
        )
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Inference cases: `(preset, image size, batch sizes)`.
    pub cases: Vec<(String, usize, Vec<usize>)>,
    /// Gate rates.
    pub rates: Vec<f64>,
    /// Timed runs per measurement (after warm-up).
    pub reps: usize,
    /// Warm-up runs.
    pub warmup: usize,
    /// Training-throughput cases: `(preset, image size, batch)`.
    pub train_cases: Vec<(String, usize, usize)>,
    /// Static references: `(preset, image size, batch sizes)`.
    pub reference_cases: Vec<(String, usize, Vec<usize>)>,
    /// Seed of the random gates.
    pub seed: u64,
}

impl BenchConfig {
    /// The full benchmark of issue 4.
    pub fn full() -> Self {
        Self {
            cases: vec![("dmnn50".into(), 224, vec![1, 16]), ("dmnn_small".into(), 28, vec![1, 256])],
            rates: vec![0.25, 0.5, 0.75, 1.0],
            reps: 7,
            warmup: 1,
            train_cases: vec![("dmnn50".into(), 224, 16), ("resnet50".into(), 224, 16)],
            reference_cases: vec![("resnet50".into(), 224, vec![1, 16])],
            seed: 7,
        }
    }

    /// The small preset only (seconds on a CPU).
    pub fn quick() -> Self {
        Self {
            cases: vec![("dmnn_small".into(), 28, vec![1, 256])],
            rates: vec![0.25, 0.5, 0.75, 1.0],
            reps: 15,
            warmup: 2,
            train_cases: vec![],
            reference_cases: vec![],
            seed: 7,
        }
    }
}

/// Peak resident set size since the last reset, MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak resident set size (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn time<F: FnMut()>(warmup: usize, reps: usize, mut f: F) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times[times.len() / 2], times[0])
}

fn random_gates<B: Backend>(model: &Dmnn<B>, batch: usize, rate: f64, seed: u64, device: &B::Device) -> Vec<Tensor<B, 2>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = model.config.num_paths;
    (0..model.num_blocks())
        .map(|_| {
            let v: Vec<f32> = (0..batch * n).map(|_| if rng.random_bool(rate) { 1.0 } else { 0.0 }).collect();
            Tensor::from_data(TensorData::new(v, [batch, n]), device)
        })
        .collect()
}

fn model_for<B: Backend>(name: &str, device: &B::Device) -> Result<(DmnnConfig, Dmnn<B>)> {
    let config = DmnnConfig::preset(name)?;
    let model = config.init::<B>(device);
    Ok((config, model))
}

fn images<B: Backend>(config: &DmnnConfig, size: usize, batch: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::random([batch, config.in_channels, size, size], Distribution::Normal(0.0, 1.0), device)
}

/// Runs the benchmark on backend `B`; `progress` receives a line per measurement.
pub fn run_bench<B: AutodiffBackend>(config: &BenchConfig, device: &B::Device, mut progress: impl FnMut(&BenchRow)) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let sync = |d: &B::Device| {
        let _ = B::InnerBackend::sync(d);
    };
    for (name, size, batches) in &config.cases {
        let (cfg, model) = model_for::<B::InnerBackend>(name, device)?;
        for &batch in batches {
            let x = images::<B::InnerBackend>(&cfg, *size, batch, device);
            // materialise the lazily initialised weights before cloning the static twin
            let _ = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked)).logits.into_data();
            let mut static_model = model.clone();
            static_model.controller = None;
            // correctness first
            for &rate in &config.rates {
                let gates = random_gates(&model, batch, rate, config.seed, device);
                let masked = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked).with_gates(gates.clone()));
                let sparse = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates));
                let diff = (masked.logits - sparse.logits).abs().max().into_scalar().to_f64();
                if !(diff <= 1e-4) {
                    bail!("{name} batch {batch} rate {rate}: sparse and masked logits differ by {diff} (> 1e-4)");
                }
            }
            // every measurement of this case runs once per round, rounds interleaved, so that
            // drift of the machine (another process, thermal) hits all modes alike
            let mut cases: Vec<(f64, &str, Option<Vec<Tensor<B::InnerBackend, 2>>>, f64)> = vec![(1.0, "full", None, 1.0)];
            for &rate in &config.rates {
                let gates = random_gates(&model, batch, rate, config.seed, device);
                let probe = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates.clone()));
                let macs_ratio = probe.macs_ratio().mean().into_scalar().to_f64();
                cases.push((rate, "masked", Some(gates.clone()), macs_ratio));
                cases.push((rate, "sparse", Some(gates), macs_ratio));
            }
            let run = |case: &(f64, &str, Option<Vec<Tensor<B::InnerBackend, 2>>>, f64)| {
                let out = match (&case.2, case.1) {
                    (None, _) => static_model.forward(x.clone()),
                    (Some(g), "masked") => model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked).with_gates(g.clone())),
                    (Some(g), _) => model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(g.clone())),
                };
                let _ = out.logits.into_data();
                sync(device);
            };
            let mut peaks = Vec::new();
            for case in &cases {
                let tracked = reset_peak_rss();
                for _ in 0..config.warmup.max(1) {
                    run(case);
                }
                peaks.push(if tracked { peak_rss_mib() } else { None });
            }
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
            for _ in 0..config.reps.max(1) {
                for (t, case) in times.iter_mut().zip(&cases) {
                    let start = Instant::now();
                    run(case);
                    t.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            let stats: Vec<(f64, f64)> = times
                .into_iter()
                .map(|mut t| {
                    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    (t[t.len() / 2], t[0])
                })
                .collect();
            let full_ms = stats[0].0;
            for ((case, (ms, min)), peak) in cases.iter().zip(stats).zip(peaks) {
                let (rate, mode, _, macs_ratio) = (case.0, case.1, &case.2, case.3);
                let efficiency = (mode == "sparse" && macs_ratio < 0.999).then(|| (1.0 - ms / full_ms) / (1.0 - macs_ratio));
                let row = BenchRow {
                    model: name.clone(),
                    image_size: *size,
                    batch,
                    rate,
                    mode: mode.to_string(),
                    ms_median: ms,
                    ms_min: min,
                    macs_ratio,
                    efficiency,
                    peak_mib: peak,
                };
                progress(&row);
                rows.push(row);
            }
        }
    }
    for (name, size, batches) in &config.reference_cases {
        let (cfg, model) = model_for::<B::InnerBackend>(name, device)?;
        for &batch in batches {
            let x = images::<B::InnerBackend>(&cfg, *size, batch, device);
            let tracked = reset_peak_rss();
            let (ms, min) = time(config.warmup, config.reps, || {
                let _ = model.forward(x.clone()).logits.into_data();
                sync(device);
            });
            let row = BenchRow { model: name.clone(), image_size: *size, batch, rate: 1.0, mode: "full".into(), ms_median: ms, ms_min: min, macs_ratio: 1.0, efficiency: None, peak_mib: if tracked { peak_rss_mib() } else { None } };
            progress(&row);
            rows.push(row);
        }
    }
    for (name, size, batch) in &config.train_cases {
        let (cfg, mut model) = model_for::<B>(name, device)?;
        let mut optim = SgdConfig::new().init::<B, Dmnn<B>>();
        let x = images::<B>(&cfg, *size, *batch, device);
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new((0..*batch as i64).map(|i| i % cfg.num_classes as i64).collect(), [*batch]), device);
        let ce = CrossEntropyLossConfig::new().init(device);
        let mut ratio = 1.0;
        let (ms, min) = time(1, config.reps.min(3), || {
            let out = model.forward(x.clone());
            ratio = out.macs_ratio().mean().into_scalar().to_f64();
            let loss = ce.forward(out.logits, y.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model.clone(), grads);
            let _ = model.fc.weight.val().sum().into_data();
            sync(device);
        });
        let row = BenchRow { model: name.clone(), image_size: *size, batch: *batch, rate: 1.0, mode: "train".into(), ms_median: ms, ms_min: min, macs_ratio: ratio, efficiency: None, peak_mib: None };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Writes the rows as CSV, with a first comment line naming the machine.
pub fn write_csv(path: &PathBuf, rows: &[BenchRow], machine: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "# {machine}")?;
    writeln!(f, "{CSV_HEADER}")?;
    for r in rows {
        writeln!(f, "{}", r.csv())?;
    }
    Ok(())
}

/// A one-line description of this machine: CPU model and core count (Linux), or the backend.
pub fn machine_description(backend: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("backend {backend}; {cpu}, {cores} cores")
}

/// A short machine tag for file names (`cpu-2core`, `cuda`).
pub fn machine_tag(backend: &str) -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match backend {
        b if b.starts_with("cpu") => format!("cpu-{cores}core"),
        b => b.split_whitespace().next().unwrap_or(b).to_string(),
    }
}

/// Runs `scripts/bench_pytorch.py` (when PyTorch is installed) and prints PyTorch's times beside
/// ours for the rows both measured.
pub fn compare_pytorch(rows: &[BenchRow]) -> Result<()> {
    let script = ["scripts/bench_pytorch.py", concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench_pytorch.py")]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("scripts/bench_pytorch.py not found")?;
    let has_torch = std::process::Command::new("python3").args(["-c", "import torch, torchvision"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("PyTorch comparison skipped: `python3 -c 'import torch, torchvision'` failed (pip install torch torchvision)");
        return Ok(());
    }
    let out = std::process::Command::new("python3").arg(&script).output().context("running bench_pytorch.py")?;
    if !out.status.success() {
        bail!("bench_pytorch.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    println!("PyTorch (torchvision, 2 threads) on the same machine:");
    println!("{:<10} {:>5} {:<6} {:>12} {:>12} {:>8}", "model", "batch", "mode", "ours ms", "torch ms", "ratio");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("model,")) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 7 {
            continue;
        }
        let (model, batch, mode) = (f[0], f[2].parse::<usize>().unwrap_or(0), f[4]);
        let torch_ms: f64 = f[5].parse().unwrap_or(f64::NAN);
        if let Some(ours) = rows.iter().find(|r| r.model == model && r.batch == batch && r.mode == mode) {
            println!("{model:<10} {batch:>5} {mode:<6} {:>12.2} {torch_ms:>12.2} {:>8.2}", ours.ms_median, ours.ms_median / torch_ms);
        }
    }
    Ok(())
}

/// Throughput of the ImageNet training input pipeline on one core: decode (by content) +
/// RandomResizedCrop 224 + horizontal flip + normalise, over real photographs of ImageNet size
/// (`data/photos`, 300–640 px JPEGs). Returns `(photographs, images, seconds, images per second
/// per core)`.
pub fn bench_pipeline(photos: &std::path::Path, images: usize) -> Result<(usize, usize, f64, f64)> {
    use crate::data::{decode_rgb, ImageTransform};
    let files: Vec<PathBuf> = std::fs::read_dir(photos)
        .with_context(|| format!("reading {}", photos.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg") && !p.to_string_lossy().contains("cmyk"))
        .collect();
    if files.is_empty() {
        bail!("no JPEG photographs in {}", photos.display());
    }
    let transform = ImageTransform::new(224);
    let mut out = vec![0f32; 3 * 224 * 224];
    let mut rng = StdRng::seed_from_u64(0);
    // warm the page cache
    for f in &files {
        let _ = std::fs::read(f)?;
    }
    let start = Instant::now();
    for i in 0..images {
        let image = decode_rgb(&files[i % files.len()]).map_err(anyhow::Error::msg)?;
        transform.apply(&image, Some(&mut rng), &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((files.len(), images, secs, images as f64 / secs))
}
