//! ResNet-50 and a network of resnet_small's shape in PyTorch on the same machine, through
//! `scripts/bench_pytorch.py`.

use std::path::PathBuf;

use super::{BenchRow, TrainRow};
use crate::error::{Result, TrainError};

/// Runs `scripts/bench_pytorch.py` (when PyTorch is installed) and prints PyTorch's times beside
/// ours for the rows both measured: inference `rows`, and training steps of `train_rows` with
/// the fast paths on (without inference rows the script times only the training steps).
///
/// # Errors
/// If the script is missing or fails.
pub fn compare_pytorch(rows: &[BenchRow], train_rows: &[TrainRow]) -> Result<()> {
    let script = ["scripts/bench_pytorch.py", concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench_pytorch.py")]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| TrainError::Other("scripts/bench_pytorch.py not found".into()))?;
    let has_torch = std::process::Command::new("python3")
        .args(["-c", "import torch, torchvision"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("PyTorch comparison skipped: `python3 -c 'import torch, torchvision'` failed (pip install torch torchvision)");
        return Ok(());
    }
    let mut command = std::process::Command::new("python3");
    command.arg(&script);
    if rows.is_empty() {
        command.arg("--train-only");
    }
    let out = command.output().map_err(|e| TrainError::io(&script, e))?;
    if !out.status.success() {
        return Err(TrainError::Other(format!("bench_pytorch.py failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    println!("PyTorch (2 threads) on the same machine:");
    println!("{:<12} {:>5} {:<6} {:>12} {:>12} {:>8}", "model", "batch", "mode", "ours ms", "torch ms", "ratio");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("model,")) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 7 {
            continue;
        }
        let (model, batch, mode) = (f[0], f[2].parse::<usize>().unwrap_or(0), f[4]);
        let torch_ms: f64 = f[5].parse().unwrap_or(f64::NAN);
        let ours = match mode {
            "train" => train_rows
                .iter()
                .find(|r| r.case.model == model && r.case.batch == batch && r.fast_paths == "on")
                .map(|r| r.ms_median),
            _ => rows.iter().find(|r| r.model == model && r.batch == batch && r.mode == mode).map(|r| r.ms_median),
        };
        if let Some(ours) = ours {
            println!("{model:<12} {batch:>5} {mode:<6} {ours:>12.2} {torch_ms:>12.2} {:>8.2}", ours / torch_ms);
        }
    }
    Ok(())
}
