//! The multi-path residual block of DMNN (DESIGN §3):
//!
//! ```text
//! y = relu( shortcut(x) + Σ_i g_i · path_i(x) )      g_i ∈ {0, 1}
//! ```
//!
//! The shortcut (identity, or 1x1 convolution + batch norm when the shape changes) always runs;
//! with every gate off the block is `relu(shortcut(x))`, which is what layer skipping does. With
//! one path and all gates on it is torchvision's `BasicBlock` / `Bottleneck`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use crate::norm::{BatchNorm2d, BatchNorm2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::path::{conv, conv_out_size, BlockKind, Path, PathConfig};

/// Configuration of a [`MultiPathBlock`].
#[derive(Config, Debug)]
pub struct MultiPathBlockConfig {
    /// Residual unit the paths are cut from.
    pub kind: BlockKind,
    /// Channels of the block input.
    pub channels_in: usize,
    /// Channels of the block output.
    pub channels_out: usize,
    /// Number of gated paths `N`.
    pub num_paths: usize,
    /// Inner width `p` of every path.
    pub path_width: usize,
    /// Stride of the block.
    #[config(default = 1)]
    pub stride: usize,
}

impl MultiPathBlockConfig {
    /// A block whose inner `width` is split evenly into `num_paths` paths.
    ///
    /// # Panics
    /// If `num_paths` is zero or does not divide `width`.
    pub fn split(
        kind: BlockKind,
        channels_in: usize,
        channels_out: usize,
        width: usize,
        num_paths: usize,
    ) -> Self {
        assert!(
            num_paths > 0 && width % num_paths == 0,
            "width={width}, num_paths={num_paths}: num_paths must divide the block width"
        );
        Self::new(kind, channels_in, channels_out, num_paths, width / num_paths)
    }

    /// Configuration shared by every path of the block.
    pub fn path(&self) -> PathConfig {
        PathConfig::new(self.kind, self.channels_in, self.path_width, self.channels_out)
            .with_stride(self.stride)
    }

    /// Whether the shortcut is a projection (1x1 convolution + batch norm).
    pub fn has_downsample(&self) -> bool {
        self.stride != 1 || self.channels_in != self.channels_out
    }

    /// Builds the block.
    ///
    /// # Panics
    /// If `num_paths`, a width or the stride is zero.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MultiPathBlock<B> {
        assert!(
            self.num_paths > 0,
            "block num_paths=0 must be positive (channels_in={}, channels_out={})",
            self.channels_in,
            self.channels_out
        );
        let path = self.path();
        MultiPathBlock {
            paths: (0..self.num_paths).map(|_| path.init(device)).collect(),
            downsample: self.has_downsample().then(|| Downsample {
                conv: conv(self.channels_in, self.channels_out, 1, self.stride, device),
                bn: BatchNorm2dConfig::new(self.channels_out).init(device),
            }),
        }
    }

    /// Parameters of the block: every path and the projection shortcut.
    pub fn param_count(&self) -> usize {
        let shortcut = if self.has_downsample() {
            self.channels_in * self.channels_out + 2 * self.channels_out
        } else {
            0
        };
        self.num_paths * self.path().param_count() + shortcut
    }

    /// Multiply-accumulates of one path for one sample with a `height x width` input.
    pub fn path_macs(&self, height: usize, width: usize) -> u64 {
        self.path().macs(height, width)
    }

    /// Multiply-accumulates of the shortcut (0 for the identity) for one sample.
    pub fn shortcut_macs(&self, height: usize, width: usize) -> u64 {
        if !self.has_downsample() {
            return 0;
        }
        let hw = conv_out_size(height, 1, self.stride, 0) * conv_out_size(width, 1, self.stride, 0);
        (self.channels_in * self.channels_out * hw) as u64
    }

    /// Spatial size of the block output for a `height x width` input.
    pub fn output_size(&self, height: usize, width: usize) -> [usize; 2] {
        [conv_out_size(height, 3, self.stride, 1), conv_out_size(width, 3, self.stride, 1)]
    }
}

/// Projection shortcut: 1x1 convolution with the block's stride, then batch norm
/// (torchvision's `downsample.0` / `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1x1 convolution.
    pub conv: Conv2d<B>,
    /// Batch norm.
    pub bn: BatchNorm2d<B>,
}

