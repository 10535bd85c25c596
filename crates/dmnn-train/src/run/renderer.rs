//! What the Learner's metrics turn into: one CSV row per epoch ([`EpochTable`]) and progress
//! lines where there is no terminal ([`PlainRenderer`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};

use super::log::RunLog;

/// Epoch-level values of every metric, by split, as the Learner reports them.
#[derive(Clone, Default)]
pub struct EpochTable {
    inner: Arc<Mutex<EpochTableInner>>,
}

#[derive(Default)]
struct EpochTableInner {
    names: HashMap<MetricId, String>,
    current: BTreeMap<(String, String), f64>, // (split, metric) -> running value
    rows: Vec<BTreeMap<String, f64>>,
    csv: Option<PathBuf>,
    columns: Option<Vec<String>>,
    write_error: Option<String>,
    clock: Option<WallClock>,
    stop_after: Option<(usize, burn::train::Interrupter)>,
}

/// Where the run's total wall time is kept, and what it was when this process started.
struct WallClock {
    path: PathBuf,
    before: f64,
    start: Instant,
}

impl EpochTable {
    /// A table that appends a row to `csv` after every validation epoch.
    pub fn new(csv: PathBuf) -> Self {
        let table = Self::default();
        table.inner.lock().unwrap().csv = Some(csv);
        table
    }

    /// Also writes, after every epoch, the run's wall time over all its processes to `path`
    /// (JSON: `{"seconds": s}`): `before` from earlier processes plus this one's since `start`.
    pub fn with_wall_clock(self, path: PathBuf, before: f64, start: Instant) -> Self {
        self.inner.lock().unwrap().clock = Some(WallClock { path, before, start });
        self
    }

    /// Stops training through `interrupter` once epoch `epoch` is logged (fault injection of the
    /// crash-safety tests, the same stop as the terminal UI's).
    pub fn with_stop_after(self, epoch: usize, interrupter: burn::train::Interrupter) -> Self {
        self.inner.lock().unwrap().stop_after = Some((epoch, interrupter));
        self
    }

    /// The first failure to append a row to the CSV (a full disk), named.
    pub fn write_error(&self) -> Option<String> {
        self.inner.lock().unwrap().write_error.clone()
    }
}

impl MetricLogger for EpochTable {
    fn log(&mut self, update: MetricsUpdate, _epoch: usize, split: &Split) {
        let mut inner = self.inner.lock().unwrap();
        for entry in update.entries_numeric {
            if let Some(name) = inner.names.get(&entry.entry.metric_id).cloned() {
                inner.current.insert((split.to_string(), name), entry.running_entry.current());
            }
        }
    }

    fn read_numeric(&mut self, _name: &str, _epoch: usize, _split: &Split) -> Result<Vec<NumericEntry>, String> {
        Err("the epoch table keeps no history".into())
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.inner.lock().unwrap().names.insert(definition.metric_id, definition.name);
    }

    fn log_epoch_summary(&mut self, summary: EpochSummary) {
        if summary.split != Split::Valid {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        let mut row: BTreeMap<String, f64> =
            inner.current.iter().map(|((split, name), v)| (format!("{split}_{name}"), *v)).collect();
        row.insert("epoch".into(), summary.epoch_number as f64);
        inner.current.clear();
        if let Some(csv) = inner.csv.clone() {
            let columns = inner.columns.get_or_insert_with(|| {
                let mut c: Vec<String> = vec!["epoch".into()];
                c.extend(row.keys().filter(|k| *k != "epoch").cloned());
                c
            });
            let header = !csv.exists();
            let line: Vec<String> = columns
                .iter()
                .map(|c| match (c.as_str(), row.get(c)) {
                    ("epoch", Some(v)) => format!("{}", *v as usize),
                    (_, Some(v)) => format!("{v:.6}"),
                    (_, None) => String::new(),
                })
                .collect();
            let text =
                if header { format!("{}\n{}\n", columns.join(","), line.join(",")) } else { line.join(",") + "\n" };
            let written = OpenOptions::new().create(true).append(true).open(&csv).and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_data()
            });
            if let Err(e) = written {
                inner.write_error.get_or_insert_with(|| crate::error::io_message(&csv, &e));
            }
        }
        if let Some((epoch, interrupter)) = &inner.stop_after {
            if summary.epoch_number >= *epoch {
                interrupter.stop(None);
            }
        }
        if let Some(clock) = &inner.clock {
            let seconds = clock.before + clock.start.elapsed().as_secs_f64();
            let path = clock.path.clone();
            if let Err(e) = super::write_atomic(&path, format!("{{\"seconds\": {seconds:.3}}}\n").as_bytes()) {
                inner.write_error.get_or_insert_with(|| crate::error::io_message(&path, &e));
            }
        }
        inner.rows.push(row);
    }
}

