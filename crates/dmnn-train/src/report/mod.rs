//! `dmnn report`: what trained networks do, as figures and a `report.md` that embeds them.
//!
//! Reads run directories (config, summary, metrics, final network), measures what it needs in
//! sparse mode once per network ([`analysis`], cached as `report/analysis.json` in the run
//! directory, so a second report is fast), and writes:
//!
//! 1. `error_vs_gmacs.png`: top-1 error against executed GMACs per image, one point per run
//!    (± std over the test images), the threshold sweep of every dynamic run, static runs as
//!    their own series, every dynamic run's all-paths-on point marked; with several seeds also
//!    `error_vs_gmacs_means.png`, one point per configuration (mean ± std over its seeds);
//! 2. `easy_hard.png`, `easy_hard_per_class.png`: the test images that executed the fewest and
//!    the most MACs, overall and per class, with label, prediction and GMACs;
//! 3. `open_rates.png`: the open rate of every gated block per class (heatmap) and overall (bars);
//! 4. `gmacs_hist.png`: the histogram of executed GMACs per image;
//! 5. `curves.png`: the training curves per epoch (every loss term, top-1, MACs ratio; train and
//!    valid);
//!
//! plus `runs.csv` (one row per run) and `groups.csv` (mean ± std over the seeds of every
//! configuration). Figures 2–5 are drawn for the first run (lowest seed) of every configuration;
//! figures 2–4 only for dynamic networks (a static network runs every image the same way).

pub mod analysis;
pub mod figures;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use dmnn_core::gate::PrevState;

use crate::config::TrainConfig;
use crate::data::Split;
use crate::error::{Result, TrainError};
use crate::run::{write_atomic, RunDir};
use crate::train::Summary;
use analysis::{analyse_run, RunAnalysis};
use figures::{Curve, Panel, RunPoint, SweepCurve, Tile, TileRow};

/// A finished run as a report reads it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The run directory.
    pub dir: RunDir,
    /// The directory's name.
    pub name: String,
    /// Its configuration.
    pub config: TrainConfig,
    /// Its `summary.json`.
    pub summary: Summary,
    /// Its `metrics.csv`.
    pub metrics: MetricsTable,
}

impl RunRecord {
    /// Reads the run at `dir`.
    ///
    /// # Errors
    /// A directory that is not a run, or a run that has not finished, named.
    pub fn read(dir: &Path) -> Result<Self> {
        let run = RunDir::new(dir);
        let config = run.read_config()?;
        let summary_path = run.summary();
        let text = std::fs::read_to_string(&summary_path).map_err(|_| TrainError::NotARun {
            path: dir.to_path_buf(),
            reason: "it has no summary.json: the run has not finished (resume it with `dmnn train --resume DIR`)"
                .into(),
        })?;
        let summary: Summary = serde_json::from_str(&text)
            .map_err(|e| TrainError::Other(format!("{} is not a run summary: {e}", summary_path.display())))?;
        let metrics = MetricsTable::read(&run.metrics())?;
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { dir: run, name, config, summary, metrics })
    }

    /// Whether the network is dynamic (gated).
    pub fn dynamic(&self) -> bool {
        self.config.model.is_dynamic()
    }

    /// What the controllers see besides the block's input: `none`, `prev` (the state handed on
    /// by the previous controller), `category` (the auxiliary category heads) or `both`; `None`
    /// for a static network.
    pub fn controller(&self) -> Option<&'static str> {
        let c = self.config.model.controller.as_ref().filter(|_| self.dynamic())?;
        Some(match (c.prev_state != PrevState::None, c.category_head) {
            (false, false) => "none",
            (true, false) => "prev",
            (false, true) => "category",
            (true, true) => "both",
        })
    }

    /// A short name of the configuration without its seed (the legend entry).
    pub fn label(&self) -> String {
        match self.controller() {
            Some(c) => format!("{} t={} ({c})", self.config.model.name, self.config.objective.target_rate),
            None => self.config.model.name.clone(),
        }
    }

    /// The configuration without seed: runs that differ only in their seed share it.
    fn fingerprint(&self) -> String {
        let mut value = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("seed");
        }
        value.to_string()
    }
}

