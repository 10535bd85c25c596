//! The layers of one forward pass, run as the backend runs them best.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::module::ParamId;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Int, Slice, Tensor, TensorData};

use super::host_affine::{host_affine, host_affine_fits};
use super::im2col::ConvGeometry;
use super::im2col::{conv2d_im2col, im2col_fits};
use super::pool::max_pool2d_host;
use super::tiled_conv::{tiled_conv2d, tiled_conv_geometry};
use super::train_conv::train_conv_geometry;
use super::{
    subsample_strided_pointwise_in_training, AutodiffKernels, FastPath, FastPaths, MAX_CONCURRENT_ELEMENTS,
    MIN_CONCURRENT_ELEMENTS,
};
use crate::layers::BatchNorm2d;

/// A batch norm's inference `(scale, shift)`, each `[channels]`.
type Affine<B> = (Tensor<B, 1>, Tensor<B, 1>);

/// How the layers of one forward pass run: Burn's own operations, or a [`FastPath`] where one
/// applies. Decisions that depend on the batch (one image or several) are made once from the
/// whole batch, so a sample group of sparse execution computes exactly what the batch would.
///
/// In inference every batch norm's affine is computed once per pass and reused by every sample
/// group it serves (on every backend; it is not a fast path, just not computing the same thing
/// twice). Inference fast paths apply without autodiff, training fast paths with it; these also
/// need the backend's [`AutodiffKernels`], which only a caller that knows the backend to be an
/// autodiff backend can give ([`Kernels::with_autodiff_kernels`]).
#[derive(Debug)]
pub struct Kernels<B: Backend> {
    fast: FastPaths,
    one_image: bool,
    inference: bool,
    /// Whether a strided 1x1 convolution is differentiated as a subsample and a pointwise
    /// convolution ([`subsample_strided_pointwise_in_training`]).
    subsample_strided_pointwise: bool,
    autodiff: Option<AutodiffKernels<B>>,
    affines: Mutex<HashMap<ParamId, Affine<B>>>,
}

impl<B: Backend> Kernels<B> {
    /// The kernels of a pass over `batch_size` images on `device`, with the fast paths
    /// [`FastPaths::probe`] finds.
    pub fn probe(device: &B::Device, batch_size: usize) -> Self {
        Self::new(device, batch_size, FastPaths::probe::<B>(device))
    }

    /// The kernels of a pass over `batch_size` images on `device` with the given fast paths (the
    /// inference ones without autodiff, the training ones with it, whatever is given).
    pub fn new(device: &B::Device, batch_size: usize, fast: FastPaths) -> Self {
        let inference = !B::ad_enabled(device);
        Self {
            fast: fast.for_training(!inference),
            one_image: batch_size == 1,
            inference,
            subsample_strided_pointwise: !inference && subsample_strided_pointwise_in_training(&B::name(device)),
            autodiff: None,
            affines: Mutex::new(HashMap::new()),
        }
    }

    /// The kernels with the backend's training operations (the training fast paths apply only
    /// with them).
    pub fn with_autodiff_kernels(mut self, kernels: Option<AutodiffKernels<B>>) -> Self {
        self.autodiff = kernels;
        self
    }

    /// The fast paths in use.
    pub fn fast_paths(&self) -> FastPaths {
        self.fast
    }

    /// Whether sparse execution groups the samples by gate pattern ([`FastPath::GroupedSparse`])
    /// or runs path by path on the whole batch.
    pub fn groups_samples(&self) -> bool {
        self.fast.contains(FastPath::GroupedSparse)
    }

    /// `conv.forward(x)`, or one im2col matrix product when the whole batch is one image
    /// ([`FastPath::OneImageIm2col`]), or burn-flex's tiles on the host
    /// ([`FastPath::HostTiledConv`]).
    ///
    /// # Shapes
    /// - `x`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height', width']`, as `conv.forward`
    pub fn conv(&self, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if let Some((kernels, geometry)) = self.train_conv_applies(conv, x.dims()) {
            kernels.conv(conv, x, geometry)
        } else if self.im2col_applies(conv, x.dims()) {
            conv2d_im2col(conv, x)
        } else {
            self.forward(conv, x)
        }
    }

    /// `conv.forward(x)`: burn-flex's tiles on the host where [`FastPath::HostTiledConv`]
    /// applies (the same values), Burn's convolution otherwise.
    fn forward(&self, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let tiled = self.fast.contains(FastPath::HostTiledConv).then(|| tiled_conv_geometry(conv, x.dims()));
        match tiled.flatten() {
            Some(geometry) => tiled_conv2d(conv, x, geometry),
            None => conv.forward(x),
        }
    }

    /// The training convolution and its geometry, when [`FastPath::MatmulConv`] runs `conv` on an
    /// input of shape `input_dims`.
    pub(crate) fn train_conv_applies(
        &self,
        conv: &Conv2d<B>,
        input_dims: [usize; 4],
    ) -> Option<(AutodiffKernels<B>, ConvGeometry)> {
        let kernels = self.autodiff.filter(|_| self.fast.contains(FastPath::MatmulConv))?;
        train_conv_geometry(conv, input_dims).map(|g| (kernels, g))
    }

