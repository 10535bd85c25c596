//! The multi-path residual block of DMNN (DESIGN §3):
//!
//! ```text
//! y = relu( shortcut(x) + Σ_i g_i · path_i(x) )      g_i ∈ {0, 1}
//! ```
//!
//! The shortcut (identity, or 1x1 convolution + batch norm when the shape changes) always runs;
//! with every gate off the block is `relu(shortcut(x))`, which is what layer skipping does. With
//! one path and all gates on it is torchvision's `BasicBlock` / `Bottleneck`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Int, Slice, Tensor, TensorData};

use crate::branches::concurrent_branches;

use super::grouped::{gate_patterns, GroupedBatch, PathPattern};
use super::path::{conv, conv_out_size, BlockKind, Path, PathAffines, PathConfig};

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
    pub fn split(
        kind: BlockKind,
        channels_in: usize,
        channels_out: usize,
        width: usize,
        num_paths: usize,
    ) -> Self {
        assert!(
            num_paths > 0 && width % num_paths == 0,
            "width={width}, num_paths={num_paths}: num_paths must divide the block width"
        );
        Self::new(kind, channels_in, channels_out, num_paths, width / num_paths)
    }

    /// Configuration shared by every path of the block.
    pub fn path(&self) -> PathConfig {
        PathConfig::new(self.kind, self.channels_in, self.path_width, self.channels_out)
            .with_stride(self.stride)
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
                conv: conv(self.channels_in, self.channels_out, 1, self.stride, device),
                bn: BatchNorm2dConfig::new(self.channels_out).init(device),
            }),
        }
    }

    /// Parameters of the block: every path and the projection shortcut.
    pub fn param_count(&self) -> usize {
        let shortcut = if self.has_downsample() {
            self.channels_in * self.channels_out + 2 * self.channels_out
        } else {
            0
        };
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
    /// The projection: `bn(conv1x1_stride(input))`.
    ///
    /// In inference a strided projection subsamples the input and then runs a pointwise
    /// convolution: Burn Flex sends a strided 1x1 convolution through im2col with a serial layout
    /// change of the whole input (2.6 ms for `dmnn_small`'s first projection at batch 256 on the
    /// 2-core CPU), while an unstrided one is a plain matrix product. Same values; training keeps
    /// the module's own convolution.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, ceil(height / stride), ceil(width / stride)]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let [sh, sw] = self.conv.stride;
        let pointwise = self.conv.kernel_size == [1, 1] && self.conv.groups == 1 && self.conv.bias.is_none();
        let x = if pointwise && [sh, sw] != [1, 1] && !B::ad_enabled(&input.device()) {
            let every = |s: usize| Slice::new(0, None, s as isize);
            let x = input.slice([Slice::full(), Slice::full(), every(sh), every(sw)]);
            conv2d(x, self.conv.weight.val(), None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
        } else {
            self.conv.forward(input)
        };
        self.bn.forward(x)
    }
}

/// A branch of a block in inference: the shortcut or a path.
#[derive(Debug, Clone, Copy)]
enum Branch {
    Shortcut,
    Path(usize),
}

impl Branch {
    /// The shortcut, then the given paths: the order of every block sum.
    fn shortcut_and(paths: impl Iterator<Item = usize>) -> Vec<Self> {
        std::iter::once(Self::Shortcut).chain(paths.map(Self::Path)).collect()
    }
}

