//! Peak memory of the inference cases, each in a fresh process of the `dmnn` binary.

use std::path::Path;

use burn::tensor::backend::Backend;
use dmnn_core::{ExecutionMode, ForwardOptions};

use super::{images, model_for, random_gates, write_file, BenchRow};
use crate::error::{Result, TrainError};

/// Peak resident set size of this process, MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One inference case of the memory measurement, written `model:image_size:batch:rate:mode`
/// (`mode` is `full`, `masked` or `sparse`).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryCase {
    /// Model preset.
    pub model: String,
    /// Input side.
    pub image_size: usize,
    /// Batch size.
    pub batch: usize,
    /// Gate rate.
    pub rate: f64,
    /// `full`, `masked` or `sparse`.
    pub mode: String,
}

impl std::str::FromStr for MemoryCase {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| TrainError::Config(format!("memory case '{s}': {why}"));
        let parts: Vec<&str> = s.split(':').collect();
        let [model, size, batch, rate, mode] = parts[..] else {
            return Err(bad("not model:image_size:batch:rate:mode".into()));
        };
        if !["full", "masked", "sparse"].contains(&mode) {
            return Err(bad(format!("mode '{mode}' is not one of full, masked, sparse")));
        }
        let count = |what: &str, v: &str| -> Result<usize> {
            v.parse()
                .ok()
                .filter(|&n: &usize| n > 0)
                .ok_or_else(|| bad(format!("{what} '{v}' is not a positive integer")))
        };
        let rate = rate
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| bad(format!("rate '{rate}' is not a number in [0, 1]")))?;
        Ok(Self {
            model: model.to_string(),
            image_size: count("image_size", size)?,
            batch: count("batch", batch)?,
            rate,
            mode: mode.to_string(),
        })
    }
}

impl std::fmt::Display for MemoryCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}:{}:{}", self.model, self.image_size, self.batch, self.rate, self.mode)
    }
}

/// Runs one memory case in this process: the model, the gates of the timed benchmark (same
/// seed), a warm-up and one run. Meant for a fresh process (`dmnn bench --memory-case`), whose
/// peak resident set ([`peak_rss_mib`]) is then the case's alone: the binary, the weights and the
/// largest working set of the forward pass.
///
/// # Errors
/// An unknown model.
pub fn run_memory_case<B: Backend>(case: &MemoryCase, seed: u64, device: &B::Device) -> Result<()> {
    let (config, mut model) = model_for::<B>(&case.model, device)?;
    let x = images::<B>(&config, case.image_size, case.batch, device);
    let gates = (case.mode != "full").then(|| random_gates(&model, case.batch, case.rate, seed, device));
    if case.mode == "full" {
        model.controller = None;
    }
    let mode = if case.mode == "masked" { ExecutionMode::Masked } else { ExecutionMode::Sparse };
    for _ in 0..2 {
        let mut options = ForwardOptions::mode(mode);
        if let Some(g) = &gates {
            options = options.with_gates(g.clone());
        }
        let _ = model.forward_with(x.clone(), options).logits.into_data();
        let _ = B::sync(device);
    }
    Ok(())
}

/// The memory cases of the inference rows of a benchmark.
pub fn memory_cases(rows: &[BenchRow]) -> Vec<MemoryCase> {
    rows.iter()
        .filter(|r| ["full", "masked", "sparse"].contains(&r.mode.as_str()))
        .map(|r| MemoryCase {
            model: r.model.clone(),
            image_size: r.image_size,
            batch: r.batch,
            rate: r.rate,
            mode: r.mode.clone(),
        })
        .collect()
}

/// Writes the peak-memory rows as CSV (`model,image_size,batch,rate,mode,peak_rss_mib`), with a
/// first comment line naming the machine.
///
/// # Errors
/// If the file cannot be written.
pub fn write_memory_csv(path: &Path, rows: &[(MemoryCase, f64)], machine: &str) -> Result<()> {
    let mut text = format!(
        "# {machine}; peak resident set of a fresh process running the case (binary, weights, largest working set)\nmodel,image_size,batch,rate,mode,peak_rss_mib\n"
    );
    for (c, mib) in rows {
        text.push_str(&format!("{},{},{},{},{},{mib:.1}\n", c.model, c.image_size, c.batch, c.rate, c.mode));
    }
    write_file(path, &text)
}

/// Peak resident memory of every inference case of `rows`, each in a fresh process of the
/// `dmnn` binary `exe` (`dmnn bench --memory-case`), so that no case inherits another's heap.
/// mimalloc returns freed memory at once there, so the peak follows the live heap rather than
/// what the allocator kept cached. `progress` sees each result.
///
/// # Errors
/// A case whose process fails or does not report its peak.
pub fn measure_peak_memory(
    exe: &Path,
    rows: &[BenchRow],
    mut progress: impl FnMut(&MemoryCase, f64),
) -> Result<Vec<(MemoryCase, f64)>> {
    let mut out = Vec::new();
    for case in memory_cases(rows) {
        let output = std::process::Command::new(exe)
            .args(["bench", "--memory-case", &case.to_string()])
            .env("MIMALLOC_PURGE_DELAY", "0")
            .output()
            .map_err(|e| TrainError::io(exe, e))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let peak = stdout
            .lines()
            .find_map(|l| l.strip_prefix("peak_rss_mib ").and_then(|v| v.trim().parse::<f64>().ok()))
            .ok_or_else(|| {
                TrainError::Other(format!(
                    "memory case {case} failed: {}{}",
                    stdout,
                    String::from_utf8_lossy(&output.stderr)
                ))
            })?;
        progress(&case, peak);
        out.push((case, peak));
    }
    Ok(out)
}
