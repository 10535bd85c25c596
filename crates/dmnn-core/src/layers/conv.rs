//! Convolution geometry and the convolutions of a ResNet.

use burn::module::Initializer;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;

/// Output size of a convolution or pooling window along one axis:
/// `(size + 2·pad − kernel) / stride + 1`.
///
/// # Panics
/// If the padded input is smaller than the kernel or the stride is zero.
pub fn conv_out_size(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

/// A 2-D convolution without bias, "same" padding for odd kernels (`kernel / 2` on every side),
/// Kaiming-normal (fan-out) weights as torchvision's ResNet.
pub(crate) fn resnet_conv<B: Backend>(
    channels_in: usize,
    channels_out: usize,
    kernel: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    let pad = kernel / 2;
    Conv2dConfig::new([channels_in, channels_out], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal { gain: 2f64.sqrt(), fan_out_only: true })
        .init(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes() {
        // 7x7/2 pad 3 on 224 px: (224 + 6 - 7) / 2 + 1 = 112; 3x3/2 pad 1 on 112: 56
        assert_eq!(conv_out_size(224, 7, 2, 3), 112);
        assert_eq!(conv_out_size(112, 3, 2, 1), 56);
        // odd size, stride 2: (7 + 2 - 3) / 2 + 1 = 4
        assert_eq!(conv_out_size(7, 3, 2, 1), 4);
    }
}
