//! Executors (DESIGN §7): how a gated block runs on a batch. The network loop hands every block
//! to the executor of the pass; the block itself only knows its sum
//! (`relu(shortcut + Σ g_i · path_i)`).
//!
//! - [`masked`]: every path on the whole batch, times its gate (training; full cost).
//! - [`sparse`]: each path only on the samples whose gate is on (inference; skipped paths cost
//!   nothing).

mod masked;
mod sparse;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

pub use masked::*;
pub use sparse::*;

use crate::backend::Kernels;
use crate::block::MultiPathBlock;
use crate::output::ExecutionMode;

/// Runs `block` on `batch` in `mode` (resolved: `Masked` or `Sparse`); without gates (a static
/// network) every path runs.
pub(crate) fn run_block<B: Backend>(
    mode: ExecutionMode,
    block: &MultiPathBlock<B>,
    batch: GroupedBatch<B>,
    gates: Option<Tensor<B, 2>>,
    kernels: &Kernels<B>,
) -> GroupedBatch<B> {
    match (gates, mode) {
        (None, _) => {
            let elements = block.largest_activation(batch.dims());
            if kernels.splits_static_batch(elements, batch.batch_size()) {
                static_concurrent(block, batch, kernels)
            } else {
                batch.map(|_, x| block.forward_with(x, kernels))
            }
        }
        (Some(gates), ExecutionMode::Sparse) => sparse_grouped(block, batch, gates, kernels),
        (Some(gates), _) => GroupedBatch::new(masked_with(block, batch.into_tensor(), gates, kernels)),
    }
}

