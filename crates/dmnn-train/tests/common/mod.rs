//! Helpers shared by the integration tests: temporary directories and the `dmnn` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use dmnn_train::run::load_run_model;

/// Every float tensor of the model (parameters and batch-norm statistics), flattened.
struct Collect(Vec<f32>);

impl ModuleVisitor<Flex> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
        self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
    }
}

/// Every float tensor of a run's final network (or latest checkpoint), flattened.
pub fn weights(dir: &Path) -> Vec<f32> {
    let (_, model) = load_run_model::<Flex>(dir, &Default::default()).unwrap();
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dmnn-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `dmnn` binary of this package.
pub fn dmnn() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmnn"));
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run dmnn")
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Arguments of a quick Fashion-MNIST run: a half-width dmnn_small, a few steps per epoch.
pub fn quick_fashion_args(out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--plain",
        "--width-mult",
        "0.5",
        "--batch-size",
        "32",
        "--max-steps-per-epoch",
        "6",
        "--max-eval-batches",
        "2",
        "--eval-batch-size",
        "64",
        "--workers",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--epochs".to_string(), epochs.to_string(), "--out".to_string(), out.display().to_string()])
    .collect()
}
