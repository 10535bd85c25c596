//! The run directory: resolved configuration, checkpoints written atomically, a per-epoch CSV of
//! metrics, a log, and the final summary.
//!
//! ```text
//! runs/<timestamp>-<model>-<paths>p-t<target>/
//!   config.json        the resolved training configuration (what --resume reads)
//!   checkpoint/        model-<epoch>.mpk, optim-<epoch>.mpk, scheduler-<epoch>.mpk (Burn's Learner)
//!   metrics.csv        one row per epoch: train_* and valid_* columns
//!   train.log          progress lines and messages
//!   experiment.log     Burn's own log
//!   model.mpk          the final network (inference record)
//!   summary.json       test accuracy, GMACs mean ± std, params, wall time, ...
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::record::{FileRecorder, FullPrecisionSettings, NamedMpkFileRecorder, Recorder, RecorderError};
use burn::tensor::backend::Backend;
use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use serde::{de::DeserializeOwned, Serialize};

/// Writes a file atomically: to a temporary name in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Burn's named MessagePack recorder, made atomic: the record is written to `<name>.tmp.mpk`,
/// synced and renamed to `<name>.mpk`, so a run killed mid-write never leaves a checkpoint that
/// fails to load.
#[derive(Debug, Default, Clone)]
pub struct AtomicRecorder {
    inner: NamedMpkFileRecorder<FullPrecisionSettings>,
}

impl<B: Backend> FileRecorder<B> for AtomicRecorder {
    fn file_extension() -> &'static str {
        "mpk"
    }
}

impl<B: Backend> Recorder<B> for AtomicRecorder {
    type Settings = FullPrecisionSettings;
    type RecordArgs = PathBuf;
    type RecordOutput = ();
    type LoadArgs = PathBuf;

    fn save_item<I: Serialize>(&self, item: I, file: PathBuf) -> Result<(), RecorderError> {
        let final_path = file.with_extension("mpk");
        let stem = final_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // the inner recorder replaces the last extension with `mpk`: it writes `<stem>.tmp.mpk`
        let tmp = final_path.with_file_name(format!("{stem}.tmp.mpk"));
        Recorder::<B>::save_item(&self.inner, item, final_path.with_file_name(format!("{stem}.tmp.part")))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| RecorderError::Unknown(e.to_string()))?;
        std::fs::rename(&tmp, &final_path).map_err(|e| RecorderError::Unknown(format!("{}: {e}", final_path.display())))
    }

    fn load_item<I: DeserializeOwned>(&self, file: &mut PathBuf) -> Result<I, RecorderError> {
        Recorder::<B>::load_item(&self.inner, file)
    }
}

/// Seconds since the Unix epoch as `YYYYmmdd-HHMMSS` (UTC).
pub fn timestamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil-from-days (Howard Hinnant)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A line-oriented log shared by the renderer and the driver: to the terminal (stderr) and to
/// `train.log` in the run directory.
#[derive(Clone)]
pub struct RunLog {
    file: Arc<Mutex<Option<File>>>,
    quiet: bool,
}

impl RunLog {
    /// A log appending to `path`.
    pub fn open(path: &Path, quiet: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Arc::new(Mutex::new(Some(file))), quiet })
    }

    /// A log that only prints.
    pub fn stderr() -> Self {
        Self { file: Arc::new(Mutex::new(None)), quiet: false }
    }

    /// Writes one line.
    pub fn line(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{text}");
        }
    }

    /// Writes one line to the file only.
    pub fn file_only(&self, text: &str) {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{text}");
        }
    }
}

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
}

impl EpochTable {
    /// A table that appends a row to `csv` after every validation epoch.
    pub fn new(csv: PathBuf) -> Self {
        let table = Self::default();
        table.inner.lock().unwrap().csv = Some(csv);
        table
    }

    /// Rows written so far (one per epoch).
    pub fn rows(&self) -> Vec<BTreeMap<String, f64>> {
        self.inner.lock().unwrap().rows.clone()
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
        let mut row: BTreeMap<String, f64> = inner
            .current
            .iter()
            .map(|((split, name), v)| (format!("{split}_{name}"), *v))
            .collect();
        row.insert("epoch".into(), summary.epoch_number as f64);
        inner.current.clear();
        if let Some(csv) = inner.csv.clone() {
            let columns = inner.columns.get_or_insert_with(|| {
                let mut c: Vec<String> = vec!["epoch".into()];
                c.extend(row.keys().filter(|k| *k != "epoch").cloned());
                c
            });
            let header = !csv.exists();
            if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&csv) {
                if header {
                    let _ = writeln!(f, "{}", columns.join(","));
                }
                let line: Vec<String> = columns
                    .iter()
                    .map(|c| match (c.as_str(), row.get(c)) {
                        ("epoch", Some(v)) => format!("{}", *v as usize),
                        (_, Some(v)) => format!("{v:.6}"),
                        (_, None) => String::new(),
                    })
                    .collect();
                let _ = writeln!(f, "{}", line.join(","));
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
    train: BTreeMap<String, f64>,
    valid: BTreeMap<String, f64>,
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
            train: BTreeMap::new(),
            valid: BTreeMap::new(),
            last_print: Instant::now(),
            last_decile: None,
            epoch_start: Instant::now(),
            interval_secs: 30.0,
            epochs_total,
        }
    }

    fn fmt(values: &BTreeMap<String, f64>) -> String {
        let get = |k: &str| values.get(k).copied();
        let mut parts = Vec::new();
        if let Some(v) = get("loss") {
            parts.push(format!("loss {v:.4}"));
        }
        if let Some(v) = get("top1") {
            parts.push(format!("top1 {v:.2}%"));
        }
        if let (Some(m), Some(s)) = (get("gmacs_mean"), get("gmacs_std")) {
            parts.push(format!("GMACs {m:.4} ± {s:.4}"));
        }
        if let Some(v) = get("macs_ratio") {
            parts.push(format!("MACs ratio {v:.3}"));
        }
        parts.join(" | ")
    }

    fn update(&mut self, state: MetricState, valid: bool) {
        if let MetricState::Numeric(entry, _) = state {
            if let (Some(name), Ok(NumericEntry::Aggregated { .. } | NumericEntry::Value(_))) =
                (self.names.get(&entry.metric_id), NumericEntry::deserialize(&entry.serialized_entry.serialized))
            {
                // the formatted entry starts with "epoch <running value>"
                let running = entry
                    .serialized_entry
                    .formatted
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok());
                if let Some(v) = running {
                    let map = if valid { &mut self.valid } else { &mut self.train };
                    map.insert(name.clone(), v);
                }
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

    fn on_train_end(&mut self, _summary: Option<burn::train::LearnerSummary>) -> Result<(), Box<dyn core::error::Error>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_the_right_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 15, "{t}");
        assert!(t.starts_with("20"), "{t}");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = std::env::temp_dir().join(format!("dmnn-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("summary.json");
        write_atomic(&p, b"{\"a\":1}").unwrap();
        write_atomic(&p, b"{\"a\":2}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"a\":2}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
