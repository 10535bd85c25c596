//! Data-parallel training on several devices with Burn's multi-device strategy, run for real:
//! on Flex (one device: its replicas share it) always, and with `--features wgpu` on two logical
//! WGPU devices (`WgpuDevice::Cpu` and `WgpuDevice::DefaultDevice`: on a machine whose only
//! adapter is Mesa's lavapipe, as in `.ci/run`, two devices of it, each with its own queue and
//! memory).
//!
//! What is checked:
//! - Two replicas train as one device does on their global batch. Exact equality cannot hold
//!   in general (each replica normalises with its own batch's statistics), so the data is built
//!   so that it does in exact arithmetic: the training split is a set of images twice over, the
//!   global batch is the whole split, and each replica's share is the set once; a static network
//!   (no Gumbel noise), no augmentation. What remains is rounding: batch-norm and loss
//!   reductions over 16 images instead of 32 and a gradient summed from two halves (the
//!   parameters agree to 1e-7 of their largest value on Flex; the bound is 1e-5), and the
//!   unbiased running variance's `n / (n - 1)` over half the values (≤ 1/(2n) ≈ 2e-3 of the
//!   10 % update at the smallest feature map; measured 5e-4, bound 2e-3). A replica loss not
//!   divided by the replica count (twice the step) moves the parameters by 1e-1.
//! - A dynamic network's replica forked onto a second WGPU device computes the network's loss and
//!   gradients (each replica's step is the network's), and a dynamic network trains on two
//!   devices. The running statistics follow the rule of docs/training.md (the main device's
//!   replica on several devices; every replica's mean on one), tested on its own.
//! - Train, stop after a checkpoint and resume on two devices, through the `dmnn` binary: the
//!   weights equal those of the run that was not stopped, to the bit.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use common::*;
use dmnn_core::{DmnnConfig, ObjectiveConfig};
use dmnn_train::config::{DataConfig, TrainConfig};
use dmnn_train::data::SmallAugment;
use dmnn_train::run::load_run_model;
use dmnn_train::train::{train_on, RunOptions};

const SET: usize = 16;

fn gzip(path: &Path, bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap();
}

fn idx(magic: u32, dims: &[usize], payload: &[u8]) -> Vec<u8> {
    let mut bytes = magic.to_be_bytes().to_vec();
    dims.iter().for_each(|&d| bytes.extend_from_slice(&(d as u32).to_be_bytes()));
    bytes.extend_from_slice(payload);
    bytes
}

/// A Fashion-MNIST-format directory: `SET` images of four classes (a bright square whose place
/// is the class, over noise), the training split holding them `copies` times in a row, the test
/// split once.
fn dataset(root: &Path, copies: usize) -> PathBuf {
    let dir = root.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 96) as u8
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for i in 0..SET {
        let class = i % 4;
        let (r0, c0) = (4 + 10 * (class / 2), 4 + 10 * (class % 2));
        for r in 0..28 {
            for c in 0..28 {
                let inside = (r0..r0 + 10).contains(&r) && (c0..c0 + 10).contains(&c);
                pixels.push(if inside { 255 - noise() } else { noise() });
            }
        }
        labels.push(class as u8);
    }
    let n = SET * copies;
    gzip(&dir.join("train-images-idx3-ubyte.gz"), &idx(0x0803, &[n, 28, 28], &pixels.repeat(copies)));
    gzip(&dir.join("train-labels-idx1-ubyte.gz"), &idx(0x0801, &[n], &labels.repeat(copies)));
    gzip(&dir.join("t10k-images-idx3-ubyte.gz"), &idx(0x0803, &[SET, 28, 28], &pixels));
    gzip(&dir.join("t10k-labels-idx1-ubyte.gz"), &idx(0x0801, &[SET], &labels));
    dir
}

/// A quick run of `model` (a preset at quarter width) on `data`: `epochs` epochs of `steps`
/// steps of `batch` images.
fn config(model: &str, data: PathBuf, batch: usize, epochs: usize, steps: Option<usize>) -> TrainConfig {
    let model = DmnnConfig::preset(model).unwrap().scale_width(0.25);
    let data = DataConfig::FashionMnist { dir: data, augment: SmallAugment { pad_crop: 0, hflip: false } };
    let mut c = TrainConfig::new(model, data, ObjectiveConfig::new().with_target_rate(0.6), epochs, batch, 0.2)
        .with_weight_decay(5e-3)
        .with_eval_batch_size(SET)
        .with_max_eval_batches(Some(1))
        .with_workers(1)
        .with_seed(3);
    c.max_steps_per_epoch = steps;
    c
}

