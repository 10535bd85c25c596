//! Sparse execution under autodiff: each path runs once on all the samples it serves, so its
//! batch norms see exactly those samples (as BN recalibration needs, DESIGN §7), and its output
//! is multiplied by the gate values so that gradients reach the gates.

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::grouped::{GroupedBatch, PathPattern};
use crate::backend::Kernels;
use crate::block::MultiPathBlock;

/// `relu(shortcut + Σ_i g_i · path_i)` for the groups of `batch` (already grouped by
/// `patterns`), every path run once on the concatenation of the groups it serves.
pub(super) fn sparse_autodiff<B: Backend>(
    block: &MultiPathBlock<B>,
    batch: GroupedBatch<B>,
    patterns: &[PathPattern],
    gates: Tensor<B, 2>,
    kernels: &Kernels<B>,
) -> GroupedBatch<B> {
    let device = gates.device();
    let [batch_size, _] = gates.dims();
    let groups = batch.groups();
    let mut sums: Vec<Tensor<B, 4>> = groups.iter().map(|g| block.shortcut_with(g.x.clone(), kernels)).collect();
    for (i, path) in block.paths.iter().enumerate() {
        let served: Vec<usize> = (0..groups.len()).filter(|&g| patterns[g] >> i & 1 == 1).collect();
        if served.is_empty() {
            continue;
        }
        let x = Tensor::cat(served.iter().map(|&g| groups[g].x.clone()).collect(), 0);
        let samples: Vec<i64> = served.iter().flat_map(|&g| groups[g].samples.iter().map(|&b| b as i64)).collect();
        let n = samples.len();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(samples, [n]), &device);
        let gate = gates.clone().slice([0..batch_size, i..i + 1]).select(0, index).reshape([n, 1, 1, 1]); // [n, 1, 1, 1]
        let y = path.forward_with(x, kernels) * gate;
        let mut start = 0;
        for &g in &served {
            let rows = groups[g].samples.len();
            sums[g] = sums[g].clone() + y.clone().slice([start..start + rows]);
            start += rows;
        }
    }
    let mut sums = sums.into_iter();
    batch.map(|_, _| relu(sums.next().expect("one sum per group")))
}
