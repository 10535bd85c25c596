//! Spatial convolutions of a batch in inference, burn-flex's own tiles without its serial parts
//! ([`FastPath::HostTiledConv`](super::FastPath::HostTiledConv)).
//!
//! burn-flex 0.21 runs a convolution that is not a pointwise, depthwise or few-channel one as
//! im2col and `gemm` in tiles of [`TILE`] output positions per image: the weight reordered to
//! `[O, kh, kw, C]`, the whole batch converted to NHWC on the calling thread, and then, per tile
//! in parallel, a freshly zeroed im2col matrix `[positions, kh·kw·C]`, a product written to a
//! buffer of its own, and that buffer copied into the output. With two cores the serial
//! conversion and the buffers were half of the time its 3x3 convolutions took in a ResNet-50
//! pass (docs/decisions.md, "Inference convolutions in burn-flex's tiles").
//!
//! Here the same tiles go through the same `gemm::gemm` calls (sizes, operand strides, the
//! parallelism threshold: [`matmul_into`]), so every value is burn-flex's, bit for bit, at
//! every batch size. What changes is around them: each image is converted to NHWC in its own
//! task, a task fills one im2col buffer tile after tile (every value written, so it is never
//! zeroed), and each product is written into the output in place. The proper fix is the same
//! change in burn-flex's `conv3d_impl`, upstream.

use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::autodiff::{device, host};
use super::gemm::{matmul, matmul_into, Layout, Matrix};
use super::im2col::ConvGeometry;

/// Output positions per tile: burn-flex 0.21's `TILE_SIZE`. Each tile is one `gemm` call of this
/// many columns (fewer in an image's last tile), as in burn-flex, which keeps the values its.
pub const TILE: usize = 512;

/// burn-flex 0.21 runs a convolution with at most this many input channels and at most
/// [`FEW_CHANNELS_OUT`] output channels in a direct kernel of its own (`conv3d_small_channel`).
const FEW_CHANNELS_IN: usize = 4;

/// See [`FEW_CHANNELS_IN`].
const FEW_CHANNELS_OUT: usize = 16;

/// The geometry of `conv` on an input of `input_dims` if burn-flex would run it in tiles and so
/// can this module: no groups, symmetric padding, no bias, `f32` weights, neither a pointwise
/// 1x1 (stride 1, no padding: burn-flex's own `gemm` per image) nor a few-channel convolution.
pub(crate) fn tiled_conv_geometry<B: Backend>(conv: &Conv2d<B>, input_dims: [usize; 4]) -> Option<ConvGeometry> {
    let channels_out = conv.weight.dims()[0];
    let fits = conv.bias.is_none() && conv.weight.val().dtype() == DType::F32;
    ConvGeometry::of(conv, input_dims).filter(|g| {
        let few_channels = g.channels <= FEW_CHANNELS_IN && channels_out <= FEW_CHANNELS_OUT;
        fits && !g.is_pointwise() && !few_channels && g.batch > 0 && g.positions() > 0
    })
}

