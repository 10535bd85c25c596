//! Parity with torchvision. The fixtures in `tests/fixtures/` come from
//! `scripts/make_torchvision_fixtures.py`: small ResNets built from torchvision's own
//! `BasicBlock` / `Bottleneck` and `ResNet.forward` (widths 4/8/16/32, stem 8, 10 classes),
//! seeded random weights and batch-norm statistics, eval mode, saved as `.pth` and
//! `.safetensors`, with an input batch and torchvision's logits for it.

use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, TensorData};
use dmnn_core::weights::{load_torchvision, load_torchvision_into, save_torchvision, ImportOptions, WeightsError};
use dmnn_core::{BlockKind, Dmnn, DmnnConfig, ExecutionMode, ForwardOptions};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Io {
    config: DmnnConfig,
    input: Tensor<B, 4>,
    logits: Vec<f32>,
}

fn io(name: &str) -> Io {
    let text = std::fs::read_to_string(fixture(&format!("{name}_io.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list =
        |k: &str| -> Vec<usize> { v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect() };
    let floats =
        |k: &str| -> Vec<f32> { v[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    let block = if v["block"] == "BasicBlock" { BlockKind::Basic } else { BlockKind::Bottleneck };
    let config = DmnnConfig::new(
        name.into(),
        v["num_classes"].as_u64().unwrap() as usize,
        block,
        list("layers"),
        list("widths"),
    )
    .with_stem_width(v["stem"].as_u64().unwrap() as usize)
    .with_image_size(32);
    let shape = list("input_shape");
    let input = Tensor::from_data(
        TensorData::new(floats("input"), [shape[0], shape[1], shape[2], shape[3]]),
        &Default::default(),
    );
    Io { config, input, logits: floats("logits") }
}

fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= 1e-4 * scale, "{what}: logit {i}: ours {a}, torchvision {b}");
    }
}

#[test]
fn logits_match_torchvision() {
    for name in ["tv_basic", "tv_bottleneck"] {
        let io = io(name);
        for file in [format!("{name}.pth"), format!("{name}.safetensors")] {
            let model = io.config.init::<B>(&Default::default());
            let model = load_torchvision(model, &fixture(&file), ImportOptions::default()).unwrap();
            let logits: Vec<f32> = model.forward(io.input.clone()).logits.into_data().to_vec().unwrap();
            assert_close(&logits, &io.logits, &file);
        }
    }
}

struct Collect(Vec<(Vec<usize>, Vec<f32>)>);

impl ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let t = p.val();
        self.0.push((t.dims().to_vec(), t.into_data().to_vec().unwrap()));
    }
}

