//! Residual blocks split along their width into gated paths.

mod multi_path;
mod path;

pub use multi_path::*;
pub use path::*;