/// `conv.forward(x)` for a convolution that [`tiled_conv_geometry`] accepts, with burn-flex's
/// values (module docs).
///
/// # Shapes
/// - `x`: `[batch, channels_in, height, width]`
/// - output: `[batch, channels_out, height', width']`
pub(crate) fn tiled_conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>, g: ConvGeometry) -> Tensor<B, 4> {
    let [channels_out, ..] = conv.weight.dims();
    let dev = x.device();
    let weight = flatten_weight(&host(conv.weight.val()), channels_out, &g);
    let weight = Matrix::row_major(&weight, channels_out, g.rows());
    let input = host(x);
    let [height, width] = g.input;
    let positions = g.positions();
    let tiles: Vec<(usize, usize)> = (0..positions).step_by(TILE).map(|s| (s, TILE.min(positions - s))).collect();
    // a batch of images enough to keep every core busy runs an image per task, its tiles in
    // turn; a smaller one (one image, a sample group) runs its tiles in parallel too
    let tiles_in_parallel = g.batch < 2 * rayon::current_num_threads() && tiles.len() > 1;
    let mut out = vec![0.0f32; g.batch * channels_out * positions];
    out.par_chunks_mut(channels_out * positions).zip(input.par_chunks(g.channels * height * width)).for_each(
        |(out, image)| {
            let nhwc = to_nhwc(image, g.channels, height * width);
            // the tile at `start`: [len, K], its product [O, K] · [K, len] columns start.. of the
            // image's [O, positions]
            let columns = |tile: &mut Vec<f32>, start: usize, len: usize| fill_tile(tile, &nhwc, &g, start, len);
            if tiles_in_parallel {
                let products: Vec<Vec<f32>> = tiles
                    .par_iter()
                    .map_init(Vec::new, |tile, &(start, len)| {
                        columns(tile, start, len);
                        matmul(weight, Matrix::row_major(tile, len, g.rows()).t(), Layout::RowMajor)
                    })
                    .collect();
                for (&(start, len), values) in tiles.iter().zip(&products) {
                    for (row, values) in out.chunks_exact_mut(positions).zip(values.chunks_exact(len)) {
                        row[start..start + len].copy_from_slice(values);
                    }
                }
            } else {
                let mut tile = Vec::new();
                for &(start, len) in &tiles {
                    columns(&mut tile, start, len);
                    let tile = Matrix::row_major(&tile, len, g.rows()).t();
                    matmul_into(weight, tile, &mut out[start..], positions);
                }
            }
        },
    );
    let [out_h, out_w] = g.output;
    device::<B, 4>(out, [g.batch, channels_out, out_h, out_w], &dev)
}

/// The weight `[O, C, kh, kw]` as the matrix `[O, kh·kw·C]` (burn-flex's order of a row).
fn flatten_weight(weight: &[f32], channels_out: usize, g: &ConvGeometry) -> Vec<f32> {
    let (channels, spatial) = (g.channels, g.kernel[0] * g.kernel[1]);
    let row = channels * spatial;
    let mut flat = vec![0.0f32; channels_out * row];
    flat.par_chunks_mut(row).zip(weight[..channels_out * row].par_chunks(row)).for_each(|(dst, src)| {
        for c in 0..channels {
            for k in 0..spatial {
                dst[k * channels + c] = src[c * spatial + k];
            }
        }
    });
    flat
}

/// Pixels of an NHWC conversion, and rows of an im2col tile, per rayon task: an image of a
/// small batch (a sample group of sparse execution, one image) still spreads over the cores,
/// while the tasks of a large batch's images run theirs whole.
const ROWS_PER_TASK: usize = 128;

/// One image `[C, H·W]` as `[H·W, C]`.
fn to_nhwc(image: &[f32], channels: usize, plane: usize) -> Vec<f32> {
    let mut nhwc = vec![0.0f32; channels * plane];
    nhwc.par_chunks_mut(channels * ROWS_PER_TASK).enumerate().for_each(|(task, pixels)| {
        for (i, pixel) in pixels.chunks_exact_mut(channels).enumerate() {
            let p = task * ROWS_PER_TASK + i;
            for (c, v) in pixel.iter_mut().enumerate() {
                *v = image[c * plane + p];
            }
        }
    });
    nhwc
}