fn tensors(model: &Dmnn<B>) -> Vec<(Vec<usize>, Vec<f32>)> {
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// The tensors of the inference network: every one but the controllers' auxiliary heads.
fn inference_tensors(model: &Dmnn<B>) -> Vec<(Vec<usize>, Vec<f32>)> {
    let mut model = model.clone();
    if let Some(controller) = model.controller.as_mut() {
        controller.blocks.iter_mut().for_each(|b| b.aux_head = None);
    }
    tensors(&model)
}

#[test]
fn export_then_import_is_bit_identical() {
    let tmp = std::env::temp_dir().join(format!("dmnn-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let io = io("tv_bottleneck");
    let small = DmnnConfig::preset("dmnn_small").unwrap();
    for config in [io.config.clone(), small] {
        let device = Default::default();
        let x = Tensor::<B, 4>::random([2, config.in_channels, 32, 32], burn::tensor::Distribution::Default, &device);
        let model = config.init::<B>(&device);
        let before = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked)).logits.into_data();
        let path = tmp.join(format!("{}.safetensors", config.name));
        save_torchvision(&model, &path).unwrap();
        let again = load_torchvision(config.init::<B>(&device), &path, ImportOptions::default()).unwrap();
        // the auxiliary heads are training-only and not exported (DESIGN §4): the rest is exact
        assert_eq!(
            inference_tensors(&model),
            inference_tensors(&again),
            "{}: weights differ after the round trip",
            config.name
        );
        let bytes = std::fs::read(&path).unwrap();
        for _ in 0..3 {
            save_torchvision(&model, &path).unwrap();
            assert!(std::fs::read(&path).unwrap() == bytes, "{}: two exports differ", config.name);
        }
        let keys = dmnn_core::weights::read_checkpoint(&path).unwrap();
        assert!(!keys.keys().any(|k| k.contains("aux_head")), "{}: an auxiliary head was exported", config.name);
        let after = again.forward_with(x, ForwardOptions::mode(ExecutionMode::Masked)).logits.into_data();
        before.assert_eq(&after, true);
    }
    std::fs::remove_dir_all(tmp).unwrap();
}

fn load_err(file: &str) -> String {
    let model = io("tv_basic").config.init::<B>(&Default::default());
    let err: WeightsError = load_torchvision(model, &fixture(file), ImportOptions::default()).unwrap_err();
    err.to_string()
}

#[test]
fn bad_checkpoints_name_the_key() {
    let e = load_err("tv_basic_missing.safetensors");
    assert!(e.contains("missing key 'layer2.0.conv1.weight'"), "{e}");
    let e = load_err("tv_basic_extra.safetensors");
    assert!(e.contains("unexpected key 'layer2.0.conv9.weight'"), "{e}");
    let e = load_err("tv_basic_shape.safetensors");
    assert!(e.contains("key 'layer3.0.bn2.running_var' has shape [5] in the checkpoint but [16] in the model"), "{e}");
    // not a checkpoint at all: an error, not a panic
    let e = load_err("tv_basic_io.json");
    assert!(e.contains("not a PyTorch (.pth) or safetensors checkpoint"), "{e}");
    let e = load_err("no_such_file.pth");
    assert!(e.contains("no_such_file.pth"), "{e}");
}

/// A failed load leaves the model as it was (`load_torchvision` takes it by value, so a failed
/// load used to lose it); a good one loads.
#[test]
fn a_failed_load_into_a_model_keeps_it() {
    let io = io("tv_basic");
    let mut model = io.config.init::<B>(&Default::default());
    let _ = model.forward(io.input.clone()); // initialise the lazy parameters
    let before = tensors(&model);
    for bad in ["tv_basic_missing.safetensors", "tv_basic_shape.safetensors", "tv_bottleneck.pth", "no_such_file.pth"] {
        assert!(load_torchvision_into(&mut model, &fixture(bad), ImportOptions::default()).is_err(), "{bad}");
        assert_eq!(tensors(&model), before, "{bad} changed the model");
    }
    load_torchvision_into(&mut model, &fixture("tv_basic.pth"), ImportOptions::default()).unwrap();
    let logits: Vec<f32> = model.forward(io.input.clone()).logits.into_data().to_vec().unwrap();
    assert_close(&logits, &io.logits, "tv_basic.pth");
}

/// The reason of an unreadable file is said once, however the error chain is printed (it was
/// both the message and its source, so `anyhow` printed it twice).
#[test]
fn an_unreadable_file_says_its_reason_once() {
    let model = io("tv_basic").config.init::<B>(&Default::default());
    let err = load_torchvision(model, &fixture("no_such_file.pth"), ImportOptions::default()).unwrap_err();
    let mut chain = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let printed = chain.join(": ");
    assert_eq!(printed.matches("No such file").count(), 1, "{printed}");
}

/// A checkpoint of another depth has the same class count: the classifier's mismatch is its
/// feature width, and the hint says so instead of suggesting a new head.
#[test]
fn a_checkpoint_of_another_depth_is_not_called_another_class_count() {
    let model = io("tv_basic").config.init::<B>(&Default::default());
    let err = load_torchvision(model, &fixture("tv_bottleneck.pth"), ImportOptions::default()).unwrap_err().to_string();
    assert!(!err.contains("--new-head"), "{err}");
    assert!(err.contains("another depth or width"), "{err}");
}

#[test]
fn another_class_count_needs_a_new_head() {
    let io = io("tv_basic");
    let config = io.config.clone().with_num_classes_of(7);
    let model = config.init::<B>(&Default::default());
    let e = load_torchvision(model, &fixture("tv_basic.pth"), ImportOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("key 'fc.") && e.contains("in the checkpoint") && e.contains("another number of classes"),
        "{e}"
    );
    let model = config.init::<B>(&Default::default());
    let model = load_torchvision(model, &fixture("tv_basic.pth"), ImportOptions { allow_new_head: true }).unwrap();
    assert_eq!(model.forward(io.input).logits.dims(), [2, 7]);
}

trait WithClasses {
    fn with_num_classes_of(self, k: usize) -> Self;
}

impl WithClasses for DmnnConfig {
    fn with_num_classes_of(mut self, k: usize) -> Self {
        self.num_classes = k;
        self
    }
}

/// The same network split into two gated paths with a controller; `extra` fresh channels per path.
fn two_path(config: &DmnnConfig, extra: usize) -> DmnnConfig {
    let mut d = config.clone();
    d.num_paths = 2;
    d.path_widths = Some(config.stage_widths.iter().map(|w| w / 2 + extra).collect());
    d.controller = Some(dmnn_core::gate::ControllerConfig::new().with_hidden_size(8));
    d.name = format!("{}_2p", config.name);
    d
}

fn all_on_logits(model: &Dmnn<B>, x: Tensor<B, 4>) -> Vec<f32> {
    let [batch, ..] = x.dims();
    let gates = (0..model.num_blocks()).map(|_| Tensor::<B, 2>::ones([batch, 2], &Default::default())).collect();
    model
        .forward_with(x, ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates))
        .logits
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn dmnn_from_resnet_starts_where_the_resnet_is() {
    let device = Default::default();
    // basic blocks split exactly: all paths on is the ResNet
    let basic = io("tv_basic");
    let resnet =
        load_torchvision(basic.config.init::<B>(&device), &fixture("tv_basic.pth"), ImportOptions::default()).unwrap();
    let (dmnn, report) =
        dmnn_core::weights::init_from_resnet(two_path(&basic.config, 0).init::<B>(&device), &resnet).unwrap();
    assert_eq!(report.dropped_params, 0);
    assert_close(&all_on_logits(&dmnn, basic.input.clone()), &basic.logits, "basic, 2 paths from the ResNet");

    // bottlenecks lose the off-diagonal blocks of conv2: close, not equal
    let io = io_of("tv_bottleneck");
    let resnet =
        load_torchvision(io.config.init::<B>(&device), &fixture("tv_bottleneck.pth"), ImportOptions::default())
            .unwrap();
    let (same, report) =
        dmnn_core::weights::init_from_resnet(two_path(&io.config, 0).init::<B>(&device), &resnet).unwrap();
    // per block: w² − 2·(w/2)² = w²/2 weights of the 3x3, times 9
    let expected: usize = [(4, 1), (8, 2), (16, 1), (32, 1)].iter().map(|(w, blocks)| blocks * 9 * w * w / 2).sum();
    assert_eq!(report.dropped_params, expected);
    let split = all_on_logits(&same, io.input.clone());
    let diff = split.iter().zip(&io.logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = io.logits.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(diff > 1e-3 && diff < scale, "bottleneck split: max logit difference {diff} (scale {scale})");
    // wider paths start as the same-width split: the extra channels add nothing yet
    let (wide, report) =
        dmnn_core::weights::init_from_resnet(two_path(&io.config, 2).init::<B>(&device), &resnet).unwrap();
    assert_eq!(report.fresh_width, vec![2, 2, 2, 2]);
    assert_close(&all_on_logits(&wide, io.input.clone()), &split, "2 fresh channels per path");
}

fn io_of(name: &str) -> Io {
    io(name)
}
