//! Gate controllers for Dynamic Multi-path Neural Networks (DMNN).
//!
//! Su, Zhou, Wu et al., "Dynamic Multi-path Neural Network", arXiv 1902.10949 (ICPR 2020).
//! Before every multi-path block a small controller looks at the block's input and at the state
//! handed on by the previous controller, and decides per sample which paths run:
//!
//! - [`Controller`]: the per-block controllers and the recurrent cell they share
//!   ([`PrevState`]: none, GRU or LSTM), with optional auxiliary category heads.
//! - [`gumbel_straight_through`]: hard 0/1 gates forward, soft gradient backward, with the noise
//!   and the temperature as arguments; [`deterministic_gates`] for inference.
//! - [`GateOptions`]: the temperature and threshold a forward pass hands in.
//! - [`TemperatureSchedule`]: constant, linear or exponential temperature over training.
//!
//! Everything is generic over `B: Backend`; training or inference behaviour follows the backend
//! (autodiff or not), as Burn's own dropout and batch norm do.
#![warn(missing_docs)]

mod controller;
mod error;
mod gumbel;
mod norm;
mod params;
mod schedule;

pub use controller::*;
pub use error::GateError;
pub use gumbel::*;
pub use norm::BatchNorm;
pub use params::param_count;
pub use schedule::*;
