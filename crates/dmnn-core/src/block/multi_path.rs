//! The multi-path residual block of DMNN (DESIGN §3):
//!
//! ```text
//! y = relu( shortcut(x) + Σ_i g_i · path_i(x) )      g_i ∈ {0, 1}
//! ```
//!
//! The shortcut (identity, or 1x1 convolution + batch norm when the shape changes) always runs;
//! with every gate off the block is `relu(shortcut(x))`, which is what layer skipping does. With
//! one path and all gates on it is torchvision's `BasicBlock` / `Bottleneck`.
//!
//! How the gates are applied — every path on the whole batch times its gate, or each path only
//! on the samples whose gate is on — is the business of the executors ([`crate::exec`]); the
//! block owns the sum, [`MultiPathBlock::residual`].

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::path::{BlockKind, Path, PathConfig};
use crate::backend::{sum_branches, Branch, Kernels};
use crate::layers::{conv_out_size, resnet_conv, BatchNorm2d, BatchNorm2dConfig};

/// Configuration of a [`MultiPathBlock`].
#[derive(Config, Debug)]
pub struct MultiPathBlockConfig {
    /// Residual unit the paths are cut from.
    pub kind: BlockKind,
    /// Channels of the block input.
    pub channels_in: usize,
    /// Channels of the block output.
    pub channels_out: usize,
    /// Number of gated paths `N`.
    pub num_paths: usize,
    /// Inner width `p` of every path.
    pub path_width: usize,
    /// Stride of the block.
    #[config(default = 1)]
    pub stride: usize,
}

impl MultiPathBlockConfig {
    /// A block whose inner `width` is split evenly into `num_paths` paths.
    ///
    /// # Panics
    /// If `num_paths` is zero or does not divide `width`.
    pub fn split(kind: BlockKind, channels_in: usize, channels_out: usize, width: usize, num_paths: usize) -> Self {
        assert!(
            num_paths > 0 && width % num_paths == 0,
            "width={width}, num_paths={num_paths}: num_paths must divide the block width"
        );
        Self::new(kind, channels_in, channels_out, num_paths, width / num_paths)
    }

    /// Configuration shared by every path of the block.
    pub fn path(&self) -> PathConfig {
        PathConfig::new(self.kind, self.channels_in, self.path_width, self.channels_out).with_stride(self.stride)
    }

    /// Whether the shortcut is a projection (1x1 convolution + batch norm).
    pub fn has_downsample(&self) -> bool {
        self.stride != 1 || self.channels_in != self.channels_out
    }

    /// Builds the block.
    ///
    /// # Panics
    /// If `num_paths`, a width or the stride is zero.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MultiPathBlock<B> {
        assert!(
            self.num_paths > 0,
            "block num_paths=0 must be positive (channels_in={}, channels_out={})",
            self.channels_in,
            self.channels_out
        );
        let path = self.path();
        MultiPathBlock {
            paths: (0..self.num_paths).map(|_| path.init(device)).collect(),
            downsample: self.has_downsample().then(|| Downsample {
                conv: resnet_conv(self.channels_in, self.channels_out, 1, self.stride, device),
                bn: BatchNorm2dConfig::new(self.channels_out).init(device),
            }),
        }
    }

    /// Parameters of the block: every path and the projection shortcut.
    pub fn param_count(&self) -> usize {
        let shortcut =
            if self.has_downsample() { self.channels_in * self.channels_out + 2 * self.channels_out } else { 0 };
        self.num_paths * self.path().param_count() + shortcut
    }

    /// Multiply-accumulates of one path for one sample with a `height x width` input.
    pub fn path_macs(&self, height: usize, width: usize) -> u64 {
        self.path().macs(height, width)
    }

    /// Multiply-accumulates of the shortcut (0 for the identity) for one sample.
    pub fn shortcut_macs(&self, height: usize, width: usize) -> u64 {
        if !self.has_downsample() {
            return 0;
        }
        let hw = conv_out_size(height, 1, self.stride, 0) * conv_out_size(width, 1, self.stride, 0);
        (self.channels_in * self.channels_out * hw) as u64
    }

    /// Spatial size of the block output for a `height x width` input.
    pub fn output_size(&self, height: usize, width: usize) -> [usize; 2] {
        [conv_out_size(height, 3, self.stride, 1), conv_out_size(width, 3, self.stride, 1)]
    }
}

/// Projection shortcut: 1x1 convolution with the block's stride, then batch norm
/// (torchvision's `downsample.0` / `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1x1 convolution.
    pub conv: Conv2d<B>,
    /// Batch norm.
    pub bn: BatchNorm2d<B>,
}

impl<B: Backend> Downsample<B> {
    /// The projection `bn(conv1x1_stride(input))`, with the layers run by `kernels`.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, ceil(height / stride), ceil(width / stride)]`
    pub fn forward_with(&self, input: Tensor<B, 4>, kernels: &Kernels<B>) -> Tensor<B, 4> {
        kernels.norm(&self.bn, kernels.projection(&self.conv, input))
    }
}

/// A residual block whose residual branch is split into gated paths.
#[derive(Module, Debug)]
pub struct MultiPathBlock<B: Backend> {
    /// The paths, each with its own convolutions and batch norms.
    pub paths: Vec<Path<B>>,
    /// Projection shortcut when the block changes shape; identity otherwise.
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> MultiPathBlock<B> {
    /// Number of paths.
    pub fn num_paths(&self) -> usize {
        self.paths.len()
    }

    /// The shortcut branch: identity or projection.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn shortcut(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let kernels = Kernels::probe(&input.device(), input.dims()[0]);
        self.shortcut_with(input, &kernels)
    }