/// Trains `config` with `replicas` replicas on `devices` into `out`; returns the final network
/// as [`tensors`] splits it.
fn trained<B: AutodiffBackend>(mut config: TrainConfig, replicas: usize, devices: Vec<B::Device>, out: &Path) -> Parts {
    config.replicas = replicas;
    let options = RunOptions { out: Some(out.to_path_buf()), plain: true, backend: "test".into() };
    let (summary, _) = train_on::<B>(config, devices, options, false).unwrap();
    assert!(summary.test_accuracy.is_finite());
    tensors(out)
}

/// A run's final network as three lists of values: its parameters, and the running means and
/// running variances of its batch norms.
struct Parts {
    params: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
}

fn tensors(dir: &Path) -> Parts {
    struct Collect {
        path: Vec<String>,
        parts: Parts,
    }
    impl ModuleVisitor<Flex> for Collect {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Flex, D>>) {
            let values = param.val().into_data().to_vec::<f32>().unwrap();
            match self.path.last().map(String::as_str) {
                Some("running_mean") => self.parts.running_mean.extend(values),
                Some("running_var") => self.parts.running_var.extend(values),
                _ => self.parts.params.extend(values),
            }
        }
    }
    let (_, model) = load_run_model::<Flex>(dir, &Default::default()).unwrap();
    let parts = Parts { params: Vec::new(), running_mean: Vec::new(), running_var: Vec::new() };
    let mut collect = Collect { path: Vec::new(), parts };
    model.visit(&mut collect);
    let parts = collect.parts;
    assert!(!parts.params.is_empty() && !parts.running_mean.is_empty() && !parts.running_var.is_empty());
    parts
}

/// The largest difference between `a` and `b` over the largest magnitude in `a`.
fn relative_gap(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
}

/// The training loss of every epoch in a run's metrics.csv.
fn train_losses(dir: &Path) -> Vec<f64> {
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "train_loss").expect("a train_loss column");
    lines.map(|l| l.split(',').nth(col).unwrap().parse().unwrap()).collect()
}

/// One replica per device of `two` (or two replicas on it, where it is one device) against one
/// device on the same global batch (module doc).
fn replicas_train_as_one_device<B: AutodiffBackend>(name: &str, two: Vec<B::Device>) {
    let tmp = TempDir::new(&format!("multi-{name}"));
    let data = dataset(tmp.path(), 2);
    let c = config("resnet_small", data, 2 * SET, 3, None);
    let one = trained::<B>(c.clone(), 1, vec![two[0].clone()], &tmp.path().join("one"));
    let both = trained::<B>(c.clone(), 2, two.clone(), &tmp.path().join("two"));
    // what a replica's loss not divided by the replica count would do: the step of twice the
    // learning rate and weight decay
    let doubled = {
        let mut c = c.clone().with_weight_decay(2.0 * c.weight_decay);
        c.lr *= 2.0;
        trained::<B>(c, 1, vec![two[0].clone()], &tmp.path().join("doubled"))
    };
    let gap = relative_gap(&one.params, &both.params);
    let mean_gap = relative_gap(&one.running_mean, &both.running_mean);
    let var_gap = relative_gap(&one.running_var, &both.running_var);
    let wrong = relative_gap(&one.params, &doubled.params);
    assert!(wrong > 1e-2, "a doubled step moved the weights by {wrong:.2e} only: the comparison would say nothing");
    assert!(gap < 1e-5, "two replicas end {gap:.2e} away from one device on the same global batch");
    assert!(mean_gap < 1e-5, "the running means of two replicas end {mean_gap:.2e} away from one device's");
    assert!(var_gap < 2e-3, "the running variances of two replicas end {var_gap:.2e} away from one device's");
    let (a, b) = (train_losses(&tmp.path().join("one")), train_losses(&tmp.path().join("two")));
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-4 * x.abs(), "training losses {a:?} (one device) vs {b:?} (two replicas)");
    }
}