/// The im2col rows of output positions `start..start + len` of one NHWC image: row `i` holds
/// the input under the kernel at position `start + i`, `(kh, kw, c)` in that order, zeros where
/// the kernel covers padding. Every value of `tile` (resized to `len` rows) is written.
fn fill_tile(tile: &mut Vec<f32>, nhwc: &[f32], g: &ConvGeometry, start: usize, len: usize) {
    let [kernel_h, kernel_w] = g.kernel;
    let [height, width] = g.input;
    let channels = g.channels;
    let out_w = g.output[1];
    let row_len = g.rows();
    tile.resize(len * row_len, 0.0);
    tile.par_chunks_mut(row_len * ROWS_PER_TASK).enumerate().for_each(|(task, rows)| {
        for (i, row) in rows.chunks_exact_mut(row_len).enumerate() {
            let position = start + task * ROWS_PER_TASK + i;
            let (oh, ow) = (position / out_w, position % out_w);
            let mut cells = row.chunks_exact_mut(channels);
            for kh in 0..kernel_h {
                let ih = (oh * g.stride[0] + kh * g.dilation[0]) as isize - g.padding[0] as isize;
                for kw in 0..kernel_w {
                    let iw = (ow * g.stride[1] + kw * g.dilation[1]) as isize - g.padding[1] as isize;
                    let cell = cells.next().expect("kh·kw cells of a row");
                    if (0..height as isize).contains(&ih) && (0..width as isize).contains(&iw) {
                        let at = (ih as usize * width + iw as usize) * channels;
                        cell.copy_from_slice(&nhwc[at..at + channels]);
                    } else {
                        cell.fill(0.0);
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    fn conv(c_in: usize, c_out: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Conv2d<Flex> {
        Conv2dConfig::new([c_in, c_out], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_dilation([dilation, dilation])
            .with_bias(false)
            .init(&Default::default())
    }

    /// burn-flex's values, bit for bit, on ResNet-50's spatial convolutions (the stem; 3x3 at
    /// 56 px, whose last tile of 64 positions by 64 channels takes `gemm`'s small-matrix path;
    /// at 28 px, whose last tile is 272; strided) and on odd shapes, a strided 1x1 and a dilated
    /// one among them, at batch 1 and above.
    #[test]
    fn equals_flex_conv2d_bit_for_bit() {
        let device = Default::default();
        // (batch, channels in, channels out, side, kernel, stride, padding, dilation)
        let cases = [
            (2, 3, 64, 224, 7, 2, 3, 1),
            (2, 64, 64, 56, 3, 1, 1, 1),
            (3, 128, 128, 28, 3, 1, 1, 1),
            (2, 128, 128, 56, 3, 2, 1, 1),
            (1, 256, 256, 14, 3, 1, 1, 1),
            (2, 512, 512, 7, 3, 1, 1, 1),
            (2, 64, 128, 56, 1, 2, 0, 1),
            (3, 5, 7, 9, 3, 1, 1, 1),
            (1, 13, 6, 11, 3, 2, 0, 1),
            (2, 6, 9, 12, 3, 1, 2, 2),
            (1, 5, 17, 8, 5, 1, 2, 1),
        ];
        for (batch, c_in, c_out, side, kernel, stride, pad, dilation) in cases {
            let name = format!("b{batch} {c_in}->{c_out} {side}px k{kernel} s{stride} p{pad} d{dilation}");
            let conv = conv(c_in, c_out, kernel, stride, pad, dilation);
            let x = Tensor::<Flex, 4>::random([batch, c_in, side, side], Distribution::Normal(0.0, 1.0), &device);
            let g = tiled_conv_geometry(&conv, x.dims()).unwrap_or_else(|| panic!("{name}: not tiled"));
            let expected = conv.forward(x.clone()).into_data();
            let got = tiled_conv2d(&conv, x, g).into_data();
            assert_eq!(got.shape, expected.shape, "{name}");
            let (got, expected) = (got.to_vec::<f32>().unwrap(), expected.to_vec::<f32>().unwrap());
            let differ = got.iter().zip(&expected).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{name}: {differ} of {} values differ", got.len());
        }
    }

    /// What burn-flex runs otherwise is left to it: pointwise, few-channel, biased, grouped.
    #[test]
    fn leaves_burn_flexs_other_kernels_alone() {
        let pointwise = conv(16, 32, 1, 1, 0, 1);
        assert!(tiled_conv_geometry(&pointwise, [2, 16, 8, 8]).is_none());
        let few_channels = conv(3, 16, 3, 1, 1, 1);
        assert!(tiled_conv_geometry(&few_channels, [2, 3, 8, 8]).is_none());
        let biased: Conv2d<Flex> = Conv2dConfig::new([8, 8], [3, 3]).init(&Default::default());
        assert!(tiled_conv_geometry(&biased, [2, 8, 8, 8]).is_none());
        let grouped: Conv2d<Flex> =
            Conv2dConfig::new([8, 8], [3, 3]).with_groups(2).with_bias(false).init(&Default::default());
        assert!(tiled_conv_geometry(&grouped, [2, 8, 8, 8]).is_none());
        assert!(tiled_conv_geometry(&conv(3, 17, 3, 1, 1, 1), [2, 3, 8, 8]).is_some());
    }
}