    /// The stem convolution: [`Kernels::conv`] in training, Burn's convolution's values in
    /// inference at every batch size (the one-image im2col was measured on the paths only, and
    /// would change the numbers of a batch-1 pass; burn-flex's tiles on the host keep them).
    pub fn stem_conv(&self, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.train_conv_applies(conv, x.dims()) {
            Some((kernels, geometry)) => kernels.conv(conv, x, geometry),
            None => self.forward(conv, x),
        }
    }

    /// Whether [`Kernels::conv`] runs `conv` as one im2col matrix product on an input of shape
    /// `input_dims`.
    pub(crate) fn im2col_applies(&self, conv: &Conv2d<B>, input_dims: [usize; 4]) -> bool {
        self.one_image && self.fast.contains(FastPath::OneImageIm2col) && im2col_fits(conv, input_dims)
    }

    /// The convolution of a projection shortcut: a strided 1x1 convolution subsamples the input
    /// first and runs a pointwise convolution ([`FastPath::SubsampledProjection`]); same values.
    /// In training on a CubeCL backend it always does: Burn 0.21 differentiates the strided one
    /// wrongly there ([`subsample_strided_pointwise_in_training`]).
    ///
    /// # Shapes
    /// - `x`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, ceil(height / stride), ceil(width / stride)]`
    pub fn projection(&self, conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [sh, sw] = conv.stride;
        let strided_pointwise =
            conv.kernel_size == [1, 1] && conv.groups == 1 && conv.bias.is_none() && [sh, sw] != [1, 1];
        if self.train_conv_applies(conv, x.dims()).is_some() {
            self.conv(conv, x)
        } else if strided_pointwise && self.fast.contains(FastPath::SubsampledProjection) {
            let every = |s: usize| Slice::new(0, None, s as isize);
            let x = x.slice([Slice::full(), Slice::full(), every(sh), every(sw)]);
            conv2d(x, conv.weight.val(), None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
        } else if strided_pointwise && self.subsample_strided_pointwise {
            // rows and columns picked with `select` (its backward a `select_assign`): with a
            // stepped slice, Burn 0.21's fusion lost a tensor's handle in a later run of the
            // same process ("Should have handle for tensor")
            let [_, _, height, width] = x.dims();
            let device = x.device();
            let every = |n: usize, s: usize| {
                let rows: Vec<i64> = (0..n).step_by(s).map(|i| i as i64).collect();
                let len = rows.len();
                Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [len]), &device)
            };
            let x = x.select(2, every(height, sh)).select(3, every(width, sw));
            conv2d(x, conv.weight.val(), None, ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
        } else {
            self.forward(conv, x)
        }
    }

    /// `bn.forward(x)`; in inference with the affine computed once per pass.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, channels, height, width]`
    /// - output: same as `x`
    pub fn norm(&self, bn: &BatchNorm2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if !self.inference {
            let host = self.autodiff.filter(|_| self.fast.contains(FastPath::HostBatchNorm));
            return match host {
                Some(kernels) if bn.gamma.val().dtype() == burn::tensor::DType::F32 => {
                    let [batch, _, height, width] = x.dims();
                    let (y, mean, var) = kernels.norm(bn, x);
                    bn.update_running(mean, var, batch * height * width);
                    y
                }
                _ => bn.forward(x),
            };
        }
        self.inference_norm(bn, x, false)
    }

    /// `relu(self.norm(bn, x))`; in inference on the host one pass ([`FastPath::HostAffine`]).
    ///
    /// # Shapes
    /// - `x`: `[batch_size, channels, height, width]`
    /// - output: same as `x`
    pub fn norm_relu(&self, bn: &BatchNorm2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
        if self.inference {
            self.inference_norm(bn, x, true)
        } else {
            activation::relu(self.norm(bn, x))
        }
    }

    /// An inference batch norm with the affine computed once per pass, and the ReLU if `relu`.
    fn inference_norm(&self, bn: &BatchNorm2d<B>, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
        let key = bn.gamma.id;
        let cached = self.affines.lock().expect("affine cache").get(&key).cloned();
        let (scale, shift) = match cached {
            Some(affine) => affine,
            None => {
                // computed outside the lock: a concurrent branch may compute it too, to the same values
                let affine = bn.inference_affine(&x.device());
                self.affines.lock().expect("affine cache").entry(key).or_insert(affine).clone()
            }
        };
        if self.fast.contains(FastPath::HostAffine) && host_affine_fits(&x) {
            return host_affine(x, scale, shift, relu);
        }
        let y = BatchNorm2d::apply_affine(x, &(scale, shift));
        if relu {
            activation::relu(y)
        } else {
            y
        }
    }

