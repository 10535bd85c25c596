//! PyTorch interop: torchvision ResNet checkpoints in, safetensors with torchvision names out,
//! and a multi-path network started from a ResNet.
//!
//! - [`keys`]: the key rules between torchvision and dmnn, both ways.
//! - [`load_torchvision`] (and [`load_torchvision_into`], which keeps the model on an error),
//!   [`save_torchvision`], [`read_checkpoint`]: the files.
//! - [`init_from_resnet`]: the paths of a DMNN sliced from a one-path ResNet.
//!
//! Linear weights are transposed by burn-store's PyTorch adapters. Multi-path models export
//! their extra paths as `layer{s}.{b}.paths.{i}.*` and controllers as `controller.*`, so an
//! export of any dmnn model imports back bit for bit.

mod io;
pub mod keys;
mod surgery;

pub use io::*;
pub use keys::{dmnn_to_torchvision, torchvision_to_dmnn, KeyMapping};
pub use surgery::*;
