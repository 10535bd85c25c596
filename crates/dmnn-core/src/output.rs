//! What a forward pass is asked ([`ForwardOptions`]) and what it returns ([`DmnnOutput`]).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use dmnn_gate::GateOptions;
use serde::{Deserialize, Serialize};

use crate::backend::{AutodiffKernels, FastPaths};
use crate::cost::CostReport;
use crate::error::ConfigError;

/// How the paths of a gated block are executed ([`crate::exec`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// `Masked` with autodiff (training), `Sparse` without (inference).
    #[default]
    Auto,
    /// Every path runs on the whole batch and is multiplied by its gate (costs the full network;
    /// gradients reach every gate).
    Masked,
    /// Each path runs only on the samples whose gate is on; unused paths do not run.
    Sparse,
}

impl ExecutionMode {
    /// The names [`ExecutionMode::from_str`](core::str::FromStr) accepts.
    pub const NAMES: [&'static str; 3] = ["auto", "masked", "sparse"];

    /// The concrete mode for a device: `Auto` becomes `Masked` with autodiff, `Sparse` without.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> Self {
        match self {
            Self::Auto if B::ad_enabled(device) => Self::Masked,
            Self::Auto => Self::Sparse,
            mode => mode,
        }
    }
}

impl core::fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Masked => "masked",
            Self::Sparse => "sparse",
        })
    }
}

impl core::str::FromStr for ExecutionMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "masked" => Ok(Self::Masked),
            "sparse" => Ok(Self::Sparse),
            other => Err(ConfigError::Unknown { what: "execution mode", value: other.into(), known: &Self::NAMES }),
        }
    }
}

/// Options of [`crate::Dmnn::forward_with`].
#[derive(Debug, Clone)]
pub struct ForwardOptions<B: Backend> {
    /// Execution mode of the gated blocks.
    pub mode: ExecutionMode,
    /// Gates to use instead of the controllers' decisions, one `[batch_size, num_paths]` tensor
    /// per block (benchmarks, tests, BN recalibration). The controllers do not run.
    pub gates: Option<Vec<Tensor<B, 2>>>,
    /// Gumbel noise for the training gates, one `[batch_size, num_paths, 2]` tensor per block
    /// (reproducible training and tests). Ignored without autodiff.
    pub noise: Option<Vec<Tensor<B, 3>>>,
    /// The Gumbel temperature (training) and the threshold (inference) of the controllers' gates.
    pub gate: GateOptions,
    /// Backend fast paths to use instead of what [`FastPaths::probe`] finds.
    pub fast_paths: Option<FastPaths>,
    /// The backend's training operations ([`ForwardOptions::with_autodiff_kernels`]).
    pub autodiff_kernels: Option<AutodiffKernels<B>>,
}

impl<B: Backend> Default for ForwardOptions<B> {
    fn default() -> Self {
        Self {
            mode: ExecutionMode::Auto,
            gates: None,
            noise: None,
            gate: GateOptions::default(),
            fast_paths: None,
            autodiff_kernels: None,
        }
    }
}

impl<B: Backend> ForwardOptions<B> {
    /// Default options with the given execution mode.
    pub fn mode(mode: ExecutionMode) -> Self {
        Self { mode, ..Self::default() }
    }

    /// Uses these gates instead of the controllers.
    pub fn with_gates(mut self, gates: Vec<Tensor<B, 2>>) -> Self {
        self.gates = Some(gates);
        self
    }

    /// Uses this Gumbel noise for the training gates.
    pub fn with_noise(mut self, noise: Vec<Tensor<B, 3>>) -> Self {
        self.noise = Some(noise);
        self
    }

    /// Uses these gate options (temperature and threshold).
    pub fn with_gate_options(mut self, gate: GateOptions) -> Self {
        self.gate = gate;
        self
    }

    /// Uses this Gumbel temperature for the training gates.
    ///
    /// # Panics
    /// If `temperature` is not a positive finite number; [`GateOptions::with_temperature`] says
    /// so as an error.
    pub fn with_temperature(mut self, temperature: f64) -> Self {
        self.gate = self.gate.with_temperature(temperature).unwrap_or_else(|e| panic!("{e}"));
        self
    }

    /// Runs the layers with these backend fast paths instead of the probed ones (for example
    /// [`FastPaths::NONE`] for Burn's own operations everywhere).
    pub fn with_fast_paths(mut self, fast_paths: FastPaths) -> Self {
        self.fast_paths = Some(fast_paths);
        self
    }
}

impl<B: AutodiffBackend> ForwardOptions<B> {
    /// Lets the training fast paths of the backend seam run ([`AutodiffKernels`]: the
    /// convolutions' backward as matrix products, batch norms on the host) where the probe says
    /// they apply. The training step of dmnn-train sets it; a training loop of your own can too.
    pub fn with_autodiff_kernels(mut self) -> Self {
        self.autodiff_kernels = AutodiffKernels::of();
        self
    }
}

/// Everything one forward pass produces. Losses, metrics, reports and benchmarks read this;
/// nothing recomputes gates or costs on the side.
#[derive(Debug, Clone)]
pub struct DmnnOutput<B: Backend> {
    /// Class logits, `[batch_size, num_classes]`.
    pub logits: Tensor<B, 2>,
    /// Logits of the auxiliary category heads, each `[batch_size, num_classes]` (empty without
    /// heads or when gates were given).
    pub aux_logits: Vec<Tensor<B, 2>>,
    /// Gates of every gated block, each `[batch_size, num_paths]` with values in {0, 1} (empty for
    /// a static network). With autodiff they carry the straight-through gradient.
    pub gates: Vec<Tensor<B, 2>>,
    /// Executed MACs of the gated paths for every sample, `[batch_size]` (differentiable through
    /// the gates).
    pub gated_macs: Tensor<B, 1>,
    /// Executed MACs of every sample, `[batch_size]`: ungated MACs plus `gated_macs`.
    pub macs: Tensor<B, 1>,
    /// The analytic cost of the model at this input size.
    pub cost: CostReport,
}

impl<B: Backend> DmnnOutput<B> {
    /// Executed share of the gated MACs for every sample, `[batch_size]`, in [0, 1].
    pub fn gated_macs_ratio(&self) -> Tensor<B, 1> {
        let full = self.cost.gated_macs_full().max(1) as f64;
        self.gated_macs.clone().div_scalar(full)
    }

    /// Executed MACs as a share of the all-paths-on network, `[batch_size]`.
    pub fn macs_ratio(&self) -> Tensor<B, 1> {
        self.macs.clone().div_scalar(self.cost.macs_full() as f64)
    }
}