/// What a block decides once from the whole batch in inference, the same in every execution
/// mode, so that a sample group of sparse execution computes exactly what the batch would.
#[derive(Debug, Clone, Copy)]
struct BatchPlan {
    /// The branches run concurrently ([`concurrent_branches`] of the block's larger activation,
    /// input or output: branch outputs are what concurrent branches keep in flight).
    concurrent: bool,
    /// The batch is one image ([`Path::forward_inference`]).
    one_image: bool,
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
        match &self.downsample {
            Some(ds) => ds.forward(input),
            None => input,
        }
    }

    /// How the block runs in inference on a whole batch of shape `input_dims`.
    fn plan(&self, input_dims: [usize; 4], device: &B::Device) -> BatchPlan {
        let [batch_size, channels, height, width] = input_dims;
        let [out_channels, out_height, out_width] = self.paths[0].output_shape(height, width);
        let largest = (channels * height * width).max(out_channels * out_height * out_width);
        BatchPlan {
            concurrent: concurrent_branches::<B>(device, batch_size * largest),
            one_image: batch_size == 1,
        }
    }

    /// The block with every path on (a static residual block).
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        if B::ad_enabled(&input.device()) {
            let out = self
                .paths
                .iter()
                .fold(self.shortcut(input.clone()), |acc, path| acc + path.forward(input.clone()));
            return relu(out);
        }
        // inference: the same summation as sparse execution with every gate on
        let affines = self.inference_affines(|_| true);
        let plan = self.plan(input.dims(), &input.device());
        relu(self.sum_paths(input, 0..self.num_paths(), &affines, plan))
    }

    pub(crate) fn check_gates(&self, input: &Tensor<B, 4>, gates: &Tensor<B, 2>) {
        let [batch_size, ..] = input.dims();
        let [gate_batch, gate_paths] = gates.dims();
        assert!(
            gate_batch == batch_size && gate_paths == self.num_paths(),
            "gates of shape [{gate_batch}, {gate_paths}] do not fit a block with \
             batch_size={batch_size}, num_paths={}",
            self.num_paths()
        );
    }

    /// Masked execution: every path runs on the whole batch and is multiplied by its gate.
    /// Gradients reach every gate; the cost is the full block's. In inference on the CPU the
    /// branches run concurrently as in [`MultiPathBlock::forward`].
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - `gates`: `[batch_size, num_paths]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    ///
    /// # Panics
    /// If the gates' shape is not `[batch_size, num_paths]`.
    pub fn forward_masked(&self, input: Tensor<B, 4>, gates: Tensor<B, 2>) -> Tensor<B, 4> {
        self.check_gates(&input, &gates);
        let [batch_size, _] = gates.dims();
        let branches = Branch::shortcut_and(0..self.num_paths());
        // the straightforward formulation: the block input stays alive until the sum is formed
        // (sparse execution releases it once its last branch has read it)
        let concurrent = self.plan(input.dims(), &input.device()).concurrent;
        let out = self.sum_branches(input.clone(), &branches, concurrent, &|branch, x| match branch {
            Branch::Shortcut => self.shortcut(x),
            Branch::Path(i) => {
                let gate = gates.clone().slice([0..batch_size, i..i + 1]).reshape([batch_size, 1, 1, 1]); // [B, 1, 1, 1]
                self.paths[i].forward(x) * gate
            }
        });
        drop(input);
        relu(out)
    }

    /// Sparse execution: each path runs only on the samples whose gate is on and is added to the
    /// shortcut; a path that no sample needs does not run. Equal to
    /// [`MultiPathBlock::forward_masked`] in inference (see [`MultiPathBlock::forward_grouped`]).
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - `gates`: `[batch_size, num_paths]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    ///
    /// # Panics
    /// If the gates' shape is not `[batch_size, num_paths]`.
    pub fn forward_sparse(&self, input: Tensor<B, 4>, gates: Tensor<B, 2>) -> Tensor<B, 4> {
        self.check_gates(&input, &gates);
        self.forward_grouped(GroupedBatch::new(input), gates).into_tensor()
    }

    /// Sparse execution on a grouped batch: reads the gates back once (one device sync), regroups
    /// the samples by gate pattern and runs every group's paths on the group's own tensor as soon
    /// as it is gathered ([`GroupedBatch::regroup_map`]); the sum `shortcut + path_0 + path_1 +
    /// ...` is formed in place in the order of [`MultiPathBlock::forward_masked`], so the two
    /// agree to the bit.
    ///
    /// With autodiff each path instead runs once on all the samples it serves (so its batch norms
    /// see exactly those samples, as DESIGN §7 asks of BN recalibration) and its output is
    /// multiplied by the gate values, so that gradients reach the gates.
    ///
    /// # Shapes
    /// - `gates`: `[batch_size, num_paths]`, rows in the caller's order
    ///
    /// # Panics
    /// If the gates do not have one row per sample and one column per path.
    pub fn forward_grouped(&self, batch: GroupedBatch<B>, gates: Tensor<B, 2>) -> GroupedBatch<B> {
        let [gate_batch, gate_paths] = gates.dims();
        assert!(
            gate_batch == batch.batch_size() && gate_paths == self.num_paths(),
            "gates of shape [{gate_batch}, {gate_paths}] do not fit a block with batch_size={}, num_paths={}",
            batch.batch_size(),
            self.num_paths()
        );
        let patterns = gate_patterns(&gates);
        if B::ad_enabled(&gates.device()) {
            let (batch, patterns) = batch.regroup(&patterns);
            return self.forward_grouped_autodiff(batch, &patterns, gates);
        }
        // batch-norm affines once per path, whatever the number of groups it serves
        let affines = self.inference_affines(|i| patterns.iter().any(|p| p >> i & 1 == 1));
        let plan = self.plan(batch.dims(), &gates.device());
        batch.regroup_map(&patterns, plan.concurrent, |pattern, x| {
            let on = (0..self.num_paths()).filter(|i| pattern >> i & 1 == 1);
            relu(self.sum_paths(x, on, &affines, plan))
        })
    }

    /// The inference batch-norm affines of the paths for which `used(i)` holds.
    fn inference_affines(&self, used: impl Fn(usize) -> bool) -> Vec<Option<PathAffines<B>>> {
        self.paths.iter().enumerate().map(|(i, path)| used(i).then(|| path.inference_affines())).collect()
    }

    /// `shortcut(x) + Σ path_i(x)` over the paths `on` (ascending), summed in the order of
    /// [`MultiPathBlock::forward_masked`] (so the two agree bit for bit), every sum formed in
    /// place where a buffer allows.
    ///
    /// The shortcut and the paths are independent branches, run concurrently with
    /// `plan.concurrent` ([`MultiPathBlock::sum_branches`]).
    fn sum_paths(&self, x: Tensor<B, 4>, on: impl Iterator<Item = usize>, affines: &[Option<PathAffines<B>>], plan: BatchPlan) -> Tensor<B, 4> {
        let branches = Branch::shortcut_and(on);
        self.sum_branches(x, &branches, plan.concurrent, &|branch, x| match branch {
            Branch::Shortcut => self.shortcut(x),
            Branch::Path(i) => {
                let affines = affines[i].as_ref().expect("affines of every path in use");
                self.paths[i].forward_inference(x, affines, plan.one_image)
            }
        })
    }

    /// `run(branches[0], x) + run(branches[1], x) + ...` summed left to right, where
    /// `branches[0]` is the shortcut. Every branch gets its own handle on `x`, so the input's
    /// buffer is freed as soon as the last branch has read it. With `concurrent` (see
    /// [`crate::branches`]) the last branch runs concurrently with the sum of the ones before it
    /// (recursively), so the order of the sum is kept and at most one extra branch output is
    /// alive per level.
    fn sum_branches(&self, x: Tensor<B, 4>, branches: &[Branch], concurrent: bool, run: &(dyn Fn(Branch, Tensor<B, 4>) -> Tensor<B, 4> + Sync)) -> Tensor<B, 4> {
        let (&last, before) = branches.split_last().expect("the shortcut is a branch");
        if before.is_empty() {
            return run(last, x);
        }
        let x_before = x.clone();
        let (sum, y) = if concurrent {
            rayon::join(|| self.sum_branches(x_before, before, concurrent, run), || run(last, x))
        } else {
            let sum = self.sum_branches(x_before, before, concurrent, run);
            (sum, run(last, x))
        };
        if before.len() == 1 && self.downsample.is_none() {
            y + sum // the identity: add it into the path's own buffer (y + x == x + y)
        } else {
            sum + y
        }
    }

    fn forward_grouped_autodiff(&self, batch: GroupedBatch<B>, patterns: &[PathPattern], gates: Tensor<B, 2>) -> GroupedBatch<B> {
        let device = gates.device();
        let [batch_size, _] = gates.dims();
        let groups = batch.groups();
        let mut sums: Vec<Tensor<B, 4>> = groups.iter().map(|g| self.shortcut(g.x.clone())).collect();
        for (i, path) in self.paths.iter().enumerate() {
            let served: Vec<usize> = (0..groups.len()).filter(|&g| patterns[g] >> i & 1 == 1).collect();
            if served.is_empty() {
                continue;
            }
            let x = Tensor::cat(served.iter().map(|&g| groups[g].x.clone()).collect(), 0);
            let samples: Vec<i64> = served.iter().flat_map(|&g| groups[g].samples.iter().map(|&b| b as i64)).collect();
            let n = samples.len();
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(samples, [n]), &device);
            let gate = gates.clone().slice([0..batch_size, i..i + 1]).select(0, index).reshape([n, 1, 1, 1]);
            let y = path.forward(x) * gate;
            let mut start = 0;
            for &g in &served {
                let rows = groups[g].samples.len();
                sums[g] = sums[g].clone() + y.clone().slice([start..start + rows]);
                start += rows;
            }
        }
        let mut sums = sums.into_iter();
        batch.map(|_, _| relu(sums.next().expect("one sum per group")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type B = Flex;
    type AD = Autodiff<Flex>;

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

    fn gates<Bk: Backend>(rows: &[&[f32]]) -> Tensor<Bk, 2> {
        let n = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), n]), &Default::default())
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
    fn all_gates_on_equals_static_block() {
        let device = Default::default();
        for c in configs() {
            let block = c.init::<B>(&device);
            let x = input::<B>(&c, 3);
            let ones = Tensor::<B, 2>::ones([3, c.num_paths], &device);
            let expected = block.forward(x.clone()).into_data();
            block
                .forward_masked(x.clone(), ones.clone())
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
            block
                .forward_sparse(x, ones)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
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
    fn all_gates_off_is_relu_of_shortcut() {
        let device = Default::default();
        for c in configs() {
            let block = c.init::<B>(&device);
            let x = input::<B>(&c, 3);
            let zeros = Tensor::<B, 2>::zeros([3, c.num_paths], &device);
            let expected = relu(block.shortcut(x.clone())).into_data();
            for y in [block.forward_masked(x.clone(), zeros.clone()), block.forward_sparse(x.clone(), zeros.clone())] {
                y.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
            }
        }
    }

    #[test]
    fn sparse_equals_masked_in_inference() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        let x = input::<B>(c, 4);
        // path 0 on for two samples, path 1 on for all, path 2 off for all
        let patterns = [
            gates::<B>(&[&[1.0, 1.0, 0.0], &[0.0, 1.0, 0.0], &[1.0, 1.0, 0.0], &[0.0, 1.0, 0.0]]),
            gates::<B>(&[&[0.0, 0.0, 1.0], &[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0], &[1.0, 0.0, 1.0]]),
        ];
        for g in patterns {
            let masked = block.forward_masked(x.clone(), g.clone()).into_data();
            block
                .forward_sparse(x.clone(), g)
                .into_data()
                .assert_approx_eq::<f32>(&masked, Tolerance::absolute(1e-4));
        }
    }

    /// A sample group of one image computes what the batch computes for it (no batch-1
    /// convolution for a group of a larger batch), so sparse equals masked to the bit.
    #[test]
    fn a_one_sample_group_computes_what_the_batch_does() {
        let device = Default::default();
        let c = &configs()[1];
        let block = c.init::<B>(&device);
        let x = Tensor::<B, 4>::random([3, c.channels_in, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        // sample 0 alone in its group, samples 1 and 2 together
        let g = gates::<B>(&[&[1.0, 0.0], &[1.0, 1.0], &[1.0, 1.0]]);
        let masked = block.forward_masked(x.clone(), g.clone()).into_data();
        block.forward_sparse(x, g).into_data().assert_eq(&masked, true);
    }

    /// Inputs large enough for concurrent branches (`crate::branches`) give the sums of the
    /// paths run one by one, in the same order, to the bit.
    #[test]
    fn concurrent_branches_sum_like_one_after_the_other() {
        let device = Default::default();
        for c in [
            MultiPathBlockConfig::split(BlockKind::Basic, 16, 16, 16, 2),
            MultiPathBlockConfig::new(BlockKind::Bottleneck, 16, 32, 3, 4).with_stride(2),
        ] {
            let block = c.init::<B>(&device);
            let x = Tensor::<B, 4>::random([4, 16, 32, 32], Distribution::Normal(0.0, 1.0), &device);
            assert!(block.plan(x.dims(), &device).concurrent);
            let one_by_one = block.paths.iter().fold(block.shortcut(x.clone()), |sum, path| sum + path.forward(x.clone()));
            block.forward(x.clone()).into_data().assert_eq(&relu(one_by_one).into_data(), true);
            let g = gates::<B>(&[&[1.0, 0.0, 1.0], &[0.0, 1.0, 1.0], &[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0]]).slice([0..4, 0..c.num_paths]);
            let masked = block.forward_masked(x.clone(), g.clone()).into_data();
            block.forward_sparse(x, g).into_data().assert_approx_eq::<f32>(&masked, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn sparse_under_autodiff_reaches_gates_and_weights() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<AD>(&device);
        let x = input::<AD>(c, 3).require_grad();
        let g = gates::<AD>(&[&[1.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[1.0, 0.0, 0.0]]).require_grad();
        let grads = block.forward_sparse(x.clone(), g.clone()).sum().backward();
        let gg = g.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        // gradients reach the gates of the rows a path served
        assert!(gg[0] != 0.0 && gg[2] != 0.0 && gg[5] != 0.0, "{gg:?}");
        assert!(block.paths[0].conv1.weight.grad(&grads).is_some());
        // path 1 served nobody: it did not run
        assert!(block.paths[1].conv1.weight.grad(&grads).is_none());
    }

    #[test]
    #[should_panic = "gates of shape [2, 2] do not fit a block with batch_size=2, num_paths=3"]
    fn wrong_gate_width_panics() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        let _ = block.forward_masked(input::<B>(c, 2), Tensor::ones([2, 2], &device));
    }

    #[test]
    #[should_panic = "width=10, num_paths=4: num_paths must divide the block width"]
    fn unsplittable_width_panics() {
        let _ = MultiPathBlockConfig::split(BlockKind::Basic, 8, 8, 10, 4);
    }
}
