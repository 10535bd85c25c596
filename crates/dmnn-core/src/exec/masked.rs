//! Masked execution (DESIGN §7): every path runs on the whole batch and is multiplied by its
//! gate. Gradients reach every gate; the cost is the full block's. Training uses it.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::backend::Kernels;
use crate::block::MultiPathBlock;

/// Runs `block` on `input` in masked execution, with the probed kernels.
///
/// # Shapes
/// - `input`: `[batch_size, channels_in, height, width]`
/// - `gates`: `[batch_size, num_paths]`
/// - output: `[batch_size, channels_out, height / stride, width / stride]`
///
/// # Panics
/// If the gates' shape is not `[batch_size, num_paths]`.
pub fn masked<B: Backend>(block: &MultiPathBlock<B>, input: Tensor<B, 4>, gates: Tensor<B, 2>) -> Tensor<B, 4> {
    let kernels = Kernels::probe(&input.device(), input.dims()[0]);
    masked_with(block, input, gates, &kernels)
}

/// [`masked`] with the layers run by `kernels`.
pub fn masked_with<B: Backend>(
    block: &MultiPathBlock<B>,
    input: Tensor<B, 4>,
    gates: Tensor<B, 2>,
    kernels: &Kernels<B>,
) -> Tensor<B, 4> {
    let [batch_size, ..] = input.dims();
    block.check_gates(batch_size, &gates);
    let concurrent = kernels.concurrent(block.largest_activation(input.dims()));
    let all: Vec<usize> = (0..block.num_paths()).collect();
    let gate = |i: usize, y: Tensor<B, 4>| {
        y * gates.clone().slice([0..batch_size, i..i + 1]).reshape([batch_size, 1, 1, 1])
        // [B, 1, 1, 1]
    };
    // the straightforward formulation: the block input stays alive until the sum is formed
    // (sparse execution releases it once its last branch has read it)
    let out = block.residual(input.clone(), &all, &gate, kernels, concurrent);
    drop(input);
    out
}
