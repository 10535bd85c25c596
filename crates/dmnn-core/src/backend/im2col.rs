//! Spatial convolutions of one image on the CPU as one matrix product
//! ([`FastPath::OneImageIm2col`](super::FastPath::OneImageIm2col)).
//!
//! Burn Flex runs a convolution as im2col + gemm in tiles of 512 output positions per image,
//! after a serial conversion of the input to NHWC. For one image that leaves little to run in
//! parallel: a 3x3 convolution of dmnn50's 28, 14 or 7 px stages is one or two tiles, and a path
//! that runs alone (its sibling gated off) keeps a core idle. Here the im2col matrix of the image
//! is built on the host straight from NCHW (rows in parallel) and multiplied by the weight matrix
//! with Burn's `matmul`, whose gemm splits one large product over the cores. At 56 px and for
//! batches Flex's own tiling is as fast or faster (docs/decisions.md has the measurements). The
//! proper fix is a batch-1 path in Flex's convolution, upstream.

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::layers::conv_out_size;

/// Most output positions of a convolution run as one im2col matrix product: up to dmnn50's 28 px stage
/// (784); at 56 px (3136) Flex's tiles already fill the cores.
pub const IM2COL_MAX_POSITIONS: usize = 1024;

/// Elements of the im2col matrix filled per task (rows are grouped up to this size).
const ELEMENTS_PER_TASK: usize = 1 << 14;

/// The convolution's padding `[height, width]`, if symmetric on both axes.
fn symmetric_padding(padding: &PaddingConfig2d) -> Option<[usize; 2]> {
    match *padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => Some([top, left]),
        _ => None,
    }
}

/// Output size `[height, width]` of `conv` on a `height x width` input with `padding`.
fn output_size<B: Backend>(conv: &Conv2d<B>, [height, width]: [usize; 2], padding: [usize; 2]) -> [usize; 2] {
    let span = |axis: usize| conv.dilation[axis] * (conv.kernel_size[axis] - 1) + 1;
    [
        conv_out_size(height, span(0), conv.stride[0], padding[0]),
        conv_out_size(width, span(1), conv.stride[1], padding[1]),
    ]
}

/// Whether [`conv2d_im2col`] can run `conv` on an input of shape `input_dims` and is worth it:
/// one image, a spatial kernel, no groups, symmetric padding and at most
/// [`IM2COL_MAX_POSITIONS`] output positions. (Whether the backend wants it is
/// [`Kernels`](super::Kernels)' question.)
pub(crate) fn im2col_fits<B: Backend>(conv: &Conv2d<B>, input_dims: [usize; 4]) -> bool {
    let [batch_size, _, height, width] = input_dims;
    let Some(padding) = symmetric_padding(&conv.padding) else {
        return false;
    };
    let [out_height, out_width] = output_size(conv, [height, width], padding);
    batch_size == 1 && conv.kernel_size != [1, 1] && conv.groups == 1 && out_height * out_width <= IM2COL_MAX_POSITIONS
}

/// The geometry of a 2-D convolution with symmetric padding and no groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Input `[height, width]`.
    pub input: [usize; 2],
    /// Kernel `[height, width]`.
    pub kernel: [usize; 2],
    /// Stride `[height, width]`.
    pub stride: [usize; 2],
    /// Padding `[height, width]`, on both sides.
    pub padding: [usize; 2],
    /// Dilation `[height, width]`.
    pub dilation: [usize; 2],
    /// Output `[height, width]`.
    pub output: [usize; 2],
}

impl ConvGeometry {
    /// The geometry of `conv` on an input of `input_dims`, if its padding is symmetric and it
    /// has no groups.
    pub fn of<B: Backend>(conv: &Conv2d<B>, input_dims: [usize; 4]) -> Option<Self> {
        let [batch, channels, height, width] = input_dims;
        let padding = symmetric_padding(&conv.padding)?;
        (conv.groups == 1).then(|| Self {
            batch,
            channels,
            input: [height, width],
            kernel: conv.kernel_size,
            stride: conv.stride,
            padding,
            dilation: conv.dilation,
            output: output_size(conv, [height, width], padding),
        })
    }