/// Progress for terminals that are not interactive (CI, files): a line every `interval` of
/// wall time or at most ten per epoch, and one at the end of every epoch — never one per
/// iteration.
pub struct PlainRenderer {
    log: RunLog,
    names: HashMap<MetricId, String>,
    train: RunningStats,
    valid: RunningStats,
    last_print: Instant,
    last_decile: Option<(usize, usize)>,
    epoch_start: Instant,
    interval_secs: f64,
    epochs_total: usize,
}

impl PlainRenderer {
    /// A renderer writing to `log`.
    pub fn new(log: RunLog, epochs_total: usize) -> Self {
        Self {
            log,
            names: HashMap::new(),
            train: RunningStats::default(),
            valid: RunningStats::default(),
            last_print: Instant::now(),
            last_decile: None,
            epoch_start: Instant::now(),
            interval_secs: 30.0,
            epochs_total,
        }
    }

    fn fmt(stats: &RunningStats) -> String {
        let get = |k: &str| stats.mean(k);
        let mut parts = Vec::new();
        if let Some(v) = get("loss") {
            parts.push(format!("loss {v:.4}"));
        }
        if let Some(v) = get("top1") {
            parts.push(format!("top1 {v:.2}%"));
        }
        if let (Some(m), Some(s)) = (get("gmacs_mean"), stats.gmacs_std()) {
            parts.push(format!("GMACs {m:.4} ± {s:.4}"));
        }
        if let Some(v) = get("macs_ratio") {
            parts.push(format!("MACs ratio {v:.3}"));
        }
        parts.join(" | ")
    }

    fn update(&mut self, state: MetricState, valid: bool) {
        if let MetricState::Numeric(entry, NumericEntry::Aggregated { aggregated_value, count }) = state {
            if let Some(name) = self.names.get(&entry.metric_id) {
                let stats = if valid { &mut self.valid } else { &mut self.train };
                stats.add(name, aggregated_value, count);
            }
        }
    }

    fn render(&mut self, item: &TrainingProgress, split: &str) {
        let Some(progress) = &item.progress else { return };
        let epoch = item.global_progress.items_processed;
        let total = progress.items_total.max(1);
        let done = progress.items_processed;
        let decile = done * 10 / total;
        let finished = done >= total;
        let new_decile = self.last_decile != Some((epoch, decile)) && split == "train";
        let due = self.last_print.elapsed().as_secs_f64() >= self.interval_secs;
        if self.last_decile.is_none_or(|(e, _)| e != epoch) && split == "train" {
            self.epoch_start = Instant::now();
        }
        if finished && split == "valid" {
            let train = Self::fmt(&self.train);
            let valid = Self::fmt(&self.valid);
            self.log.line(&format!(
                "epoch {epoch}/{} done in {:.0} s | train: {train} | valid: {valid}",
                self.epochs_total,
                self.epoch_start.elapsed().as_secs_f64()
            ));
            self.last_print = Instant::now();
            // the next batches are the next epoch's
            self.train = RunningStats::default();
            self.valid = RunningStats::default();
        } else if split == "train" && (new_decile && decile > 0 && !finished || due) {
            let elapsed = self.epoch_start.elapsed().as_secs_f64();
            let speed = if elapsed > 0.5 {
                let rate = done as f64 / elapsed;
                let eta = (total - done.min(total)) as f64 / rate.max(1e-9);
                format!(", {rate:.0} img/s, epoch ETA {eta:.0} s")
            } else {
                String::new()
            };
            self.log.line(&format!(
                "epoch {epoch}/{} train {:>3}% ({done}/{total} images{speed}) | {}",
                self.epochs_total,
                100 * done / total,
                Self::fmt(&self.train)
            ));
            self.last_print = Instant::now();
        }
        if split == "train" {
            self.last_decile = Some((epoch, decile));
        }
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.update(state, false);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.update(state, true);
    }

    fn render_train(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render(&item, "train");
    }

    fn render_valid(&mut self, item: TrainingProgress, _: Vec<ProgressType>) {
        self.render(&item, "valid");
    }

