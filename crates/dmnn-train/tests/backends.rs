//! What every backend must compute as the CPU backend does: one test body per property, run on
//! Flex always and on WGPU with `--features wgpu` (`.ci/run` runs it on Mesa's software Vulkan,
//! lavapipe). The weights are Flex's, moved to the backend under test through a record, and every
//! input and gate is drawn on the host, so the two backends see the same numbers.
//!
//! Tolerances: sparse against masked on one backend 1e-4 relative (the same operations on other
//! row groupings; a GPU's convolution may tile a group differently from the batch); the
//! backend against Flex 1e-4 relative in inference and 1e-3 in a training step (other
//! summation orders in convolutions, batch-norm statistics and their backward).

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::ItemLazy;
use burn::train::TrainStep;
use dmnn_core::{Dmnn, DmnnConfig, ExecutionMode, ForwardOptions, ObjectiveConfig};
use dmnn_train::data::ClassificationBatch;
use dmnn_train::step::{DmnnClassifier, StepStats, TrainProgress};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BATCH: usize = 24;

/// `dmnn_small` with random weights on Flex, every one of them drawn now (Burn initialises a
/// parameter lazily, on first use: a clone taken before would draw other numbers).
fn flex_model() -> Dmnn<Flex> {
    flex_model_at(1.0)
}

/// [`flex_model`] at `width` times its widths.
fn flex_model_at(width: f64) -> Dmnn<Flex> {
    let device = Default::default();
    Flex::seed(&device, 7);
    let config = DmnnConfig::preset("dmnn_small").unwrap().scale_width(width);
    moved::<Flex>(&config.init::<Flex>(&device), &device)
}

/// The same weights on backend `B`.
fn moved<B: Backend>(model: &Dmnn<Flex>, device: &B::Device) -> Dmnn<B> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let bytes = Recorder::<Flex>::record(&recorder, model.clone().into_record(), ()).unwrap();
    let record = Recorder::<B>::load(&recorder, bytes, device).unwrap();
    model.config.init::<B>(device).load_record(record)
}

fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    // Box-Muller: host numbers every backend receives alike
    (0..n)
        .map(|_| {
            let (u, v): (f64, f64) = (rng.random_range(1e-9..1.0), rng.random());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn images<B: Backend>(seed: u64, batch: usize, device: &B::Device) -> Tensor<B, 4> {
    let mut rng = StdRng::seed_from_u64(seed);
    Tensor::from_data(TensorData::new(normal(&mut rng, batch * 28 * 28), [batch, 1, 28, 28]), device)
}

/// One gate tensor per block; `rate` of the gates on; block 1 has every gate off for every
/// sample (a block whose groups run no path), block 2 every gate on.
fn host_gates<B: Backend>(seed: u64, batch: usize, rate: f64, blocks: usize, device: &B::Device) -> Vec<Tensor<B, 2>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..blocks)
        .map(|block| {
            let values: Vec<f32> = (0..batch * 2)
                .map(|_| match block {
                    1 => 0.0,
                    2 => 1.0,
                    _ => f32::from(rng.random_bool(rate)),
                })
                .collect();
            Tensor::from_data(TensorData::new(values, [batch, 2]), device)
        })
        .collect()
}

fn host<const D: usize, B: Backend>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|y| f64::from(*y).powi(2)).sum::<f64>().sqrt()
}

/// `‖a − b‖ / ‖b‖ ≤ tolerance` (relative to the reference's norm, so a value near zero does not
/// count more than the tensor it sits in).
fn assert_close(a: &[f32], b: &[f32], tolerance: f64, what: &str) {
    assert_close_above(a, b, tolerance, 1e-12, what);
}

/// [`assert_close`] with the norm taken as at least `floor`: a tensor whose reference is that
/// small is float rounding, whichever way it points.
fn assert_close_above(a: &[f32], b: &[f32], tolerance: f64, floor: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(a.iter().all(|v| v.is_finite()), "{what}: non-finite values");
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>().sqrt();
    let scale = norm(b).max(floor);
    assert!(diff / scale <= tolerance, "{what}: relative difference {:.3e} > {tolerance:.0e}", diff / scale);
}

/// Sparse execution equals masked execution on `B`: with host gates (a mix, all off, all on)
/// at batch 1 and a batch of several images, and with the controllers' own gates.
fn sparse_equals_masked<B: Backend>(device: &B::Device) {
    let model = moved::<B>(&flex_model(), device);
    for (batch, rate) in [(1, 0.5), (BATCH, 0.5), (BATCH, 0.2)] {
        let x = images::<B>(1, batch, device);
        let gates = host_gates::<B>(2, batch, rate, model.num_blocks(), device);
        let run =
            |mode| host(model.forward_with(x.clone(), ForwardOptions::mode(mode).with_gates(gates.clone())).logits);
        assert_close(
            &run(ExecutionMode::Sparse),
            &run(ExecutionMode::Masked),
            1e-4,
            &format!("sparse vs masked, batch {batch}, rate {rate}"),
        );
    }
    let x = images::<B>(3, BATCH, device);
    let sparse = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse));
    let masked = model.forward_with(x, ForwardOptions::mode(ExecutionMode::Masked));
    for (block, (s, m)) in sparse.gates.into_iter().zip(masked.gates).enumerate() {
        assert_eq!(host(s), host(m), "controller gates of block {block}, sparse vs masked");
    }
    assert_close(&host(sparse.logits), &host(masked.logits), 1e-4, "sparse vs masked, controller gates");
}

