//! The training benchmark (`dmnn bench --train`, and part of the default bench): one optimiser
//! step as the trainer runs it, on random images.
//!
//! A case is a network, an image side, a global batch and a number of data-parallel replicas.
//! Its configuration is the recipe the trainer would use (the main job's for the 28 px presets,
//! the ImageNet recipe at 224 px: objective, weight decay, SGD), so a dynamic network trains
//! masked with its controllers and the full objective, a static one with cross-entropy. One
//! step is each replica's [`DmnnClassifier::timed_step`] on its share of the batch, on threads
//! of its own as Burn's multi-device strategy runs them, the gradients summed, and the
//! optimiser step. Rows give the median and fastest step, images per second, the CPU cores the
//! process kept busy (its CPU seconds over wall seconds), and the split into forward, backward
//! (each the mean over the replicas) and optimiser.
//!
//! The old path, Burn's kernels throughout ([`FAST_PATHS_ENV`]`=off`), is measured in a fresh
//! process ([`measure_old_path`]): the switch is read once per process.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{GradientsAccumulator, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn::train::metric::ItemLazy;
use dmnn_core::backend::FAST_PATHS_ENV;
use dmnn_core::DmnnConfig;

use super::{median_min, write_file};
use crate::config::TrainConfig;
use crate::data::{mix_seed, ClassificationBatch};
use crate::error::{Result, TrainError};
use crate::step::{DmnnClassifier, StepTimes, TrainProgress};
use crate::train::optimizer;

/// One training case: `model:image_size:batch:replicas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainCase {
    /// Model preset.
    pub model: String,
    /// Input side: 224 takes the ImageNet recipe, anything else the main job's.
    pub image_size: usize,
    /// Global batch (over every replica).
    pub batch: usize,
    /// Data-parallel replicas.
    pub replicas: usize,
}

impl TrainCase {
    /// A case.
    pub fn new(model: &str, image_size: usize, batch: usize, replicas: usize) -> Self {
        Self { model: model.into(), image_size, batch, replicas }
    }

    /// The training configuration of the case: the recipe it would train with.
    ///
    /// # Errors
    /// An unknown preset, or replicas that do not divide the batch.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut config = if self.image_size == 224 {
            TrainConfig::imagenet(Default::default())
        } else {
            TrainConfig::fashion_mnist()
        };
        // a case of the recipe's own model trains it as the recipe sets it (the main job's
        // controllers), any other case the preset
        let model = if config.model.name == self.model {
            config.model.clone()
        } else {
            DmnnConfig::preset(&self.model).map_err(dmnn_core::ConfigError::from)?
        };
        config.model = DmnnConfig { image_size: self.image_size, ..model };
        config.batch_size = self.batch;
        config.replicas = self.replicas;
        config.validate()?;
        Ok(config)
    }
}

impl fmt::Display for TrainCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{}", self.model, self.image_size, self.batch, self.replicas)
    }
}

impl FromStr for TrainCase {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let [model, size, batch, replicas] = parts[..] else {
            return Err(format!("training case '{s}' is not model:image_size:batch:replicas"));
        };
        let number =
            |what: &str, v: &str| v.parse::<usize>().map_err(|_| format!("{what} '{v}' in '{s}' is not a count"));
        Ok(Self::new(model, number("image_size", size)?, number("batch", batch)?, number("replicas", replicas)?))
    }
}

/// The CSV header of the training rows.
pub const TRAIN_CSV_HEADER: &str =
    "model,image_size,batch,replicas,objective,fast_paths,ms_median,ms_min,images_per_s,\
                                    cpu_cores,forward_ms,backward_ms,optimizer_ms,macs_ratio";

/// One measured training case.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRow {
    /// The case.
    pub case: TrainCase,
    /// `cross-entropy` (a static network) or `dmnn` (masked, controllers, the full objective).
    pub objective: String,
    /// `on` (the backend seam's fast paths as probed) or `off` (Burn's kernels throughout).
    pub fast_paths: String,
    /// Median step, ms.
    pub ms_median: f64,
    /// Fastest step, ms.
    pub ms_min: f64,
    /// Images per second at the median step.
    pub images_per_s: f64,
    /// CPU seconds of the process per wall second over the timed steps (`None` where the
    /// system does not report them).
    pub cpu_cores: Option<f64>,
    /// Median forward pass and objective of a replica, ms.
    pub forward_ms: f64,
    /// Median backward pass of a replica, ms.
    pub backward_ms: f64,
    /// Median optimiser step (with the gradient sum over replicas), ms.
    pub optimizer_ms: f64,
    /// Mean executed MACs as a share of the all-paths-on network, in the last step.
    pub macs_ratio: f64,
}

