//! The straight-through Gumbel gate (Jang et al., "Categorical Reparameterization with
//! Gumbel-Softmax", arXiv 1611.01144; Bengio et al.'s straight-through estimator).
//!
//! Every path has two logits, `(off, on)`. Training draws Gumbel noise, takes a hard 0/1 decision
//! in the forward pass and lets the gradient of the tempered softmax through in the backward
//! pass. Inference is deterministic: a path is on when its on-probability exceeds a threshold.

use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::GateError;

/// Index of the "off" logit in the last dimension of the gate logits.
pub const OFF: usize = 0;
/// Index of the "on" logit in the last dimension of the gate logits.
pub const ON: usize = 1;

/// How one forward pass turns gate logits into gates: the Gumbel temperature under autodiff
/// (training), the on-probability threshold without (inference). A pass hands them in (a
/// temperature schedule, a run-time threshold); the controllers keep neither.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateOptions {
    temperature: f64,
    threshold: f64,
}

impl Default for GateOptions {
    /// Temperature 1 and threshold 0.5 (`on > off`).
    fn default() -> Self {
        Self { temperature: 1.0, threshold: 0.5 }
    }
}

impl GateOptions {
    /// Options with this training temperature.
    ///
    /// # Errors
    /// If `temperature` is not a positive finite number.
    pub fn with_temperature(self, temperature: f64) -> Result<Self, GateError> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(GateError::Temperature(temperature));
        }
        Ok(Self { temperature, ..self })
    }

    /// Options with this inference threshold.
    ///
    /// # Errors
    /// If `threshold` is outside `[0, 1)`.
    pub fn with_threshold(self, threshold: f64) -> Result<Self, GateError> {
        if !(0.0..1.0).contains(&threshold) {
            return Err(GateError::Threshold(threshold));
        }
        Ok(Self { threshold, ..self })
    }

    /// The Gumbel temperature of training.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The on-probability above which a path runs at inference.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }
}

/// Draws standard Gumbel noise `-ln(-ln(u))`, `u ~ U(0, 1)`, of the given shape.
///
/// The uniform samples are kept away from 0 and 1 so the noise stays finite.
pub fn gumbel_noise<B: Backend, const D: usize>(shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    let eps = 1e-6;
    let u = Tensor::<B, D>::random(shape, Distribution::Uniform(eps, 1.0 - eps), device);
    u.log().neg().log().neg()
}

/// Straight-through Gumbel-softmax over the `(off, on)` logits of every path.
///
/// `soft = softmax((logits + noise) / temperature)`; the forward value is the hard decision
/// `soft_on > soft_off` (exactly 0 or 1) and the gradient is the gradient of `soft_on`
/// (`hard - soft.detach() + soft`). Pass `noise` explicitly (e.g. from [`gumbel_noise`]) so that
/// tests and reproducible runs control it; a zero tensor gives the noiseless straight-through gate.
///
/// # Shapes
/// - `logits`: `[batch_size, num_paths, 2]`, last dimension `(off, on)`
/// - `noise`: `[batch_size, num_paths, 2]`
/// - output: `[batch_size, num_paths]`, values in {0, 1}
///
/// # Panics
/// If `temperature` is not a positive finite number, or the shapes differ.
pub fn gumbel_straight_through<B: Backend>(
    logits: Tensor<B, 3>,
    noise: Tensor<B, 3>,
    temperature: f64,
) -> Tensor<B, 2> {
    if let Err(e) = GateOptions::default().with_temperature(temperature) {
        panic!("{e}");
    }
    assert_eq!(
        logits.dims(),
        noise.dims(),
        "gate logits {:?} and Gumbel noise {:?} must have the same shape",
        logits.dims(),
        noise.dims()
    );
    let [batch_size, num_paths, two] = logits.dims();
    assert_eq!(two, 2, "gate logits must end in (off, on); got {two} logits per path");

    let soft = activation::softmax((logits + noise).div_scalar(temperature), 2);
    let soft_on = soft.clone().slice([0..batch_size, 0..num_paths, ON..ON + 1]);
    let soft_off = soft.slice([0..batch_size, 0..num_paths, OFF..OFF + 1]);
    let hard = soft_on.clone().greater(soft_off).float();
    let gates = hard - soft_on.clone().detach() + soft_on; // [batch_size, num_paths, 1]
    gates.squeeze_dim::<2>(2)
}