/// The static `block` on the groups of `batch` as concurrent tasks, a whole batch split into two
/// halves first ([`Kernels::splits_static_batch`]). The halves stay groups for the blocks after
/// it; every sample gets what the whole batch would give it, bit for bit (a sample's values do
/// not depend on the rest of its batch).
fn static_concurrent<B: Backend>(
    block: &MultiPathBlock<B>,
    batch: GroupedBatch<B>,
    kernels: &Kernels<B>,
) -> GroupedBatch<B> {
    let batch = if batch.is_whole() {
        let n = batch.batch_size();
        // one run of rows per half: slices of the batch, no copy
        let halves: Vec<PathPattern> = (0..n).map(|b| PathPattern::from(b >= n / 2)).collect();
        batch.regroup(&halves).0
    } else {
        batch
    };
    batch.map_concurrent(|x| block.forward_with(x, kernels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockKind, MultiPathBlockConfig};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::activation::relu;
    use burn::tensor::{Distribution, TensorData, Tolerance};

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
    fn all_gates_on_equals_static_block() {
        let device = Default::default();
        for c in configs() {
            let block = c.init::<B>(&device);
            let x = input::<B>(&c, 3);
            let ones = Tensor::<B, 2>::ones([3, c.num_paths], &device);
            let expected = block.forward(x.clone()).into_data();
            masked(&block, x.clone(), ones.clone())
                .into_data()
                .assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
            sparse(&block, x, ones).into_data().assert_approx_eq::<f32>(&expected, Tolerance::absolute(1e-5));
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
            for y in [masked(&block, x.clone(), zeros.clone()), sparse(&block, x.clone(), zeros.clone())] {
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
            let masked = masked(&block, x.clone(), g.clone()).into_data();
            sparse(&block, x.clone(), g).into_data().assert_approx_eq::<f32>(&masked, Tolerance::absolute(1e-4));
        }
    }

    /// A sample group of one image computes what the batch computes for it (no batch-1
    /// convolution for a group of a larger batch), so sparse equals masked to the bit.
    #[test]
    fn a_one_sample_group_computes_what_the_batch_does() {
        let device = Default::default();
        let c = &configs()[1];
        let block = c.init::<B>(&device);
        let x = Tensor::<B, 4>::random([3, c.channels_in, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        // sample 0 alone in its group, samples 1 and 2 together
        let g = gates::<B>(&[&[1.0, 0.0], &[1.0, 1.0], &[1.0, 1.0]]);
        let masked = masked(&block, x.clone(), g.clone()).into_data();
        sparse(&block, x, g).into_data().assert_eq(&masked, true);
    }

    /// A static block run on the two halves of its batch, concurrently, gives every sample what
    /// the whole batch gives it, to the bit; the halves stay concurrent groups for the next block,
    /// and the rows go back in order.
    #[test]
    fn a_static_batch_in_halves_computes_what_the_whole_batch_does() {
        let device = Default::default();
        let kernels = Kernels::<B>::probe(&device, 5);
        for c in configs() {
            let block = c.init::<B>(&device);
            let x = input::<B>(&c, 5);
            let whole = block.forward_with(x.clone(), &kernels).into_data();
            let halves = static_concurrent(&block, GroupedBatch::new(x), &kernels);
            assert_eq!(
                halves.groups().iter().map(|g| g.samples.clone()).collect::<Vec<_>>(),
                [vec![0, 1], vec![2, 3, 4]]
            );
            halves.into_tensor().into_data().assert_eq(&whole, true);
        }
        // two blocks too large for concurrent branches: the executor splits the batch at the
        // first and keeps the halves through the second
        let block = MultiPathBlockConfig::split(BlockKind::Basic, 8, 8, 8, 2).init::<B>(&device);
        let x = Tensor::<B, 4>::random([2, 8, 520, 520], Distribution::Normal(0.0, 1.0), &device);
        let kernels = Kernels::<B>::probe(&device, 2);
        assert!(kernels.splits_static_batch(block.largest_activation(x.dims()), 2));
        let first = run_block(ExecutionMode::Masked, &block, GroupedBatch::new(x.clone()), None, &kernels);
        assert_eq!(first.groups().len(), 2);
        let second = run_block(ExecutionMode::Masked, &block, first, None, &kernels);
        assert_eq!(second.groups().len(), 2);
        let one_by_one: Vec<Tensor<B, 4>> = (0..2)
            .map(|b| {
                let image_kernels = Kernels::probe(&device, 2);
                let y = block.forward_with(x.clone().slice([b..b + 1]), &image_kernels);
                block.forward_with(y, &image_kernels)
            })
            .collect();
        second.into_tensor().into_data().assert_eq(&Tensor::cat(one_by_one, 0).into_data(), true);
    }

    /// Inputs large enough for concurrent branches give the sums of the paths run one by one,
    /// in the same order, to the bit.
    #[test]
    fn concurrent_branches_sum_like_one_after_the_other() {
        let device = Default::default();
        for c in [
            MultiPathBlockConfig::split(BlockKind::Basic, 16, 16, 16, 2),
            MultiPathBlockConfig::new(BlockKind::Bottleneck, 16, 32, 3, 4).with_stride(2),
        ] {
            let block = c.init::<B>(&device);
            let x = Tensor::<B, 4>::random([4, 16, 32, 32], Distribution::Normal(0.0, 1.0), &device);
            assert!(Kernels::<B>::probe(&device, 4).concurrent(block.largest_activation(x.dims())));
            let one_by_one =
                block.paths.iter().fold(block.shortcut(x.clone()), |sum, path| sum + path.forward(x.clone()));
            block.forward(x.clone()).into_data().assert_eq(&relu(one_by_one).into_data(), true);
            let g = gates::<B>(&[&[1.0, 0.0, 1.0], &[0.0, 1.0, 1.0], &[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0]])
                .slice([0..4, 0..c.num_paths]);
            let masked = masked(&block, x.clone(), g.clone()).into_data();
            sparse(&block, x, g).into_data().assert_approx_eq::<f32>(&masked, Tolerance::absolute(1e-5));
        }
    }

    /// With every fast path off (the seam's off-switch) both modes still agree to the bit.
    #[test]
    fn sparse_equals_masked_with_fast_paths_off() {
        let device = Default::default();
        let c = &configs()[1];
        let block = c.init::<B>(&device);
        let off = Kernels::<B>::new(&device, 3, crate::backend::FastPaths::NONE);
        let x = Tensor::<B, 4>::random([3, c.channels_in, 9, 9], Distribution::Normal(0.0, 1.0), &device);
        let g = gates::<B>(&[&[1.0, 0.0], &[1.0, 1.0], &[0.0, 1.0]]);
        let masked = masked_with(&block, x.clone(), g.clone(), &off).into_data();
        sparse_grouped(&block, GroupedBatch::new(x), g, &off).into_tensor().into_data().assert_eq(&masked, true);
    }

    #[test]
    fn sparse_under_autodiff_reaches_gates_and_weights() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<AD>(&device);
        let x = input::<AD>(c, 3).require_grad();
        let g = gates::<AD>(&[&[1.0, 0.0, 1.0], &[0.0, 0.0, 1.0], &[1.0, 0.0, 0.0]]).require_grad();
        let grads = sparse(&block, x.clone(), g.clone()).sum().backward();
        let gg = g.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        // gradients reach the gates of the rows a path served
        assert!(gg[0] != 0.0 && gg[2] != 0.0 && gg[5] != 0.0, "{gg:?}");
        assert!(block.paths[0].convs()[0].weight.grad(&grads).is_some());
        // path 1 served nobody: it did not run
        assert!(block.paths[1].convs()[0].weight.grad(&grads).is_none());
    }

    /// Path by path on the whole batch (the form for GPU backends, the seam's off-switch on the
    /// CPU): gradients reach the gates and weights of the paths that ran, as with sample groups.
    /// (With an identity shortcut: a projection's training batch norm sees the whole batch path
    /// by path, as in masked execution, but each group's samples with sample groups.)
    #[test]
    fn path_by_path_sparse_under_autodiff_matches_sample_groups() {
        let device = Default::default();
        let c = &configs()[1];
        let block = c.init::<AD>(&device);
        let x = input::<AD>(c, 3);
        // path 0 serves samples 0 and 2 (a gather and a scatter-add), path 1 nobody
        let rows: [&[f32]; 3] = [&[1.0, 0.0], &[0.0, 0.0], &[1.0, 0.0]];
        let off = Kernels::<AD>::new(&device, 3, crate::backend::FastPaths::NONE);
        assert!(!off.groups_samples());
        // each form gets its own leaves: two graphs over shared leaves are Burn's to keep apart
        let run = |kernels: Option<&Kernels<AD>>| {
            let (x, g) = (x.clone().detach().require_grad(), gates::<AD>(&rows).require_grad());
            let y = match kernels {
                Some(k) => sparse_grouped(&block, GroupedBatch::new(x), g.clone(), k).into_tensor(),
                None => sparse(&block, x, g.clone()),
            };
            let grads = y.clone().sum().backward();
            (y.into_data(), g.grad(&grads).expect("the gates have a gradient").into_data(), grads)
        };
        let (path_major, gg, grads) = run(Some(&off));
        let (grouped, grouped_gg, _) = run(None);
        path_major.assert_approx_eq::<f32>(&grouped, Tolerance::absolute(1e-5));
        gg.assert_approx_eq::<f32>(&grouped_gg, Tolerance::absolute(1e-4));
        let gg = gg.to_vec::<f32>().unwrap();
        assert!(gg[0] != 0.0 && gg[4] != 0.0 && gg[2] == 0.0, "{gg:?}");
        assert!(block.paths[0].convs()[0].weight.grad(&grads).is_some());
        assert!(block.paths[1].convs()[0].weight.grad(&grads).is_none(), "path 1 served nobody: it did not run");
    }

    #[test]
    #[should_panic = "gates of shape [2, 2] do not fit a block with batch_size=2, num_paths=3"]
    fn wrong_gate_width_panics() {
        let device = Default::default();
        let c = &configs()[0];
        let block = c.init::<B>(&device);
        let _ = masked(&block, input::<B>(c, 2), Tensor::ones([2, 2], &device));
    }
}
