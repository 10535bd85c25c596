//! Dynamic Multi-path Neural Networks (DMNN) on Burn.
//!
//! Su, Zhou, Wu et al., "Dynamic Multi-path Neural Network", arXiv 1902.10949 (ICPR 2020).
//! A DMNN is a ResNet whose every residual block is split along its width into `N` gated paths;
//! a small controller before each block ([`dmnn_gate::Controller`]) decides per image which paths
//! run. Easy images take a thin, shallow route; hard ones take the full network.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//! use dmnn_core::{DmnnConfig, ExecutionMode, ForwardOptions};
//!
//! let device = Default::default();
//! let model = DmnnConfig::preset("dmnn_small").unwrap().init::<Flex>(&device);
//! let images = Tensor::<Flex, 4>::zeros([8, 1, 28, 28], &device);
//! let out = model.forward_with(images, ForwardOptions::mode(ExecutionMode::Sparse));
//! println!("logits {:?}, mean MACs {}", out.logits.dims(), out.macs.mean().into_scalar());
//! ```
//!
//! - [`MultiPathBlock`]: the gated residual block, with `Masked` and `Sparse` execution.
//! - [`DmnnConfig`], [`Dmnn`], [`DmnnOutput`]: the network, its presets
//!   ([`DmnnConfig::preset`]) and the output every loss, metric and report reads.
//! - [`CostReport`]: analytic parameters and MACs at any input size.
#![warn(missing_docs)]

mod block;
pub mod branches;
mod config;
mod cost;
pub mod im2col;
mod network;
mod norm;
pub mod pool;
pub mod presets;
pub mod weights;

pub use block::*;
pub use config::*;
pub use cost::*;
pub use network::*;
pub use norm::*;
pub use dmnn_gate::param_count;
pub use presets::UnknownModel;

/// Re-export of the gate crate, so users need one dependency.
pub use dmnn_gate as gate;