/// Deterministic inference gates: a path is on when `softmax(logits)_on > threshold`.
///
/// With `threshold = 0.5` this is `on > off`. A higher threshold closes more paths, trading
/// accuracy for cost at run time without retraining.
///
/// # Shapes
/// - `logits`: `[batch_size, num_paths, 2]`
/// - output: `[batch_size, num_paths]`, values in {0, 1}
///
/// # Panics
/// If `threshold` is outside `[0, 1)`.
pub fn deterministic_gates<B: Backend>(logits: Tensor<B, 3>, threshold: f64) -> Tensor<B, 2> {
    if let Err(e) = GateOptions::default().with_threshold(threshold) {
        panic!("{e}");
    }
    let [batch_size, num_paths, two] = logits.dims();
    assert_eq!(two, 2, "gate logits must end in (off, on); got {two} logits per path");
    // softmax_on > t  <=>  sigmoid(on - off) > t  <=>  on - off > logit(t)
    let margin = (threshold / (1.0 - threshold)).ln();
    let on = logits.clone().slice([0..batch_size, 0..num_paths, ON..ON + 1]);
    let off = logits.slice([0..batch_size, 0..num_paths, OFF..OFF + 1]);
    (on - off).greater_elem(margin).float().squeeze_dim::<2>(2) // [batch_size, num_paths]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{TensorData, Tolerance};

    type B = Flex;
    type AD = Autodiff<Flex>;

    fn logits<Bk: Backend>(device: &Bk::Device) -> Tensor<Bk, 3> {
        // 2 samples, 3 paths, (off, on)
        Tensor::from_data(
            TensorData::from([[[0.1f32, 2.0], [1.0, -1.0], [0.3, 0.2]], [[2.0, 0.5], [0.0, 0.4], [-1.0, 1.0]]]),
            device,
        )
    }

    #[test]
    fn forward_is_hard_zero_one() {
        let device = Default::default();
        let z = logits::<B>(&device);
        let noise = gumbel_noise::<B, 3>(z.dims(), &device);
        let g = gumbel_straight_through(z, noise, 1.0);
        assert_eq!(g.dims(), [2, 3]);
        for v in g.into_data().convert::<f32>().to_vec::<f32>().unwrap() {
            assert!(v == 0.0 || v == 1.0, "gate value {v} is not hard");
        }
    }

    #[test]
    fn without_noise_gate_follows_larger_logit() {
        let device = Default::default();
        let z = logits::<B>(&device);
        let g = gumbel_straight_through(z.clone(), z.zeros_like(), 1.0);
        g.into_data().assert_eq(&TensorData::from([[1.0f32, 0.0, 0.0], [0.0, 1.0, 1.0]]), false);
        let d = deterministic_gates(z, 0.5);
        d.into_data().assert_eq(&TensorData::from([[1.0f32, 0.0, 0.0], [0.0, 1.0, 1.0]]), false);
    }

    #[test]
    fn threshold_closes_more_paths() {
        let device = Default::default();
        let z = logits::<B>(&device);
        // sigmoid(on - off): [0.87, 0.12, 0.48], [0.18, 0.60, 0.88]
        let g = deterministic_gates(z, 0.7);
        g.into_data().assert_eq(&TensorData::from([[1.0f32, 0.0, 0.0], [0.0, 0.0, 1.0]]), false);
    }

    #[test]
    fn gradient_flows_and_depends_on_temperature() {
        let device = Default::default();
        let grad_at = |tau: f64| {
            let z = logits::<AD>(&device).require_grad();
            let noise = Tensor::<AD, 3>::from_data(
                TensorData::from([[[0.3f32, -0.2], [0.5, 0.1], [-0.4, 0.9]], [[0.0, 0.2], [1.1, -0.3], [0.2, 0.2]]]),
                &device,
            );
            let g = gumbel_straight_through(z.clone(), noise, tau);
            // weight each gate differently so the gradient does not cancel
            let w = Tensor::<AD, 2>::from_data(TensorData::from([[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]), &device);
            let grads = (g * w).sum().backward();
            z.grad(&grads).unwrap()
        };
        let g1 = grad_at(1.0);
        let g2 = grad_at(0.5);
        // every (off, on) pair's gradient sums to zero and is non-zero
        let pair_sum = g1.clone().sum_dim(2).abs().max().into_scalar();
        assert!(pair_sum < 1e-5, "off/on gradients should cancel, got {pair_sum}");
        assert!(g1.clone().abs().min().into_scalar() > 0.0);
        let diff = (g1 - g2).abs().max().into_scalar();
        assert!(diff > 1e-3, "temperature did not change the gradient (max diff {diff})");
    }

    #[test]
    fn deterministic_gates_repeat() {
        let device = Default::default();
        let z = logits::<B>(&device);
        let a = deterministic_gates(z.clone(), 0.5);
        let b = deterministic_gates(z, 0.5);
        a.into_data().assert_approx_eq::<f32>(&b.into_data(), Tolerance::absolute(0.0));
    }

    #[test]
    #[should_panic = "temperature=0 must be a positive finite number"]
    fn zero_temperature_panics() {
        let device = Default::default();
        let z = logits::<B>(&device);
        let _ = gumbel_straight_through(z.clone(), z.zeros_like(), 0.0);
    }

    #[test]
    fn options_name_bad_values() {
        let options = GateOptions::default();
        assert_eq!(options.with_threshold(1.5).unwrap_err().to_string(), "gate threshold=1.5 must lie in [0, 1)");
        assert!(options.with_threshold(f64::NAN).is_err());
        assert!(options.with_temperature(-1.0).is_err());
        let set = options.with_temperature(0.5).unwrap().with_threshold(0.7).unwrap();
        assert_eq!((set.temperature(), set.threshold()), (0.5, 0.7));
    }

    #[test]
    #[should_panic = "gate threshold=1 must lie in [0, 1)"]
    fn threshold_one_panics() {
        let device = Default::default();
        let _ = deterministic_gates(logits::<B>(&device), 1.0);
    }
}