#[test]
fn flex_replicas_train_as_one_device_on_their_global_batch() {
    replicas_train_as_one_device::<burn::backend::Autodiff<burn::backend::Flex>>("flex", vec![Default::default()]);
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use burn::backend::wgpu::{Wgpu, WgpuDevice};
    use burn::backend::Autodiff;
    use burn::module::Module;

    type B = Autodiff<Wgpu>;

    /// One WGPU test at a time: they share the process's two devices, and a device whose
    /// thread panicked in one test (Burn reports such panics asynchronously) fails the others.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The main device first: the backend's default (Burn restores checkpoints onto it).
    fn two() -> Vec<WgpuDevice> {
        vec![WgpuDevice::DefaultDevice, WgpuDevice::Cpu]
    }

    #[test]
    fn two_devices_train_as_one_device_on_their_global_batch() {
        let _serial = serial();
        replicas_train_as_one_device::<B>("wgpu", two());
    }

    /// A dynamic network trains on two devices: every replica with its own Gumbel noise (the
    /// loader's test checks the seeds), so the run is not one device's, but it trains, writes its
    /// checkpoints and ends with a network the CPU backend loads; that each replica's step is
    /// the network's own is the test below.
    #[test]
    fn a_dynamic_network_trains_on_two_devices() {
        let _serial = serial();
        let tmp = TempDir::new("multi-wgpu-dynamic");
        let data = dataset(tmp.path(), 2);
        let mut c = config("dmnn_small", data, SET, 2, Some(2));
        c.replicas = 2;
        let out = tmp.path().join("run");
        let options = RunOptions { out: Some(out.clone()), plain: true, backend: "test".into() };
        let (summary, _) = train_on::<B>(c, two(), options, false).unwrap();
        assert!(summary.test_accuracy.is_finite() && summary.macs_ratio_mean > 0.0 && summary.macs_ratio_mean <= 1.0);
        let losses = train_losses(&out);
        assert_eq!(losses.len(), 2);
        assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
        assert!(tensors(&out).params.iter().all(|v| v.is_finite()));
    }

    /// A replica forked onto the other device computes the loss and the gradients the network
    /// computes on its own device (dynamic network, full objective, Gumbel noise from the host).
    /// Before dmnn subsampled strided 1x1 convolutions on CubeCL backends in training, the loss
    /// agreed to the bit and 90 of the 137 gradients did not (Burn's autotuned backward returned
    /// zeros for a projection's input gradient on one device: tests/backends.rs).
    #[test]
    fn a_replica_on_another_device_computes_the_networks_gradients() {
        let _serial = serial();
        use burn::tensor::{Distribution, Int, TensorData};
        use burn::train::TrainStep;
        use dmnn_train::data::ClassificationBatch;
        use dmnn_train::step::{DmnnClassifier, TrainProgress};
        let (home, other) = (WgpuDevice::DefaultDevice, WgpuDevice::Cpu);
        let config = DmnnConfig::preset("dmnn_small").unwrap().scale_width(0.25);
        <Wgpu as burn::tensor::backend::Backend>::seed(&home, 5);
        let model = DmnnClassifier {
            model: config.init::<B>(&home),
            objective: ObjectiveConfig::new().with_target_rate(0.6),
            weight_decay: 0.0,
            temperature: Default::default(),
            progress: TrainProgress::new(10, 10, 1),
            home: None,
        };
        let x = Tensor::<Flex, 4>::random([8, 1, 28, 28], Distribution::Normal(0.0, 1.0), &Default::default());
        let x = x.into_data();
        let batch = |device: &WgpuDevice| ClassificationBatch::<B> {
            images: Tensor::from_data(x.clone(), device),
            targets: Tensor::<B, 1, Int>::from_data(TensorData::new((0..8i64).collect::<Vec<_>>(), [8]), device),
            seed: 3,
            step: 0,
        };
        let grads = |m: &DmnnClassifier<B>, device: &WgpuDevice| {
            let out = m.step(batch(device));
            let mut values = Vec::new();
            struct G<'a>(&'a burn::optim::GradientsParams, &'a mut Vec<f32>);
            impl burn::module::ModuleVisitor<B> for G<'_> {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
                    if let Some(g) = self.0.get::<Wgpu, D>(p.id) {
                        self.1.extend(g.into_data().to_vec::<f32>().unwrap());
                    }
                }
            }
            m.visit(&mut G(&out.grads, &mut values));
            values
        };
        // every parameter drawn now: Burn initialises a parameter lazily, and a clone taken
        // before would draw other numbers
        let model = model.fork(&home);
        let here = grads(&model.clone().fork(&home), &home);
        let there = grads(&model.fork(&other), &other);
        let gap = relative_gap(&here, &there);
        assert!(!here.is_empty() && gap < 1e-4, "gradients {gap:.2e} apart ({} values)", here.len());
    }

    /// On two devices the batch norms' running statistics follow the main device's replica
    /// (docs/training.md): a replica on another device normalises with its own batch and leaves
    /// them where they are.
    #[test]
    fn running_statistics_follow_the_main_devices_replica() {
        let _serial = serial();
        use burn::module::AutodiffModule;
        use burn::tensor::Distribution;
        use dmnn_core::BatchNorm2dConfig;
        let (home, other) = (WgpuDevice::DefaultDevice, WgpuDevice::Cpu);
        let bn = BatchNorm2dConfig::new(3).init::<B>(&home);
        let running = |bn: &dmnn_core::BatchNorm2d<B>| -> Vec<f32> {
            bn.valid().running_mean.value().into_data().to_vec().unwrap()
        };
        let replica = dmnn_core::backend::fork_replica(bn.clone(), &other);
        let x = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Normal(3.0, 1.0), &other);
        let y = replica.forward(x);
        assert_eq!(y.device(), other);
        assert!(y.into_data().to_vec::<f32>().unwrap().iter().all(|v| v.abs() < 10.0), "normalised with its batch");
        assert_eq!(running(&bn), vec![0.0; 3], "the other device's replica left the statistics alone");
        let x = Tensor::<B, 4>::random([4, 3, 5, 6], Distribution::Normal(3.0, 1.0), &home);
        let _ = bn.forward(x);
        assert!(
            running(&bn).iter().all(|m| (m - 0.3).abs() < 0.1),
            "the main replica updates them: {:?}",
            running(&bn)
        );
    }

    /// Moving a network moves every tensor of it, batch-norm running statistics included (a
    /// replica's fork must not read statistics from another device).
    #[test]
    fn a_network_moves_to_another_device_whole() {
        let _serial = serial();
        // (Burn's own `fork` would ask the device for a device-to-device copy it does not have)
        let model = DmnnConfig::preset("dmnn_small").unwrap().init::<B>(&WgpuDevice::DefaultDevice);
        let moved = dmnn_core::backend::fork_replica(model.clone(), &WgpuDevice::Cpu);
        assert_eq!(moved.devices(), vec![WgpuDevice::Cpu, WgpuDevice::DefaultDevice], "statistics stay home");
        let gamma = |m: &dmnn_core::Dmnn<B>| -> Vec<f32> { m.bn1.gamma.val().into_data().to_vec().unwrap() };
        assert_eq!(gamma(&moved), gamma(&model));
        assert_eq!(moved.bn1.gamma.val().device(), WgpuDevice::Cpu);
    }

    /// `dmnn train` on two devices, stopped after the checkpoint of epoch 1 and resumed, ends
    /// where the run that was not stopped ends.
    #[test]
    fn training_on_two_devices_resumes_from_its_checkpoint() {
        let _serial = serial();
        let tmp = TempDir::new("multi-wgpu-resume");
        let data = dataset(tmp.path(), 4);
        let args = |out: &Path| -> Vec<String> {
            let mut a: Vec<String> = [
                "train",
                "--plain",
                "--backend",
                "wgpu",
                "--devices",
                "default,cpu",
                "--model",
                "resnet_small",
                "--width-mult",
                "0.25",
                "--batch-size",
                "16",
                "--epochs",
                "2",
                "--max-steps-per-epoch",
                "2",
                "--max-eval-batches",
                "1",
                "--eval-batch-size",
                "16",
                "--workers",
                "1",
                "--data",
            ]
            .map(String::from)
            .to_vec();
            a.push(data.display().to_string());
            a.extend(["--out".to_string(), out.display().to_string()]);
            a
        };
        let (whole, cut) = (tmp.path().join("whole"), tmp.path().join("cut"));
        // A run that tunes a kernel computes other values than the runs that reuse its pick
        // from CubeCL's cache on disk (fusion's matmul autotune: docs/gpu.md), so the runs
        // compared below must all find the picks made: one run first tunes every shape.
        let out = run(dmnn().args(args(&tmp.path().join("tuning"))));
        assert!(out.status.success(), "{}", text(&out));
        let out = run(dmnn().args(args(&whole)));
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("2 replicas on devices [DefaultDevice, Cpu]"), "{}", text(&out));
        let out = run(dmnn().args(args(&cut)).env("DMNN_FAULT", "stop-after-epoch:1"));
        assert!(!out.status.success(), "the stopped run: {}", text(&out));
        let resume = ["train", "--plain", "--backend", "wgpu", "--devices", "default,cpu", "--resume"];
        let out = run(dmnn().args(resume).arg(&cut));
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("resuming from the checkpoint of epoch 1"), "{}", text(&out));
        assert_eq!(weights(&whole), weights(&cut), "the resumed run ends where the whole one does");
        let out =
            run(dmnn().args(["train", "--plain", "--backend", "wgpu", "--devices", "default", "--resume"]).arg(&cut));
        assert!(text(&out).contains("already finished"), "{}", text(&out));
        let out = run(dmnn()
            .args(["train", "--backend", "wgpu", "--devices", "default,cpu,discrete:0", "--resume"])
            .arg(&cut));
        assert!(text(&out).contains("replicas=2"), "{}", text(&out));
        let mut other = args(&tmp.path().join("other"));
        other[5] = "cpu,default".into();
        let out = run(dmnn().args(&other));
        assert!(!out.status.success() && text(&out).contains("must be the backend's default device"), "{}", text(&out));
    }
}