/// `metrics.csv`: one row per epoch, a column per metric (`train_top1`, `valid_loss`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsTable {
    /// The header.
    pub columns: Vec<String>,
    /// The rows, a value per column (NaN where empty).
    pub rows: Vec<Vec<f64>>,
}

impl MetricsTable {
    /// Reads a metrics CSV; a missing file is an empty table.
    ///
    /// # Errors
    /// A file that is not a metrics CSV.
    pub fn read(path: &Path) -> Result<Self> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(Self::default()) };
        let mut lines = text.lines();
        let columns: Vec<String> = lines.next().unwrap_or("").split(',').map(str::to_string).collect();
        if columns.first().map(String::as_str) != Some("epoch") {
            return Err(TrainError::Other(format!("{} is not a metrics table (no epoch column)", path.display())));
        }
        let rows = lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|v| v.trim().parse().unwrap_or(f64::NAN)).collect())
            .collect();
        Ok(Self { columns, rows })
    }

    /// `(epoch, value)` of column `name`, where it has values.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let Some(c) = self.columns.iter().position(|n| n == name) else { return Vec::new() };
        self.rows.iter().filter_map(|r| Some((*r.first()?, *r.get(c)?))).filter(|(_, v)| v.is_finite()).collect()
    }
}

/// What `dmnn report` is asked.
#[derive(Debug, Clone)]
pub struct ReportRequest {
    /// Run directories.
    pub runs: Vec<PathBuf>,
    /// Output directory (default: `report/` in the run directory for one run, beside the first
    /// run for several).
    pub out: Option<PathBuf>,
    /// The report's title.
    pub title: Option<String>,
}

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct ReportOutput {
    /// Its directory.
    pub dir: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// Every figure.
    pub figures: Vec<PathBuf>,
}

/// Runs that differ only in their seed.
struct Group<'a> {
    label: String,
    runs: Vec<(&'a RunRecord, &'a RunAnalysis)>,
}

/// Mean and sample standard deviation (`None` for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let std = (values.len() > 1).then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, std)
}

fn pm(mean: f64, std: Option<f64>, digits: usize) -> String {
    match std {
        Some(s) => format!("{mean:.digits$} ± {s:.digits$}"),
        None => format!("{mean:.digits$}"),
    }
}

