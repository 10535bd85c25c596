//! The layers a ResNet is made of that Burn does not provide as dmnn needs them: convolution
//! geometry and the ResNet convolution, and a batch norm for `[B, C, H, W]` maps.

mod conv;
mod norm;

pub use conv::*;
pub use norm::*;
