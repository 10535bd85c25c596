//! `dmnn bench`: does skipping MACs save time? Sparse against Masked against the static network,
//! at random gate rates, plus ResNet-50 references and the training benchmark ([`TrainBench`]).
//!
//! Timings run in rounds after warm-up, the device synchronised around each run; in every round
//! each rate runs `full`, `sparse`, `masked` in turn (at least `reps` rounds, more for a fast case
//! until `min_seconds` are spent), and rows report the median and minimum.
//! Before timing, the benchmark checks that Sparse and Masked give the same logits (no autodiff,
//! within 1e-4). Rows (also written as CSV):
//! `model,image_size,batch,rate,mode,ms_median,ms_min,macs_ratio,efficiency`, where `mode` is
//! `full` (the static all-paths-on network), `masked` or `sparse`,
//! and `efficiency = (1 − t_sparse/t_full) / (1 − macs/macs_full)` on sparse rows, with
//! `t_sparse/t_full` the median ratio of each sparse run to the full run just before it (the
//! machine's drift cancels in the pair). Peak memory is measured per case in a fresh process
//! ([`run_memory_case`]).

use std::path::Path;
use std::time::Instant;

use burn::prelude::ToElement;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor, TensorData};
use dmnn_core::{Dmnn, DmnnConfig, ExecutionMode, ForwardOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Result, TrainError};

mod kernels;
mod memory;
mod pipeline;
mod pytorch;
mod train;

pub use kernels::*;
pub use memory::*;
pub use pipeline::*;
pub use pytorch::*;
pub use train::*;

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
    /// `full`, `masked` or `sparse`.
    pub mode: String,
    /// Median time per run, ms.
    pub ms_median: f64,
    /// Fastest run, ms.
    pub ms_min: f64,
    /// Executed MACs as a share of the all-paths-on network.
    pub macs_ratio: f64,
    /// `(1 − t_sparse/t_full) / (1 − macs_ratio)` on sparse rows with `macs_ratio < 1`, with
    /// `t_sparse/t_full` the median of the ratios of each sparse run to the full run just before.
    pub efficiency: Option<f64>,
    /// That median ratio `t_sparse/t_full` on sparse rows (`sparse_over_full` in the CSV).
    pub ratio_to_full: Option<f64>,
    /// Kernels one pass launches, on a GPU backend whose launches are counted
    /// ([`install_kernel_counter`]); empty elsewhere.
    pub kernels: Option<u64>,
}

/// The CSV header.
pub const CSV_HEADER: &str =
    "model,image_size,batch,rate,mode,ms_median,ms_min,macs_ratio,efficiency,sparse_over_full,kernels";

impl BenchRow {
    /// The row as CSV.
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{:.3},{:.3},{:.4},{},{},{}",
            self.model,
            self.image_size,
            self.batch,
            self.rate,
            self.mode,
            self.ms_median,
            self.ms_min,
            self.macs_ratio,
            self.efficiency.map(|e| format!("{e:.3}")).unwrap_or_default(),
            self.ratio_to_full.map(|r| format!("{r:.4}")).unwrap_or_default(),
            self.kernels.map(|k| k.to_string()).unwrap_or_default()
        )
    }
}

/// Most timed rounds of one case.
pub const MAX_ROUNDS: usize = 201;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Inference cases: `(preset, image size, batch sizes)`.
    pub cases: Vec<(String, usize, Vec<usize>)>,
    /// Gate rates.
    pub rates: Vec<f64>,
    /// Timed rounds per case, at least (after warm-up); see `min_seconds`.
    pub reps: usize,
    /// Timed rounds of a fast case continue until this many seconds have been spent (at most
    /// [`MAX_ROUNDS`] rounds): a batch-1 case's median then rests on more than `reps` pairs.
    pub min_seconds: f64,
    /// Warm-up runs.
    pub warmup: usize,
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
            reps: 15,
            min_seconds: 20.0,
            warmup: 1,
            reference_cases: vec![("resnet50".into(), 224, vec![1, 16])],
            seed: 7,
        }
    }

    /// The small preset only (seconds on a CPU).
    pub fn quick() -> Self {
        Self {
            cases: vec![("dmnn_small".into(), 28, vec![1, 256])],
            rates: vec![0.25, 0.5, 0.75, 1.0],
            reps: 31,
            min_seconds: 0.0,
            warmup: 2,
            reference_cases: vec![],
            seed: 7,
        }
    }
}

