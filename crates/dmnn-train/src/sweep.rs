//! `dmnn sweep`: a grid of training runs (models × target rates × controllers × widths × epochs
//! × seeds) run one after another, each in its own run directory under the grid's `out`, so
//! the grid can be stopped at any moment — `kill -9` included — and the same command finishes
//! it: finished runs are skipped, a run with a checkpoint resumes from it, a run that died
//! before its first checkpoint starts again. This module reads the grid and says what each run
//! is and where it stands; the `dmnn` binary runs them.
//!
//! A grid, in TOML (or the same keys in JSON):
//!
//! ```toml
//! out = "runs/study"          # one run directory per grid point below it
//! seeds = [1, 2, 3]
//! epochs = [6]
//! args = ["--workers", "2"]   # given to every run (any `dmnn train` flag)
//!
//! [[group]]                   # dynamic networks: models × target_rates × controllers
//! models = ["dmnn_small"]
//! target_rates = [0.4, 0.7]
//! controllers = ["both"]      # none | prev | category | both (default: both)
//!
//! [[group]]                   # static networks: models × width_mults
//! models = ["resnet_small"]
//! width_mults = [0.75, 1.0]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::run::RunDir;

/// What the controllers see besides the block's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Controller {
    /// Neither the previous controller's state nor the category heads.
    None,
    /// The state handed on by the previous controller (GRU), no category heads.
    Prev,
    /// The auxiliary category heads, no state between controllers.
    Category,
    /// Both (the default network).
    Both,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Prev => "prev",
            Self::Category => "category",
            Self::Both => "both",
        }
    }

    fn args(self) -> [&'static str; 4] {
        let (prev, category) = match self {
            Self::None => ("none", "off"),
            Self::Prev => ("gru", "off"),
            Self::Category => ("none", "on"),
            Self::Both => ("gru", "on"),
        };
        ["--prev-state", prev, "--category-head", category]
    }
}

/// One group of the grid: its lists multiply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridGroup {
    /// Model presets.
    pub models: Vec<String>,
    /// Target rates (dynamic networks).
    #[serde(default)]
    pub target_rates: Vec<f64>,
    /// Controller variants (dynamic networks; default `both`).
    #[serde(default)]
    pub controllers: Vec<Controller>,
    /// Width factors (static networks; 1 is the preset itself).
    #[serde(default)]
    pub width_mults: Vec<f64>,
    /// Overrides the grid's epochs for this group.
    #[serde(default)]
    pub epochs: Vec<usize>,
    /// More `dmnn train` flags for this group's runs.
    #[serde(default)]
    pub args: Vec<String>,
    /// A word added to the names of this group's runs (needed when `args` make them differ
    /// from another group's runs of the same point).
    #[serde(default)]
    pub tag: Option<String>,
}

/// A grid of runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// The directory that holds one run directory per grid point.
    pub out: PathBuf,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Epochs.
    pub epochs: Vec<usize>,
    /// `dmnn train` flags given to every run.
    #[serde(default)]
    pub args: Vec<String>,
    /// The groups.
    #[serde(rename = "group")]
    pub groups: Vec<GridGroup>,
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRun {
    /// Its directory's name (unique in the grid; says every setting that varies).
    pub name: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its `dmnn train` arguments, `--out` and `--plain` included.
    pub args: Vec<String>,
}

/// Where a run of the grid stands on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No directory yet.
    New,
    /// A directory without a complete checkpoint: the run died in its first epoch.
    Started,
    /// A complete checkpoint of this epoch, no summary.
    Resumable(usize),
    /// `summary.json` is written.
    Finished,
}