/// Writes the report of `request.runs` with `B` for the evaluations; `progress` hears what is
/// being done.
///
/// # Errors
/// A directory that is not a finished run (named), data or a record that cannot be read, a
/// figure or file that cannot be written.
pub fn write_report<B: Backend>(
    request: &ReportRequest,
    device: &B::Device,
    progress: &dyn Fn(&str),
) -> Result<ReportOutput> {
    if request.runs.is_empty() {
        return Err(TrainError::Config("a report needs at least one run directory (--run DIR)".into()));
    }
    let records: Vec<RunRecord> = request.runs.iter().map(|d| RunRecord::read(d)).collect::<Result<_>>()?;
    let mut analyses = Vec::with_capacity(records.len());
    for r in &records {
        progress(&format!("{}: analysing", r.name));
        analyses.push(analyse_run::<B>(&r.dir, device, &|m| progress(&format!("{}: {m}", r.name)))?);
    }
    let single = records.len() == 1;
    let out = request.out.clone().unwrap_or_else(|| {
        if single {
            records[0].dir.root().join("report")
        } else {
            records[0].dir.root().parent().unwrap_or(Path::new(".")).join("report")
        }
    });
    std::fs::create_dir_all(&out).map_err(|e| TrainError::io(&out, e))?;

    // configurations, in the order of their first run; seeds in ascending order
    let mut groups: Vec<(String, Group<'_>)> = Vec::new();
    for (r, a) in records.iter().zip(&analyses) {
        let key = r.fingerprint();
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.runs.push((r, a)),
            None => groups.push((key, Group { label: r.label(), runs: vec![(r, a)] })),
        }
    }
    // configurations that share a short name (other flags, as a sweep's tagged groups) go by
    // their first run's directory name, seed left out
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, g) in &mut groups {
        g.runs.sort_by_key(|(r, _)| r.config.seed);
        *count.entry(g.label.clone()).or_default() += 1;
    }
    for (_, g) in &mut groups {
        if count[&g.label] > 1 {
            let name = &g.runs[0].0.name;
            let stem =
                name.rsplit_once("-s").filter(|(_, s)| s.parse::<u64>().is_ok()).map_or(name.as_str(), |(a, _)| a);
            g.label = format!("{} [{stem}]", g.label);
        }
    }
    let groups: Vec<Group<'_>> = groups.into_iter().map(|(_, g)| g).collect();

    let title = request.title.clone().unwrap_or_else(|| {
        if single {
            format!("Report of {}", records[0].name)
        } else {
            format!("Report of {} runs", records.len())
        }
    });
    let mut figures_written = Vec::new();
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    let _ = writeln!(
        md,
        "Written by `dmnn report` ({}). Accuracy and GMACs are those of each run's `summary.json` (test split, \
         sparse execution, threshold 0.5); MACs are multiply-accumulates per image.\n",
        crate::run::timestamp()
    );

    // the table of runs
    let _ = writeln!(md, "## Runs\n");
    let _ = writeln!(md, "| run | configuration | seed | epochs | test top-1 % | top-5 % | GMACs / image (mean ± std) | MACs ratio | params | wall s |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    let mut runs_csv = String::from("run,configuration,model,dynamic,target_rate,controller,seed,epochs,test_top1,test_top5,gmacs_mean,gmacs_std,gmacs_full,macs_ratio,params,wall_seconds\n");
    for g in &groups {
        for (r, _) in &g.runs {
            let s = &r.summary;
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {:.2} | {:.2} | {:.5} ± {:.5} | {:.3} | {} | {:.0} |",
                r.name,
                g.label,
                r.config.seed,
                s.epochs,
                100.0 * s.test_accuracy,
                100.0 * s.test_top5,
                s.gmacs_mean,
                s.gmacs_std,
                s.macs_ratio_mean,
                s.params,
                s.wall_seconds
            );
            let _ = writeln!(
                runs_csv,
                "{},{},{},{},{},{},{},{},{:.4},{:.4},{:.6},{:.6},{:.6},{:.4},{},{:.1}",
                r.name,
                g.label,
                r.config.model.name,
                r.dynamic(),
                if r.dynamic() { r.config.objective.target_rate.to_string() } else { String::new() },
                r.controller().unwrap_or(""),
                r.config.seed,
                s.epochs,
                100.0 * s.test_accuracy,
                100.0 * s.test_top5,
                s.gmacs_mean,
                s.gmacs_std,
                s.gmacs_full,
                s.macs_ratio_mean,
                s.params,
                s.wall_seconds
            );
        }
    }
    write_file(&out.join("runs.csv"), &runs_csv)?;

    // mean ± std over seeds
    let mut groups_csv = String::from(
        "configuration,seeds,top1_error_mean,top1_error_std,gmacs_mean,gmacs_mean_std,macs_ratio_mean,macs_ratio_std\n",
    );
    if groups.iter().any(|g| g.runs.len() > 1) {
        let _ = writeln!(md, "\n## Configurations (mean ± std over seeds)\n");
        let _ = writeln!(md, "| configuration | seeds | top-1 error % | GMACs / image | MACs ratio |");
        let _ = writeln!(md, "|---|---|---|---|---|");
    }
    for g in &groups {
        let err: Vec<f64> = g.runs.iter().map(|(r, _)| 100.0 * (1.0 - r.summary.test_accuracy)).collect();
        let gm: Vec<f64> = g.runs.iter().map(|(r, _)| r.summary.gmacs_mean).collect();
        let ratio: Vec<f64> = g.runs.iter().map(|(r, _)| r.summary.macs_ratio_mean).collect();
        let ((e, es), (m, ms), (q, qs)) = (mean_std(&err), mean_std(&gm), mean_std(&ratio));
        let seeds: Vec<String> = g.runs.iter().map(|(r, _)| r.config.seed.to_string()).collect();
        if groups.iter().any(|g| g.runs.len() > 1) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                g.label,
                seeds.join(", "),
                pm(e, es, 2),
                pm(m, ms, 5),
                pm(q, qs, 3)
            );
        }
        let opt = |v: Option<f64>, d: usize| v.map(|v| format!("{v:.d$}")).unwrap_or_default();
        let _ = writeln!(
            groups_csv,
            "{},{},{e:.4},{},{m:.6},{},{q:.4},{}",
            g.label,
            seeds.join(" "),
            opt(es, 4),
            opt(ms, 6),
            opt(qs, 4)
        );
    }
    write_file(&out.join("groups.csv"), &groups_csv)?;

    // figure 1
    let points: Vec<RunPoint> = groups
        .iter()
        .flat_map(|g| {
            g.runs.iter().map(|(r, _)| RunPoint {
                series: g.label.clone(),
                gmacs: r.summary.gmacs_mean,
                gmacs_std: r.summary.gmacs_std,
                error: 100.0 * (1.0 - r.summary.test_accuracy),
                error_std: 0.0,
                dynamic: r.dynamic(),
            })
        })
        .collect();
    let sweeps: Vec<SweepCurve> = groups
        .iter()
        .flat_map(|g| {
            g.runs.iter().filter(|(_, a)| !a.sweep.is_empty()).map(|(_, a)| SweepCurve {
                series: g.label.clone(),
                points: a.sweep.iter().map(|p| (p.gmacs_mean, 100.0 * (1.0 - p.top1))).collect(),
            })
        })
        .collect();
    let fig1 = out.join("error_vs_gmacs.png");
    figures::error_vs_gmacs(
        &fig1,
        "Top-1 error vs executed GMACs per image (test split)",
        "mean over the test images; bars: ± one std",
        &points,
        &sweeps,
    )?;
    figures_written.push(fig1);
    let _ = writeln!(md, "\n## Top-1 error vs GMACs\n");
    if groups.iter().any(|g| g.runs.len() > 1) {
        // one point per configuration: the study's figure
        let means: Vec<RunPoint> = groups
            .iter()
            .map(|g| {
                let err: Vec<f64> = g.runs.iter().map(|(r, _)| 100.0 * (1.0 - r.summary.test_accuracy)).collect();
                let gm: Vec<f64> = g.runs.iter().map(|(r, _)| r.summary.gmacs_mean).collect();
                let ((error, es), (gmacs, gs)) = (mean_std(&err), mean_std(&gm));
                RunPoint {
                    series: g.label.clone(),
                    gmacs,
                    gmacs_std: gs.unwrap_or(0.0),
                    error,
                    error_std: es.unwrap_or(0.0),
                    dynamic: g.runs[0].0.dynamic(),
                }
            })
            .collect();
        let fig = out.join("error_vs_gmacs_means.png");
        figures::error_vs_gmacs(
            &fig,
            "Top-1 error vs executed GMACs per image, mean over seeds (test split)",
            "mean over seeds; bars: ± one std over seeds",
            &means,
            &[],
        )?;
        figures_written.push(fig);
        let _ = writeln!(
            md,
            "![top-1 error vs GMACs, mean over seeds](error_vs_gmacs_means.png)\n\nOne point per configuration: \
             the mean over its seeds, bars ± one standard deviation over the seeds (both axes).\n"
        );
    }
    let _ = writeln!(md, "![top-1 error vs GMACs](error_vs_gmacs.png)\n");
    let _ = writeln!(
        md,
        "One point per run (circles: dynamic, squares: static), horizontal bars ± one standard deviation of the \
         executed GMACs over the test images; lines: the run-time threshold sweep of each dynamic run \
         (thresholds {}), its cross the same network with every path on.\n",
        analysis::SWEEP_THRESHOLDS.map(|t| t.to_string()).join(", ")
    );

    // the threshold sweeps
    let swept: Vec<&(&RunRecord, &RunAnalysis)> =
        groups.iter().flat_map(|g| g.runs.first()).filter(|(_, a)| !a.sweep.is_empty()).collect();
    if !swept.is_empty() {
        let _ = writeln!(md, "## Run-time threshold sweep (first seed of each configuration)\n");
        for (r, a) in swept {
            let _ = writeln!(
                md,
                "`{}`:\n\n| threshold | test top-1 % | GMACs / image | of every path on |\n|---|---|---|---|",
                r.name
            );
            for p in &a.sweep {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {:.5} ± {:.5} | {:.3} |",
                    p.threshold,
                    100.0 * p.top1,
                    p.gmacs_mean,
                    p.gmacs_std,
                    p.gmacs_mean / a.gmacs_full.max(1e-30)
                );
            }
            let _ = writeln!(md);
        }
    }

    // figures 2-5 for the first run of every configuration
    for g in &groups {
        let (r, a) = g.runs[0];
        let dir = if single { out.clone() } else { out.join(&r.name) };
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        let rel = |f: &str| if single { f.to_string() } else { format!("{}/{f}", r.name) };
        let _ = writeln!(md, "## `{}` ({})\n", r.name, g.label);
        if r.dynamic() && !a.images.is_empty() {
            progress(&format!("{}: figures", r.name));
            let written = run_figures(r, a, &dir)?;
            for f in ["easy_hard.png", "easy_hard_per_class.png", "open_rates.png", "gmacs_hist.png"] {
                let _ = writeln!(md, "![{f}]({})\n", rel(f));
            }
            figures_written.extend(written);
        }
        let curves = dir.join("curves.png");
        figures::training_curves(&curves, &format!("Training curves of {}", r.name), &curve_panels(&r.metrics))?;
        figures_written.push(curves);
        let _ = writeln!(md, "![curves.png]({})\n", rel("curves.png"));
    }
    let markdown = out.join("report.md");
    write_file(&markdown, &md)?;
    Ok(ReportOutput { dir: out, markdown, figures: figures_written })
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