/// Inference cases of one model and image size: `model:image_size:batch,batch,...`, or `none`.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceCases(pub Option<(String, usize, Vec<usize>)>);

impl std::str::FromStr for InferenceCases {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "none" {
            return Ok(Self(None));
        }
        let parts: Vec<&str> = s.split(':').collect();
        let [model, size, batches] = parts[..] else {
            return Err(format!("inference cases '{s}' are not model:image_size:batch,batch,..."));
        };
        let count = |what: &str, v: &str| match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{what} '{v}' in '{s}' is not a positive count")),
        };
        let batches = batches.split(',').map(|b| count("batch", b)).collect::<std::result::Result<Vec<_>, _>>()?;
        DmnnConfig::preset(model).map_err(|e| format!("'{s}': {e}"))?;
        Ok(Self(Some((model.to_string(), count("image_size", size)?, batches))))
    }
}

impl BenchConfig {
    /// The configuration with these inference cases, references and rates where given (an
    /// empty list keeps the configuration's).
    ///
    /// # Errors
    /// A rate outside (0, 1].
    pub fn with_cases(
        mut self,
        cases: &[InferenceCases],
        references: &[InferenceCases],
        rates: &[f64],
    ) -> Result<Self> {
        if !cases.is_empty() {
            self.cases = cases.iter().filter_map(|c| c.0.clone()).collect();
        }
        if !references.is_empty() {
            self.reference_cases = references.iter().filter_map(|c| c.0.clone()).collect();
        }
        if let Some(bad) = rates.iter().find(|r| !(**r > 0.0 && **r <= 1.0)) {
            return Err(TrainError::Config(format!("--rates: {bad} is not a gate rate in (0, 1]")));
        }
        if !rates.is_empty() {
            self.rates = rates.to_vec();
        }
        Ok(self)
    }
}

fn median_min(mut t: Vec<f64>) -> (f64, f64) {
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[t.len() / 2], t[0])
}

fn time<F: FnMut()>(warmup: usize, reps: usize, mut f: F) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median_min(times)
}

/// One timed forward pass of a round: the static network, or the gated one in a mode.
enum Case<B: Backend> {
    Full,
    Gated(ExecutionMode, Vec<Tensor<B, 2>>),
}

fn random_gates<B: Backend>(
    model: &Dmnn<B>,
    batch: usize,
    rate: f64,
    seed: u64,
    device: &B::Device,
) -> Vec<Tensor<B, 2>> {
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
    let config = DmnnConfig::preset(name).map_err(dmnn_core::ConfigError::from)?;
    let model = config.init::<B>(device);
    Ok((config, model))
}

fn images<B: Backend>(config: &DmnnConfig, size: usize, batch: usize, device: &B::Device) -> Tensor<B, 4> {
    Tensor::random([batch, config.in_channels, size, size], Distribution::Normal(0.0, 1.0), device)
}