impl Grid {
    /// Reads a grid from a `.toml` or `.json` file.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a grid without runs, named.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let bad = |e: &dyn std::fmt::Display| TrainError::Config(format!("sweep grid {}: {e}", path.display()));
        let grid: Self = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| bad(&e))?,
            Some("toml") => toml::from_str(&text).map_err(|e| bad(&e))?,
            _ => return Err(bad(&"the file must end in .toml or .json")),
        };
        grid.validate().map_err(|e| bad(&e))?;
        Ok(grid)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.seeds.is_empty() {
            return Err("`seeds` is empty".into());
        }
        if self.groups.is_empty() {
            return Err("no [[group]]".into());
        }
        for (i, g) in self.groups.iter().enumerate() {
            let at = format!("group {}", i + 1);
            if g.models.is_empty() {
                return Err(format!("{at}: `models` is empty"));
            }
            let dynamic = !g.target_rates.is_empty() || !g.controllers.is_empty();
            if dynamic && !g.width_mults.is_empty() {
                return Err(format!("{at}: give target_rates/controllers (dynamic) or width_mults (static), not both"));
            }
            if let Some(t) = g.target_rates.iter().find(|t| !(t.is_finite() && **t > 0.0 && **t <= 1.0)) {
                return Err(format!("{at}: target rate {t} is not in (0, 1]"));
            }
            if let Some(w) = g.width_mults.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
                return Err(format!("{at}: width factor {w} is not positive"));
            }
            if self.epochs.is_empty() && g.epochs.is_empty() {
                return Err(format!("{at}: no epochs (set `epochs` for the grid or the group)"));
            }
            if let Some(a) = g
                .args
                .iter()
                .chain(&self.args)
                .find(|a| ["--out", "--resume", "--seed", "--epochs"].contains(&a.as_str()))
            {
                return Err(format!("`{a}` is set by the grid itself, not in args"));
            }
            if let Some(t) =
                g.tag.as_ref().filter(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
            {
                return Err(format!("{at}: tag {t:?} must be letters, digits or dots"));
            }
        }
        let runs = self.runs();
        for (i, r) in runs.iter().enumerate() {
            if let Some(other) = runs[..i].iter().find(|o| o.name == r.name) {
                return Err(format!(
                    "two runs are named {} with other arguments ({} / {}); give one group a `tag`",
                    r.name,
                    other.args.join(" "),
                    r.args.join(" ")
                ));
            }
        }
        Ok(())
    }

    /// Every run of the grid, seeds outermost (a stopped grid has whole seeds), then groups in
    /// order; a grid point that two groups share runs once.
    pub fn runs(&self) -> Vec<SweepRun> {
        let mut runs: Vec<SweepRun> = Vec::new();
        for &seed in &self.seeds {
            for g in &self.groups {
                let epochs = if g.epochs.is_empty() { &self.epochs } else { &g.epochs };
                let dynamic = !g.target_rates.is_empty() || !g.controllers.is_empty();
                for model in &g.models {
                    for &e in epochs {
                        let mut points: Vec<(String, Vec<String>)> = Vec::new();
                        if dynamic {
                            let rates: Vec<Option<f64>> = if g.target_rates.is_empty() {
                                vec![None]
                            } else {
                                g.target_rates.iter().copied().map(Some).collect()
                            };
                            let controllers =
                                if g.controllers.is_empty() { vec![Controller::Both] } else { g.controllers.clone() };
                            for rate in &rates {
                                for c in &controllers {
                                    let mut args: Vec<String> = Vec::new();
                                    let mut name = model.clone();
                                    if let Some(t) = rate {
                                        name += &format!("-t{t}");
                                        args.extend(["--target-rate".into(), t.to_string()]);
                                    }
                                    name += &format!("-{}", c.name());
                                    args.extend(c.args().map(String::from));
                                    points.push((name, args));
                                }
                            }
                        } else {
                            let widths = if g.width_mults.is_empty() { vec![1.0] } else { g.width_mults.clone() };
                            for w in widths {
                                if w == 1.0 {
                                    points.push((model.clone(), Vec::new()));
                                } else {
                                    points.push((format!("{model}-w{w}"), vec!["--width-mult".into(), w.to_string()]));
                                }
                            }
                        }
                        for (name, point_args) in points {
                            let tag = g.tag.as_ref().map(|t| format!("-{t}")).unwrap_or_default();
                            let name = format!("{name}{tag}-e{e}-s{seed}");
                            let dir = self.out.join(&name);
                            let mut args: Vec<String> =
                                vec!["train".into(), "--plain".into(), "--model".into(), model.clone()];
                            args.extend(point_args);
                            args.extend(["--epochs".into(), e.to_string(), "--seed".into(), seed.to_string()]);
                            args.extend(self.args.iter().cloned());
                            args.extend(g.args.iter().cloned());
                            args.extend(["--out".into(), dir.display().to_string()]);
                            // a point that two groups share runs once
                            if !runs.iter().any(|r| r.name == name && r.args == args) {
                                runs.push(SweepRun { name, dir, args });
                            }
                        }
                    }
                }
            }
        }
        runs
    }
}

/// Where the run in `dir` stands.
pub fn run_state(dir: &Path) -> RunState {
    let run = RunDir::new(dir);
    if run.summary().is_file() {
        RunState::Finished
    } else if let Some(k) = run.latest_checkpoint() {
        RunState::Resumable(k)
    } else if dir.exists() {
        RunState::Started
    } else {
        RunState::New
    }
}

