//! One path of a multi-path block: a thin residual branch with its own convolutions and batch
//! norms, so a path that is off costs nothing. Follows torchvision's `BasicBlock` and
//! `Bottleneck` (`torchvision.models.resnet`, stride on the 3x3 convolution) without the
//! shortcut and the final ReLU.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::backend::Kernels;
use crate::layers::{conv_out_size, resnet_conv, BatchNorm2d, BatchNorm2dConfig};

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
        let (c_in, p, c_out, s) = (self.channels_in, self.path_width, self.channels_out, self.stride);
        match self.kind {
            BlockKind::Basic => Path::Basic(BasicPath {
                conv1: resnet_conv(c_in, p, 3, s, device),
                bn1: BatchNorm2dConfig::new(p).init(device),
                conv2: resnet_conv(p, c_out, 3, 1, device),
                bn2: BatchNorm2dConfig::new(c_out).init(device),
            }),
            BlockKind::Bottleneck => Path::Bottleneck(BottleneckPath {
                conv1: resnet_conv(c_in, p, 1, 1, device),
                bn1: BatchNorm2dConfig::new(p).init(device),
                conv2: resnet_conv(p, p, 3, s, device),
                bn2: BatchNorm2dConfig::new(p).init(device),
                conv3: resnet_conv(p, c_out, 1, 1, device),
                bn3: BatchNorm2dConfig::new(c_out).init(device),
            }),
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

/// A path cut from torchvision's `BasicBlock`: two 3x3 convolutions, the first with the stride.
#[derive(Module, Debug)]
pub struct BasicPath<B: Backend> {
    /// 3x3 convolution `C_in -> p` with the block's stride.
    pub conv1: Conv2d<B>,
    /// Batch norm after `conv1`.
    pub bn1: BatchNorm2d<B>,
    /// 3x3 convolution `p -> C_out`.
    pub conv2: Conv2d<B>,
    /// Batch norm after `conv2`.
    pub bn2: BatchNorm2d<B>,
}

/// A path cut from torchvision's `Bottleneck`: 1x1, 3x3 with the stride, 1x1.
#[derive(Module, Debug)]
pub struct BottleneckPath<B: Backend> {
    /// 1x1 convolution `C_in -> p`.
    pub conv1: Conv2d<B>,
    /// Batch norm after `conv1`.
    pub bn1: BatchNorm2d<B>,
    /// 3x3 convolution `p -> p` with the block's stride.
    pub conv2: Conv2d<B>,
    /// Batch norm after `conv2`.
    pub bn2: BatchNorm2d<B>,
    /// 1x1 expansion `p -> C_out`.
    pub conv3: Conv2d<B>,
    /// Batch norm after `conv3`.
    pub bn3: BatchNorm2d<B>,
}

/// One path of a multi-path block. Field names follow torchvision's blocks (`conv1`, `bn1`, ...):
/// a block with one path is exactly torchvision's block without its shortcut.
// a module enum: every path of a network is of the same kind
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Path<B: Backend> {
    /// Two 3x3 convolutions.
    Basic(BasicPath<B>),
    /// 1x1, 3x3, 1x1.
    Bottleneck(BottleneckPath<B>),
}

impl<B: Backend> BasicPath<B> {
    fn forward_with(&self, x: Tensor<B, 4>, k: &Kernels<B>) -> Tensor<B, 4> {
        let x = k.norm_relu(&self.bn1, k.conv(&self.conv1, x));
        k.norm(&self.bn2, k.conv(&self.conv2, x))
    }
}

impl<B: Backend> BottleneckPath<B> {
    fn forward_with(&self, x: Tensor<B, 4>, k: &Kernels<B>) -> Tensor<B, 4> {
        let x = k.norm_relu(&self.bn1, k.conv(&self.conv1, x));
        let x = k.norm_relu(&self.bn2, k.conv(&self.conv2, x));
        k.norm(&self.bn3, k.conv(&self.conv3, x))
    }
}

impl<B: Backend> Path<B> {
    /// The residual branch, without the shortcut and without the final ReLU.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let kernels = Kernels::probe(&input.device(), input.dims()[0]);
        self.forward_with(input, &kernels)
    }

    /// [`Path::forward`] with the layers run by `kernels` (see [`crate::backend`]).
    pub fn forward_with(&self, input: Tensor<B, 4>, kernels: &Kernels<B>) -> Tensor<B, 4> {
        match self {
            Self::Basic(path) => path.forward_with(input, kernels),
            Self::Bottleneck(path) => path.forward_with(input, kernels),
        }
    }

    /// The residual unit the path is cut from.
    pub fn kind(&self) -> BlockKind {
        match self {
            Self::Basic(_) => BlockKind::Basic,
            Self::Bottleneck(_) => BlockKind::Bottleneck,
        }
    }

    /// The convolutions of the path, in order.
    pub fn convs(&self) -> Vec<&Conv2d<B>> {
        match self {
            Self::Basic(p) => vec![&p.conv1, &p.conv2],
            Self::Bottleneck(p) => vec![&p.conv1, &p.conv2, &p.conv3],
        }
    }

    /// Shape `[channels, height, width]` of the path's output for an input of `height x width`
    /// (every convolution of a path pads its kernel to "same", so only the stride shrinks it).
    pub fn output_shape(&self, height: usize, width: usize) -> [usize; 3] {
        let convs = self.convs();
        let channels = convs.last().expect("a path has convolutions").weight.lazy_shape()[0];
        convs.into_iter().fold([channels, height, width], |[c, h, w], conv| {
            [c, h.div_ceil(conv.stride[0]), w.div_ceil(conv.stride[1])]
        })
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
                assert_eq!(path.kind(), kind);
                for [h, w] in [[6, 6], [7, 5]] {
                    let [_, c, ho, wo] = path.forward(Tensor::zeros([1, 3, h, w], &device)).dims();
                    assert_eq!(path.output_shape(h, w), [c, ho, wo], "{kind:?}, stride {stride}, {h}x{w}");
                }
            }
        }
    }
}