    /// [`MultiPathBlock::shortcut`] with the layers run by `kernels`.
    pub fn shortcut_with(&self, input: Tensor<B, 4>, kernels: &Kernels<B>) -> Tensor<B, 4> {
        match &self.downsample {
            Some(ds) => ds.forward_with(input, kernels),
            None => input,
        }
    }

    /// The block with every path on (a static residual block): `relu(shortcut(x) + Σ_i path_i(x))`.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let kernels = Kernels::probe(&input.device(), input.dims()[0]);
        self.forward_with(input, &kernels)
    }

    /// [`MultiPathBlock::forward`] with the layers run by `kernels`.
    pub fn forward_with(&self, input: Tensor<B, 4>, kernels: &Kernels<B>) -> Tensor<B, 4> {
        let concurrent = kernels.concurrent(self.largest_activation(input.dims()));
        let all: Vec<usize> = (0..self.num_paths()).collect();
        self.residual(input, &all, &|_, y| y, kernels, concurrent)
    }

    /// DESIGN §3: `relu(shortcut(x) + Σ_{i ∈ on} weight(i, path_i(x)))`, the sum formed left to
    /// right (shortcut first, paths ascending) in place where a buffer allows. Executors choose
    /// which paths run (`on`) and how a path's output is weighted: by its gate column in masked
    /// execution, not at all for a sample group that runs exactly its open paths. With
    /// `concurrent` the branches run as concurrent tasks, with the same sum.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub(crate) fn residual(
        &self,
        x: Tensor<B, 4>,
        on: &[usize],
        weight: &(dyn Fn(usize, Tensor<B, 4>) -> Tensor<B, 4> + Sync),
        kernels: &Kernels<B>,
        concurrent: bool,
    ) -> Tensor<B, 4> {
        let branches: Vec<Branch> =
            std::iter::once(Branch::Shortcut).chain(on.iter().map(|&i| Branch::Path(i))).collect();
        let run = |branch: Branch, x: Tensor<B, 4>| match branch {
            Branch::Shortcut => self.shortcut_with(x, kernels),
            Branch::Path(i) => weight(i, self.paths[i].forward_with(x, kernels)),
        };
        relu(sum_branches(x, &branches, concurrent, self.downsample.is_none(), &run))
    }

    /// Elements of the block's larger activation, input or output, for a whole batch of shape
    /// `input_dims`: what concurrent branches keep in flight, so what decides whether they run
    /// concurrently.
    pub(crate) fn largest_activation(&self, input_dims: [usize; 4]) -> usize {
        let [batch_size, channels, height, width] = input_dims;
        let [out_channels, out_height, out_width] = self.paths[0].output_shape(height, width);
        batch_size * (channels * height * width).max(out_channels * out_height * out_width)
    }

    /// Panics unless `gates` is `[batch_size, num_paths]`.
    pub(crate) fn check_gates(&self, batch_size: usize, gates: &Tensor<B, 2>) {
        let [gate_batch, gate_paths] = gates.dims();
        assert!(
            gate_batch == batch_size && gate_paths == self.num_paths(),
            "gates of shape [{gate_batch}, {gate_paths}] do not fit a block with batch_size={batch_size}, num_paths={}",
            self.num_paths()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tolerance};

    type B = Flex;

    fn configs() -> Vec<MultiPathBlockConfig> {
        vec![
            // bottleneck with projection: 8 -> 16 channels, stride 2, 3 paths of width 2
            MultiPathBlockConfig::new(BlockKind::Bottleneck, 8, 16, 3, 2).with_stride(2),
            // basic with identity shortcut: 6 -> 6 channels, 2 paths of width 3
            MultiPathBlockConfig::split(BlockKind::Basic, 6, 6, 6, 2),
        ]
    }

    fn input<Bk: Backend>(config: &MultiPathBlockConfig, batch: usize) -> Tensor<Bk, 4> {
        Tensor::random([batch, config.channels_in, 5, 5], Distribution::Normal(0.0, 1.0), &Default::default())
    }

    #[test]
    fn output_shapes() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        // 5x5 input, stride 2, padding 1: (5 + 2 - 3) / 2 + 1 = 3
        let y = block.forward(input::<B>(c, 2));
        assert_eq!(y.dims(), [2, 16, 3, 3]);
        assert_eq!(c.output_size(5, 5), [3, 3]);
        let c = &configs()[1];
        let y = c.init::<B>(&device).forward(input::<B>(c, 2));
        assert_eq!(y.dims(), [2, 6, 5, 5]);
    }

    #[test]
    fn analytic_param_count_matches_module() {
        let device = Default::default();
        for c in configs() {
            assert_eq!(crate::param_count(&c.init::<B>(&device)), c.param_count(), "{c:?}");
        }
    }

    #[test]
    fn strided_projection_equals_the_strided_convolution() {
        let device = Default::default();
        // stride 2 on even and odd sizes
        let block = MultiPathBlockConfig::new(BlockKind::Bottleneck, 8, 16, 2, 2).with_stride(2).init::<B>(&device);
        let ds = block.downsample.as_ref().unwrap();
        for side in [6, 7] {
            let x = Tensor::<B, 4>::random([3, 8, side, side], Distribution::Normal(0.0, 1.0), &device);
            let expected = ds.bn.forward(ds.conv.forward(x.clone()));
            let got = block.shortcut(x);
            assert_eq!(got.dims(), expected.dims());
            got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    #[should_panic = "width=10, num_paths=4: num_paths must divide the block width"]
    fn unsplittable_width_panics() {
        let _ = MultiPathBlockConfig::split(BlockKind::Basic, 8, 8, 10, 4);
    }
}
