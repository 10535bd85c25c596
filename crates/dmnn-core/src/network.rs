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
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use dmnn_gate::{global_avg_pool, param_count, Controller, ControllerState};

use crate::backend::{FastPaths, Kernels};
use crate::block::MultiPathBlock;
use crate::config::DmnnConfig;
use crate::cost::CostReport;
use crate::error::ConfigError;
use crate::exec::{run_block, GroupedBatch};
use crate::layers::{resnet_conv, BatchNorm2d, BatchNorm2dConfig};
use crate::output::{DmnnOutput, ForwardOptions};

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
    /// # Errors
    /// If the configuration is invalid ([`DmnnConfig::validate`]).
    pub fn try_init<B: Backend>(&self, device: &B::Device) -> Result<Dmnn<B>, ConfigError> {
        self.validate()?;
        let blocks = self.blocks();
        let mut layers: Vec<Vec<MultiPathBlock<B>>> = self.stage_depths.iter().map(|_| Vec::new()).collect();
        for (stage, block) in &blocks {
            layers[*stage].push(block.init(device));
        }
        let controller = self
            .controller
            .as_ref()
            .map(|c| c.init(&Self::specs_of(&blocks), self.num_paths, self.num_classes, device));
        let stem = self.stem.conv();
        Ok(Dmnn {
            conv1: resnet_conv(self.in_channels, self.stem_width, stem.kernel, stem.stride, device),
            bn1: BatchNorm2dConfig::new(self.stem_width).init(device),
            maxpool: self.stem.pool().map(|p| {
                MaxPool2dConfig::new([p.kernel, p.kernel])
                    .with_strides([p.stride, p.stride])
                    .with_padding(PaddingConfig2d::Explicit(p.padding, p.padding, p.padding, p.padding))
                    .init()
            }),
            layers,
            controller,
            fc: LinearConfig::new(self.feature_channels(), self.num_classes).init(device),
            config: self.clone(),
        })
    }

    /// Builds the network.
    ///
    /// # Panics
    /// If the configuration is invalid; the message names the offending values
    /// ([`DmnnConfig::try_init`] returns it as an error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Dmnn<B> {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
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
        // the configuration was validated when the network was built from it; every forward pass
        // asks for its cost, so the validation (which measures the network too) is not repeated
        self.config.cost_unchecked(image_size)
    }

    /// Parameters of the backbone (without controllers), counted on the module.
    pub fn backbone_param_count(&self) -> usize {
        param_count(self) - self.controller.as_ref().map_or(0, param_count)
    }

    /// The stem: convolution, batch norm, ReLU, and max pool for the ImageNet stem.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, in_channels, height, width]`
    /// - output: `[batch_size, stem_width, height', width']` (see [`DmnnConfig::stem_output_size`])
    pub fn forward_stem(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let kernels = Kernels::probe(&input.device(), input.dims()[0]);
        self.forward_stem_with(input, &kernels)
    }

    fn forward_stem_with(&self, input: Tensor<B, 4>, k: &Kernels<B>) -> Tensor<B, 4> {
        let x = k.norm_relu(&self.bn1, k.stem_conv(&self.conv1, input));
        match &self.maxpool {
            Some(pool) => k.max_pool(pool, x),
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

    /// The forward pass: stem, then every block with its controller's gates (or the given ones)
    /// run by the executor of the mode, then the head.
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
        for (what, len) in
            [("gates", options.gates.as_ref().map(Vec::len)), ("noise", options.noise.as_ref().map(Vec::len))]
        {
            if let Some(len) = len {
                assert_eq!(len, num_blocks, "{len} {what} tensors given for {num_blocks} gated blocks");
            }
        }
        let fast_paths = options.fast_paths.unwrap_or_else(|| FastPaths::probe::<B>(&device));
        let kernels = Kernels::new(&device, batch_size, fast_paths).with_autodiff_kernels(options.autodiff_kernels);
        let cost = self.cost([height, width]);
        // given gates replace the controllers: they do not run, and their MACs are not counted
        let controllers_run = options.gates.is_none() && self.controller.is_some();
        let mut fixed_gates = options.gates.map(Vec::into_iter);
        let mut noise = options.noise.map(Vec::into_iter);

        // Sparse execution regroups the samples by gate pattern block after block (see
        // `GroupedBatch`); gates, controller state, noise and outputs stay in the caller's order.
        let mut x = GroupedBatch::new(self.forward_stem_with(input, &kernels));
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
                    Some(controller.gates(out.logits, block_noise, options.gate))
                }
                (None, None) => None,
            };
            let path_macs = cost.blocks[l].path_macs as f64;
            match &gates {
                None => gated_macs = gated_macs.add_scalar((block.num_paths() as f64) * path_macs),
                Some(g) => {
                    let open = g.clone().sum_dim(1).reshape([batch_size]); // [B]
                    gated_macs = gated_macs + open.mul_scalar(path_macs);
                    all_gates.push(g.clone());
                }
            }
            x = run_block(mode, block, x, gates, &kernels);
        }
        let logits = x.rows_to_caller(|t| self.forward_head(t));
        let ungated = cost.ungated_macs() - if controllers_run { 0 } else { cost.controller_macs() };
        let macs = gated_macs.clone().add_scalar(ungated as f64);
        DmnnOutput { logits, aux_logits, gates: all_gates, gated_macs, macs, cost }
    }
}
