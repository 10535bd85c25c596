//! Sparse execution (DESIGN §7): each path runs only on the samples whose gate is on; a path no
//! sample needs does not run. Inference default.
//!
//! Before each block the gates are read back once (one device sync). On the host backends
//! ([`FastPath::GroupedSparse`](crate::FastPath)) the batch is then held as groups of samples
//! that share a gate pattern ([`GroupedBatch`]): the samples are regrouped, and without
//! autodiff every group runs exactly its open paths on its own tensor. The sum is the block's own
//! ([`MultiPathBlock::residual`](crate::MultiPathBlock)), formed in the order of masked
//! execution, so the two agree to the bit. With autodiff each path runs once on all the samples
//! it serves ([`autodiff`]). Elsewhere (GPU backends) each path gathers its samples from the
//! whole batch and adds its output back ([`path_major`]): a bounded number of kernel launches
//! per block.

mod autodiff;
mod grouped;
mod path_major;

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
/// gathered ([`GroupedBatch::regroup_map`]); the groups run concurrently where
/// [`Kernels::concurrent_groups`] says so, the branches of a group where
/// [`Kernels::concurrent`] does.
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
    if !kernels.groups_samples() {
        let x = batch.into_tensor();
        return GroupedBatch::new(path_major::sparse_path_major(block, x, &patterns, gates, kernels));
    }
    if B::ad_enabled(&gates.device()) {
        let (batch, patterns) = batch.regroup(&patterns);
        return autodiff::sparse_autodiff(block, batch, &patterns, gates, kernels);
    }
    let elements = block.largest_activation(batch.dims());
    let concurrent = kernels.concurrent(elements);
    batch.regroup_map(&patterns, kernels.concurrent_groups(elements), |pattern, x| {
        let on: Vec<usize> = (0..block.num_paths()).filter(|i| pattern >> i & 1 == 1).collect();
        block.residual(x, &on, &|_, y| y, kernels, concurrent)
    })
}