/// The controllers open the same paths on `B` as on Flex for the same weights and input, and the
/// logits, predictions (integer argmax) and executed MACs agree.
fn inference_matches_flex<B: Backend>(device: &B::Device) {
    let flex = flex_model();
    let model = moved::<B>(&flex, device);
    let expected = flex.forward_with(images::<Flex>(4, BATCH, &Default::default()), ForwardOptions::default());
    let got = model.forward_with(images::<B>(4, BATCH, device), ForwardOptions::default());
    for (block, (g, e)) in got.gates.iter().zip(&expected.gates).enumerate() {
        assert_eq!(host(g.clone()), host(e.clone()), "gates of block {block} on {} vs flex", B::name(device));
    }
    assert_close(&host(got.logits.clone()), &host(expected.logits.clone()), 1e-4, "logits vs flex");
    let predictions = |logits: Tensor<B, 2>| -> Vec<i64> {
        logits.argmax(1).reshape([BATCH]).into_data().convert::<i64>().to_vec::<i64>().unwrap()
    };
    let flex_predictions: Vec<i64> =
        expected.logits.argmax(1).reshape([BATCH]).into_data().convert::<i64>().to_vec::<i64>().unwrap();
    assert_eq!(predictions(got.logits), flex_predictions, "predictions vs flex");
    assert_close(&host(got.macs), &host(expected.macs), 1e-6, "executed MACs vs flex");
}

/// Every parameter's gradient with its path in the module, in the module's order.
struct Gradients<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    out: Vec<(String, Vec<f32>)>,
    _b: core::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let grad = self.grads.get::<B::InnerBackend, D>(param.id);
        self.out.push((self.path.join("."), grad.map(host).unwrap_or_default()));
    }
}

/// One training step (Gumbel noise from the batch seed, the full objective) gives the same loss
/// and gradients on `B` as on Flex, at `dmnn_small`'s width and at a quarter of it (paths of
/// two channels, projections of 4 -> 8 and 8 -> 16: shapes where Burn 0.21's WGPU got a strided
/// 1x1 convolution's input gradient wrong, see the test below).
fn training_step_matches_flex<B: AutodiffBackend>(device: &B::Device) {
    training_step_at_width_matches_flex::<B>(1.0, device);
    training_step_at_width_matches_flex::<B>(0.25, device);
}

fn training_step_at_width_matches_flex<B: AutodiffBackend>(width: f64, device: &B::Device) {
    fn step<B: AutodiffBackend>(model: Dmnn<B>, device: &B::Device) -> (StepStats, Vec<(String, Vec<f32>)>) {
        let classifier = DmnnClassifier {
            model,
            objective: ObjectiveConfig::new(),
            weight_decay: 1e-4,
            temperature: Default::default(),
            progress: TrainProgress::new(100, 10, 1),
            home: None,
        };
        let targets: Vec<i64> = (0..BATCH as i64).map(|i| (i * 7) % 10).collect();
        let batch = ClassificationBatch {
            images: images::<B>(5, BATCH, device),
            targets: Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [BATCH]), device),
            seed: 11,
            step: 0,
        };
        let out = classifier.step(batch);
        let mut visitor =
            Gradients::<B> { grads: &out.grads, path: Vec::new(), out: Vec::new(), _b: Default::default() };
        classifier.model.visit(&mut visitor);
        (out.item.sync(), visitor.out)
    }
    let flex = flex_model_at(width);
    let (expected_stats, expected) = step::<Autodiff<Flex>>(moved(&flex, &Default::default()), &Default::default());
    let (stats, grads) = step::<B>(moved(&flex, device), device);
    for (what, got, want) in [
        ("loss", stats.loss, expected_stats.loss),
        ("cross-entropy", stats.ce, expected_stats.ce),
        ("cost", stats.cost, expected_stats.cost),
    ] {
        assert!(
            (got - want).abs() <= 1e-3 * want.abs().max(1e-3),
            "{what} {got} on {} vs {want} on flex",
            B::name(device)
        );
    }
    // the labels went through the backend's integer tensors and came back
    assert_eq!(stats.correct_top1, expected_stats.correct_top1, "top-1 count vs flex");
    assert_eq!(stats.batch_size, BATCH);
    assert_eq!(grads.len(), expected.len());
    let with_gradient = expected.iter().filter(|(_, g)| !g.is_empty()).count();
    assert!(
        with_gradient > expected.len() / 2,
        "only {with_gradient} of {} parameters have a gradient",
        expected.len()
    );
    // A gradient that is zero in exact arithmetic (a bias before a batch norm) comes out as
    // rounding noise around 1e-9 on both backends, pointing anywhere: it is compared on the scale
    // of the largest gradient, 1e-4 of it (float32 sums over a batch carry ~1e-7 of their terms).
    let floor = 1e-4 * expected.iter().map(|(_, e)| norm(e)).fold(0.0, f64::max);
    for ((name, g), (_, e)) in grads.iter().zip(&expected) {
        assert_eq!(g.is_empty(), e.is_empty(), "{name}: a gradient on one backend only");
        if !e.is_empty() {
            assert_close_above(g, e, 1e-3, floor, &format!("gradient of {name} at width {width}"));
        }
    }
}

