//! Sparse execution (DESIGN §7): each path runs only on the samples whose gate is on; a path no
//! sample needs does not run. Inference default.
//!
//! Without autodiff the batch is held as groups of samples that share a gate pattern
//! ([`GroupedBatch`]): before each block the gates are read back once (one device sync), the
//! samples are regrouped, and every group runs exactly its open paths on its own tensor. The sum
//! is the block's own ([`MultiPathBlock::residual`](crate::MultiPathBlock)), formed in the order
//! of masked execution, so the two agree to the bit. With autodiff each path runs once on all
//! the samples it serves ([`autodiff`]).

mod autodiff;
mod grouped;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub use grouped::*;

use crate::backend::Kernels;
use crate::block::MultiPathBlock;

/// Runs `block` on `input` in sparse execution, with the probed kernels. Equal to
/// [`masked`](super::masked) in inference.
///
/// # Shapes
/// - `input`: `[batch_size, channels_in, height, width]`
/// - `gates`: `[batch_size, num_paths]`
/// - output: `[batch_size, channels_out, height / stride, width / stride]`
///
/// # Panics
/// If the gates' shape is not `[batch_size, num_paths]`.
pub fn sparse<B: Backend>(block: &MultiPathBlock<B>, input: Tensor<B, 4>, gates: Tensor<B, 2>) -> Tensor<B, 4> {
    let kernels = Kernels::probe(&input.device(), input.dims()[0]);
    sparse_grouped(block, GroupedBatch::new(input), gates, &kernels).into_tensor()
}

/// Sparse execution on a grouped batch: reads the gates back once, regroups the samples by gate
/// pattern and runs every group's open paths on the group's own tensor as soon as it is
/// gathered ([`GroupedBatch::regroup_map`]).
///
/// # Shapes
/// - `gates`: `[batch_size, num_paths]`, rows in the caller's order
///
/// # Panics
/// If the gates do not have one row per sample and one column per path.
pub fn sparse_grouped<B: Backend>(
    block: &MultiPathBlock<B>,
    batch: GroupedBatch<B>,
    gates: Tensor<B, 2>,
    kernels: &Kernels<B>,
) -> GroupedBatch<B> {
    block.check_gates(batch.batch_size(), &gates);
    let patterns = gate_patterns(&gates);
    if B::ad_enabled(&gates.device()) {
        let (batch, patterns) = batch.regroup(&patterns, kernels.row_gather());
        return autodiff::sparse_autodiff(block, batch, &patterns, gates, kernels);
    }
    let concurrent = kernels.concurrent(block.largest_activation(batch.dims()));
    batch.regroup_map(&patterns, kernels.row_gather(), concurrent, |pattern, x| {
        let on: Vec<usize> = (0..block.num_paths()).filter(|i| pattern >> i & 1 == 1).collect();
        block.residual(x, &on, &|_, y| y, kernels, concurrent)
    })
}
