//! One path of a multi-path block: a thin residual branch with its own convolutions and batch
//! norms, so a path that is off costs nothing.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;

use crate::im2col::{conv2d_im2col, im2col_applies};
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// The residual unit a path is cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34): `conv3x3(C_in -> p, stride) -> conv3x3(p -> C_out)`.
    Basic,
    /// 1x1, 3x3, 1x1 (ResNet-50/101, stride on the 3x3 as torchvision's v1.5):
    /// `conv1x1(C_in -> p) -> conv3x3(p -> p, stride) -> conv1x1(p -> C_out)`.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per unit of stage width (1 for basic, 4 for bottleneck blocks).
    pub fn expansion(self) -> usize {
        match self {
            Self::Basic => 1,
            Self::Bottleneck => 4,
        }
    }
}

/// Configuration of one [`Path`].
#[derive(Config, Debug)]
pub struct PathConfig {
    /// Residual unit the path is cut from.
    pub kind: BlockKind,
    /// Channels of the block input.
    pub channels_in: usize,
    /// Inner width `p` of the path.
    pub path_width: usize,
    /// Channels of the block output.
    pub channels_out: usize,
    /// Stride of the block (on the first 3x3 convolution).
    #[config(default = 1)]
    pub stride: usize,
}

/// A 2-D convolution without bias, "same" padding for odd kernels, Kaiming-normal (fan-out)
/// weights as torchvision's ResNet.
pub(crate) fn conv<B: Backend>(
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
        .with_initializer(Initializer::KaimingNormal {
            gain: 2f64.sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// Output size of a convolution or pooling window along one axis: `(size + 2·pad − kernel) / stride + 1`.
pub fn conv_out_size(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - kernel) / stride + 1
}

impl PathConfig {
    /// Builds the path.
    ///
    /// # Panics
    /// If a width or the stride is zero.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Path<B> {
        assert!(
            self.channels_in > 0 && self.path_width > 0 && self.channels_out > 0 && self.stride > 0,
            "path channels_in={}, path_width={}, channels_out={}, stride={} must all be positive",
            self.channels_in,
            self.path_width,
            self.channels_out,
            self.stride
        );
        let (p, s) = (self.path_width, self.stride);
        match self.kind {
            BlockKind::Basic => Path {
                conv1: conv(self.channels_in, p, 3, s, device),
                bn1: BatchNorm2dConfig::new(p).init(device),
                conv2: conv(p, self.channels_out, 3, 1, device),
                bn2: BatchNorm2dConfig::new(self.channels_out).init(device),
                conv3: None,
                bn3: None,
            },
            BlockKind::Bottleneck => Path {
                conv1: conv(self.channels_in, p, 1, 1, device),
                bn1: BatchNorm2dConfig::new(p).init(device),
                conv2: conv(p, p, 3, s, device),
                bn2: BatchNorm2dConfig::new(p).init(device),
                conv3: Some(conv(p, self.channels_out, 1, 1, device)),
                bn3: Some(BatchNorm2dConfig::new(self.channels_out).init(device)),
            },
        }
    }

    /// Parameters of the path: convolution weights and batch-norm scales and shifts.
    pub fn param_count(&self) -> usize {
        let (c_in, p, c_out) = (self.channels_in, self.path_width, self.channels_out);
        match self.kind {
            BlockKind::Basic => 9 * c_in * p + 2 * p + 9 * p * c_out + 2 * c_out,
            BlockKind::Bottleneck => c_in * p + 2 * p + 9 * p * p + 2 * p + p * c_out + 2 * c_out,
        }
    }

    /// Multiply-accumulates of the path for one sample whose block input is `height x width`.
    pub fn macs(&self, height: usize, width: usize) -> u64 {
        let (c_in, p, c_out) = (self.channels_in as u64, self.path_width as u64, self.channels_out as u64);
        let (h, w) = (height, width);
        let (ho, wo) = (conv_out_size(h, 3, self.stride, 1), conv_out_size(w, 3, self.stride, 1));
        let (hw, hwo) = ((h * w) as u64, (ho * wo) as u64);
        match self.kind {
            BlockKind::Basic => 9 * c_in * p * hwo + 9 * p * c_out * hwo,
            BlockKind::Bottleneck => c_in * p * hw + 9 * p * p * hwo + p * c_out * hwo,
        }
    }
}

/// One path of a multi-path block.
///
/// Field names follow torchvision's `BasicBlock` / `Bottleneck` (`conv1`, `bn1`, ...): a block with
/// one path is exactly torchvision's block without its shortcut.
#[derive(Module, Debug)]
pub struct Path<B: Backend> {
    /// First convolution (3x3 with the stride in a basic path, 1x1 in a bottleneck).
    pub conv1: Conv2d<B>,
    /// Batch norm after `conv1`.
    pub bn1: BatchNorm2d<B>,
    /// Second convolution (3x3; carries the stride in a bottleneck).
    pub conv2: Conv2d<B>,
    /// Batch norm after `conv2`.
    pub bn2: BatchNorm2d<B>,
    /// Third convolution (1x1 expansion), bottleneck only.
    pub conv3: Option<Conv2d<B>>,
    /// Batch norm after `conv3`, bottleneck only.
    pub bn3: Option<BatchNorm2d<B>>,
}

/// The inference batch-norm affines of a path ([`BatchNorm2d::inference_affine`] of `bn1`,
/// `bn2` and, in a bottleneck, `bn3`), computed once per block and reused for every group of
/// samples the path serves.
#[derive(Debug, Clone)]
pub struct PathAffines<B: Backend>(Vec<(Tensor<B, 1>, Tensor<B, 1>)>);

impl<B: Backend> Path<B> {
    /// The residual branch, without the shortcut and without the final ReLU.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        if B::ad_enabled(&input.device()) {
            self.forward_normed(input, Conv2d::forward, |bn, _, x| bn.forward(x))
        } else {
            let one_image = input.dims()[0] == 1;
            self.forward_inference(input, &self.inference_affines(), one_image)
        }
    }

    /// Shape `[channels, height, width]` of the path's output for an input of `height x width`
    /// (every convolution of a path pads its kernel to "same", so only the stride shrinks it).
    pub fn output_shape(&self, height: usize, width: usize) -> [usize; 3] {
        let convs = [Some(&self.conv1), Some(&self.conv2), self.conv3.as_ref()];
        let last = self.conv3.as_ref().unwrap_or(&self.conv2);
        let channels = last.weight.lazy_shape()[0];
        convs.into_iter().flatten().fold([channels, height, width], |[c, h, w], conv| {
            [c, h.div_ceil(conv.stride[0]), w.div_ceil(conv.stride[1])]
        })
    }

    /// The batch-norm affines of inference.
    pub fn inference_affines(&self) -> PathAffines<B> {
        let norms = [Some(&self.bn1), Some(&self.bn2), self.bn3.as_ref()];
        PathAffines(norms.into_iter().flatten().map(BatchNorm2d::inference_affine).collect())
    }

    /// [`Path::forward`] in inference with precomputed batch-norm affines. With `one_image` (the
    /// whole batch is one image) a spatial convolution runs as one matrix product on Flex
    /// ([`crate::im2col`]). Sparse execution passes the whole batch's answer for every sample
    /// group, so that a group of one sample computes exactly what the batch would.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn forward_inference(&self, input: Tensor<B, 4>, affines: &PathAffines<B>, one_image: bool) -> Tensor<B, 4> {
        let conv = |conv: &Conv2d<B>, x: Tensor<B, 4>| {
            if one_image && im2col_applies(conv, x.dims(), &x.device()) {
                conv2d_im2col(conv, x)
            } else {
                conv.forward(x)
            }
        };
        self.forward_normed(input, conv, |_, k, x| BatchNorm2d::apply_affine(x, &affines.0[k]))
    }

    /// The branch with `conv(c, x)` as every convolution and `norm(bn, k, x)` as its `k`-th batch
    /// norm.
    fn forward_normed(
        &self,
        input: Tensor<B, 4>,
        conv: impl Fn(&Conv2d<B>, Tensor<B, 4>) -> Tensor<B, 4>,
        mut norm: impl FnMut(&BatchNorm2d<B>, usize, Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let x = relu(norm(&self.bn1, 0, conv(&self.conv1, input)));
        let x = norm(&self.bn2, 1, conv(&self.conv2, x));
        match (&self.conv3, &self.bn3) {
            (Some(conv3), Some(bn3)) => norm(bn3, 2, conv(conv3, relu(x))),
            _ => x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn output_shape_is_the_shape_of_the_output() {
        let device = Default::default();
        for kind in [BlockKind::Basic, BlockKind::Bottleneck] {
            for stride in [1, 2] {
                let path = PathConfig::new(kind, 3, 2, 5).with_stride(stride).init::<Flex>(&device);
                for [h, w] in [[6, 6], [7, 5]] {
                    let [_, c, ho, wo] = path.forward(Tensor::zeros([1, 3, h, w], &device)).dims();
                    assert_eq!(path.output_shape(h, w), [c, ho, wo], "{kind:?}, stride {stride}, {h}x{w}");
                }
            }
        }
    }
}
