//! The DMNN-ResNet: stem, stages of multi-path blocks with a gate controller before each block,
//! global average pooling and a linear classifier.
//!
//! Su, Zhou, Wu et al., "Dynamic Multi-path Neural Network", arXiv 1902.10949 (ICPR 2020).
//! With one path per block and no controller the network is torchvision's ResNet
//! (`torchvision.models.resnet`, v1.5: stride on the 3x3 convolution).

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use dmnn_gate::{global_avg_pool, Controller, ControllerState};
use serde::{Deserialize, Serialize};

use crate::block::{conv, GroupedBatch, MultiPathBlock};
use crate::config::{DmnnConfig, StemKind};
use crate::cost::CostReport;
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};
use crate::pool::{host_pool_applies, max_pool2d_host};

/// Kernel, stride and padding of the ImageNet stem's max pool (torchvision's ResNet).
const STEM_POOL: (usize, usize, usize) = (3, 2, 1);

/// How the paths of a gated block are executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// `Masked` with autodiff (training), `Sparse` without (inference).
    #[default]
    Auto,
    /// Every path runs on the whole batch and is multiplied by its gate (costs the full network;
    /// gradients reach every gate).
    Masked,
    /// Each path runs only on the samples whose gate is on; unused paths do not run.
    Sparse,
}

impl ExecutionMode {
    /// The concrete mode for a device: `Auto` becomes `Masked` with autodiff, `Sparse` without.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> Self {
        match self {
            Self::Auto if B::ad_enabled(device) => Self::Masked,
            Self::Auto => Self::Sparse,
            mode => mode,
        }
    }
}

impl core::str::FromStr for ExecutionMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "masked" => Ok(Self::Masked),
            "sparse" => Ok(Self::Sparse),
            other => Err(format!("execution mode '{other}' is not one of auto, masked, sparse")),
        }
    }
}

/// Options of [`Dmnn::forward_with`].
#[derive(Debug, Clone)]
pub struct ForwardOptions<B: Backend> {
    /// Execution mode of the gated blocks.
    pub mode: ExecutionMode,
    /// Gates to use instead of the controllers' decisions, one `[batch_size, num_paths]` tensor
    /// per block (benchmarks, tests, BN recalibration). The controllers do not run.
    pub gates: Option<Vec<Tensor<B, 2>>>,
    /// Gumbel noise for the training gates, one `[batch_size, num_paths, 2]` tensor per block
    /// (reproducible training and tests). Ignored without autodiff.
    pub noise: Option<Vec<Tensor<B, 3>>>,
    /// Gumbel temperature for this pass instead of the controller's (temperature schedules).
    pub temperature: Option<f64>,
}

impl<B: Backend> Default for ForwardOptions<B> {
    fn default() -> Self {
        Self {
            mode: ExecutionMode::Auto,
            gates: None,
            noise: None,
            temperature: None,
        }
    }
}

impl<B: Backend> ForwardOptions<B> {
    /// Default options with the given execution mode.
    pub fn mode(mode: ExecutionMode) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// Uses these gates instead of the controllers.
    pub fn with_gates(mut self, gates: Vec<Tensor<B, 2>>) -> Self {
        self.gates = Some(gates);
        self
    }

    /// Uses this Gumbel noise for the training gates.
    pub fn with_noise(mut self, noise: Vec<Tensor<B, 3>>) -> Self {
        self.noise = Some(noise);
        self
    }

    /// Uses this Gumbel temperature for the training gates.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.temperature = Some(temperature);
        self
    }
}

/// Everything one forward pass produces. Losses, metrics, reports and benchmarks read this;
/// nothing recomputes gates or costs on the side.
#[derive(Debug, Clone)]
pub struct DmnnOutput<B: Backend> {
    /// Class logits, `[batch_size, num_classes]`.
    pub logits: Tensor<B, 2>,
    /// Logits of the auxiliary category heads, each `[batch_size, num_classes]` (empty without
    /// heads or when gates were given).
    pub aux_logits: Vec<Tensor<B, 2>>,
    /// Gates of every gated block, each `[batch_size, num_paths]` with values in {0, 1} (empty for
    /// a static network). With autodiff they carry the straight-through gradient.
    pub gates: Vec<Tensor<B, 2>>,
    /// Executed MACs of the gated paths for every sample, `[batch_size]` (differentiable through
    /// the gates).
    pub gated_macs: Tensor<B, 1>,
    /// Executed MACs of every sample, `[batch_size]`: ungated MACs plus `gated_macs`.
    pub macs: Tensor<B, 1>,
    /// The analytic cost of the model at this input size.
    pub cost: CostReport,
}

