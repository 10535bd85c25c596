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
    let [batch_size, channels_in, height, width] = input.dims();
    let weight = conv.weight.val();
    let [channels_out, weight_channels, kernel_h, kernel_w] = weight.dims();
    let padding = symmetric_padding(&conv.padding);
    assert!(
        batch_size == 1 && conv.groups == 1 && padding.is_some() && weight_channels == channels_in,
        "conv2d_im2col takes one image, no groups and symmetric padding: input {:?}, weight {:?}, groups {}, padding {:?}",
        input.dims(),
        weight.dims(),
        conv.groups,
        conv.padding
    );
    let [pad_h, pad_w] = padding.expect("checked above");
    let [out_h, out_w] = output_size(conv, [height, width], [pad_h, pad_w]);
    let ([stride_h, stride_w], [dilation_h, dilation_w]) = (conv.stride, conv.dilation);
    let (positions, rows) = (out_h * out_w, channels_in * kernel_h * kernel_w);
    let device = input.device();
    let data = input.into_data().convert::<f32>();
    let src = data.as_slice::<f32>().expect("f32 data after convert");

    // the input columns of output columns `ow` in range, for kernel column `kw`: `iw = ow·s + kw·d − p`
    let valid = |k: usize, dilation: usize, stride: usize, pad: usize, size: usize, out: usize| {
        let offset = (k * dilation) as isize - pad as isize;
        let first = if offset >= 0 { 0 } else { (-offset) as usize };
        let first = first.div_ceil(stride);
        let last = (size as isize - 1 - offset).div_euclid(stride as isize); // may be negative
        let end = ((last + 1).max(0) as usize).min(out);
        (offset, first.min(end)..end)
    };
    let mut columns = vec![0f32; rows * positions];
    let rows_per_task = (ELEMENTS_PER_TASK / positions).max(1);
    columns.par_chunks_mut(positions).enumerate().with_min_len(rows_per_task).for_each(|(row, dst)| {
        let (c, kh, kw) = (row / (kernel_h * kernel_w), row / kernel_w % kernel_h, row % kernel_w);
        let plane = &src[c * height * width..(c + 1) * height * width];
        let (offset_h, ohs) = valid(kh, dilation_h, stride_h, pad_h, height, out_h);
        let (offset_w, ows) = valid(kw, dilation_w, stride_w, pad_w, width, out_w);
        for oh in ohs {
            let ih = (oh * stride_h) as isize + offset_h;
            let line = &plane[ih as usize * width..(ih as usize + 1) * width];
            let out_row = &mut dst[oh * out_w..(oh + 1) * out_w];
            for ow in ows.clone() {
                out_row[ow] = line[((ow * stride_w) as isize + offset_w) as usize];
            }
        }
    });
    let columns = Tensor::<B, 2>::from_data(TensorData::new(columns, [rows, positions]), &device);
    let out = weight.reshape([channels_out, rows]).matmul(columns).reshape([1, channels_out, out_h, out_w]);
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
    #[should_panic = "conv2d_im2col takes one image"]
    fn a_batch_panics() {
        let x = Tensor::<Flex, 4>::zeros([2, 3, 5, 5], &Default::default());
        let _ = conv2d_im2col(&conv([3, 4], 3, 1, 1, 1, false), x);
    }
}
