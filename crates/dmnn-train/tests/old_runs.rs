//! Runs written by an older dmnn keep working: `tests/fixtures/run-65f1d8b-{gru,lstm}` are two
//! tiny Fashion-MNIST runs (`dmnn_small --width-mult 0.25`, 2 and 1 epochs of 3 steps) made by
//! the `dmnn` binary of commit 65f1d8b, before paths became an enum of their kind and the
//! controller's GRU/LSTM one field. Their records are migrated on load.

mod common;

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::record::Recorder;
use burn::tensor::Tensor;
use common::*;
use dmnn_train::run::{load_run_model, AtomicRecorder, RunDir};
use dmnn_train::step::DmnnClassifier;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fashion_mnist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist")
}

struct Collect(Vec<f32>);

impl ModuleVisitor<Flex> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
        self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
    }
}

fn values<M: Module<Flex>>(module: &M) -> Vec<f32> {
    let mut c = Collect(Vec::new());
    module.visit(&mut c);
    c.0
}

/// What the old binary printed for `dmnn eval --checkpoint RUN --max-batches 2 --batch-size 64
/// --json`: the new one prints the same numbers.
#[test]
fn old_runs_evaluate_as_they_did() {
    for (name, top1_err, top5_err) in [("run-65f1d8b-gru", 92.1875, 50.78125), ("run-65f1d8b-lstm", 92.96875, 51.5625)]
    {
        let out = run(dmnn()
            .args(["eval", "--max-batches", "2", "--batch-size", "64", "--json", "--checkpoint"])
            .arg(fixture(name))
            .arg("--data")
            .arg(fashion_mnist()));
        assert!(out.status.success(), "{name}: {}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["images"], 128, "{name}");
        assert_eq!(json["top1_err"].as_f64(), Some(top1_err), "{name}");
        assert_eq!(json["top5_err"].as_f64(), Some(top5_err), "{name}");
    }
}

#[test]
fn an_old_final_model_equals_its_old_last_checkpoint() {
    let dir = fixture("run-65f1d8b-gru");
    let (config, model) = load_run_model::<Flex>(&dir, &Default::default()).unwrap();
    let device = Default::default();
    let wrapper = DmnnClassifier::for_inference(config.model.init::<Flex>(&device), config.objective.clone());
    let record = AtomicRecorder.load(RunDir::new(&dir).checkpoint("model", 2), &device).unwrap();
    let checkpoint = wrapper.load_record(record).model;
    let (a, b) = (values(&model), values(&checkpoint));
    assert_eq!(a.len(), b.len());
    assert!(a == b, "model.mpk and checkpoint/model-2.mpk hold the same network");
}

#[test]
fn an_old_run_resumes() {
    let tmp = TempDir::new("old-resume");
    let dir = tmp.path().join("run");
    std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
    let src = fixture("run-65f1d8b-lstm");
    for entry in std::fs::read_dir(&src).unwrap().chain(std::fs::read_dir(src.join("checkpoint")).unwrap()) {
        let path = entry.unwrap().path();
        if path.is_file() {
            let rel = path.strip_prefix(&src).unwrap();
            std::fs::copy(&path, dir.join(rel)).unwrap();
        }
    }
    // point the run at this checkout's data, then train one more epoch from its checkpoint
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["data"]["dir"] = serde_json::Value::String(fashion_mnist().display().to_string());
    config["epochs"] = 2.into();
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();
    let out = run(dmnn().args(["train", "--plain", "--resume"]).arg(&dir));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("resuming from the checkpoint of epoch 1"), "{}", text(&out));
    assert!(dir.join("checkpoint/model-2.mpk").is_file());
}
