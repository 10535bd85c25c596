//! The training objective of DESIGN §5:
//!
//! ```text
//! L = CE(logits, y)
//!   + aux_loss_weight  · mean_l CE(a_l, y)
//!   + cost_loss_weight · ( mean_b [ executed_gated_MACs_b / total_gated_MACs ] − target_rate )²
//! ```
//!
//! The cost term reads the executed MACs of [`DmnnOutput`], which the straight-through gates make
//! differentiable. The per-block variant (ConvNet-AIG style) penalises
//! `mean_l (open_rate_l − target_rate)²` instead.

use burn::config::Config;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::output::DmnnOutput;

/// Which cost penalty pulls the executed MACs toward the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CostPenalty {
    /// `(mean executed share of the gated MACs − t)²` over the whole network.
    #[default]
    Network,
    /// `mean_l (open rate of block l − t)²`, every block held to the target.
    PerBlock,
}

impl CostPenalty {
    /// The names [`CostPenalty::from_str`](core::str::FromStr) accepts.
    pub const NAMES: [&'static str; 2] = ["network", "per-block"];
}

impl core::str::FromStr for CostPenalty {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "network" => Ok(Self::Network),
            "per-block" | "per_block" => Ok(Self::PerBlock),
            other => Err(ConfigError::Unknown { what: "cost penalty", value: other.into(), known: &Self::NAMES }),
        }
    }
}

/// Weights and target of the objective.
#[derive(Config, Debug, PartialEq)]
pub struct ObjectiveConfig {
    /// Weight of the mean auxiliary (controller category) cross-entropy.
    #[config(default = 0.5)]
    pub aux_loss_weight: f64,
    /// Weight of the cost penalty.
    #[config(default = 2.0)]
    pub cost_loss_weight: f64,
    /// Target share of the gated MACs to execute.
    #[config(default = 0.7)]
    pub target_rate: f64,
    /// Network-wide or per-block penalty.
    #[config(default = "CostPenalty::Network")]
    pub cost_penalty: CostPenalty,
    /// Label smoothing of the main cross-entropy (0: none).
    #[config(default = 0.0)]
    pub label_smoothing: f64,
}

/// The loss and its terms, each `[1]`.
#[derive(Debug, Clone)]
pub struct LossTerms<B: Backend> {
    /// The weighted sum that is minimised.
    pub total: Tensor<B, 1>,
    /// Cross-entropy of the classifier.
    pub ce: Tensor<B, 1>,
    /// Mean cross-entropy of the auxiliary heads (zero without heads).
    pub aux: Tensor<B, 1>,
    /// Cost penalty, unweighted (zero for a static network).
    pub cost: Tensor<B, 1>,
}

impl ObjectiveConfig {
    /// Checks the weights and the target.
    ///
    /// # Errors
    /// The first value out of its domain.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.target_rate) {
            return Err(ConfigError::TargetRate(self.target_rate));
        }
        if !(self.aux_loss_weight >= 0.0 && self.cost_loss_weight >= 0.0) {
            return Err(ConfigError::LossWeights { aux: self.aux_loss_weight, cost: self.cost_loss_weight });
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(ConfigError::LabelSmoothing(self.label_smoothing));
        }
        Ok(())
    }

    /// The loss of one forward pass against `targets` (`[batch_size]`).
    pub fn loss<B: Backend>(&self, out: &DmnnOutput<B>, targets: Tensor<B, 1, Int>) -> LossTerms<B> {
        let device = out.logits.device();
        let mut ce_config = CrossEntropyLossConfig::new();
        if self.label_smoothing > 0.0 {
            ce_config = ce_config.with_smoothing(Some(self.label_smoothing as f32));
        }
        let ce_loss = ce_config.init(&device);
        let ce = ce_loss.forward(out.logits.clone(), targets.clone());
        let plain_ce = CrossEntropyLossConfig::new().init(&device);
        let aux = if out.aux_logits.is_empty() {
            Tensor::zeros([1], &device)
        } else {
            let n = out.aux_logits.len() as f64;
            out.aux_logits
                .iter()
                .map(|a| plain_ce.forward(a.clone(), targets.clone()))
                .reduce(|a, b| a + b)
                .unwrap()
                .div_scalar(n)
        };
        let cost = if out.gates.is_empty() {
            Tensor::zeros([1], &device)
        } else {
            match self.cost_penalty {
                CostPenalty::Network => out.gated_macs_ratio().mean().sub_scalar(self.target_rate).powi_scalar(2),
                CostPenalty::PerBlock => {
                    let n = out.gates.len() as f64;
                    out.gates
                        .iter()
                        .map(|g| g.clone().mean().sub_scalar(self.target_rate).powi_scalar(2))
                        .reduce(|a, b| a + b)
                        .unwrap()
                        .div_scalar(n)
                }
            }
        };
        let total =
            ce.clone() + aux.clone().mul_scalar(self.aux_loss_weight) + cost.clone().mul_scalar(self.cost_loss_weight);
        LossTerms { total, ce, aux, cost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DmnnConfig, ForwardOptions};
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, TensorData};

    type AD = Autodiff<Flex>;

    #[test]
    fn terms_add_up_and_cost_follows_the_gates() {
        let device = Default::default();
        let model = DmnnConfig::preset("dmnn_small").unwrap().init::<AD>(&device);
        let x = Tensor::<AD, 4>::random([4, 1, 28, 28], Distribution::Default, &device);
        let y = Tensor::<AD, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), &device);
        // half the paths on in every block: the gated share is exactly 0.5
        let gates: Vec<_> = (0..model.num_blocks())
            .map(|_| {
                Tensor::<AD, 2>::from_data(
                    TensorData::new(vec![1f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0], [4, 2]),
                    &device,
                )
            })
            .collect();
        let out = model.forward_with(x, ForwardOptions::default().with_gates(gates));
        for penalty in [CostPenalty::Network, CostPenalty::PerBlock] {
            let objective = ObjectiveConfig::new().with_target_rate(0.7).with_cost_penalty(penalty);
            let terms = objective.loss(&out, y.clone());
            let cost = terms.cost.clone().into_scalar();
            assert!((cost - 0.04).abs() < 1e-5, "{penalty:?}: (0.5 - 0.7)^2 = 0.04, got {cost}");
            let expected = terms.ce.clone().into_scalar() + 0.5 * terms.aux.clone().into_scalar() + 2.0 * cost;
            assert!((terms.total.into_scalar() - expected).abs() < 1e-5);
        }
    }

    #[test]
    fn rejects_bad_target() {
        assert!(ObjectiveConfig::new()
            .with_target_rate(1.5)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("target_rate=1.5"));
    }
}
