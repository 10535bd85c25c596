//! One forward pass of `dmnn_small` on random 28x28 images, in Masked and Sparse execution:
//! same logits, executed MACs per image, gates of the first block.
//!
//! ```sh
//! cargo run --release -p dmnn-example-forward
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use dmnn_core::{DmnnConfig, ExecutionMode, ForwardOptions};

fn run<B: Backend>(device: B::Device) {
    let config = DmnnConfig::preset("dmnn_small").expect("preset");
    let model = config.init::<B>(&device);
    let images = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let masked = model.forward_with(images.clone(), ForwardOptions::mode(ExecutionMode::Masked));
    let sparse = model.forward_with(images, ForwardOptions::mode(ExecutionMode::Sparse));
    let diff = (masked.logits - sparse.logits.clone()).abs().max().into_scalar();
    println!("{}: logits {:?}, max |masked - sparse| = {diff:?}", config.name, sparse.logits.dims());
    println!("executed MACs per image: {:?} of {}", sparse.macs.to_data(), sparse.cost.macs_full());
    println!("gates of block 0: {:?}", sparse.gates[0].to_data());
}

fn main() {
    #[cfg(feature = "cuda")]
    run::<burn::backend::Cuda>(Default::default());
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    run::<burn::backend::Wgpu>(Default::default());
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    run::<burn::backend::Flex>(Default::default());
}
