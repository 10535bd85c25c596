//! Starting a multi-path network from a trained one-path ResNet, module by module.

use std::ops::Range;

use burn::module::{Module, RunningState};
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::WeightsError;
use crate::block::{BasicPath, BottleneckPath, MultiPathBlock, Path};
use crate::layers::BatchNorm2d;
use crate::network::Dmnn;

/// How [`init_from_resnet`] built the multi-path network.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    /// Channels of every path taken from the ResNet (its width divided by the number of paths).
    pub shared_width: Vec<usize>,
    /// Channels of every path that start fresh (path width − shared width), per stage.
    pub fresh_width: Vec<usize>,
    /// Parameters of the ResNet's 3x3 bottleneck convolutions that no path receives (the
    /// off-diagonal blocks): the only part of a same-width ResNet that is lost.
    pub dropped_params: usize,
}

/// Starts a multi-path network from a trained ResNet of the same depth (DESIGN §3 layout).
///
/// Path `i` of a block takes the ResNet's channels `[i·w/N, (i+1)·w/N)`: those output channels of
/// `conv1`, the matching diagonal block of the bottleneck's `conv2` (its off-diagonal blocks are
/// lost), those input columns of the last convolution, and the matching slices of the inner batch
/// norms. The last batch norm of every path gets the ResNet's scale and variance and `1/N` of its
/// shift and mean, so that with every path on, in eval mode, the paths sum to the ResNet's block
/// exactly (a basic block is reproduced exactly; a bottleneck up to the lost off-diagonal blocks).
/// Wider paths (e.g. 2x40d from a 64-wide ResNet) keep their extra channels freshly initialised,
/// with zero weights from them into the shared channels and into the block output, so the network
/// starts as the sliced ResNet and the extra channels grow in training. Stem, shortcuts and
/// classifier are copied; controllers start fresh.
///
/// # Errors
/// [`WeightsError::NotASlice`] if the two configurations differ in anything but the paths and
/// the controller, the ResNet width is not divisible by the number of paths, or a path is
/// narrower than its share.
pub fn init_from_resnet<B: Backend>(dmnn: Dmnn<B>, resnet: &Dmnn<B>) -> Result<(Dmnn<B>, InitReport), WeightsError> {
    let (d, r) = (&dmnn.config, &resnet.config);
    let not_a_slice =
        |reason: String| WeightsError::NotASlice { model: d.name.clone(), resnet: r.name.clone(), reason };
    if !(r.num_paths == 1
        && d.block == r.block
        && d.stage_depths == r.stage_depths
        && d.stage_widths == r.stage_widths
        && d.stem == r.stem
        && d.stem_width == r.stem_width
        && d.in_channels == r.in_channels)
    {
        return Err(not_a_slice(format!(
            "blocks {:?} / {:?}, widths {:?} / {:?}, {} / {} paths: not a multi-path version of a one-path ResNet",
            d.stage_depths, r.stage_depths, d.stage_widths, r.stage_widths, d.num_paths, r.num_paths
        )));
    }
    let n = d.num_paths;
    let mut shared_width = Vec::new();
    let mut fresh_width = Vec::new();
    for (s, &w) in r.stage_widths.iter().enumerate() {
        let p = d.path_width(s);
        if w % n != 0 {
            return Err(not_a_slice(format!("stage width {w} is not divisible by num_paths={n}")));
        }
        if p < w / n {
            return Err(not_a_slice(format!("path width {p} of stage {s} is narrower than its share {}", w / n)));
        }
        shared_width.push(w / n);
        fresh_width.push(p - w / n);
    }
    let mut dropped_params = 0;
    let Dmnn { conv1, bn1, maxpool, layers, controller, fc, config } = dmnn;
    let layers = layers
        .into_iter()
        .zip(&resnet.layers)
        .enumerate()
        .map(|(s, (stage, resnet_stage))| {
            stage
                .into_iter()
                .zip(resnet_stage)
                .map(|(block, resnet_block)| {
                    let source = &resnet_block.paths[0];
                    let paths = block
                        .paths
                        .into_iter()
                        .enumerate()
                        .map(|(i, path)| {
                            let slice = Slice { n, share: shared_width[s], first: i * shared_width[s] };
                            slice.path(path, source, &mut dropped_params)
                        })
                        .collect();
                    let downsample =
                        block.downsample.zip(resnet_block.downsample.as_ref()).map(|(ours, theirs)| copy(ours, theirs));
                    MultiPathBlock { paths, downsample }
                })
                .collect()
        })
        .collect();
    let dmnn = Dmnn {
        conv1: copy(conv1, &resnet.conv1),
        bn1: copy(bn1, &resnet.bn1),
        maxpool,
        layers,
        controller,
        fc: copy(fc, &resnet.fc),
        config,
    };
    Ok((dmnn, InitReport { shared_width, fresh_width, dropped_params }))
}

/// `ours` with the values of `theirs` (through the record, so no state is shared between the two).
fn copy<B: Backend, M: Module<B>>(ours: M, theirs: &M) -> M {
    ours.load_record(theirs.clone().into_record())
}

/// `fresh` with `fresh[dst] = src[from]` over the first two dimensions (the rest whole).
fn take<B: Backend, const D: usize>(
    fresh: Tensor<B, D>,
    src: Tensor<B, D>,
    from: [Range<usize>; 2],
    to: [Range<usize>; 2],
) -> Tensor<B, D> {
    let part = src.slice(from);
    fresh.slice_assign(to, part)
}

