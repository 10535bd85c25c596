//! Running independent branches of a block concurrently on the CPU.
//!
//! The paths of a block, its projection shortcut and the sample groups of sparse execution are
//! independent computations. Burn Flex parallelises inside each operation, and on small tensors
//! that leaves cores idle (allocation, layout changes and the tails of tiled loops run on one
//! thread). Handing the branches to rayon as separate tasks fills them: on the 2-core CPU a
//! static `dmnn_small` forward at batch 256 went from 62 to 52 ms and `dmnn50` at batch 1 from
//! 67 to 53 ms (benchmark medians), and sparse execution, whose groups are smaller, gained as
//! much or more.
//!
//! Only in inference on a CPU backend (Flex or NdArray), and only for blocks large enough to
//! pay for the hand-off and small enough that the extra outputs in flight are cheap; GPU
//! backends and autodiff run the branches one after the other. A block decides by the larger of
//! its input and output over the whole batch, the same in every execution mode, so a small
//! sample group does not get what the batch would not.

use burn::tensor::backend::Backend;
use rayon::prelude::*;

/// Smallest block activation (in elements) whose branches run concurrently: below it the
/// hand-off between threads costs more than it saves (a `dmnn_small` block at batch 1 holds
/// 3136).
pub const MIN_CONCURRENT_ELEMENTS: usize = 1 << 16;

/// Largest block activation (in elements, 16 MiB of `f32`) whose branches run concurrently.
/// Branches in flight keep up to one more block-sized output alive each; above this size that
/// memory is not worth it, and the ops are large enough to keep both cores busy on their own
/// (dmnn50 at batch 16: its 56 and 28 px stages run their branches one after the other, the 14
/// and 7 px stages concurrently).
pub const MAX_CONCURRENT_ELEMENTS: usize = 1 << 22;

/// Whether the branches of a block whose larger activation (input or output, whole batch) has
/// `elements` elements run concurrently: inference on a CPU backend, between
/// [`MIN_CONCURRENT_ELEMENTS`] and [`MAX_CONCURRENT_ELEMENTS`] elements.
pub fn concurrent_branches<B: Backend>(device: &B::Device, elements: usize) -> bool {
    let cpu = matches!(B::name(device).as_str(), "flex" | "ndarray");
    cpu && !B::ad_enabled(device) && (MIN_CONCURRENT_ELEMENTS..=MAX_CONCURRENT_ELEMENTS).contains(&elements)
}

/// `items.map(f)`, concurrently when `concurrent`, results in the order of `items`.
pub fn map_branches<T: Send, R: Send>(items: Vec<T>, concurrent: bool, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    if concurrent {
        items.into_par_iter().map(f).collect()
    } else {
        items.into_iter().map(f).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn only_mid_sized_blocks_in_cpu_inference_run_concurrently() {
        let device = Default::default();
        assert!(concurrent_branches::<Flex>(&device, 4 * 16 * 32 * 32));
        assert!(!concurrent_branches::<Flex>(&device, 16 * 14 * 14));
        assert!(!concurrent_branches::<Flex>(&device, MAX_CONCURRENT_ELEMENTS + 1));
        assert!(!concurrent_branches::<Autodiff<Flex>>(&device, 4 * 16 * 32 * 32));
    }

    #[test]
    fn results_keep_the_order_of_the_items() {
        for concurrent in [false, true] {
            assert_eq!(map_branches((0..100).collect(), concurrent, |i: usize| i * i), (0..100).map(|i| i * i).collect::<Vec<_>>());
        }
    }
}
