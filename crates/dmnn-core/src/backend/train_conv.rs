//! Training convolutions as matrix products ([`FastPath::MatmulConv`](super::FastPath)): an
//! autodiff operation of host im2col, matrix products and host col2im, on chunks of the batch in
//! parallel.
//!
//! Burn's autodiff differentiates a convolution with the backend's `conv_transpose2d` (the input
//! gradient) and a `conv2d` of the batch-swapped input by the output gradient (the weight
//! gradient, a convolution with a kernel the size of the output). On burn-flex both run far below
//! matrix-multiply speed and mostly on one core (docs/decisions.md). Here the batch is cut into a
//! few chunks, one task each. A chunk's im2col matrix `[C·k·k, n·H'·W']` (its images folded into
//! the columns) is built on the host; in the backward pass the chunk's weight gradient (summed
//! over the chunks) and column gradient are two matrix products ([`super::gemm::matmul`]: the
//! `gemm` crate, called as burn-flex calls it, on host buffers), and the input gradient a host
//! col2im of the chunk's own images.
//!
//! The forward pass depends on the size of the im2col matrix. Up to [`KEPT_COLUMNS_MAX`] values
//! (the CPU networks' convolutions) it is one more product per chunk, and the matrices are kept
//! on the host for the backward pass; above (ImageNet-sized activations, where keeping them
//! would cost `k·k` times the activation memory) the forward pass is the backend's own
//! convolution, which runs as fast there, and the backward pass rebuilds each chunk's matrix
//! from the saved input. Every FLOP of the backward pass is a matrix product; the chunks keep
//! both cores busy where a small product alone would not, and each chunk's matrices in cache.
//! The matrices live in host buffers from the im2col to the col2im, and the backend's tensors
//! are read in place where it hands them over. The operation is generic over the inner backend; it is worth
//! it where tensors live in host memory.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::autodiff::{device, host, HostValues};
use super::gemm::{matmul, Layout, Matrix};
use super::im2col::{col2im_batched, im2col_batched, swap_batch_and_channels, ConvGeometry};

/// Largest im2col matrix (values, whole batch) that the forward pass builds and keeps for the
/// backward pass: 8 Mi values, 32 MiB. Larger convolutions run forward as the backend's own and
/// rebuild their matrices chunk by chunk in the backward pass (module docs).
pub const KEPT_COLUMNS_MAX: usize = 1 << 23;

/// Whether the training convolution runs `conv` on an input of `input_dims`: no groups,
/// symmetric padding, no dilation, no bias, `f32` weights; its geometry if so.
pub(crate) fn train_conv_geometry<B: Backend>(conv: &Conv2d<B>, input_dims: [usize; 4]) -> Option<ConvGeometry> {
    let fits = conv.bias.is_none() && conv.dilation == [1, 1] && conv.weight.val().dtype() == DType::F32;
    ConvGeometry::of(conv, input_dims).filter(|_| fits)
}

/// A chunk of the batch: `(first image, images)`.
type Chunk = (usize, usize);

/// A chunk's gradients: of the weight, transposed `[K, O]` (summed over the chunks later), and of
/// its images.
type ChunkGrads = (Option<Vec<f32>>, Option<Vec<f32>>);

/// A chunk's forward pass: its im2col matrix and its output, NCHW.
type ChunkForward = ((Chunk, Vec<f32>), Vec<f32>);

/// The batch's chunks: two per thread, as even as they go.
fn chunks(batch: usize) -> Vec<Chunk> {
    let count = (2 * rayon::current_num_threads()).clamp(1, batch.max(1));
    (0..count).map(|i| (i * batch / count, (i + 1) * batch / count - i * batch / count)).filter(|c| c.1 > 0).collect()
}

/// The chunks' values one after the other (the first chunk's buffer, extended).
fn concat(parts: Vec<Vec<f32>>) -> Vec<f32> {
    let total: usize = parts.iter().map(Vec::len).sum();
    let mut parts = parts.into_iter();
    let mut all = parts.next().unwrap_or_default();
    all.reserve_exact(total - all.len());
    parts.for_each(|part| all.extend_from_slice(&part));
    all
}

