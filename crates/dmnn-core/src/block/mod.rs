//! Residual blocks split along their width into gated paths.

mod grouped;
mod multi_path;
mod path;

pub use grouped::*;
pub use multi_path::*;
pub use path::*;