/// A residual block whose residual branch is split into gated paths.
#[derive(Module, Debug)]
pub struct MultiPathBlock<B: Backend> {
    /// The paths, each with its own convolutions and batch norms.
    pub paths: Vec<Path<B>>,
    /// Projection shortcut when the block changes shape; identity otherwise.
    pub downsample: Option<Downsample<B>>,
}

/// The rows of a batch one path serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRows {
    /// No sample needs the path: it does not run.
    Skip,
    /// Rows `start..end`, contiguous: the path runs on a slice of the batch and its output is
    /// added back in place.
    Range(usize, usize),
    /// Scattered rows (paths beyond the second when `N > 2`): gathered and scattered.
    Rows(Vec<usize>),
}

/// A per-block plan of sparse execution, read from the gates once per block.
///
/// The batch is reordered by gate pattern so that every path's samples are contiguous rows
/// (always for `N ≤ 2`: order `[path 0 only | both | path 1 only | neither]`; for more paths the
/// first two are contiguous, the rest scattered). A contiguous path runs on a slice — no gather —
/// and its output is added into the block output in place — no scatter, no copy of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSelection {
    /// Batch size the gates were read for.
    pub batch_size: usize,
    /// New row `k` is old row `order[k]`.
    pub order: Vec<usize>,
    /// For every path, the (reordered) rows it serves.
    pub paths: Vec<PathRows>,
}

impl PathSelection {
    /// Reads `[batch_size, num_paths]` gates back to the host (one device sync) and plans the
    /// block. A gate counts as on when it is above 0.5.
    pub fn from_gates<B: Backend>(gates: &Tensor<B, 2>) -> Self {
        let [batch_size, num_paths] = gates.dims();
        let values = gates.to_data().convert::<f32>().to_vec::<f32>().expect("gates convert to f32");
        Self::from_host(&values, batch_size, num_paths)
    }

    /// Plans from row-major `[batch_size, num_paths]` gate values.
    pub fn from_host(values: &[f32], batch_size: usize, num_paths: usize) -> Self {
        assert_eq!(
            values.len(),
            batch_size * num_paths,
            "gate values: {} values for batch_size={batch_size}, num_paths={num_paths}",
            values.len()
        );
        let on = |b: usize, i: usize| values[b * num_paths + i] > 0.5;
        // rank of the first two paths' pattern: 0 only, both, 1 only, neither
        let key = |b: usize| -> (u8, u64) {
            let (p0, p1) = (on(b, 0), num_paths > 1 && on(b, 1));
            let head = match (p0, p1) {
                (true, false) => 0,
                (true, true) => 1,
                (false, true) => 2,
                (false, false) => 3,
            };
            let rest = (2..num_paths).fold(0u64, |acc, i| (acc << 1) | u64::from(!on(b, i)));
            (head, rest)
        };
        let mut order: Vec<usize> = (0..batch_size).collect();
        order.sort_by_key(|&b| key(b)); // stable: equal patterns keep their order
        let paths = (0..num_paths)
            .map(|i| {
                let rows: Vec<usize> = (0..batch_size).filter(|&k| on(order[k], i)).collect();
                match (rows.first(), rows.last()) {
                    (None, _) => PathRows::Skip,
                    (Some(&s), Some(&e)) if e + 1 - s == rows.len() => PathRows::Range(s, e + 1),
                    _ => PathRows::Rows(rows),
                }
            })
            .collect();
        Self { batch_size, order, paths }
    }

    /// Whether the plan keeps the batch in its order.
    pub fn is_identity(&self) -> bool {
        self.order.iter().enumerate().all(|(k, &b)| k == b)
    }
}

/// Reorders the rows of a tensor (`out[k] = x[order[k]]`) as one `[rows, features]` gather.
pub fn reorder_rows<B: Backend, const D: usize>(x: Tensor<B, D>, order: &[usize]) -> Tensor<B, D> {
    let dims = x.dims();
    let n = order.len();
    let features: usize = dims[1..].iter().product();
    let index = order.iter().map(|&b| b as i64).collect::<Vec<_>>();
    let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &x.device());
    let mut out_dims = dims;
    out_dims[0] = n;
    x.reshape([dims[0], features]).select(0, index).reshape(out_dims)
}