/// Runs the benchmark on backend `B`; `progress` receives a line per measurement.
pub fn run_bench<B: AutodiffBackend>(
    config: &BenchConfig,
    device: &B::Device,
    mut progress: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
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
                let masked = model
                    .forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked).with_gates(gates.clone()));
                let sparse =
                    model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates));
                let diff = (masked.logits - sparse.logits).abs().max().into_scalar().to_f64();
                if diff.is_nan() || diff > 1e-4 {
                    return Err(TrainError::Other(format!(
                        "{name} batch {batch} rate {rate}: sparse and masked logits differ by {diff} (> 1e-4)"
                    )));
                }
            }
            // Rounds: in every round each rate runs `full`, then `sparse`, then `masked`. The
            // machine drifts (other tenants, frequency, the allocator); a sparse run is compared
            // with the full run just before it, and the efficiency uses the median of those
            // paired ratios.
            let mut cases: Vec<Case<B::InnerBackend>> = Vec::new();
            let mut macs_ratios = Vec::new();
            for &rate in &config.rates {
                let gates = random_gates(&model, batch, rate, config.seed, device);
                let probe = model
                    .forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates.clone()));
                let macs_ratio = probe.macs_ratio().mean().into_scalar().to_f64();
                macs_ratios.push(macs_ratio);
                cases.push(Case::Full);
                cases.push(Case::Gated(ExecutionMode::Sparse, gates.clone()));
                cases.push(Case::Gated(ExecutionMode::Masked, gates));
            }
            let run = |case: &Case<B::InnerBackend>| {
                let start = Instant::now();
                let out = match case {
                    Case::Full => static_model.forward(x.clone()),
                    Case::Gated(mode, g) => {
                        model.forward_with(x.clone(), ForwardOptions::mode(*mode).with_gates(g.clone()))
                    }
                };
                let _ = out.logits.into_data();
                sync(device);
                start.elapsed().as_secs_f64() * 1e3
            };
            for case in &cases {
                for _ in 0..config.warmup.max(1) {
                    run(case);
                }
            }
            // kernels of one warm pass (compilation and autotuning are behind us)
            let kernels: Vec<Option<u64>> = cases
                .iter()
                .map(|case| {
                    count_kernels(|| {
                        run(case);
                    })
                })
                .collect();
            // at least `reps` rounds, more for fast cases until `min_seconds` have been spent
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
            let start = Instant::now();
            let mut rounds = 0;
            while rounds < config.reps.max(1)
                || (start.elapsed().as_secs_f64() < config.min_seconds && rounds < MAX_ROUNDS)
            {
                for (t, case) in times.iter_mut().zip(&cases) {
                    t.push(run(case));
                }
                rounds += 1;
            }
            let full: Vec<f64> = (0..cases.len()).step_by(3).flat_map(|k| times[k].iter().copied()).collect();
            let (full_median, full_min) = median_min(full);
            let mut emit = |row: BenchRow| {
                progress(&row);
                rows.push(row);
            };
            let row = |rate: f64,
                       mode: &str,
                       (ms_median, ms_min): (f64, f64),
                       macs_ratio: f64,
                       ratio_to_full: Option<f64>| BenchRow {
                model: name.clone(),
                image_size: *size,
                batch,
                rate,
                mode: mode.to_string(),
                ms_median,
                ms_min,
                macs_ratio,
                efficiency: ratio_to_full.filter(|_| rate < 1.0).map(|r| (1.0 - r) / (1.0 - macs_ratio)),
                ratio_to_full,
                kernels: None,
            };
            emit(BenchRow { kernels: kernels[0], ..row(1.0, "full", (full_median, full_min), 1.0, None) });
            for (r, &rate) in config.rates.iter().enumerate() {
                let (t_full, t_sparse, t_masked) = (&times[3 * r], &times[3 * r + 1], &times[3 * r + 2]);
                let ratios: Vec<f64> = t_sparse.iter().zip(t_full).map(|(s, f)| s / f).collect();
                let macs_ratio = macs_ratios[r];
                let masked = row(rate, "masked", median_min(t_masked.clone()), macs_ratio, None);
                emit(BenchRow { kernels: kernels[3 * r + 2], ..masked });
                let sparse = row(rate, "sparse", median_min(t_sparse.clone()), macs_ratio, Some(median_min(ratios).0));
                emit(BenchRow { kernels: kernels[3 * r + 1], ..sparse });
            }
        }
    }
    for (name, size, batches) in &config.reference_cases {
        let (cfg, model) = model_for::<B::InnerBackend>(name, device)?;
        for &batch in batches {
            let x = images::<B::InnerBackend>(&cfg, *size, batch, device);
            let pass = || {
                let _ = model.forward(x.clone()).logits.into_data();
                sync(device);
            };
            let (ms, min) = time(config.warmup, config.reps, pass);
            let kernels = count_kernels(pass);
            let row = BenchRow {
                model: name.clone(),
                image_size: *size,
                batch,
                rate: 1.0,
                mode: "full".into(),
                ms_median: ms,
                ms_min: min,
                macs_ratio: 1.0,
                efficiency: None,
                ratio_to_full: None,
                kernels,
            };
            progress(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Writes the rows as CSV, with a first comment line naming the machine.
///
/// # Errors
/// If the file cannot be written.
pub fn write_csv(path: &Path, rows: &[BenchRow], machine: &str) -> Result<()> {
    let mut text = format!("# {machine}\n{CSV_HEADER}\n");
    for r in rows {
        text.push_str(&r.csv());
        text.push('\n');
    }
    write_file(path, &text)
}

/// Writes `text` to `path`, creating its directory.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| TrainError::io(parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

/// A one-line description of this machine: CPU model and core count (Linux), and the backend.
pub fn machine_description(backend: &str) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_cases_parse_and_name_bad_input() {
        let cases: InferenceCases = "dmnn50:224:1,16,64".parse().unwrap();
        assert_eq!(cases.0, Some(("dmnn50".to_string(), 224, vec![1, 16, 64])));
        assert_eq!("none".parse::<InferenceCases>().unwrap().0, None);
        for (bad, named) in [
            ("dmnn50:224", "model:image_size"),
            ("dmnn50:x:1", "'x'"),
            ("dmnn50:224:1,0", "'0'"),
            ("nope:28:1", "nope"),
        ] {
            let err = bad.parse::<InferenceCases>().unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
        }
        let config = BenchConfig::quick().with_cases(&[cases], &["none".parse().unwrap()], &[0.5]).unwrap();
        assert_eq!(config.cases.len(), 1);
        assert!(config.reference_cases.is_empty());
        assert_eq!(config.rates, vec![0.5]);
        assert!(BenchConfig::quick().with_cases(&[], &[], &[1.5]).is_err());
    }

    #[test]
    fn memory_case_round_trips_and_names_bad_input() {
        let case: MemoryCase = "dmnn50:224:16:0.5:sparse".parse().unwrap();
        assert_eq!(
            (case.model.as_str(), case.image_size, case.batch, case.rate, case.mode.as_str()),
            ("dmnn50", 224, 16, 0.5, "sparse")
        );
        assert_eq!(case.to_string().parse::<MemoryCase>().unwrap(), case);
        let err = "dmnn50:224:16:0.5:fast".parse::<MemoryCase>().unwrap_err().to_string();
        assert!(err.contains("mode 'fast'"), "{err}");
        let err = "dmnn50:224:x:0.5:full".parse::<MemoryCase>().unwrap_err().to_string();
        assert!(err.contains("batch 'x'"), "{err}");
        assert!("dmnn50:224".parse::<MemoryCase>().is_err());
    }

    #[test]
    fn memory_cases_cover_the_inference_rows() {
        let row = |mode: &str| BenchRow {
            model: "m".into(),
            image_size: 28,
            batch: 4,
            rate: 0.5,
            mode: mode.into(),
            ms_median: 1.0,
            ms_min: 1.0,
            macs_ratio: 1.0,
            efficiency: None,
            ratio_to_full: None,
            kernels: None,
        };
        let cases = memory_cases(&[row("full"), row("sparse"), row("train"), row("masked")]);
        let modes: Vec<&str> = cases.iter().map(|c| c.mode.as_str()).collect();
        assert_eq!(modes, vec!["full", "sparse", "masked"]);
    }
}