/// `fresh` with `fresh[rows] = src[from]` along the first dimension.
fn take_rows<B: Backend, const D: usize>(fresh: Tensor<B, D>, src: Tensor<B, D>, from: Range<usize>) -> Tensor<B, D> {
    let to = 0..from.len();
    let part = src.slice([from]);
    fresh.slice_assign([to], part)
}

/// `t` with `t[rows, cols] = 0` over the first two dimensions.
fn zero<B: Backend, const D: usize>(t: Tensor<B, D>, rows: Range<usize>, cols: Range<usize>) -> Tensor<B, D> {
    if cols.is_empty() || rows.is_empty() {
        return t;
    }
    let mut shape = t.dims();
    shape[0] = rows.len();
    shape[1] = cols.len();
    let zeros = Tensor::zeros(shape, &t.device());
    t.slice_assign([rows, cols], zeros)
}

/// Which of the ResNet's channels path `first / share` of a block takes.
struct Slice {
    /// Number of paths.
    n: usize,
    /// Channels each path takes from the ResNet.
    share: usize,
    /// The first of them.
    first: usize,
}

impl Slice {
    fn channels(&self) -> Range<usize> {
        self.first..self.first + self.share
    }

    fn path<B: Backend>(&self, path: Path<B>, source: &Path<B>, dropped: &mut usize) -> Path<B> {
        match (path, source) {
            (Path::Basic(p), Path::Basic(src)) => Path::Basic(BasicPath {
                conv1: self.input_conv(p.conv1, &src.conv1),
                bn1: self.inner_norm(p.bn1, &src.bn1),
                conv2: self.output_conv(p.conv2, &src.conv2),
                bn2: self.output_norm(p.bn2, &src.bn2),
            }),
            (Path::Bottleneck(p), Path::Bottleneck(src)) => {
                let conv2 = self.diagonal_conv(p.conv2, &src.conv2, dropped);
                Path::Bottleneck(BottleneckPath {
                    conv1: self.input_conv(p.conv1, &src.conv1),
                    bn1: self.inner_norm(p.bn1, &src.bn1),
                    conv2,
                    bn2: self.inner_norm(p.bn2, &src.bn2),
                    conv3: self.output_conv(p.conv3, &src.conv3),
                    bn3: self.output_norm(p.bn3, &src.bn3),
                })
            }
            _ => unreachable!("init_from_resnet checked that both networks have the same block kind"),
        }
    }

    /// The first convolution: the ResNet's output channels of this path.
    fn input_conv<B: Backend>(&self, mut conv: Conv2d<B>, src: &Conv2d<B>) -> Conv2d<B> {
        conv.weight = conv.weight.map(|t| take_rows(t, src.weight.val(), self.channels()));
        conv
    }

    /// The bottleneck's 3x3: the diagonal block; fresh inputs to shared outputs start at zero.
    fn diagonal_conv<B: Backend>(&self, mut conv: Conv2d<B>, src: &Conv2d<B>, dropped: &mut usize) -> Conv2d<B> {
        let [w, _, kh, kw] = src.weight.dims();
        if self.first == 0 {
            *dropped += (w * w - self.n * self.share * self.share) * kh * kw;
        }
        let share = self.share;
        conv.weight = conv.weight.map(|t| {
            let inputs = t.dims()[1];
            let t = take(t, src.weight.val(), [self.channels(), self.channels()], [0..share, 0..share]);
            zero(t, 0..share, share..inputs)
        });
        conv
    }

    /// The last convolution `[C_out, p, k, k]`: the ResNet's input columns of this path; the fresh
    /// columns start at zero.
    fn output_conv<B: Backend>(&self, mut conv: Conv2d<B>, src: &Conv2d<B>) -> Conv2d<B> {
        let share = self.share;
        conv.weight = conv.weight.map(|t| {
            let [c_out, inputs, ..] = t.dims();
            let t = take(t, src.weight.val(), [0..c_out, self.channels()], [0..c_out, 0..share]);
            zero(t, 0..c_out, share..inputs)
        });
        conv
    }

    /// An inner batch norm: the ResNet's channels of this path; the fresh channels keep their
    /// initial values.
    fn inner_norm<B: Backend>(&self, mut bn: BatchNorm2d<B>, src: &BatchNorm2d<B>) -> BatchNorm2d<B> {
        let rows = |fresh: Tensor<B, 1>, src: Tensor<B, 1>| take_rows(fresh, src, self.channels());
        bn.gamma = bn.gamma.map(|t| rows(t, src.gamma.val()));
        bn.beta = bn.beta.map(|t| rows(t, src.beta.val()));
        bn.running_mean = RunningState::new(rows(bn.running_mean.value(), src.running_mean.value()));
        bn.running_var = RunningState::new(rows(bn.running_var.value(), src.running_var.value()));
        bn
    }

    /// The last batch norm: the ResNet's scale and variance, `1/N` of its shift and mean, so the
    /// paths sum to the ResNet's block.
    fn output_norm<B: Backend>(&self, mut bn: BatchNorm2d<B>, src: &BatchNorm2d<B>) -> BatchNorm2d<B> {
        let n = self.n as f64;
        bn.gamma = bn.gamma.map(|_| src.gamma.val());
        bn.beta = bn.beta.map(|_| src.beta.val().div_scalar(n));
        bn.running_mean = RunningState::new(src.running_mean.value().div_scalar(n));
        bn.running_var = RunningState::new(src.running_var.value());
        bn
    }
}
