//! Network-level behaviour of DMNN on the CPU backend with tiny shapes.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData, Tolerance};
use dmnn_core::gate::{ControllerConfig, PrevState};
use dmnn_core::{param_count, BlockKind, Dmnn, DmnnConfig, ExecutionMode, ForwardOptions, StemKind};

type B = Flex;
type AD = Autodiff<Flex>;

/// Bottleneck stages of 1 and 2 blocks, 3 paths of width 2 and 4, 8x8 RGB input, 5 classes.
fn tiny(prev_state: PrevState, category_head: bool) -> DmnnConfig {
    DmnnConfig::new("tiny".into(), 5, BlockKind::Bottleneck, vec![1, 2], vec![6, 12])
        .with_num_paths(3)
        .with_stem(StemKind::Conv3x3 { stride: 1 })
        .with_stem_width(8)
        .with_image_size(8)
        .with_controller(Some(
            ControllerConfig::new().with_hidden_size(8).with_prev_state(prev_state).with_category_head(category_head),
        ))
}

fn images<Bk: Backend>(batch: usize, device: &Bk::Device) -> Tensor<Bk, 4> {
    Tensor::random([batch, 3, 8, 8], Distribution::Normal(0.0, 1.0), device)
}

fn random_gates<Bk: Backend>(model: &Dmnn<Bk>, batch: usize, rate: f64, device: &Bk::Device) -> Vec<Tensor<Bk, 2>> {
    (0..model.num_blocks())
        .map(|_| Tensor::<Bk, 2>::random([batch, 3], Distribution::Bernoulli(rate), device))
        .collect()
}

#[test]
fn output_shapes_and_cost() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let out = model.forward(images(4, &device));
    assert_eq!(out.logits.dims(), [4, 5]);
    assert_eq!(out.gates.len(), 3);
    assert!(out.gates.iter().all(|g| g.dims() == [4, 3]));
    assert!(out.aux_logits.is_empty(), "auxiliary heads are training-only");
    assert_eq!(out.macs.dims(), [4]);
    // executed MACs agree with the analytic model for the gates that ran
    let gates: Vec<Vec<f32>> = out.gates.iter().map(|g| g.to_data().to_vec().unwrap()).collect();
    let macs: Vec<f32> = out.macs.to_data().to_vec().unwrap();
    for b in 0..4 {
        let open: Vec<usize> = gates.iter().map(|g| g[b * 3..b * 3 + 3].iter().sum::<f32>() as usize).collect();
        let expected = out.cost.macs_with_open_paths(&open) as f32;
        assert!((macs[b] - expected).abs() <= 1e-6 * expected, "sample {b}: {} vs {expected}", macs[b]);
    }
}

#[test]
fn training_forward_has_aux_logits_per_stage() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<AD>(&device);
    let out = model.forward(images(4, &device));
    assert_eq!(out.aux_logits.len(), 2, "one auxiliary head at the end of each stage");
    assert!(out.aux_logits.iter().all(|a| a.dims() == [4, 5]));
}

#[test]
fn all_gates_on_equals_network_without_gates() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let x = images(3, &device);
    let ones: Vec<_> = (0..3).map(|_| Tensor::<B, 2>::ones([3, 3], &device)).collect();
    // Burn initialises parameters lazily and a clone of an uninitialised parameter draws its own
    // values: run the model once so the clone shares its weights.
    let _ = model.forward(x.clone());
    let mut static_model = model.clone();
    static_model.controller = None;
    let expected = static_model.forward(x.clone());
    assert!(expected.gates.is_empty());
    for mode in [ExecutionMode::Masked, ExecutionMode::Sparse] {
        let out = model.forward_with(x.clone(), ForwardOptions::mode(mode).with_gates(ones.clone()));
        out.logits.into_data().assert_approx_eq::<f32>(&expected.logits.to_data(), Tolerance::absolute(1e-5));
        out.macs.into_data().assert_eq(&expected.macs.to_data(), false);
    }
}

#[test]
fn all_gates_off_turns_blocks_into_relu_of_shortcut() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let x = images(3, &device);
    let zeros: Vec<_> = (0..3).map(|_| Tensor::<B, 2>::zeros([3, 3], &device)).collect();
    let mut h = model.forward_stem(x.clone());
    for block in model.blocks() {
        h = relu(block.shortcut(h));
    }
    let expected = model.forward_head(h).into_data();
    for mode in [ExecutionMode::Masked, ExecutionMode::Sparse] {
        let out = model.forward_with(x.clone(), ForwardOptions::mode(mode).with_gates(zeros.clone()));
        out.logits.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        // given gates replace the controllers, which do not run and are not counted
        let ungated = (out.cost.ungated_macs() - out.cost.controller_macs()) as f32;
        out.macs.into_data().assert_eq(&TensorData::from([ungated; 3]), false);
    }
}

