//! Sparse execution path by path on the whole batch: the form for backends where every tensor
//! operation is a kernel launch (GPU backends).
//!
//! The batch stays one tensor in the caller's order. Each path that serves some samples gathers
//! them with one `select`, runs on them, and adds its output back into the block's sum with one
//! `select_assign`; a path every sample needs runs on the batch as it is, one no sample needs
//! does not run. A block so launches the kernels of masked execution for the paths that run,
//! plus two per partly used path, whatever the gate patterns: grouping the samples by pattern
//! would run each path once per group.
//!
//! The sum is formed in masked execution's order (shortcut, then the paths in order), so the two
//! agree up to the convolution's own rounding on a subset of the batch. Under autodiff the path
//! outputs are multiplied by their gates, so gradients reach the gates.

use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use super::grouped::PathPattern;
use crate::backend::Kernels;
use crate::block::MultiPathBlock;

/// `relu(shortcut + Σ_i path_i)`, path `i` run on the samples whose `patterns[b]` has bit `i`.
///
/// # Shapes
/// - `x`: `[batch_size, channels_in, height, width]`, rows in the caller's order
/// - `gates`: `[batch_size, num_paths]`
pub(super) fn sparse_path_major<B: Backend>(
    block: &MultiPathBlock<B>,
    x: Tensor<B, 4>,
    patterns: &[PathPattern],
    gates: Tensor<B, 2>,
    kernels: &Kernels<B>,
) -> Tensor<B, 4> {
    let device = x.device();
    let batch_size = x.dims()[0];
    let autodiff = B::ad_enabled(&device);
    let mut sum = block.shortcut_with(x.clone(), kernels);
    for (i, path) in block.paths.iter().enumerate() {
        let rows: Vec<i64> = (0..batch_size).filter(|&b| patterns[b] >> i & 1 == 1).map(|b| b as i64).collect();
        let n = rows.len();
        let gate = || gates.clone().slice([0..batch_size, i..i + 1]); // [batch_size, 1]
        if n == 0 {
            continue;
        }
        if n == batch_size {
            let y = path.forward_with(x.clone(), kernels);
            let y = if autodiff { y * gate().reshape([n, 1, 1, 1]) } else { y };
            sum = sum + y;
            continue;
        }
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let y = path.forward_with(x.clone().select(0, index.clone()), kernels);
        let y = if autodiff { y * gate().select(0, index.clone()).reshape([n, 1, 1, 1]) } else { y };
        sum = sum.select_assign(0, index, y, IndexingUpdateOp::Add);
    }
    relu(sum)
}