/// Checks that the run directory `dir` holds the run `expected` describes (and not, say, an
/// earlier grid's run of the same name with other settings).
///
/// # Errors
/// A directory whose configuration differs, with the first difference.
pub fn check_same_run(dir: &Path, expected: &TrainConfig) -> Result<()> {
    let found = RunDir::new(dir).read_config()?;
    // where the data lies is not a setting of the run: a checkout that moved (the vendored data
    // is found beside the binary's sources) still holds the same runs
    let settings = |c: &TrainConfig| -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(c)?;
        if let Some(data) = v.get_mut("data").and_then(|d| d.as_object_mut()) {
            data.remove("dir");
        }
        Ok(v)
    };
    let (a, b) = (settings(&found)?, settings(expected)?);
    if a == b {
        return Ok(());
    }
    let key = match (a.as_object(), b.as_object()) {
        (Some(x), Some(y)) => x.keys().chain(y.keys()).find(|k| x.get(*k) != y.get(*k)).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    Err(TrainError::Config(format!(
        "{} holds a run with other settings than the grid's ({key} differs); move it away or change `out`",
        dir.display()
    )))
}

/// A lock that keeps two sweeps off the same grid: `out/sweep.lock` with the process id, taken
/// over when that process is gone (after a `kill -9`).
#[derive(Debug)]
pub struct SweepLock {
    path: PathBuf,
}

impl SweepLock {
    /// Takes the lock of the grid in `out`.
    ///
    /// # Errors
    /// Another live sweep holds it, or it cannot be written.
    pub fn take(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
        let path = out.join("sweep.lock");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists() {
                    return Err(TrainError::Config(format!(
                        "another sweep (process {pid}) is running this grid ({}); wait for it or stop it",
                        path.display()
                    )));
                }
            }
        }
        crate::run::write_atomic(&path, std::process::id().to_string().as_bytes())
            .map_err(|e| TrainError::io(&path, e))?;
        Ok(Self { path })
    }
}

impl Drop for SweepLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(text: &str) -> Result<Grid> {
        let dir = std::env::temp_dir().join(format!("dmnn-grid-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("grid.toml");
        std::fs::write(&path, text).unwrap();
        let g = Grid::read(&path);
        std::fs::remove_dir_all(dir).unwrap();
        g
    }

    #[test]
    fn grid_expands_seeds_outermost_and_runs_a_shared_point_once() {
        let g = grid(
            r#"
            out = "runs/s"
            seeds = [1, 2]
            epochs = [2]
            args = ["--workers", "2"]
            [[group]]
            models = ["dmnn_small"]
            target_rates = [0.4, 0.7]
            [[group]]
            models = ["dmnn_small"]
            target_rates = [0.7]
            controllers = ["none", "both"]
            [[group]]
            models = ["resnet_small"]
            width_mults = [0.75, 1.0]
            "#,
        )
        .unwrap();
        let names: Vec<String> = g.runs().into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [1, 2]
                .iter()
                .flat_map(|s| {
                    [
                        "dmnn_small-t0.4-both",
                        "dmnn_small-t0.7-both",
                        "dmnn_small-t0.7-none",
                        "resnet_small-w0.75",
                        "resnet_small",
                    ]
                    .map(|n| format!("{n}-e2-s{s}"))
                })
                .collect::<Vec<_>>()
        );
        let run = &g.runs()[2];
        assert_eq!(
            run.args.join(" "),
            "train --plain --model dmnn_small --target-rate 0.7 --prev-state none --category-head off \
             --epochs 2 --seed 1 --workers 2 --out runs/s/dmnn_small-t0.7-none-e2-s1"
        );
    }

    #[test]
    fn bad_grids_are_named_errors() {
        let err = grid("out = \"x\"\nseeds = []\nepochs = [1]\n[[group]]\nmodels = [\"a\"]\n").unwrap_err().to_string();
        assert!(err.contains("`seeds` is empty"), "{err}");
        let err = grid("out = \"x\"\nseeds = [1]\nepochs = [1]\n[[group]]\nmodels = [\"a\"]\ntarget_rates = [1.5]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("target rate 1.5"), "{err}");
        let err =
            grid("out = \"x\"\nseeds = [1]\nepochs = [1]\nargs = [\"--seed\", \"3\"]\n[[group]]\nmodels = [\"a\"]\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("`--seed` is set by the grid"), "{err}");
        let clash = "out = \"x\"\nseeds = [1]\nepochs = [1]\n[[group]]\nmodels = [\"a\"]\n[[group]]\nmodels = [\"a\"]\nargs = [\"--lr\", \"1\"]\n";
        let err = grid(clash).unwrap_err().to_string();
        assert!(err.contains("two runs are named a-e1-s1") && err.contains("`tag`"), "{err}");
        let tagged = grid(&clash.replace("args = [", "tag = \"lr1\"\nargs = [")).unwrap();
        let names: Vec<String> = tagged.runs().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a-e1-s1", "a-lr1-e1-s1"]);
        let err = grid("out = \"x\"\nseed = [1]\n").unwrap_err().to_string();
        assert!(err.contains("sweep grid") && err.contains("seed"), "{err}");
    }
}
