//! One forward pass of `dmnn_small` on random 28x28 images, in Sparse and Masked execution:
//! the README's library snippet, with the two modes side by side.
//!
//! ```sh
//! cargo run --release -p dmnn-example-forward
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use dmnn_core::{DmnnConfig, ExecutionMode, ForwardOptions};

fn run<B: Backend>(device: B::Device) {
    let model = DmnnConfig::preset("dmnn_small").unwrap().init::<B>(&device);
    let images = Tensor::<B, 4>::random([4, 1, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    // Sparse: each path runs only on the images whose gate is on.
    let out = model.forward_with(images.clone(), ForwardOptions::mode(ExecutionMode::Sparse));
    println!("logits {:?}", out.logits.dims());
    println!("GMACs per image {:?}", out.macs.clone().div_scalar(1e9).into_data().to_vec::<f32>().unwrap());
    println!("gates of block 0 {:?}", out.gates[0].to_data().to_vec::<f32>().unwrap());
    // Masked: every path on the whole batch, times its gate; the same logits.
    let masked = model.forward_with(images, ForwardOptions::mode(ExecutionMode::Masked));
    let diff = (masked.logits - out.logits).abs().max().into_scalar();
    println!("max |masked - sparse| = {diff:?}");
}

fn main() {
    #[cfg(feature = "cuda")]
    run::<burn::backend::Cuda>(Default::default());
    #[cfg(all(feature = "wgpu", not(feature = "cuda")))]
    run::<burn::backend::Wgpu>(Default::default());
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    run::<burn::backend::Flex>(Default::default());
}