/// The MACs of a pass count the controllers exactly when they run: with gates of their own,
/// not with gates given by the caller (which used to be counted as if the controllers ran).
#[test]
fn controller_macs_are_counted_when_the_controllers_run() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let x = images(3, &device);
    let own = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked));
    let given = model.forward_with(x, ForwardOptions::mode(ExecutionMode::Masked).with_gates(own.gates.clone()));
    let controllers = own.cost.controller_macs() as f32;
    assert!(controllers > 0.0);
    let own_macs: Vec<f32> = own.macs.into_data().to_vec().unwrap();
    let given_macs: Vec<f32> = given.macs.into_data().to_vec().unwrap();
    for (o, g) in own_macs.iter().zip(&given_macs) {
        assert_eq!(o - g, controllers, "same gates: the difference is the controllers' MACs");
    }
}

#[test]
fn sparse_equals_masked_without_autodiff() {
    let device = Default::default();
    for (name, config) in
        [("tiny", tiny(PrevState::Lstm, true)), ("dmnn_small", DmnnConfig::preset("dmnn_small").unwrap())]
    {
        let model = config.init::<B>(&device);
        let size = config.image_size;
        let batch = 6;
        let x =
            Tensor::<B, 4>::random([batch, config.in_channels, size, size], Distribution::Normal(0.0, 1.0), &device);
        // random patterns at several rates, plus one with a path off for everybody and one on for
        // everybody in the same block
        let mut patterns: Vec<Vec<Tensor<B, 2>>> = Vec::new();
        for rate in [0.25, 0.5, 0.9] {
            patterns.push(
                (0..model.num_blocks())
                    .map(|_| Tensor::random([batch, config.num_paths], Distribution::Bernoulli(rate), &device))
                    .collect(),
            );
        }
        let mixed: Vec<f32> = (0..batch)
            .flat_map(|b| {
                (0..config.num_paths).map(move |i| match i {
                    0 => 0.0,
                    1 => 1.0,
                    _ => (b % 2) as f32,
                })
            })
            .collect();
        let mixed = Tensor::<B, 2>::from_data(TensorData::new(mixed, [batch, config.num_paths]), &device);
        patterns.push((0..model.num_blocks()).map(|_| mixed.clone()).collect());
        for (p, gates) in patterns.into_iter().enumerate() {
            let masked =
                model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked).with_gates(gates.clone()));
            let sparse = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates));
            let (m, s) = (masked.logits.into_data(), sparse.logits.into_data());
            let diff = m
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(s.to_vec::<f32>().unwrap())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-4, "{name}, pattern {p}: sparse and masked logits differ by {diff}");
        }
        // and with the controllers' own gates
        let masked = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked));
        let sparse = model.forward_with(x, ForwardOptions::mode(ExecutionMode::Sparse));
        sparse.logits.into_data().assert_approx_eq::<f32>(&masked.logits.into_data(), Tolerance::absolute(1e-4));
    }
}

#[test]
fn inference_gates_are_deterministic() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<AD>(&device).valid();
    let x = images::<B>(8, &device);
    let a = model.forward(x.clone());
    let b = model.forward(x);
    for (ga, gb) in a.gates.iter().zip(&b.gates) {
        ga.to_data().assert_eq(&gb.to_data(), true);
    }
}

/// Collects, for every learnable parameter, the largest absolute gradient.
struct GradientProbe<'a, Bk: AutodiffBackend> {
    grads: &'a Bk::Gradients,
    path: Vec<String>,
    missing: Vec<String>,
    seen: usize,
}

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for GradientProbe<'_, Bk> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let name = self.path.join(".");
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            return;
        }
        self.seen += 1;
        let nonzero = param
            .grad(self.grads)
            .map(|g| g.abs().max().into_data().convert::<f32>().to_vec::<f32>().unwrap()[0] > 0.0)
            .unwrap_or(false);
        if !nonzero {
            self.missing.push(name);
        }
    }
}

/// The training objective of DESIGN §5, written out: CE + mean auxiliary CE + cost penalty.
fn objective(
    model: &Dmnn<AD>,
    x: Tensor<AD, 4>,
    y: Tensor<AD, 1, Int>,
    noise: Vec<Tensor<AD, 3>>,
    temperature: f64,
) -> Tensor<AD, 1> {
    let out = model.forward_with(x, ForwardOptions::default().with_noise(noise).with_temperature(temperature));
    let ce = CrossEntropyLossConfig::new().init(&out.logits.device());
    let mut loss = ce.forward(out.logits.clone(), y.clone());
    let aux_count = out.aux_logits.len() as f64;
    for aux in &out.aux_logits {
        loss = loss + ce.forward(aux.clone(), y.clone()).mul_scalar(0.5 / aux_count);
    }
    let rate = out.gated_macs_ratio().mean();
    loss + (rate.sub_scalar(0.3)).powi_scalar(2).mul_scalar(2.0)
}