    /// `pool.forward(x)`, or the pool on the host buffer ([`FastPath::HostMaxPool`]) when its
    /// padding is symmetric.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, channels, height, width]`
    /// - output: `[batch_size, channels, height', width']`, as `pool.forward`
    pub fn max_pool(&self, pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let square = pool.kernel_size[0] == pool.kernel_size[1] && pool.stride[0] == pool.stride[1];
        let padding = match pool.padding {
            PaddingConfig2d::Valid => Some(0),
            PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(t),
            _ => None,
        };
        match padding {
            Some(p)
                if square
                    && pool.dilation == [1, 1]
                    && !pool.ceil_mode
                    && self.fast.contains(FastPath::HostMaxPool) =>
            {
                max_pool2d_host(x, pool.kernel_size[0], pool.stride[0], p)
            }
            _ => pool.forward(x),
        }
    }

    /// Whether the branches of a block whose larger activation (input or output, whole batch)
    /// has `elements` elements run concurrently ([`FastPath::ConcurrentBranches`], between
    /// [`MIN_CONCURRENT_ELEMENTS`] and [`MAX_CONCURRENT_ELEMENTS`]).
    pub fn concurrent(&self, elements: usize) -> bool {
        self.fast.contains(FastPath::ConcurrentBranches)
            && (MIN_CONCURRENT_ELEMENTS..=MAX_CONCURRENT_ELEMENTS).contains(&elements)
    }

    /// Whether the sample groups of a block whose larger activation (whole batch) has
    /// `elements` elements run concurrently ([`FastPath::ConcurrentBranches`], from
    /// [`MIN_CONCURRENT_ELEMENTS`] up, with no upper bound). The groups split the batch, so two
    /// in flight hold two groups' intermediates, not another block-sized output as a branch
    /// does; and on the large blocks where branches run one after the other, one group's
    /// operations alone leave a core idle.
    pub fn concurrent_groups(&self, elements: usize) -> bool {
        self.fast.contains(FastPath::ConcurrentBranches) && elements >= MIN_CONCURRENT_ELEMENTS
    }

    /// Whether a static block (every path on) over `batch_size` samples runs its batch as two
    /// concurrent halves: a block above [`MAX_CONCURRENT_ELEMENTS`], whose branches run one
    /// after the other ([`Kernels::concurrent`]), with at least two samples. The static network
    /// so gets what sparse execution's concurrent sample groups get
    /// ([`Kernels::concurrent_groups`]), and stays the baseline to beat.
    pub fn splits_static_batch(&self, elements: usize, batch_size: usize) -> bool {
        self.concurrent_groups(elements) && !self.concurrent(elements) && batch_size >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn only_mid_sized_blocks_in_cpu_inference_run_concurrently() {
        let device = Default::default();
        let flex = Kernels::<Flex>::probe(&device, 4);
        assert!(flex.concurrent(4 * 16 * 32 * 32));
        assert!(!flex.concurrent(16 * 14 * 14));
        assert!(!flex.concurrent(MAX_CONCURRENT_ELEMENTS + 1));
        assert!(!Kernels::<Autodiff<Flex>>::probe(&device, 4).concurrent(4 * 16 * 32 * 32));
        assert!(!Kernels::<Flex>::new(&device, 4, FastPaths::NONE).concurrent(4 * 16 * 32 * 32));
    }

    #[test]
    fn sample_groups_run_concurrently_on_large_blocks_too() {
        let device = Default::default();
        let flex = Kernels::<Flex>::probe(&device, 16);
        let large = MAX_CONCURRENT_ELEMENTS + 1;
        assert!(flex.concurrent_groups(4 * 16 * 32 * 32) && flex.concurrent_groups(large));
        assert!(!flex.concurrent_groups(16 * 14 * 14));
        // a static block splits its batch only where its branches do not run concurrently
        assert!(flex.splits_static_batch(large, 2));
        assert!(!flex.splits_static_batch(large, 1));
        assert!(!flex.splits_static_batch(4 * 16 * 32 * 32, 4));
        assert!(!Kernels::<Autodiff<Flex>>::probe(&device, 16).concurrent_groups(large));
        assert!(!Kernels::<Autodiff<Flex>>::probe(&device, 16).splits_static_batch(large, 16));
        assert!(!Kernels::<Flex>::new(&device, 16, FastPaths::NONE).splits_static_batch(large, 16));
    }

    #[test]
    fn autodiff_gets_only_training_fast_paths_even_when_asked() {
        let device = Default::default();
        let all = FastPath::ALL.into_iter().fold(FastPaths::NONE, FastPaths::with);
        assert_eq!(
            Kernels::<Autodiff<Flex>>::new(&device, 1, all).fast_paths().describe(),
            "matmul-conv, host-batch-norm, grouped-sparse"
        );
        let inference = all.without(FastPath::MatmulConv).without(FastPath::HostBatchNorm);
        assert_eq!(Kernels::<Flex>::new(&device, 1, all).fast_paths(), inference);
        // sparse execution follows the seam: sample groups on Flex, path by path without it
        assert!(Kernels::<Flex>::probe(&device, 4).groups_samples());
        assert!(Kernels::<Autodiff<Flex>>::probe(&device, 4).groups_samples());
        assert!(!Kernels::<Flex>::new(&device, 4, FastPaths::NONE).groups_samples());
    }
}