impl TrainRow {
    /// The row as CSV.
    pub fn csv(&self) -> String {
        let c = &self.case;
        format!(
            "{},{},{},{},{},{},{:.3},{:.3},{:.1},{},{:.3},{:.3},{:.3},{:.4}",
            c.model,
            c.image_size,
            c.batch,
            c.replicas,
            self.objective,
            self.fast_paths,
            self.ms_median,
            self.ms_min,
            self.images_per_s,
            self.cpu_cores.map(|v| format!("{v:.2}")).unwrap_or_default(),
            self.forward_ms,
            self.backward_ms,
            self.optimizer_ms,
            self.macs_ratio
        )
    }

    /// Parses a line written by [`TrainRow::csv`].
    ///
    /// # Errors
    /// A line with other fields.
    pub fn parse(line: &str) -> Result<Self> {
        let bad = || TrainError::Other(format!("not a training bench row: '{line}'"));
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() != 14 {
            return Err(bad());
        }
        let num = |i: usize| f[i].parse::<f64>().map_err(|_| bad());
        let case: TrainCase = f[..4].join(":").parse().map_err(|_| bad())?;
        Ok(Self {
            case,
            objective: f[4].into(),
            fast_paths: f[5].into(),
            ms_median: num(6)?,
            ms_min: num(7)?,
            images_per_s: num(8)?,
            cpu_cores: f[9].parse().ok(),
            forward_ms: num(10)?,
            backward_ms: num(11)?,
            optimizer_ms: num(12)?,
            macs_ratio: num(13)?,
        })
    }
}

/// User plus system CPU time of this process so far (Linux: `/proc/self/stat`, in clock ticks
/// of 1/100 s).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `reps` training steps of `case` after `warmup` on backend `B` in this process.
///
/// # Errors
/// A case that does not configure (unknown preset, replicas that do not divide the batch).
pub fn run_train_case<B: AutodiffBackend>(
    case: &TrainCase,
    warmup: usize,
    reps: usize,
    device: &B::Device,
) -> Result<TrainRow> {
    let config = case.config()?;
    let model = config.model.try_init::<B>(device)?;
    let steps = warmup + reps.max(1);
    let mut classifier = DmnnClassifier {
        model,
        objective: config.objective.clone(),
        weight_decay: config.weight_decay,
        temperature: config.temperature,
        progress: TrainProgress::new(steps, steps, case.replicas),
        home: None,
    };
    let mut optim = optimizer(&config).init::<B, DmnnClassifier<B>>();
    let [c, size] = [config.model.in_channels, case.image_size];
    let images = Tensor::<B, 4>::random([case.batch, c, size, size], Distribution::Normal(0.0, 1.0), device);
    let labels: Vec<i64> = (0..case.batch as i64).map(|i| i % config.model.num_classes as i64).collect();
    let targets = Tensor::<B, 1, Int>::from_data(TensorData::new(labels, [case.batch]), device);
    let share = case.batch / case.replicas;
    let batches = |step: usize| -> Vec<ClassificationBatch<B>> {
        (0..case.replicas)
            .map(|r| ClassificationBatch {
                images: images.clone().narrow(0, r * share, share),
                targets: targets.clone().narrow(0, r * share, share),
                seed: mix_seed(&[config.seed, step as u64, r as u64]),
                step,
            })
            .collect()
    };
    let mut times: Vec<(f64, StepTimes, f64)> = Vec::new();
    let mut last_item = None;
    let mut cpu_start = None;
    let mut wall_start = Instant::now();
    for step in 0..steps {
        if step == warmup {
            cpu_start = process_cpu_seconds();
            wall_start = Instant::now();
        }
        let start = Instant::now();
        let outputs: Vec<_> = if case.replicas == 1 {
            batches(step).into_iter().map(|b| classifier.timed_step(b)).collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = batches(step)
                    .into_iter()
                    .map(|b| {
                        // as Burn's multi-device worker: a fork has its own autodiff leaves (replicas
                        // sharing the leaves would merge their graphs across threads)
                        let replica = classifier.clone().fork(device);
                        s.spawn(move || replica.timed_step(b))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a replica's step")).collect()
            })
        };
        let optimizer_start = Instant::now();
        let mut accumulator = GradientsAccumulator::new();
        let (mut forward, mut backward) = (Duration::ZERO, Duration::ZERO);
        for (out, t) in outputs {
            last_item = Some(out.item);
            accumulator.accumulate(&classifier, out.grads);
            forward += t.forward / case.replicas as u32;
            backward += t.backward / case.replicas as u32;
        }
        classifier = optim.step(config.lr, classifier, accumulator.grads());
        let _ = classifier.model.fc.weight.val().sum().into_data();
        let _ = B::sync(device);
        if step >= warmup {
            let split = StepTimes { forward, backward };
            times.push((ms(start.elapsed()), split, ms(optimizer_start.elapsed())));
        }
    }
    let wall = wall_start.elapsed().as_secs_f64();
    let stats = last_item.expect("a step ran").sync();
    let macs_ratio = stats.macs.iter().sum::<f64>() / stats.macs.len().max(1) as f64 / stats.macs_full;
    let cpu_cores = cpu_start.zip(process_cpu_seconds()).map(|(a, b)| (b - a) / wall);
    let median = |f: &dyn Fn(&(f64, StepTimes, f64)) -> f64| median_min(times.iter().map(f).collect()).0;
    let (ms_median, ms_min) = median_min(times.iter().map(|t| t.0).collect());
    let fast = dmnn_core::FastPaths::probe::<B>(device) != dmnn_core::FastPaths::NONE;
    Ok(TrainRow {
        case: case.clone(),
        objective: if config.model.is_dynamic() { "dmnn" } else { "cross-entropy" }.into(),
        fast_paths: if fast { "on" } else { "off" }.into(),
        ms_median,
        ms_min,
        images_per_s: case.batch as f64 / (ms_median / 1e3),
        cpu_cores,
        forward_ms: median(&|t| ms(t.1.forward)),
        backward_ms: median(&|t| ms(t.1.backward)),
        optimizer_ms: median(&|t| t.2),
        macs_ratio,
    })
}