/// A projection shortcut's strided 1x1 convolution, as the network runs it in training
/// ([`Kernels::projection`]), has the input and weight gradients of Flex's convolution, at
/// channel counts and sizes where Burn 0.21's WGPU autotuned backward returned zeros for the
/// input gradient (3 -> 5 at 9 px on both lavapipe devices, 4 -> 8 at 14 px and 8 -> 16 at 7 px
/// on one of them; dmnn corrects it by subsampling first).
fn projection_gradients_match_flex<B: AutodiffBackend>(device: &B::Device) {
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use dmnn_core::Kernels;
    fn grads<B: AutodiffBackend>(
        conv: Conv2d<B>,
        x: &TensorData,
        u: &TensorData,
        device: &B::Device,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = Tensor::<B, 4>::from_data(x.clone(), device).require_grad();
        let kernels = Kernels::<B>::probe(device, x.dims()[0]);
        let y = kernels.projection(&conv, x.clone());
        let g = (y * Tensor::<B, 4>::from_data(u.clone(), device)).sum().backward();
        (host(x.grad(&g).unwrap()), host(conv.weight.grad(&g).unwrap()))
    }
    let mut rng = StdRng::seed_from_u64(13);
    for (batch, c_in, c_out, size) in [(2usize, 3usize, 5usize, 9usize), (8, 4, 8, 14), (8, 8, 16, 7), (4, 16, 32, 14)]
    {
        let out = size.div_ceil(2);
        let x = TensorData::new(normal(&mut rng, batch * c_in * size * size), [batch, c_in, size, size]);
        let w = TensorData::new(normal(&mut rng, c_out * c_in), [c_out, c_in, 1, 1]);
        let u = TensorData::new(normal(&mut rng, batch * c_out * out * out), [batch, c_out, out, out]);
        let conv = |d: &B::Device| {
            let mut conv = Conv2dConfig::new([c_in, c_out], [1, 1]).with_stride([2, 2]).with_bias(false).init::<B>(d);
            conv.weight = Param::from_tensor(Tensor::from_data(w.clone(), d).require_grad());
            conv
        };
        let flex_device = Default::default();
        let mut flex_conv =
            Conv2dConfig::new([c_in, c_out], [1, 1]).with_stride([2, 2]).with_bias(false).init(&flex_device);
        flex_conv.weight = Param::from_tensor(Tensor::from_data(w.clone(), &flex_device).require_grad());
        // Flex's reference: Burn's own strided convolution
        let expected = {
            let xf = Tensor::<Autodiff<Flex>, 4>::from_data(x.clone(), &flex_device).require_grad();
            let y = flex_conv.forward(xf.clone());
            let g = (y * Tensor::<Autodiff<Flex>, 4>::from_data(u.clone(), &flex_device)).sum().backward();
            (host(xf.grad(&g).unwrap()), host(flex_conv.weight.grad(&g).unwrap()))
        };
        let got = grads::<B>(conv(device), &x, &u, device);
        let what = format!("{c_in} -> {c_out} channels at {size} px on {}", B::name(device));
        assert_close(&got.0, &expected.0, 1e-4, &format!("input gradient, {what}"));
        assert_close(&got.1, &expected.1, 1e-4, &format!("weight gradient, {what}"));
    }
}

/// The test bodies above, instantiated for one backend.
macro_rules! backend_tests {
    ($name:ident, $backend:ty, $device:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn sparse_equals_masked() {
                super::sparse_equals_masked::<$backend>(&$device);
            }

            #[test]
            fn inference_matches_flex() {
                super::inference_matches_flex::<$backend>(&$device);
            }

            #[test]
            fn training_step_matches_flex() {
                super::training_step_matches_flex::<Autodiff<$backend>>(&$device);
            }

            #[test]
            fn projection_gradients_match_flex() {
                super::projection_gradients_match_flex::<Autodiff<$backend>>(&$device);
            }
        }
    };
}

backend_tests!(flex, Flex, Default::default());

#[cfg(feature = "wgpu")]
backend_tests!(wgpu, burn::backend::wgpu::Wgpu, burn::backend::wgpu::WgpuDevice::default());