    /// Rows of an image's im2col matrix: `channels · kernel_h · kernel_w`.
    pub fn rows(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// Columns of an image's im2col matrix: the output positions.
    pub fn positions(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Whether the convolution is the identity on positions (1x1, stride 1, no padding): the
    /// input is its own im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// For kernel offset `k` along `axis`: the input offset `k·d − p` and the output positions
    /// whose input `o·s + k·d − p` lies inside the image.
    fn valid(&self, axis: usize, k: usize) -> (isize, std::ops::Range<usize>) {
        let (stride, size, out) = (self.stride[axis], self.input[axis], self.output[axis]);
        let offset = (k * self.dilation[axis]) as isize - self.padding[axis] as isize;
        let first = if offset >= 0 { 0 } else { (-offset) as usize };
        let first = first.div_ceil(stride);
        let last = (size as isize - 1 - offset).div_euclid(stride as isize); // may be negative
        let end = ((last + 1).max(0) as usize).min(out);
        (offset, first.min(end)..end)
    }

    /// The image, channel and kernel offsets of im2col row `row` of a batch.
    fn row(&self, row: usize) -> (usize, usize, usize, usize) {
        let [kernel_h, kernel_w] = self.kernel;
        let per_image = self.rows();
        let (b, r) = (row / per_image, row % per_image);
        (b, r / (kernel_h * kernel_w), r / kernel_w % kernel_h, r % kernel_w)
    }
}

/// `out_row[ow] = line[ow · stride + offset]` for the output columns `ows` (a plain copy at stride 1).
#[inline]
fn copy_row(out_row: &mut [f32], line: &[f32], ows: std::ops::Range<usize>, stride: usize, offset: isize) {
    if ows.is_empty() {
        return;
    }
    let first = (ows.start * stride) as isize + offset;
    if stride == 1 {
        let first = first as usize;
        out_row[ows.clone()].copy_from_slice(&line[first..first + ows.len()]);
    } else {
        let src = line[first as usize..].iter().step_by(stride);
        for (o, &v) in out_row[ows].iter_mut().zip(src) {
            *o = v;
        }
    }
}

/// `line[ow · stride + offset] += src_row[ow]` for the output columns `ows`, the adjoint of
/// [`copy_row`].
#[inline]
fn add_row(line: &mut [f32], src_row: &[f32], ows: std::ops::Range<usize>, stride: usize, offset: isize) {
    if ows.is_empty() {
        return;
    }
    let first = ((ows.start * stride) as isize + offset) as usize;
    if stride == 1 {
        for (d, &v) in line[first..first + ows.len()].iter_mut().zip(&src_row[ows]) {
            *d += v;
        }
    } else {
        for (d, &v) in line[first..].iter_mut().step_by(stride).zip(&src_row[ows]) {
            *d += v;
        }
    }
}

/// The im2col matrix of a whole batch with the batch folded into the columns,
/// `[channels · kernel_h · kernel_w, batch · out_h · out_w]` (column `b · positions + p` is
/// position `p` of image `b`), from its NCHW values `src`; rows filled in parallel. One matrix
/// product then convolves the whole batch.
pub(crate) fn im2col_batched(src: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [height, width] = g.input;
    let out_w = g.output[1];
    let positions = g.positions();
    let row_len = g.batch * positions;
    let mut columns = vec![0f32; g.rows() * row_len];
    let rows_per_task = (ELEMENTS_PER_TASK / row_len.max(1)).max(1);
    columns.par_chunks_mut(row_len).enumerate().with_min_len(rows_per_task).for_each(|(row, dst)| {
        let (_, c, kh, kw) = g.row(row);
        let (offset_h, ohs) = g.valid(0, kh);
        let (offset_w, ows) = g.valid(1, kw);
        for b in 0..g.batch {
            let plane = &src[(b * g.channels + c) * height * width..(b * g.channels + c + 1) * height * width];
            let image = &mut dst[b * positions..(b + 1) * positions];
            for oh in ohs.clone() {
                let ih = (oh * g.stride[0]) as isize + offset_h;
                let line = &plane[ih as usize * width..(ih as usize + 1) * width];
                copy_row(&mut image[oh * out_w..(oh + 1) * out_w], line, ows.clone(), g.stride[1], offset_w);
            }
        }
    });
    columns
}

/// The adjoint of [`im2col_batched`]: sums every entry of a `[rows, batch · positions]` matrix
/// back onto the input position it was taken from, giving `[batch, channels, height, width]`;
/// planes filled in parallel.
pub(crate) fn col2im_batched(columns: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let [height, width] = g.input;
    let out_w = g.output[1];
    let [kernel_h, kernel_w] = g.kernel;
    let positions = g.positions();
    let row_len = g.batch * positions;
    let plane_size = height * width;
    let mut out = vec![0f32; g.batch * g.channels * plane_size];
    let planes_per_task = (ELEMENTS_PER_TASK / (plane_size * kernel_h * kernel_w).max(1)).max(1);
    out.par_chunks_mut(plane_size).enumerate().with_min_len(planes_per_task).for_each(|(plane_index, plane)| {
        let (b, c) = (plane_index / g.channels, plane_index % g.channels);
        for kh in 0..kernel_h {
            let (offset_h, ohs) = g.valid(0, kh);
            for kw in 0..kernel_w {
                let (offset_w, ows) = g.valid(1, kw);
                let row = (c * kernel_h + kh) * kernel_w + kw;
                let src = &columns[row * row_len + b * positions..row * row_len + (b + 1) * positions];
                for oh in ohs.clone() {
                    let ih = ((oh * g.stride[0]) as isize + offset_h) as usize;
                    let line = &mut plane[ih * width..(ih + 1) * width];
                    add_row(line, &src[oh * out_w..(oh + 1) * out_w], ows.clone(), g.stride[1], offset_w);
                }
            }
        }
    });
    out
}

/// `[batch, channels, positions]` from `[channels, batch · positions]` (or back, with the first two
/// sizes swapped): the layout change between a batch-folded matrix product and NCHW, on the
/// calling thread (a training chunk's task), each value written once.
pub(crate) fn swap_batch_and_channels(src: &[f32], outer: usize, inner: usize, positions: usize) -> Vec<f32> {
    // src is [outer, inner, positions]; the result is [inner, outer, positions]
    let mut out = Vec::with_capacity(outer * inner * positions);
    for i in 0..inner {
        for o in 0..outer {
            let from = (o * inner + i) * positions;
            out.extend_from_slice(&src[from..from + positions]);
        }
    }
    out
}

/// `conv.forward(input)` for one image as one matrix product: the host builds the im2col matrix
/// `[channels_in · kernel_h · kernel_w, out_h · out_w]` from the NCHW input (zeros for padding),
/// and the weight matrix `[channels_out, channels_in · kernel_h · kernel_w]` multiplies it.
///
/// # Shapes
/// - `input`: `[1, channels_in, height, width]`
/// - output: `[1, channels_out, out_h, out_w]`, as `conv.forward`
///
/// # Panics
/// If the input is not one image, the convolution has groups or asymmetric or "same" padding
/// (see [`im2col_fits`]), or the input's channels do not match the weight.
pub(crate) fn conv2d_im2col<B: Backend>(conv: &Conv2d<B>, input: Tensor<B, 4>) -> Tensor<B, 4> {
    let weight = conv.weight.val();
    let [channels_out, weight_channels, ..] = weight.dims();
    let geometry = ConvGeometry::of(conv, input.dims());
    assert!(
        input.dims()[0] == 1 && geometry.is_some() && weight_channels == input.dims()[1],
        "conv2d_im2col takes one image, no groups and symmetric padding: input {:?}, weight {:?}, groups {}, padding {:?}",
        input.dims(),
        weight.dims(),
        conv.groups,
        conv.padding
    );
    let g = geometry.expect("checked above");
    let [out_h, out_w] = g.output;
    let device = input.device();
    let data = input.into_data().convert::<f32>();
    // one image: the batch-folded matrix is the image's own
    let columns = im2col_batched(data.as_slice::<f32>().expect("f32 data after convert"), &g);
    let columns = Tensor::<B, 2>::from_data(TensorData::new(columns, [g.rows(), g.positions()]), &device);
    let out = weight.reshape([channels_out, g.rows()]).matmul(columns).reshape([1, channels_out, out_h, out_w]);
    match &conv.bias {
        Some(bias) => out + bias.val().reshape([1, channels_out, 1, 1]),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Kernels;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Distribution, Tolerance};

    fn conv(
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        dilation: usize,
        pad: usize,
        bias: bool,
    ) -> Conv2d<Flex> {
        Conv2dConfig::new(channels, [kernel, kernel])
            .with_stride([stride, stride])
            .with_dilation([dilation, dilation])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(bias)
            .init(&Default::default())
    }

    #[test]
    fn equals_burn_convolution() {
        let device = Default::default();
        let kernels = Kernels::<Flex>::probe(&device, 1);
        // stride 1 and 2, odd and even sizes, dilation, no padding, a bias, a 5x5 kernel
        for (kernel, stride, dilation, pad, bias) in
            [(3, 1, 1, 1, false), (3, 2, 1, 1, true), (3, 1, 2, 2, false), (3, 2, 1, 0, false), (5, 1, 1, 2, true)]
        {
            let conv = conv([3, 4], kernel, stride, dilation, pad, bias);
            for [h, w] in [[9, 9], [8, 11], [5, 4]] {
                let x = Tensor::<Flex, 4>::random([1, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
                assert!(kernels.im2col_applies(&conv, x.dims()));
                let expected = conv.forward(x.clone());
                let got = conv2d_im2col(&conv, x);
                assert_eq!(got.dims(), expected.dims(), "k={kernel}, s={stride}, d={dilation}, p={pad}, {h}x{w}");
                got.into_data().assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-5));
            }
        }
    }

    #[test]
    fn only_spatial_kernels_of_one_image_in_flex_inference() {
        let device = Default::default();
        let kernels = Kernels::<Flex>::probe(&device, 1);
        let conv3 = conv([3, 4], 3, 1, 1, 1, false);
        assert!(kernels.im2col_applies(&conv3, [1, 3, 28, 28]));
        assert!(!kernels.im2col_applies(&conv3, [2, 3, 28, 28]));
        assert!(!kernels.im2col_applies(&conv3, [1, 3, 56, 56]));
        assert!(!kernels.im2col_applies(&conv([3, 4], 1, 1, 1, 0, false), [1, 3, 28, 28]));
        let ad = Conv2dConfig::new([3, 4], [3, 3]).init::<Autodiff<Flex>>(&device);
        assert!(!Kernels::<Autodiff<Flex>>::probe(&device, 1).im2col_applies(&ad, [1, 3, 28, 28]));
        // and not with the fast paths off
        assert!(
            !Kernels::<Flex>::new(&device, 1, crate::backend::FastPaths::NONE).im2col_applies(&conv3, [1, 3, 28, 28])
        );
    }

    #[test]
    fn swapping_batch_and_channels_twice_is_the_identity() {
        let src: Vec<f32> = (0..2 * 3 * 4).map(|i| i as f32).collect();
        let swapped = swap_batch_and_channels(&src, 2, 3, 4);
        assert_eq!(&swapped[..8], &[0.0, 1.0, 2.0, 3.0, 12.0, 13.0, 14.0, 15.0]);
        assert_eq!(swap_batch_and_channels(&swapped, 3, 2, 4), src);
    }

    #[test]
    #[should_panic = "conv2d_im2col takes one image"]
    fn a_batch_panics() {
        let x = Tensor::<Flex, 4>::zeros([2, 3, 5, 5], &Default::default());
        let _ = conv2d_im2col(&conv([3, 4], 3, 1, 1, 1, false), x);
    }
}