/// Figures 2–4 of one dynamic run.
fn run_figures(r: &RunRecord, a: &RunAnalysis, dir: &Path) -> Result<Vec<PathBuf>> {
    let source = r.config.data.open(Split::Test, r.config.model.image_size)?;
    let names = source.class_names();
    let images = &a.images;
    let (mean, std) = source.normalisation();
    let [c, h, w] = source.image_shape();
    let tile = |k: usize| -> Tile {
        let index = images.index[k] as usize;
        let mut buf = vec![0f32; c * h * w];
        let _ = source.load(index, None, &mut buf);
        let channel = |ch: usize, p: usize| {
            let ch = ch.min(c - 1);
            ((buf[ch * h * w + p] * std[ch] + mean[ch]) * 255.0).round().clamp(0.0, 255.0) as u8
        };
        let pixels = (0..h * w).map(|p| [channel(0, p), channel(1, p), channel(2, p)]).collect();
        let (label, pred) = (images.label[k] as usize, images.pred[k] as usize);
        let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| i.to_string());
        let gmacs = format!("{:.5} GMACs", images.macs[k] / 1e9);
        let caption = if label == pred {
            [name(label), gmacs, String::new()]
        } else {
            [name(label), format!("taken for {}", name(pred)), gmacs]
        };
        Tile { pixels, height: h, width: w, caption, wrong: label != pred }
    };
    // fewest MACs first; ties in dataset order
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by(|&x, &y| images.macs[x].total_cmp(&images.macs[y]).then(x.cmp(&y)));
    let hardest = |ks: &[usize], n: usize| -> Vec<usize> {
        let mut v: Vec<usize> = ks.to_vec();
        v.sort_by(|&x, &y| images.macs[y].total_cmp(&images.macs[x]).then(x.cmp(&y)));
        v.truncate(n);
        v
    };
    let mut written = Vec::new();
    let overall = [
        TileRow {
            title: "easiest: the fewest executed MACs".into(),
            tiles: order.iter().take(8).map(|&k| tile(k)).collect(),
            gap_before: None,
        },
        TileRow {
            title: "hardest: the most executed MACs".into(),
            tiles: hardest(&order, 8).into_iter().map(tile).collect(),
            gap_before: None,
        },
    ];
    let path = dir.join("easy_hard.png");
    figures::tiles(
        &path,
        &format!("Easy and hard test images of {} (label; in red, what a wrong prediction took it for)", r.name),
        &overall,
    )?;
    written.push(path);
    let shown = names.len().min(10);
    let per_class: Vec<TileRow> = (0..shown)
        .map(|class| {
            let of_class: Vec<usize> = order.iter().copied().filter(|&k| images.label[k] as usize == class).collect();
            let easiest: Vec<usize> = of_class.iter().copied().take(3).collect();
            let rest: Vec<usize> = of_class.iter().copied().filter(|k| !easiest.contains(k)).collect();
            let mut tiles: Vec<Tile> = easiest.iter().map(|&k| tile(k)).collect();
            let gap_before = Some(tiles.len());
            tiles.extend(hardest(&rest, 3).into_iter().map(tile));
            TileRow { title: format!("{}: the 3 easiest | the 3 hardest", names[class]), tiles, gap_before }
        })
        .collect();
    let path = dir.join("easy_hard_per_class.png");
    let more =
        if names.len() > shown { format!(" (the first {shown} of {} classes)", names.len()) } else { String::new() };
    figures::tiles(&path, &format!("Easiest and hardest test images per class{more}"), &per_class)?;
    written.push(path);

    // open rates per class and block
    let blocks = images.open.first().map_or(0, Vec::len);
    let paths = a.num_paths.max(1) as f64;
    let mut sums = vec![vec![0f64; blocks]; shown.max(1)];
    let mut counts = vec![0usize; shown.max(1)];
    let mut overall_rates = vec![0f64; blocks];
    for k in 0..images.len() {
        for (b, &o) in images.open[k].iter().enumerate() {
            overall_rates[b] += o as f64 / paths;
        }
        let class = images.label[k] as usize;
        if class < shown {
            counts[class] += 1;
            for (b, &o) in images.open[k].iter().enumerate() {
                sums[class][b] += o as f64 / paths;
            }
        }
    }
    overall_rates.iter_mut().for_each(|v| *v /= images.len().max(1) as f64);
    let rates: Vec<Vec<f64>> =
        sums.iter().zip(&counts).map(|(row, &n)| row.iter().map(|v| v / n.max(1) as f64).collect()).collect();
    let path = dir.join("open_rates.png");
    figures::open_rates(
        &path,
        &format!("Share of paths open per gated block and class ({}{more})", r.name),
        &names[..shown],
        &rates,
        &overall_rates,
    )?;
    written.push(path);

    let path = dir.join("gmacs_hist.png");
    let gmacs: Vec<f64> = images.macs.iter().map(|m| m / 1e9).collect();
    figures::gmacs_histogram(&path, &format!("Executed GMACs per test image ({})", r.name), &gmacs, a.gmacs_full)?;
    written.push(path);
    Ok(written)
}

