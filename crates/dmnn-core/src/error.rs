//! Typed errors of dmnn-core: a configuration that cannot build a network or an objective, and a
//! name that is not a preset. Weight files have their own ([`crate::weights::WeightsError`]).

use dmnn_gate::GateError;
use thiserror::Error;

/// A configuration that cannot be used; every message names the offending values.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    /// No stages.
    #[error("model '{model}': stage_depths is empty")]
    EmptyStages {
        /// The model's name.
        model: String,
    },
    /// A per-stage list of the wrong length.
    #[error("model '{model}': {field} has {len} entries, stage_depths has {stages}")]
    StageCount {
        /// The model's name.
        model: String,
        /// The list.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The number of stages.
        stages: usize,
    },
    /// Counts that must be positive.
    #[error("model '{model}': {values} must all be positive")]
    NotPositive {
        /// The model's name.
        model: String,
        /// The values, `name=value` joined by commas.
        values: String,
    },
    /// A stem stride of zero.
    #[error("model '{model}': stem stride=0 must be positive")]
    StemStride {
        /// The model's name.
        model: String,
    },
    /// A path width of zero.
    #[error("model '{model}': path_widths={widths:?} must be positive")]
    PathWidths {
        /// The model's name.
        model: String,
        /// The widths given.
        widths: Vec<usize>,
    },
    /// A stage width the number of paths does not divide.
    #[error("model '{model}': width={width}, num_paths={num_paths}: num_paths must divide the block width")]
    Indivisible {
        /// The model's name.
        model: String,
        /// The stage width.
        width: usize,
        /// The number of paths.
        num_paths: usize,
    },
    /// A controller without width.
    #[error("model '{model}': controller hidden_size=0 must be positive")]
    ControllerWidth {
        /// The model's name.
        model: String,
    },
    /// A target rate outside `[0, 1]`.
    #[error("target_rate={0} must lie in [0, 1]")]
    TargetRate(f64),
    /// A negative (or not a number) loss weight.
    #[error("aux_loss_weight={aux}, cost_loss_weight={cost} must not be negative")]
    LossWeights {
        /// The auxiliary loss weight.
        aux: f64,
        /// The cost loss weight.
        cost: f64,
    },
    /// A label smoothing outside `[0, 1)`.
    #[error("label_smoothing={0} must lie in [0, 1)")]
    LabelSmoothing(f64),
    /// A network too large to build: its widths or its parameters past what a host can hold.
    #[error("model '{model}': {what} exceeds {limit} (a network of this size cannot be allocated)")]
    TooLarge {
        /// The model's name.
        model: String,
        /// What is too large, with its value.
        what: String,
        /// The limit.
        limit: String,
    },
    /// An input side of zero pixels.
    #[error("model '{model}': image_size={size} must be positive")]
    ImageSize {
        /// The model's name.
        model: String,
        /// The size given.
        size: usize,
    },
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
    /// A model name that is not a preset.
    #[error(transparent)]
    UnknownModel(#[from] UnknownModel),
    /// A gate setting out of its domain.
    #[error(transparent)]
    Gate(#[from] GateError),
}

/// A requested model name that is not a preset.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("unknown model '{name}'; known models: {}", known.join(", "))]
pub struct UnknownModel {
    /// The name asked for.
    pub name: String,
    /// The preset names.
    pub known: Vec<&'static str>,
}
