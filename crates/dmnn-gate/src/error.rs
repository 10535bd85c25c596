//! What can be wrong with a gate setting a user passes in.

use thiserror::Error;

/// A gate setting outside its domain; the message names the value.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GateError {
    /// A Gumbel temperature that is not a positive finite number.
    #[error("temperature={0} must be a positive finite number")]
    Temperature(f64),
    /// An inference threshold outside `[0, 1)`.
    #[error("gate threshold={0} must lie in [0, 1)")]
    Threshold(f64),
    /// A name that is not one of the known values.
    #[error("{what} '{value}' is not one of {}", known.join(", "))]
    Unknown {
        /// What was parsed.
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted values.
        known: &'static [&'static str],
    },
}
