//! Max pooling of the ImageNet stem on the host
//! ([`FastPath::HostMaxPool`](super::FastPath::HostMaxPool)).
//!
//! Burn Flex's `max_pool2d` always computes the argmax indices too (an `i64` tensor, through a
//! branchy scalar 3-D kernel), in the part of the network that no gate can skip. Compositions of
//! strided slices are no faster (Flex runs non-contiguous elementwise ops through a scalar strided
//! iterator), so for Flex in inference the pool runs here, on the host buffer Flex hands over
//! without a copy. The proper fix is a pooling kernel without indices in Flex itself; other
//! backends and training (whose backward pass needs the indices) use Burn's `MaxPool2d`.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use crate::layers::conv_out_size;

/// `kernel x kernel` max pooling with the given stride and `-inf` padding on every side, as
/// PyTorch's `MaxPool2d(kernel, stride, padding)`, computed on the host (one plane per task).
///
/// # Shapes
/// - `input`: `[batch_size, channels, height, width]`
/// - output: `[batch_size, channels, (height + 2·padding − kernel) / stride + 1, (width + …) / stride + 1]`
///
/// # Panics
/// If `kernel` or `stride` is zero, or the padded input is smaller than the kernel.
pub(crate) fn max_pool2d_host<B: Backend>(
    input: Tensor<B, 4>,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Tensor<B, 4> {
    let [n, c, h, w] = input.dims();
    assert!(
        kernel > 0 && stride > 0 && h + 2 * padding >= kernel && w + 2 * padding >= kernel,
        "max pool kernel={kernel}, stride={stride}, padding={padding} does not fit a {h}x{w} input"
    );
    let (ho, wo) = (conv_out_size(h, kernel, stride, padding), conv_out_size(w, kernel, stride, padding));
    // the input rows (clamped to the image) of output row/column `o`
    let window = |o: usize, size: usize| {
        let start = (o * stride).saturating_sub(padding);
        let end = (o * stride + kernel).saturating_sub(padding).min(size);
        start..end
    };
    let device = input.device();
    let data = input.into_data().convert::<f32>();
    let src = data.as_slice::<f32>().expect("f32 data after convert");
    let mut out = vec![0f32; n * c * ho * wo];
    out.par_chunks_mut(ho * wo).zip(src.par_chunks(h * w)).for_each(|(dst, plane)| {
        // columns first: the max of each input row over every output column's window
        let mut rows = vec![f32::NEG_INFINITY; h * wo];
        for (y, row) in plane.chunks(w).enumerate() {
            for ox in 0..wo {
                rows[y * wo + ox] = row[window(ox, w)].iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            }
        }
        for oy in 0..ho {
            let out_row = &mut dst[oy * wo..(oy + 1) * wo];
            out_row.fill(f32::NEG_INFINITY);
            for y in window(oy, h) {
                for (o, &v) in out_row.iter_mut().zip(&rows[y * wo..(y + 1) * wo]) {
                    *o = o.max(v);
                }
            }
        }
    });
    Tensor::from_data(TensorData::new(out, [n, c, ho, wo]), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{FastPath, Kernels};
    use burn::backend::Flex;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    #[test]
    fn equals_burn_max_pool() {
        let device = Default::default();
        assert!(Kernels::<Flex>::probe(&device, 2).fast_paths().contains(FastPath::HostMaxPool));
        // odd and even sizes, negative values next to the padding
        for [h, w] in [[9, 9], [8, 11], [3, 4]] {
            let x = Tensor::<Flex, 4>::random([2, 3, h, w], Distribution::Normal(-1.0, 1.0), &device);
            for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
                let expected = MaxPool2dConfig::new([kernel, kernel])
                    .with_strides([stride, stride])
                    .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
                    .init()
                    .forward(x.clone());
                let got = max_pool2d_host(x.clone(), kernel, stride, padding);
                assert_eq!(got.dims(), expected.dims(), "{h}x{w}, k={kernel}, s={stride}, p={padding}");
                got.into_data().assert_eq(&expected.into_data(), true);
            }
        }
    }

    #[test]
    fn not_under_autodiff() {
        let kernels = Kernels::<burn::backend::Autodiff<Flex>>::probe(&Default::default(), 2);
        assert!(!kernels.fast_paths().contains(FastPath::HostMaxPool));
    }

    #[test]
    #[should_panic = "max pool kernel=5, stride=1, padding=0 does not fit a 3x4 input"]
    fn kernel_larger_than_input_panics() {
        let x = Tensor::<Flex, 4>::zeros([1, 1, 3, 4], &Default::default());
        let _ = max_pool2d_host(x, 5, 1, 0);
    }
}
