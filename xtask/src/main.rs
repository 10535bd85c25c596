//! `cargo xtask`: builds and runs the `dmnn` binary with the right backend feature.
//!
//! ```text
//! cargo xtask train                          # main job: Fashion-MNIST on the CPU
//! cargo xtask train-imagenet --data DIR --backend cuda
//! cargo xtask eval --checkpoint runs/... [--data DIR]
//! cargo xtask cost --model dmnn50 [--image-size 224] [--json]
//! cargo xtask bench [--backend cuda] [--out results/x.csv] [--compare-pytorch] [--train] [--pipeline]
//! cargo xtask init-from-torchvision --weights resnet50.pth --model dmnn50 --out runs/init
//! cargo xtask export --checkpoint runs/... --out model.safetensors
//! cargo xtask report --run runs/A [--run runs/B ...] [--out DIR]
//! cargo xtask sweep --config studies/fashion-mnist.toml
//! cargo xtask check-features                 # cargo check of the wgpu and cuda builds
//! cargo xtask gpu-bundle [--backend cuda|wgpu] [--out DIR]   # stripped binary + scripts/gpu-check.sh
//! ```
//!
//! Every backend gets its own target directory (`target/` for the CPU, `target/wgpu`,
//! `target/cuda`): switching Burn's features rebuilds hundreds of crates, so they are kept apart.
//! No Burn in here: this crate only composes cargo commands.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const DMNN_COMMANDS: [&str; 10] = [
    "train",
    "train-imagenet",
    "eval",
    "cost",
    "bench",
    "init-from-torchvision",
    "export",
    "report",
    "sweep",
    "synth-imagenet",
];
/// Commands that run on the CPU build whatever the backend.
const CPU_ONLY: [&str; 4] = ["cost", "init-from-torchvision", "export", "synth-imagenet"];
const BACKENDS: [&str; 3] = ["cpu", "wgpu", "cuda"];

fn usage() -> String {
    format!(
        "usage: cargo xtask <command> [--backend cpu|wgpu|cuda] [args...]\n\
         commands: {}, check-features, gpu-bundle\n\
         every argument after the command goes to `dmnn <command>` (see `cargo xtask <command> --help`)",
        DMNN_COMMANDS.join(", ")
    )
}

/// Splits `--backend X` / `--backend=X` out of the arguments.
fn take_backend(args: &mut Vec<String>) -> Result<String> {
    let mut backend = "cpu".to_string();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--backend" {
            backend = args.get(i + 1).cloned().context("--backend needs a value: cpu, wgpu or cuda")?;
            args.drain(i..i + 2);
        } else if let Some(v) = args[i].strip_prefix("--backend=") {
            backend = v.to_string();
            args.remove(i);
        } else {
            i += 1;
        }
    }
    if !BACKENDS.contains(&backend.as_str()) {
        bail!("--backend {backend} is not one of {}", BACKENDS.join(", "));
    }
    Ok(backend)
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn with_backend(cmd: &mut Command, backend: &str) {
    if backend != "cpu" {
        cmd.args(["--features", backend]);
        cmd.env("CARGO_TARGET_DIR", format!("target/{backend}"));
    }
}

fn status(mut cmd: Command) -> Result<ExitCode> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::FAILURE,
    })
}

/// A command that takes no arguments refuses any, before it starts a long build.
fn no_arguments(command: &str, args: &[String]) -> Result<()> {
    match args.first() {
        Some(arg) => bail!("{command} takes no arguments; '{arg}' is not one"),
        None => Ok(()),
    }
}