impl<B: Backend> DmnnOutput<B> {
    /// Executed share of the gated MACs for every sample, `[batch_size]`, in [0, 1].
    pub fn gated_macs_ratio(&self) -> Tensor<B, 1> {
        let full = self.cost.gated_macs_full().max(1) as f64;
        self.gated_macs.clone().div_scalar(full)
    }

    /// Executed MACs as a share of the all-paths-on network, `[batch_size]`.
    pub fn macs_ratio(&self) -> Tensor<B, 1> {
        self.macs.clone().div_scalar(self.cost.macs_full() as f64)
    }
}

/// A DMNN-ResNet. Field names follow torchvision's ResNet (`conv1`, `bn1`, `layers[i]` for
/// `layer{i+1}`, `fc`).
#[derive(Module, Debug)]
pub struct Dmnn<B: Backend> {
    /// Stem convolution.
    pub conv1: Conv2d<B>,
    /// Stem batch norm.
    pub bn1: BatchNorm2d<B>,
    /// Stem max pool (ImageNet stem only).
    pub maxpool: Option<MaxPool2d>,
    /// Stages of blocks.
    pub layers: Vec<Vec<MultiPathBlock<B>>>,
    /// Gate controllers (dynamic networks only).
    pub controller: Option<Controller<B>>,
    /// Classifier.
    pub fc: Linear<B>,
    /// The configuration that built the network (not a parameter).
    pub config: DmnnConfig,
}

impl DmnnConfig {
    /// Builds the network.
    ///
    /// # Panics
    /// If the configuration is invalid; the message names the offending values.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Dmnn<B> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        let (k, s) = self.stem_conv();
        let blocks = self.blocks();
        let mut layers: Vec<Vec<MultiPathBlock<B>>> = self.stage_depths.iter().map(|_| Vec::new()).collect();
        for (stage, block) in &blocks {
            layers[*stage].push(block.init(device));
        }
        let controller = self.controller.as_ref().map(|c| {
            c.init(&Self::specs_of(&blocks), self.num_paths, self.num_classes, device)
        });
        Dmnn {
            conv1: conv(self.in_channels, self.stem_width, k, s, device),
            bn1: BatchNorm2dConfig::new(self.stem_width).init(device),
            maxpool: matches!(self.stem, StemKind::ImageNet).then(|| {
                let (k, s, p) = STEM_POOL;
                MaxPool2dConfig::new([k, k])
                    .with_strides([s, s])
                    .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                    .init()
            }),
            layers,
            controller,
            fc: LinearConfig::new(self.feature_channels(), self.num_classes).init(device),
            config: self.clone(),
        }
    }
}

impl<B: Backend> Dmnn<B> {
    /// All blocks in network order.
    pub fn blocks(&self) -> impl Iterator<Item = &MultiPathBlock<B>> {
        self.layers.iter().flatten()
    }