/// The inverse of a reordering: `inverse(order)[order[k]] = k`.
pub fn inverse_order(order: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; order.len()];
    for (k, &b) in order.iter().enumerate() {
        inv[b] = k;
    }
    inv
}

impl<B: Backend> MultiPathBlock<B> {
    /// Number of paths.
    pub fn num_paths(&self) -> usize {
        self.paths.len()
    }

    /// The shortcut branch: identity or projection.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn shortcut(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        match &self.downsample {
            Some(ds) => ds.bn.forward(ds.conv.forward(input)),
            None => input,
        }
    }

    /// The block with every path on (a static residual block).
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let out = self
            .paths
            .iter()
            .fold(self.shortcut(input.clone()), |acc, path| acc + path.forward(input.clone()));
        relu(out)
    }

    pub(crate) fn check_gates(&self, input: &Tensor<B, 4>, gates: &Tensor<B, 2>) {
        let [batch_size, ..] = input.dims();
        let [gate_batch, gate_paths] = gates.dims();
        assert!(
            gate_batch == batch_size && gate_paths == self.num_paths(),
            "gates of shape [{gate_batch}, {gate_paths}] do not fit a block with \
             batch_size={batch_size}, num_paths={}",
            self.num_paths()
        );
    }

    /// Masked execution: every path runs on the whole batch and is multiplied by its gate.
    /// Gradients reach every gate; the cost is the full block's.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - `gates`: `[batch_size, num_paths]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    ///
    /// # Panics
    /// If the gates' shape is not `[batch_size, num_paths]`.
    pub fn forward_masked(&self, input: Tensor<B, 4>, gates: Tensor<B, 2>) -> Tensor<B, 4> {
        self.check_gates(&input, &gates);
        let [batch_size, _] = gates.dims();
        let mut out = self.shortcut(input.clone());
        for (i, path) in self.paths.iter().enumerate() {
            let gate = gates
                .clone()
                .slice([0..batch_size, i..i + 1])
                .reshape([batch_size, 1, 1, 1]); // [B, 1, 1, 1]
            out = out + path.forward(input.clone()) * gate;
        }
        relu(out)
    }

    /// Sparse execution: each path runs only on the samples whose gate is on and is added back
    /// into the shortcut; a path that no sample needs does not run. Reads the gates to the host
    /// once (see [`PathSelection`]), runs the block on the reordered batch
    /// ([`MultiPathBlock::forward_planned`]) and restores the order of the rows.
    ///
    /// In inference this equals [`MultiPathBlock::forward_masked`]. With autodiff the outputs are
    /// multiplied by their gate values so that gradients still reach the gates; batch norm then
    /// sees only the samples a path serves.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - `gates`: `[batch_size, num_paths]`
    /// - output: `[batch_size, channels_out, height / stride, width / stride]`
    ///
    /// # Panics
    /// If the gates' shape is not `[batch_size, num_paths]`.
    pub fn forward_sparse(&self, input: Tensor<B, 4>, gates: Tensor<B, 2>) -> Tensor<B, 4> {
        self.check_gates(&input, &gates);
        let plan = PathSelection::from_gates(&gates);
        if plan.is_identity() {
            return self.forward_planned(input, Some(gates), &plan);
        }
        let x = reorder_rows(input, &plan.order);
        let g = reorder_rows(gates, &plan.order);
        let y = self.forward_planned(x, Some(g), &plan);
        reorder_rows(y, &inverse_order(&plan.order))
    }

    /// Sparse execution on a batch already in the plan's order (`input[k]` is sample
    /// `plan.order[k]`); the output keeps that order. `gates` (in the same order) are only used
    /// with autodiff, to carry their gradient.
    ///
    /// # Panics
    /// If the plan does not fit the batch or the block.
    pub fn forward_planned(&self, input: Tensor<B, 4>, gates: Option<Tensor<B, 2>>, plan: &PathSelection) -> Tensor<B, 4> {
        let [batch_size, c, h, w] = input.dims();
        assert!(
            plan.batch_size == batch_size && plan.paths.len() == self.num_paths(),
            "path plan for batch_size={}, num_paths={} does not fit a block with batch_size={batch_size}, num_paths={}",
            plan.batch_size,
            plan.paths.len(),
            self.num_paths()
        );
        let device = input.device();
        let gates = gates.filter(|_| B::ad_enabled(&device));
        let gate_rows = |i: usize, rows: std::ops::Range<usize>| {
            gates.as_ref().map(|g| g.clone().slice([rows.clone(), i..i + 1]).reshape([rows.len(), 1, 1, 1]))
        };
        // run every path on its rows first: the identity shortcut can then take over the input
        // buffer and the paths are added into it in place
        let mut outputs = Vec::with_capacity(self.num_paths());
        for (i, (path, rows)) in self.paths.iter().zip(&plan.paths).enumerate() {
            let (y, rows) = match rows {
                PathRows::Skip => continue,
                PathRows::Range(s, e) => {
                    let x = if *s == 0 && *e == batch_size { input.clone() } else { input.clone().slice([*s..*e]) };
                    let mut y = path.forward(x);
                    if let Some(g) = gate_rows(i, *s..*e) {
                        y = y * g;
                    }
                    (y, rows.clone())
                }
                PathRows::Rows(list) => {
                    let n = list.len();
                    let index = Tensor::<B, 1, Int>::from_data(
                        TensorData::new(list.iter().map(|&b| b as i64).collect::<Vec<_>>(), [n]),
                        &device,
                    );
                    let x = input.clone().reshape([batch_size, c * h * w]).select(0, index.clone());
                    let mut y = path.forward(x.reshape([n, c, h, w]));
                    if let Some(g) = gates.as_ref() {
                        y = y * g.clone().slice([0..batch_size, i..i + 1]).select(0, index).reshape([n, 1, 1, 1]);
                    }
                    (y, rows.clone())
                }
            };
            outputs.push((y, rows));
        }
        let mut out = self.shortcut(input);
        for (y, rows) in outputs {
            let [n, co, ho, wo] = y.dims();
            out = match rows {
                PathRows::Range(0, e) if e == batch_size => out + y,
                // y (fresh, unique) takes the sum, then is written into `out`'s rows in place
                PathRows::Range(s, e) => {
                    let sum = y + out.clone().slice([s..e]);
                    out.slice_assign([s..e], sum)
                }
                PathRows::Rows(list) => {
                    let index = Tensor::<B, 1, Int>::from_data(
                        TensorData::new(list.iter().map(|&b| b as i64).collect::<Vec<_>>(), [n]),
                        &device,
                    );
                    out.reshape([batch_size, co * ho * wo])
                        .select_assign(0, index, y.reshape([n, co * ho * wo]), IndexingUpdateOp::Add)
                        .reshape([batch_size, co, ho, wo])
                }
                PathRows::Skip => unreachable!("skipped paths produce no output"),
            };
        }
        relu(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type B = Flex;
    type AD = Autodiff<Flex>;

    fn configs() -> Vec<MultiPathBlockConfig> {
        vec![
            // bottleneck with projection: 8 -> 16 channels, stride 2, 3 paths of width 2
            MultiPathBlockConfig::new(BlockKind::Bottleneck, 8, 16, 3, 2).with_stride(2),
            // basic with identity shortcut: 6 -> 6 channels, 2 paths of width 3
            MultiPathBlockConfig::split(BlockKind::Basic, 6, 6, 6, 2),
        ]
    }

    fn input<Bk: Backend>(config: &MultiPathBlockConfig, batch: usize) -> Tensor<Bk, 4> {
        Tensor::random([batch, config.channels_in, 5, 5], Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn gates<Bk: Backend>(rows: &[&[f32]]) -> Tensor<Bk, 2> {
        let n = rows[0].len();
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), n]), &Default::default())
    }

    #[test]
    fn output_shapes() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        // 5x5 input, stride 2, padding 1: (5 + 2 - 3) / 2 + 1 = 3
        let y = block.forward(input::<B>(c, 2));
        assert_eq!(y.dims(), [2, 16, 3, 3]);
        assert_eq!(c.output_size(5, 5), [3, 3]);
        let c = &configs()[1];
        let y = c.init::<B>(&device).forward(input::<B>(c, 2));
        assert_eq!(y.dims(), [2, 6, 5, 5]);
    }

    #[test]
    fn analytic_param_count_matches_module() {
        let device = Default::default();
        for c in configs() {
            assert_eq!(crate::param_count(&c.init::<B>(&device)), c.param_count(), "{c:?}");
        }
    }

    #[test]
    fn all_gates_on_equals_static_block() {
        let device = Default::default();
        for c in configs() {
            let block = c.init::<B>(&device);
            let x = input::<B>(&c, 3);
            let ones = Tensor::<B, 2>::ones([3, c.num_paths], &device);
            let expected = block.forward(x.clone()).into_data();
            block
                .forward_masked(x.clone(), ones.clone())
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
            block
                .forward_sparse(x, ones)
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn all_gates_off_is_relu_of_shortcut() {
        let device = Default::default();
        for c in configs() {
            let block = c.init::<B>(&device);
            let x = input::<B>(&c, 3);
            let zeros = Tensor::<B, 2>::zeros([3, c.num_paths], &device);
            let expected = relu(block.shortcut(x.clone())).into_data();
            for y in [block.forward_masked(x.clone(), zeros.clone()), block.forward_sparse(x.clone(), zeros.clone())] {
                y.into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-6));
            }
        }
    }

    #[test]
    fn sparse_equals_masked_in_inference() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        let x = input::<B>(c, 4);
        // path 0 on for two samples, path 1 on for all, path 2 off for all
        let patterns = [
            gates::<B>(&[&[1.0, 1.0, 0.0], &[0.0, 1.0, 0.0], &[1.0, 1.0, 0.0], &[0.0, 1.0, 0.0]]),
            gates::<B>(&[&[0.0, 0.0, 1.0], &[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0], &[1.0, 0.0, 1.0]]),
        ];
        for g in patterns {
            let masked = block.forward_masked(x.clone(), g.clone()).into_data();
            block
                .forward_sparse(x.clone(), g)
                .into_data()
                .assert_approx_eq::<f32>(&masked, Tolerance::absolute(1e-4));
        }
    }

    #[test]
    fn sparse_under_autodiff_reaches_gates_and_weights() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<AD>(&device);
        let x = input::<AD>(c, 3).require_grad();
        let g = gates::<AD>(&[&[1.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[1.0, 0.0, 0.0]]).require_grad();
        let grads = block.forward_sparse(x.clone(), g.clone()).sum().backward();
        let gg = g.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        // gradients reach the gates of the rows a path served
        assert!(gg[0] != 0.0 && gg[2] != 0.0 && gg[5] != 0.0, "{gg:?}");
        assert!(block.paths[0].conv1.weight.grad(&grads).is_some());
        // path 1 served nobody: it did not run
        assert!(block.paths[1].conv1.weight.grad(&grads).is_none());
    }

    #[test]
    fn plan_makes_two_paths_contiguous() {
        // samples: 0 both, 1 neither, 2 path 0 only, 3 path 1 only, 4 both
        let g = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let plan = PathSelection::from_host(&g, 5, 2);
        // order: path 0 only | both | path 1 only | neither
        assert_eq!(plan.order, vec![2, 0, 4, 3, 1]);
        assert_eq!(plan.paths, vec![PathRows::Range(0, 3), PathRows::Range(1, 4)]);
        assert_eq!(inverse_order(&plan.order), vec![1, 4, 0, 3, 2]);
        // a third path may be scattered; an unused one is skipped
        // samples: 0 [1,0,1], 1 [0,1,1], 2 [1,1,0] -> order 0, 2, 1: path 2 serves rows 0 and 2
        let g3 = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
        let plan = PathSelection::from_host(&g3, 3, 3);
        assert_eq!(plan.order, vec![0, 2, 1]);
        assert_eq!(plan.paths, vec![PathRows::Range(0, 2), PathRows::Range(1, 3), PathRows::Rows(vec![0, 2])]);
        assert_eq!(PathSelection::from_host(&[0.0, 0.0], 1, 2).paths, vec![PathRows::Skip, PathRows::Skip]);
        assert!(PathSelection::from_host(&[1.0, 1.0, 1.0, 1.0], 2, 2).is_identity());
    }

    #[test]
    #[should_panic = "gates of shape [2, 2] do not fit a block with batch_size=2, num_paths=3"]
    fn wrong_gate_width_panics() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        let _ = block.forward_masked(input::<B>(c, 2), Tensor::ones([2, 2], &device));
    }

    #[test]
    #[should_panic = "width=10, num_paths=4: num_paths must divide the block width"]
    fn unsplittable_width_panics() {
        let _ = MultiPathBlockConfig::split(BlockKind::Basic, 8, 8, 10, 4);
    }
}