#[test]
fn every_parameter_gets_a_gradient_through_the_gates() {
    let device = Default::default();
    for prev in [PrevState::Gru, PrevState::Lstm, PrevState::None] {
        let model = tiny(prev, true).init::<AD>(&device);
        let batch = 8;
        let x = images::<AD>(batch, &device);
        let y = Tensor::<AD, 1, Int>::from_data(
            TensorData::new((0..batch as i64).map(|i| i % 5).collect(), [batch]),
            &device,
        );
        // noiseless gates: every path starts on (bias 2.0 vs 0.1), so every path serves a sample
        let noise = (0..3).map(|_| Tensor::<AD, 3>::zeros([batch, 3, 2], &device)).collect();
        let grads = objective(&model, x, y, noise, 1.0).backward();
        let mut probe = GradientProbe::<AD> { grads: &grads, path: vec![], missing: vec![], seen: 0 };
        model.visit(&mut probe);
        assert!(probe.seen > 0);
        assert!(probe.missing.is_empty(), "{prev}: parameters without gradient: {:?}", probe.missing);
    }
}

#[test]
fn temperature_changes_the_gradient() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<AD>(&device);
    let batch = 8;
    let x = images::<AD>(batch, &device);
    let y = Tensor::<AD, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 0, 1, 2], [batch]), &device);
    let noise: Vec<_> = (0..3).map(|_| dmnn_core::gate::gumbel_noise::<AD, 3>([batch, 3, 2], &device)).collect();
    // both graphs are built before either backward: a leaf reused after a backward can lose its
    // gradient to a backward running in another test thread (Burn #5573, fixed after 0.21)
    let losses = [1.0, 0.3].map(|tau| objective(&model, x.clone(), y.clone(), noise.clone(), tau));
    let [g1, g2] = losses.map(|loss| {
        let grads = loss.backward();
        let w = &model.controller.as_ref().unwrap().blocks[0].gate_logits.weight;
        w.grad(&grads).unwrap()
    });
    let diff = (g1 - g2).abs().max().into_scalar();
    assert!(diff > 1e-6, "temperature 1.0 and 0.3 gave the same gradient (max diff {diff})");
}

#[test]
fn preset_parameter_counts_match_the_analytic_model() {
    let device = Default::default();
    for name in dmnn_core::presets::PRESETS {
        let config = DmnnConfig::preset(name).unwrap();
        let model = config.init::<B>(&device);
        let cost = config.cost([config.image_size; 2]);
        assert_eq!(param_count(&model), cost.params_training(), "{name}: module vs analytic");
        assert_eq!(model.backbone_param_count(), cost.params_backbone, "{name}: backbone");
    }
}

#[test]
fn oracle_params_and_macs() {
    // torchvision / DESIGN §6 oracles at 224 px
    for (name, params, gmacs) in
        [("resnet18", 11_689_512, 1.8141), ("resnet50", 25_557_032, 4.0892), ("resnet101", 44_549_160, 7.8014)]
    {
        let cost = DmnnConfig::preset(name).unwrap().cost([224, 224]);
        assert_eq!(cost.params(), params, "{name}");
        let g = cost.macs_full() as f64 / 1e9;
        assert!((g - gmacs).abs() < 5e-4, "{name}: {g} GMACs, expected {gmacs}");
    }
    for (name, backbone) in [("dmnn50", 25_455_208), ("dmnn50_4x24d", 25_383_592), ("dmnn101", 44_521_320)] {
        let cost = DmnnConfig::preset(name).unwrap().cost([224, 224]);
        assert_eq!(cost.params_backbone, backbone, "{name}");
    }
    let r50 = DmnnConfig::preset("resnet50").unwrap().cost([224, 224]).macs_full() as f64;
    let ctrl = DmnnConfig::preset("dmnn50").unwrap().cost([224, 224]).controller_macs() as f64;
    assert!(ctrl / r50 < 1e-3, "controllers cost {:.4} % of ResNet-50", 100.0 * ctrl / r50);
}

#[test]
#[should_panic = "gates of shape [4, 2] do not fit a block with batch_size=4, num_paths=3"]
fn wrong_gate_width_panics() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let gates = (0..3).map(|_| Tensor::<B, 2>::ones([4, 2], &device)).collect();
    let _ = model.forward_with(images(4, &device), ForwardOptions::default().with_gates(gates));
}

#[test]
#[should_panic = "2 gates tensors given for 3 gated blocks"]
fn wrong_gate_count_panics() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let gates = random_gates(&model, 4, 0.5, &device).into_iter().take(2).collect();
    let _ = model.forward_with(images(4, &device), ForwardOptions::default().with_gates(gates));
}

#[test]
#[should_panic = "model 'tiny': width=6, num_paths=5: num_paths must divide the block width"]
fn unsplittable_channels_panic() {
    let _ = tiny(PrevState::Gru, true).with_num_paths(5).init::<B>(&Default::default());
}

#[test]
#[should_panic = "input has 1 channels, model 'tiny' expects in_channels=3"]
fn wrong_input_channels_panic() {
    let device = Default::default();
    let model = tiny(PrevState::Gru, true).init::<B>(&device);
    let _ = model.forward(Tensor::zeros([2, 1, 8, 8], &device));
}
