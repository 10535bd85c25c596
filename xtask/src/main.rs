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
//! ```
//!
//! Every backend gets its own target directory (`target/` for the CPU, `target/wgpu`,
//! `target/cuda`): switching Burn's features rebuilds hundreds of crates, so they are kept apart.
//! No Burn in here: this crate only composes cargo commands.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

const DMNN_COMMANDS: [&str; 9] =
    ["train", "train-imagenet", "eval", "cost", "bench", "init-from-torchvision", "export", "report", "sweep"];
/// Commands that run on the CPU build whatever the backend.
const CPU_ONLY: [&str; 3] = ["cost", "init-from-torchvision", "export"];
const BACKENDS: [&str; 3] = ["cpu", "wgpu", "cuda"];

fn usage() -> String {
    format!(
        "usage: cargo xtask <command> [--backend cpu|wgpu|cuda] [args...]\n\
         commands: {}, check-features\n\
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