fn run() -> Result<ExitCode> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first().cloned() else {
        eprintln!("{}", usage());
        return Ok(ExitCode::FAILURE);
    };
    args.remove(0);
    match command.as_str() {
        "check-features" => {
            no_arguments("check-features", &args)?;
            for backend in ["wgpu", "cuda"] {
                eprintln!("xtask: cargo check of the `{backend}` build (target/{backend})");
                let mut cmd = cargo();
                cmd.args(["check", "--package", "dmnn-train", "--bins", "--locked"]);
                with_backend(&mut cmd, backend);
                let code = status(cmd)?;
                if code != ExitCode::SUCCESS {
                    return Ok(code);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        "gpu-bundle" => gpu_bundle(args),
        c if DMNN_COMMANDS.contains(&c) => {
            let backend = take_backend(&mut args)?;
            let mut cmd = cargo();
            cmd.args(["run", "--quiet", "--release", "--package", "dmnn-train", "--bin", "dmnn"]);
            if CPU_ONLY.contains(&c) {
                // analytic or file conversion: runs on the CPU build whatever the backend
                cmd.arg("--").arg(c);
            } else {
                with_backend(&mut cmd, &backend);
                cmd.arg("--").arg(c).args(["--backend", &backend]);
            }
            cmd.args(&args);
            status(cmd)
        }
        "-h" | "--help" | "help" => {
            println!("{}", usage());
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command '{other}'\n{}", usage()),
    }
}

/// `gpu-bundle [--backend cuda|wgpu] [--out DIR]`: a release build of `dmnn` with the GPU
/// backend, stripped, beside `scripts/gpu-check.sh` and a manifest, in one folder to copy to a GPU
/// machine that has neither network nor Rust (docs/gpu.md).
fn gpu_bundle(mut args: Vec<String>) -> Result<ExitCode> {
    let backend = match take_backend(&mut args)?.as_str() {
        "cpu" => "cuda".to_string(),
        b => b.to_string(),
    };
    let mut out = std::path::PathBuf::from(format!("dist/gpu-bundle-{backend}"));
    match args.as_slice() {
        [] => {}
        [flag, dir] if flag == "--out" => out = dir.into(),
        [arg, ..] => bail!("gpu-bundle takes --backend cuda|wgpu and --out DIR; '{arg}' is not one of them"),
    }
    eprintln!("xtask: release build of dmnn with `{backend}` (target/{backend})");
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--locked", "--package", "dmnn-train", "--bin", "dmnn"]);
    with_backend(&mut cmd, &backend);
    let code = status(cmd)?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let binary = out.join("dmnn");
    std::fs::copy(format!("target/{backend}/release/dmnn"), &binary)
        .with_context(|| format!("copying target/{backend}/release/dmnn to {}", binary.display()))?;
    let stripped = Command::new("strip").arg(&binary).status().map(|s| s.success()).unwrap_or(false);
    if !stripped {
        eprintln!("xtask: `strip` is not available or failed: the binary keeps its symbols (larger, works the same)");
    }
    let script = out.join("gpu-check.sh");
    std::fs::copy("scripts/gpu-check.sh", &script).context("copying scripts/gpu-check.sh")?;
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let size = std::fs::metadata(&binary).map(|m| m.len()).unwrap_or(0);
    let manifest = format!(
        "dmnn GPU bundle\ncommit {commit}\nbackend {backend} (Burn's fusion and autotune on)\nbinary dmnn, {size} bytes{}\n\n\
         run on the GPU machine:\n  ./gpu-check.sh --backend {backend}\nand bring back the folder it names at the end \
         (CSV files and log.txt); docs/gpu.md says what each file holds.\n",
        if stripped { ", stripped" } else { "" }
    );
    std::fs::write(out.join("MANIFEST.txt"), manifest).context("writing MANIFEST.txt")?;
    println!("bundle: {} (dmnn {:.1} MiB, gpu-check.sh, MANIFEST.txt)", out.display(), size as f64 / (1 << 20) as f64);
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_features_refuses_an_argument_by_name() {
        assert!(no_arguments("check-features", &[]).is_ok());
        let err = no_arguments("check-features", &["--bogus".to_string()]).unwrap_err().to_string();
        assert!(err.contains("'--bogus'") && err.contains("check-features"), "{err}");
    }

    #[test]
    fn backend_is_taken_out_of_the_arguments() {
        let mut args: Vec<String> = ["--epochs", "1", "--backend", "wgpu"].map(String::from).to_vec();
        assert_eq!(take_backend(&mut args).unwrap(), "wgpu");
        assert_eq!(args, ["--epochs", "1"]);
        let mut bad: Vec<String> = vec!["--backend=tpu".into()];
        assert!(take_backend(&mut bad).unwrap_err().to_string().contains("tpu"));
    }
}