/// Runs `case` in a fresh process of `exe` (`dmnn bench --train-case`) with every fast path off
/// ([`FAST_PATHS_ENV`]`=off`): the old path, Burn's kernels throughout.
///
/// # Errors
/// If the process cannot start, fails, or prints no row.
pub fn measure_old_path(exe: &Path, case: &TrainCase, reps: usize) -> Result<TrainRow> {
    let out = std::process::Command::new(exe)
        .args(["bench", "--train-case", &case.to_string(), "--reps", &reps.to_string()])
        .env(FAST_PATHS_ENV, "off")
        .output()
        .map_err(|e| TrainError::io(exe, e))?;
    if !out.status.success() {
        return Err(TrainError::Other(format!(
            "training case {case} with {FAST_PATHS_ENV}=off failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with(&format!("{},", case.model)));
    TrainRow::parse(line.ok_or_else(|| TrainError::Other(format!("training case {case} printed no row: {text}")))?)
}

/// What the training benchmark measures.
#[derive(Debug, Clone)]
pub struct TrainBench {
    /// Cases on the fast path, each with its warm-up steps and timed steps.
    pub cases: Vec<(TrainCase, usize, usize)>,
    /// Cases also measured on the old path, in a fresh process.
    pub old_path: Vec<(TrainCase, usize)>,
}

/// The main job's global batch.
const MAIN_JOB_BATCH: usize = 128;

impl TrainBench {
    /// ResNet-50 and DMNN-50 at 224 px, batch 16; the main job's step (dmnn_small and
    /// resnet_small at 28 px, batch 128) with its replicas and with one, against the old path.
    pub fn full() -> Self {
        let replicas = TrainConfig::fashion_mnist().replicas;
        let main = |model: &str, r: usize| TrainCase::new(model, 28, MAIN_JOB_BATCH, r);
        Self {
            cases: vec![
                (TrainCase::new("resnet50", 224, 16, 1), 1, 5),
                (TrainCase::new("dmnn50", 224, 16, 1), 1, 5),
                (main("dmnn_small", replicas), 3, 20),
                (main("dmnn_small", 1), 3, 20),
                (main("resnet_small", replicas), 3, 20),
            ],
            old_path: vec![
                (main("dmnn_small", 1), 20),
                (main("dmnn_small", replicas), 20),
                (main("resnet_small", 1), 20),
            ],
        }
    }
}

/// Runs the training benchmark on backend `B`: the fast-path cases in this process, then the
/// old-path cases in fresh processes of `exe` (skipped when `exe` is `None`); `reps` overrides
/// every case's timed steps. `progress` receives each row.
///
/// # Errors
/// A case that fails.
pub fn run_train_bench<B: AutodiffBackend>(
    bench: &TrainBench,
    device: &B::Device,
    exe: Option<&Path>,
    reps: Option<usize>,
    mut progress: impl FnMut(&TrainRow),
) -> Result<Vec<TrainRow>> {
    let mut rows = Vec::new();
    for (case, warmup, steps) in &bench.cases {
        let row = run_train_case::<B>(case, *warmup, reps.unwrap_or(*steps), device)?;
        progress(&row);
        rows.push(row);
    }
    for (case, steps) in bench.old_path.iter().filter(|_| exe.is_some()) {
        let row = measure_old_path(exe.expect("filtered"), case, reps.unwrap_or(*steps))?;
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Warm-up steps of a case run alone (`dmnn bench --train-case`): one for an ImageNet-sized
/// step, three for a small one.
pub fn warmup_steps(case: &TrainCase) -> usize {
    if case.image_size >= 112 {
        1
    } else {
        3
    }
}

/// The main job's speed-up: images/s of its step (the main job's replicas, fast paths on) over
/// the old path's (one replica, fast paths off), for `model`, when both were measured.
pub fn main_job_speedup(rows: &[TrainRow], model: &str) -> Option<f64> {
    let replicas = TrainConfig::fashion_mnist().replicas;
    let find = |r: usize, fast: &str| {
        rows.iter().find(|row| {
            row.case.model == model && row.case.image_size == 28 && row.case.replicas == r && row.fast_paths == fast
        })
    };
    Some(find(replicas, "on")?.images_per_s / find(1, "off")?.images_per_s)
}

/// Writes the training rows as CSV, with a first comment line naming the machine.
///
/// # Errors
/// If the file cannot be written.
pub fn write_train_csv(path: &Path, rows: &[TrainRow], machine: &str) -> Result<()> {
    let mut text = format!("# {machine}\n{TRAIN_CSV_HEADER}\n");
    for r in rows {
        text.push_str(&r.csv());
        text.push('\n');
    }
    write_file(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn cases_and_rows_round_trip_and_name_bad_input() {
        let case: TrainCase = "dmnn_small:28:128:2".parse().unwrap();
        assert_eq!(case, TrainCase::new("dmnn_small", 28, 128, 2));
        assert_eq!(case.to_string().parse::<TrainCase>().unwrap(), case);
        let err = "dmnn_small:28:x:2".parse::<TrainCase>().unwrap_err();
        assert!(err.contains("batch 'x'"), "{err}");
        assert!("dmnn_small:28".parse::<TrainCase>().is_err());
        let err = TrainCase::new("dmnn_small", 28, 127, 2).config().unwrap_err().to_string();
        assert!(err.contains("replicas=2") && err.contains("batch_size=127"), "{err}");
        assert!(TrainCase::new("nope", 28, 8, 1).config().is_err());
    }

    /// The main job's case trains the main job's model (its controllers as the main job sets
    /// them); another preset's case keeps the preset's.
    #[test]
    fn the_main_job_case_trains_the_main_jobs_model() {
        let main_job = TrainConfig::fashion_mnist();
        let case = TrainCase::new(&main_job.model.name, 28, 128, 2).config().unwrap();
        assert_eq!(case.model.to_string(), main_job.model.to_string());
        let other = TrainCase::new("resnet_small", 28, 128, 2).config().unwrap();
        assert_eq!(
            other.model.to_string(),
            DmnnConfig::preset("resnet_small").unwrap().with_image_size(28).to_string()
        );
    }

    /// A real step on two replicas: the row parses back, its times add up, and the old-path
    /// comparison finds its rows.
    #[test]
    fn a_training_case_measures_a_step() {
        let case = TrainCase::new("dmnn_small", 28, 8, 2);
        let row = run_train_case::<Autodiff<Flex>>(&case, 1, 2, &Default::default()).unwrap();
        assert_eq!(row.objective, "dmnn");
        assert!(row.ms_min > 0.0 && row.ms_min <= row.ms_median, "{row:?}");
        assert!(row.forward_ms > 0.0 && row.backward_ms > 0.0 && row.optimizer_ms > 0.0, "{row:?}");
        assert!(row.forward_ms + row.backward_ms <= row.ms_median * 1.5, "{row:?}");
        assert!((0.0..=1.0).contains(&row.macs_ratio), "{row:?}");
        assert_eq!(TrainRow::parse(&row.csv()).unwrap().case, case);
        let mut old = TrainRow::parse(&row.csv()).unwrap();
        (old.case.replicas, old.fast_paths, old.images_per_s) = (1, "off".into(), row.images_per_s / 2.0);
        let mut fast = row.clone();
        fast.case.replicas = TrainConfig::fashion_mnist().replicas;
        fast.fast_paths = "on".into();
        let speedup = main_job_speedup(&[fast, old], "dmnn_small").unwrap();
        assert!((speedup - 2.0).abs() < 1e-9, "{speedup}");
    }
}