    fn on_train_end(
        &mut self,
        _summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        Ok(())
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.update(state, true);
    }

    fn render_test(&mut self, _item: EvaluationProgress, _: Vec<ProgressType>) {}
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.insert(definition.metric_id, definition.name);
    }
}

/// The epoch's running values of the metrics, from their batch values: weighted means, and the
/// standard deviation of the per-image GMACs from each batch's mean and standard deviation
/// (`E[x²] = std² + mean²` per batch).
#[derive(Debug, Default, Clone)]
pub struct RunningStats {
    sums: BTreeMap<String, (f64, usize)>,
    gmacs_square_sum: f64,
    last_gmacs_mean: Option<f64>,
}

impl RunningStats {
    /// Adds a batch value of `count` samples of metric `name`. A batch's `gmacs_std` is
    /// combined with its `gmacs_mean`, which the Learner reports first.
    pub fn add(&mut self, name: &str, value: f64, count: usize) {
        let sum = self.sums.entry(name.to_string()).or_insert((0.0, 0));
        sum.0 += value * count as f64;
        sum.1 += count;
        match name {
            "gmacs_mean" => self.last_gmacs_mean = Some(value),
            "gmacs_std" => {
                let mean = self.last_gmacs_mean.take().unwrap_or(0.0);
                self.gmacs_square_sum += count as f64 * (value * value + mean * mean);
            }
            _ => {}
        }
    }

    /// The running mean of metric `name`, if it has had a batch.
    pub fn mean(&self, name: &str) -> Option<f64> {
        self.sums.get(name).filter(|(_, n)| *n > 0).map(|(s, n)| s / *n as f64)
    }

    /// The standard deviation of the per-image GMACs over the batches so far.
    pub fn gmacs_std(&self) -> Option<f64> {
        let (_, n) = self.sums.get("gmacs_std").filter(|(_, n)| *n > 0)?;
        let mean = self.mean("gmacs_mean")?;
        Some((self.gmacs_square_sum / *n as f64 - mean * mean).max(0.0).sqrt())
    }
}

/// Lets a boxed renderer (Burn's terminal UI) be handed to the training builder.
pub struct BoxedRenderer(pub Box<dyn MetricsRenderer>);

impl MetricsRendererTraining for BoxedRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.0.update_train(state)
    }
    fn update_valid(&mut self, state: MetricState) {
        self.0.update_valid(state)
    }
    fn render_train(&mut self, item: TrainingProgress, p: Vec<ProgressType>) {
        self.0.render_train(item, p)
    }
    fn render_valid(&mut self, item: TrainingProgress, p: Vec<ProgressType>) {
        self.0.render_valid(item, p)
    }
    fn on_train_end(
        &mut self,
        summary: Option<burn::train::LearnerSummary>,
    ) -> Result<(), Box<dyn core::error::Error>> {
        self.0.on_train_end(summary)
    }
}

impl MetricsRendererEvaluation for BoxedRenderer {
    fn update_test(&mut self, name: EvaluationName, state: MetricState) {
        self.0.update_test(name, state)
    }
    fn render_test(&mut self, item: EvaluationProgress, p: Vec<ProgressType>) {
        self.0.render_test(item, p)
    }
}

impl MetricsRenderer for BoxedRenderer {
    fn manual_close(&mut self) {
        self.0.manual_close()
    }
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.0.register_metric(definition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_stats_combine_batches_like_the_whole_epoch() {
        // batch 1: images at 1 and 3 GMACs (mean 2, std 1); batch 2: 5, 5 (mean 5, std 0)
        let mut stats = RunningStats::default();
        stats.add("top1", 50.0, 2);
        stats.add("gmacs_mean", 2.0, 2);
        stats.add("gmacs_std", 1.0, 2);
        stats.add("top1", 100.0, 2);
        stats.add("gmacs_mean", 5.0, 2);
        stats.add("gmacs_std", 0.0, 2);
        assert_eq!(stats.mean("top1"), Some(75.0));
        assert_eq!(stats.mean("gmacs_mean"), Some(3.5));
        // all four: 1, 3, 5, 5: mean 3.5, variance (6.25 + 0.25 + 2.25 + 2.25) / 4 = 2.75
        assert!((stats.gmacs_std().unwrap() - 2.75f64.sqrt()).abs() < 1e-12);
        assert_eq!(stats.mean("loss"), None);
    }
}
