//! Running the independent branches of a block concurrently on the CPU
//! ([`FastPath::ConcurrentBranches`](super::FastPath::ConcurrentBranches)).
//!
//! The paths of a block, its projection shortcut and the sample groups of sparse execution are
//! independent computations. Burn Flex parallelises inside each operation, and on small tensors
//! that leaves cores idle; handing the branches to rayon as separate tasks fills them. A block
//! decides by the larger of its input and output over the whole batch, the same in every
//! execution mode, so a small sample group does not get what the batch would not.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

/// Smallest block activation (in elements) whose branches run concurrently: below it the
/// hand-off between threads costs more than it saves (a `dmnn_small` block at batch 1 holds
/// 3136).
pub const MIN_CONCURRENT_ELEMENTS: usize = 1 << 16;

/// Largest block activation (in elements, 16 MiB of `f32`) whose branches run concurrently.
/// Branches in flight keep up to one more block-sized output alive each; above this size that
/// memory is not worth it, and the ops are large enough to keep the cores busy on their own.
pub const MAX_CONCURRENT_ELEMENTS: usize = 1 << 22;

/// `items.map(f)`, concurrently when `concurrent`, results in the order of `items`.
pub fn map_branches<T: Send, R: Send>(items: Vec<T>, concurrent: bool, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    if concurrent {
        items.into_par_iter().map(f).collect()
    } else {
        items.into_iter().map(f).collect()
    }
}

/// A branch of a block: the shortcut or path `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Branch {
    /// The shortcut (identity or projection).
    Shortcut,
    /// Path `i`.
    Path(usize),
}

/// `run(branches[0], x) + run(branches[1], x) + ...` summed left to right, where `branches[0]`
/// is the shortcut. Every branch gets its own handle on `x`, so the input's buffer is freed as
/// soon as the last branch has read it. With `concurrent` the last branch runs concurrently with
/// the sum of the ones before it (recursively), so the order of the sum is kept and at most one
/// extra branch output is alive per level. With an `identity_shortcut` the first path's output
/// takes the input as the second summand, so the sum is formed in the path's own buffer
/// (`y + x == x + y`, to the bit).
pub(crate) fn sum_branches<B: Backend>(
    x: Tensor<B, 4>,
    branches: &[Branch],
    concurrent: bool,
    identity_shortcut: bool,
    run: &(dyn Fn(Branch, Tensor<B, 4>) -> Tensor<B, 4> + Sync),
) -> Tensor<B, 4> {
    let (&last, before) = branches.split_last().expect("the shortcut is a branch");
    if before.is_empty() {
        return run(last, x);
    }
    let x_before = x.clone();
    let (sum, y) = if concurrent {
        rayon::join(|| sum_branches(x_before, before, concurrent, identity_shortcut, run), || run(last, x))
    } else {
        let sum = sum_branches(x_before, before, concurrent, identity_shortcut, run);
        (sum, run(last, x))
    };
    if before.len() == 1 && identity_shortcut {
        y + sum
    } else {
        sum + y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::{Distribution, TensorData};

    #[test]
    fn results_keep_the_order_of_the_items() {
        for concurrent in [false, true] {
            assert_eq!(
                map_branches((0..100).collect(), concurrent, |i: usize| i * i),
                (0..100).map(|i| i * i).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn concurrent_sums_equal_sequential_sums_to_the_bit() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let branches = [Branch::Shortcut, Branch::Path(0), Branch::Path(1), Branch::Path(2)];
        let run = |b: Branch, x: Tensor<Flex, 4>| match b {
            Branch::Shortcut => x.mul_scalar(0.5),
            Branch::Path(i) => x.mul_scalar(1.0 + i as f64).exp(),
        };
        let sequential: TensorData = sum_branches(x.clone(), &branches, false, false, &run).into_data();
        sum_branches(x.clone(), &branches, true, false, &run).into_data().assert_eq(&sequential, true);
        let expected = ((run(Branch::Shortcut, x.clone()) + run(Branch::Path(0), x.clone()))
            + run(Branch::Path(1), x.clone()))
            + run(Branch::Path(2), x.clone());
        expected.into_data().assert_eq(&sequential, true);
    }
}
