//! Residual blocks split along their width into gated paths: what a block computes (DESIGN §3).
//! How a block runs on a batch with gates is [`crate::exec`]'s.

mod multi_path;
mod path;

pub use multi_path::*;
pub use path::*;