/// The geometry of a chunk of `images` of the batch.
fn chunk_geometry(g: &ConvGeometry, images: usize) -> ConvGeometry {
    ConvGeometry { batch: images, ..*g }
}

/// The im2col matrix `[rows, images · positions]` of `chunk` of the NCHW batch `x`.
fn columns_of(x: &[f32], g: &ConvGeometry, (first, images): Chunk) -> Vec<f32> {
    let image = g.channels * g.input[0] * g.input[1];
    let x = &x[first * image..(first + images) * image];
    if g.is_pointwise() {
        swap_batch_and_channels(x, images, g.channels, g.positions())
    } else {
        im2col_batched(x, &chunk_geometry(g, images))
    }
}

#[derive(Debug)]
struct MatmulConvBackward;

/// Where the backward pass gets each chunk's im2col matrix from.
#[derive(Debug, Clone)]
enum Columns<I: Backend> {
    /// Kept by the forward pass, one per chunk.
    Kept(Vec<(Chunk, Vec<f32>)>),
    /// Rebuilt from the input, chunk by chunk.
    Rebuilt(I::FloatTensorPrimitive),
}

/// What the backward pass needs: the im2col matrices (or the input), the weight, the geometry.
#[derive(Debug, Clone)]
struct ConvState<I: Backend> {
    columns: Columns<I>,
    weight: I::FloatTensorPrimitive,
    geometry: ConvGeometry,
}

impl<I: Backend> Backward<I, 2> for MatmulConvBackward {
    type State = ConvState<I>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let ConvState { columns, weight, geometry: g } = ops.state;
        let weight = Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(weight));
        let weight_dims = weight.dims();
        let channels_out = weight_dims[0];
        let dev = grad.device();
        let (positions, rows) = (g.positions(), g.rows());
        let [height, width] = g.input;
        let grad = host(grad); // [B, O, L]
        let weight = host(weight);
        let weight_t = Matrix::row_major(&weight, channels_out, rows).t(); // [K, O]
        let (want_x, want_weight) = (node_x.is_some(), node_weight.is_some());
        // every chunk with its kept matrix, or none and the input to rebuild it from
        let (chunk_columns, input): (Vec<_>, Option<HostValues>) = match columns {
            Columns::Kept(kept) => (kept.into_iter().map(|(c, cols)| (c, Some(cols))).collect(), None),
            Columns::Rebuilt(x) => {
                let input = host(Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(x)));
                (chunks(g.batch).into_iter().map(|c| (c, None)).collect(), Some(input))
            }
        };
        // per chunk: (dL/dW of the chunk, dL/dx of the chunk's images)
        let parts: Vec<ChunkGrads> = chunk_columns
            .into_par_iter()
            .map(|(chunk, kept)| {
                let (first, images) = chunk;
                let plane = channels_out * positions;
                let columns = images * positions;
                // the chunk's output gradient with its images folded into the columns: [O, n·L]
                let chunk_grad = swap_batch_and_channels(
                    &grad[first * plane..(first + images) * plane],
                    images,
                    channels_out,
                    positions,
                );
                let chunk_grad = Matrix::row_major(&chunk_grad, channels_out, columns);
                let grad_weight = want_weight.then(|| {
                    let cols = kept.unwrap_or_else(|| columns_of(input.as_deref().expect("the input"), &g, chunk));
                    // [O, K] written column-major: [K, O], transposed once after the chunks' sum
                    matmul(chunk_grad, Matrix::row_major(&cols, rows, columns).t(), Layout::ColumnMajor)
                });
                let grad_x = want_x.then(|| {
                    let grad_cols = matmul(weight_t, chunk_grad, Layout::RowMajor); // [K, n·L]
                    let cg = chunk_geometry(&g, images);
                    if cg.is_pointwise() {
                        swap_batch_and_channels(&grad_cols, cg.channels, images, positions)
                    } else {
                        col2im_batched(&grad_cols, &cg)
                    }
                });
                (grad_weight, grad_x)
            })
            .collect();
        let (grad_weights, grad_xs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        if let Some(node) = node_weight {
            // the chunks' sums in chunk order, as `a + b` of tensors would add them
            let grad_weight = grad_weights
                .into_iter()
                .flatten()
                .reduce(|mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                })
                .expect("a chunk");
            let grad_weight = swap_batch_and_channels(&grad_weight, rows, channels_out, 1); // [O, K]
            grads.register::<I>(node.id, device::<I, 4>(grad_weight, weight_dims, &dev).into_primitive().tensor());
        }
        if let Some(node) = node_x {
            let grad_x = concat(grad_xs.into_iter().flatten().collect());
            let grad_x = device::<I, 4>(grad_x, [g.batch, g.channels, height, width], &dev);
            grads.register::<I>(node.id, grad_x.into_primitive().tensor());
        }
    }
}