/// The panels of the training curves: loss terms, top-1, MACs ratio (train solid, valid dashed).
fn curve_panels(m: &MetricsTable) -> Vec<Panel> {
    let lines = |names: &[(&str, &str)]| -> Vec<Curve> {
        let mut curves = Vec::new();
        for (i, (column, label)) in names.iter().enumerate() {
            for (split, dashed) in [("train", false), ("valid", true)] {
                let points = m.series(&format!("{split}_{column}"));
                if !points.is_empty() {
                    curves.push(Curve { name: format!("{label} ({split})"), points, colour: i, dashed });
                }
            }
        }
        curves
    };
    vec![
        Panel {
            title: "loss terms".into(),
            y_desc: "loss".into(),
            curves: lines(&[
                ("loss", "total"),
                ("ce", "cross-entropy"),
                ("aux_loss", "auxiliary"),
                ("cost_loss", "cost"),
            ]),
        },
        Panel { title: "top-1 accuracy".into(), y_desc: "top-1 (%)".into(), curves: lines(&[("top1", "top-1")]) },
        Panel {
            title: "executed MACs".into(),
            y_desc: "of every path on".into(),
            curves: lines(&[("macs_ratio", "MACs ratio")]),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_is_the_sample_std() {
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, Some(2f64.sqrt())));
        assert_eq!(mean_std(&[5.0]), (5.0, None));
        assert_eq!(pm(1.0, None, 2), "1.00");
        assert_eq!(pm(1.0, Some(0.5), 1), "1.0 ± 0.5");
    }

    #[test]
    fn metrics_table_reads_columns_by_name() {
        let dir = std::env::temp_dir().join(format!("dmnn-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        std::fs::write(&path, "epoch,train_top1,valid_top1\n1,50.0,55.0\n2,60.0,\n").unwrap();
        let m = MetricsTable::read(&path).unwrap();
        assert_eq!(m.series("train_top1"), vec![(1.0, 50.0), (2.0, 60.0)]);
        assert_eq!(m.series("valid_top1"), vec![(1.0, 55.0)]);
        assert!(m.series("nope").is_empty());
        std::fs::write(&path, "a,b\n1,2\n").unwrap();
        assert!(MetricsTable::read(&path).unwrap_err().to_string().contains("no epoch column"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
