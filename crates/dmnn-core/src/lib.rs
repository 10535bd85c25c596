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
//! Where things are (each room owns one thing; see docs/architecture.md):
//! - [`layers`]: convolution geometry and [`BatchNorm2d`].
//! - [`block`]: what a block computes — [`Path`] and [`MultiPathBlock`] (DESIGN §3).
//! - [`exec`]: how a block runs on a batch — [`exec::masked`] and [`exec::sparse`] (DESIGN §7).
//! - [`backend`]: the backend seam — [`FastPaths`] and [`Kernels`] (DESIGN §10).
//! - [`Dmnn`], [`DmnnConfig`], [`presets`]: the network and its named configurations.
//! - [`ForwardOptions`], [`DmnnOutput`]: what a pass is asked and what it returns; every loss,
//!   metric and report reads the output.
//! - [`ObjectiveConfig`]: the training objective of DESIGN §5.
//! - [`CostReport`]: analytic parameters and MACs at any input size.
//! - [`weights`]: torchvision interop.
#![warn(missing_docs)]

pub mod backend;
pub mod block;
mod config;
mod cost;
mod error;
pub mod exec;
pub mod layers;
mod network;
mod objective;
mod output;
pub mod presets;
pub mod weights;

pub use backend::{AutodiffKernels, FastPath, FastPaths, Kernels};
pub use block::*;
pub use config::*;
pub use cost::*;
pub use dmnn_gate::param_count;
pub use error::{ConfigError, UnknownModel};
pub use layers::{BatchNorm2d, BatchNorm2dConfig};
pub use network::*;
pub use objective::*;
pub use output::*;

/// Re-export of the gate crate, so users need one dependency.
pub use dmnn_gate as gate;