    /// Number of gated blocks.
    pub fn num_blocks(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// The analytic cost at `[height, width]`.
    pub fn cost(&self, image_size: [usize; 2]) -> CostReport {
        self.config.cost(image_size)
    }

    /// Parameters of the backbone (without controllers), counted on the module.
    pub fn backbone_param_count(&self) -> usize {
        crate::param_count(self) - self.controller.as_ref().map_or(0, crate::param_count)
    }

    /// The stem: convolution, batch norm, ReLU, and max pool for the ImageNet stem.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, in_channels, height, width]`
    /// - output: `[batch_size, stem_width, height', width']` (see [`DmnnConfig::stem_output_size`])
    pub fn forward_stem(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = relu(self.bn1.forward(self.conv1.forward(input)));
        match &self.maxpool {
            Some(_) if host_pool_applies::<B>(&x.device()) => {
                let (k, s, p) = STEM_POOL;
                max_pool2d_host(x, k, s, p)
            }
            Some(pool) => pool.forward(x),
            None => x,
        }
    }

    /// Global average pooling and the classifier.
    ///
    /// # Shapes
    /// - `features`: `[batch_size, channels, height, width]`
    /// - output: `[batch_size, num_classes]`
    pub fn forward_head(&self, features: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(global_avg_pool(features))
    }

    /// The forward pass with the default options: controller gates, `Masked` with autodiff and
    /// `Sparse` without.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, in_channels, height, width]`
    pub fn forward(&self, input: Tensor<B, 4>) -> DmnnOutput<B> {
        self.forward_with(input, ForwardOptions::default())
    }

    /// The forward pass.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, in_channels, height, width]`
    /// - output: see [`DmnnOutput`]
    ///
    /// # Panics
    /// If the input has the wrong number of channels, or given gates or noise do not have one
    /// tensor per block of the right shape.
    pub fn forward_with(&self, input: Tensor<B, 4>, options: ForwardOptions<B>) -> DmnnOutput<B> {
        let [batch_size, channels, height, width] = input.dims();
        assert_eq!(
            channels, self.config.in_channels,
            "input has {channels} channels, model '{}' expects in_channels={}",
            self.config.name, self.config.in_channels
        );
        let device = input.device();
        let mode = options.mode.resolve::<B>(&device);
        let num_blocks = self.num_blocks();
        for (what, len) in [
            ("gates", options.gates.as_ref().map(Vec::len)),
            ("noise", options.noise.as_ref().map(Vec::len)),
        ] {
            if let Some(len) = len {
                assert_eq!(len, num_blocks, "{len} {what} tensors given for {num_blocks} gated blocks");
            }
        }
        let cost = self.cost([height, width]);
        let mut fixed_gates = options.gates.map(Vec::into_iter);
        let mut noise = options.noise.map(Vec::into_iter);

        // Sparse execution regroups the samples by gate pattern block after block (see
        // `GroupedBatch`); gates, controller state, noise and outputs stay in the caller's order.
        let mut x = GroupedBatch::new(self.forward_stem(input));
        let mut state = ControllerState::default();
        let mut all_gates = Vec::with_capacity(num_blocks);
        let mut aux_logits = Vec::new();
        let mut gated_macs = Tensor::<B, 1>::zeros([batch_size], &device);
        for (l, block) in self.blocks().enumerate() {
            let gates = match (fixed_gates.as_mut(), &self.controller) {
                (Some(given), _) => Some(given.next().expect("one gate tensor per block")),
                (None, Some(controller)) => {
                    let pooled = x.rows_to_caller(global_avg_pool);
                    let out = controller.forward_pooled(l, pooled, state);
                    state = out.state;
                    aux_logits.extend(out.aux_logits);
                    let block_noise = noise.as_mut().and_then(Iterator::next);
                    let temperature = options.temperature.unwrap_or(controller.temperature);
                    Some(controller.gates_at(out.logits, block_noise, temperature))
                }
                (None, None) => None,
            };
            let path_macs = cost.blocks[l].path_macs as f64;
            x = match gates {
                None => {
                    let all_on = (block.num_paths() as f64) * path_macs;
                    gated_macs = gated_macs.add_scalar(all_on);
                    x.map(|_, t| block.forward(t))
                }
                Some(g) => {
                    let open = g.clone().sum_dim(1).reshape([batch_size]); // [B]
                    gated_macs = gated_macs + open.mul_scalar(path_macs);
                    all_gates.push(g.clone());
                    match mode {
                        ExecutionMode::Sparse => block.forward_grouped(x, g),
                        _ => GroupedBatch::new(block.forward_masked(x.into_tensor(), g)),
                    }
                }
            };
        }
        let logits = x.rows_to_caller(|t| self.forward_head(t));
        let macs = gated_macs.clone().add_scalar(cost.ungated_macs() as f64);
        DmnnOutput {
            logits,
            aux_logits,
            gates: all_gates,
            gated_macs,
            macs,
            cost,
        }
    }

    /// Sets the Gumbel temperature of the controllers (no effect on a static network).
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.controller = self.controller.map(|c| c.with_temperature(temperature));
        self
    }

    /// Sets the inference gate threshold of the controllers (no effect on a static network).
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.controller = self.controller.map(|c| c.with_threshold(threshold));
        self
    }
}