/// `conv2d(x, weight)` (no bias) as an autodiff operation whose backward pass is matrix products
/// (see the module docs).
///
/// # Shapes
/// - `x`: `[batch, channels_in, height, width]`
/// - `weight`: `[channels_out, channels_in, kernel_h, kernel_w]`
/// - output: `[batch, channels_out, out_h, out_w]`
pub(crate) fn matmul_conv2d<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    weight: Tensor<Autodiff<I>, 4>,
    g: ConvGeometry,
) -> Tensor<Autodiff<I>, 4> {
    let keep_columns = g.rows() * g.batch * g.positions() <= KEPT_COLUMNS_MAX;
    matmul_conv2d_with(x, weight, g, keep_columns)
}

/// [`matmul_conv2d`], the forward pass keeping the im2col matrices or not.
fn matmul_conv2d_with<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    weight: Tensor<Autodiff<I>, 4>,
    g: ConvGeometry,
    keep_columns: bool,
) -> Tensor<Autodiff<I>, 4> {
    let x = x.into_primitive().tensor();
    let weight = weight.into_primitive().tensor();
    let inner_x = Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
    let inner_weight = Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(weight.primitive.clone()));
    let [channels_out, ..] = inner_weight.dims();
    let [out_h, out_w] = g.output;
    let dev = inner_x.device();
    let positions = g.positions();
    let (output, columns) = if keep_columns {
        let input = host(inner_x);
        let input = &*input;
        let weight_values = host(inner_weight.clone());
        let weight_matrix = Matrix::row_major(&weight_values, channels_out, g.rows());
        // per chunk: its im2col matrix and its output, NCHW
        let parts: Vec<ChunkForward> = chunks(g.batch)
            .into_par_iter()
            .map(|chunk| {
                let cols = columns_of(input, &g, chunk);
                let out =
                    matmul(weight_matrix, Matrix::row_major(&cols, g.rows(), chunk.1 * positions), Layout::RowMajor); // [O, n·L]
                ((chunk, cols), swap_batch_and_channels(&out, channels_out, chunk.1, positions))
            })
            .collect();
        let (kept, outputs): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        let output = device::<I, 4>(concat(outputs), [g.batch, channels_out, out_h, out_w], &dev);
        (output, Columns::Kept(kept))
    } else {
        let options = ConvOptions::new(g.stride, g.padding, g.dilation, 1);
        let output = conv2d(inner_x.clone(), inner_weight.clone(), None, options);
        (output, Columns::Rebuilt(inner_x.into_primitive().tensor()))
    };
    let output = output.into_primitive().tensor();
    let out = match MatmulConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = ConvState::<I> { columns, weight: inner_weight.into_primitive().tensor(), geometry: g };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{AutodiffKernels, FastPaths, Kernels};
    use burn::backend::Flex;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    type AD = Autodiff<Flex>;

    fn max_relative(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) -> f32 {
        let scale = b.clone().abs().max().into_scalar().max(1e-12);
        (a - b).abs().max().into_scalar() / scale
    }

    /// Output, input gradient and weight gradient of the matrix-product convolution against
    /// Burn's `conv2d`, for `sum(conv(x) · r)` with a random `r`.
    #[test]
    fn gradients_equal_burn_conv2d() {
        let device = Default::default();
        let kernels = AutodiffKernels::<AD>::of().expect("Autodiff<Flex> is Burn's autodiff backend");
        let fast = Kernels::<AD>::new(&device, 2, FastPaths::NONE.with(crate::FastPath::MatmulConv))
            .with_autodiff_kernels(Some(kernels));
        // (batch, channels in, channels out, side, kernel, stride, padding)
        let mut cases = vec![
            (1, 3, 5, 9, 1, 1, 0),
            (3, 7, 6, 8, 1, 2, 0),
            (2, 5, 11, 10, 3, 1, 1),
            (1, 6, 9, 9, 3, 2, 1),
            (4, 3, 5, 7, 3, 1, 0),
            (2, 3, 10, 19, 7, 2, 3),
            (1, 13, 3, 6, 3, 2, 1),
        ];
        // and random ones (a seeded generator): kernels 1/3/7, strides 1/2, paddings 0/1/3,
        // batches 1-4, channel counts 1-13 but never 8
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut draw = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..12 {
            let (kernel, stride, pad): (usize, usize, usize) = ([1, 3, 7][draw(3)], 1 + draw(2), [0, 1, 3][draw(3)]);
            let channels = |d: usize| [1, 2, 3, 5, 6, 7, 9, 10, 11, 12, 13][d];
            let (c_in, c_out) = (channels(draw(11)), channels(draw(11)));
            let side = kernel.saturating_sub(2 * pad).max(1) + draw(9);
            cases.push((1 + draw(4), c_in, c_out, side, kernel, stride, pad));
        }
        for (batch, c_in, c_out, side, kernel, stride, pad) in cases {
            let conv: Conv2d<AD> = Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_bias(false)
                .init(&device);
            let x = Tensor::<AD, 4>::random([batch, c_in, side, side], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let name = format!("b{batch} {c_in}->{c_out} {side}px k{kernel} s{stride} p{pad}");
            assert!(fast.train_conv_applies(&conv, x.dims()).is_some(), "{name}");
            let expected = conv.forward(x.clone());
            let r = Tensor::<AD, 4>::random(expected.dims(), Distribution::Normal(0.0, 1.0), &device);
            let geometry = train_conv_geometry(&conv, x.dims()).unwrap();
            // through the kernels, then with the im2col matrices kept and rebuilt; every graph is
            // built before the first backward (a leaf reused after a backward can lose its
            // gradient to a backward in another test thread: Burn #5573, fixed after 0.21)
            let variants = [
                ("kernels", fast.conv(&conv, x.clone())),
                ("kept", matmul_conv2d_with(x.clone(), conv.weight.val(), geometry, true)),
                ("rebuilt", matmul_conv2d_with(x.clone(), conv.weight.val(), geometry, false)),
            ];
            let grads_expected = (expected.clone() * r.clone()).sum().backward();
            for (variant, got) in variants {
                let name = format!("{name} ({variant})");
                assert_eq!(got.dims(), expected.dims(), "{name}");
                let grads_got = (got.clone() * r.clone()).sum().backward();
                let rel = max_relative(got.inner(), expected.clone().inner());
                assert!(rel <= 1e-4, "{name}: output differs by {rel} (relative)");
                let dx = max_relative(x.grad(&grads_got).unwrap(), x.grad(&grads_expected).unwrap());
                assert!(dx <= 1e-4, "{name}: input gradient differs by {dx} (relative)");
                let dw =
                    max_relative(conv.weight.grad(&grads_got).unwrap(), conv.weight.grad(&grads_expected).unwrap());
                assert!(dw <= 1e-4, "{name}: weight gradient differs by {dw} (relative)");
            }
        }
    }

    #[test]
    fn only_burns_own_autodiff_backend_has_them() {
        assert!(AutodiffKernels::<AD>::of().is_some());
        type Checkpointed = Autodiff<Flex, burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing>;
        assert!(AutodiffKernels::<Checkpointed>::of().is_none());
    }
}
