//! Batch norm of a controller's embedding, `[batch_size, features]`.
//!
//! Burn's `BatchNorm` computed the same way — the same name, fields, record, initialisation and
//! operations, so weights and checkpoints of earlier runs load, burn-store's PyTorch adapters
//! map its `weight`/`bias` as they do Burn's (they go by the module's type name), and a step
//! computes the same numbers to the bit — with the data-parallel rule of the network's batch norms
//! (docs/training.md): Burn's version moves its running statistics to the device of every
//! replica (`to_device`), which Burn 0.21 cannot do between two WGPU devices; this one updates
//! them only from replicas on the device that holds them (the main device) and leaves them alone
//! elsewhere.

use burn::module::{Initializer, Module, Param, RunningState};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Batch norm over the batch dimension of `[batch_size, features]` (biased variance, momentum
/// 0.1 and epsilon 1e-5, as Burn's `BatchNormConfig` defaults).
#[derive(Module, Debug)]
pub struct BatchNorm<B: Backend> {
    /// Scale, `[features]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift, `[features]`.
    pub beta: Param<Tensor<B, 1>>,
    /// Running mean, `[features]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running (biased) variance, `[features]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Weight of the current batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance.
    pub epsilon: f64,
}

impl<B: Backend> BatchNorm<B> {
    /// `gamma = 1`, `beta = 0`, running mean 0 and variance 1, over `features` features.
    pub fn new(features: usize, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([features], device),
            beta: Initializer::Zeros.init([features], device),
            running_mean: RunningState::new(Tensor::zeros([features], device)),
            running_var: RunningState::new(Tensor::ones([features], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Batch statistics under autodiff, running statistics otherwise.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, features]`
    /// - output: same as `input`
    pub fn forward(&self, input: Tensor<B, 2>) -> Tensor<B, 2> {
        let device = input.device();
        let [batch_size, features] = input.dims();
        if !B::ad_enabled(&device) {
            let mean = self.running_mean.value().to_device(&device).reshape([1, features]);
            let var = self.running_var.value().to_device(&device).reshape([1, features]);
            return self.normalise(input, mean, var);
        }
        let mean = input.clone().swap_dims(0, 1).reshape([features, batch_size]).mean_dim(1).reshape([1, features]);
        let var = input
            .clone()
            .sub(mean.clone())
            .square()
            .swap_dims(0, 1)
            .reshape([features, batch_size])
            .mean_dim(1)
            .reshape([1, features]);
        // a replica on another device than the statistics leaves them alone
        if self.running_mean.value().device() == device {
            let m = self.momentum;
            let running_mean = self.running_mean.value_sync().to_device(&device);
            let running_var = self.running_var.value_sync().to_device(&device);
            let running_mean =
                running_mean.mul_scalar(1.0 - m).add(mean.clone().detach().mul_scalar(m).reshape([features]));
            let running_var =
                running_var.mul_scalar(1.0 - m).add(var.clone().detach().mul_scalar(m).reshape([features]));
            self.running_mean.update(running_mean.detach());
            self.running_var.update(running_var.detach());
        }
        self.normalise(input, mean, var)
    }

    fn normalise(&self, x: Tensor<B, 2>, mean: Tensor<B, 2>, var: Tensor<B, 2>) -> Tensor<B, 2> {
        let [_, features] = x.dims();
        let std = var.add_scalar(self.epsilon).sqrt();
        let x = x.sub(mean).div(std);
        x.mul(self.gamma.val().reshape([1, features])).add(self.beta.val().reshape([1, features]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    type AD = Autodiff<Flex>;

    fn host<const D: usize>(t: Tensor<Flex, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// The same numbers as Burn's `BatchNorm`, to the bit: training output, gradients, running
    /// statistics, inference output.
    #[test]
    fn computes_what_burns_batch_norm_computes() {
        let device = Default::default();
        let ours = BatchNorm::<AD>::new(6, &device);
        let burns = BatchNormConfig::new(6).init::<AD>(&device);
        let x = Tensor::<AD, 2>::random([5, 6], Distribution::Normal(1.0, 2.0), &device).require_grad();
        let w = Tensor::<AD, 2>::random([5, 6], Distribution::Default, &device);
        let (a, b) = (ours.forward(x.clone()), burns.forward(x.clone()));
        assert_eq!(host(a.clone().inner()), host(b.clone().inner()));
        let (ga, gb) = ((a * w.clone()).sum().backward(), (b * w).sum().backward());
        assert_eq!(host(x.grad(&ga).unwrap()), host(x.grad(&gb).unwrap()));
        assert_eq!(host(ours.gamma.grad(&ga).unwrap()), host(burns.gamma.grad(&gb).unwrap()));
        let (ours, burns) = (ours.valid(), burns.valid());
        assert_eq!(host(ours.running_mean.value()), host(burns.running_mean.value()));
        assert_eq!(host(ours.running_var.value()), host(burns.running_var.value()));
        let x = x.inner();
        assert_eq!(host(ours.forward(x.clone())), host(burns.forward(x)));
    }

    /// A record of Burn's `BatchNorm` loads into it (the controllers of earlier runs).
    #[test]
    fn loads_the_record_of_burns_batch_norm() {
        use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
        let device = Default::default();
        let mut source = BatchNormConfig::new(4).init::<Flex>(&device);
        source.running_mean = RunningState::new(Tensor::from_floats([1.0, 2.0, 3.0, 4.0], &device));
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let bytes = Recorder::<Flex>::record(&recorder, source.into_record(), ()).unwrap();
        let record = Recorder::<Flex>::load(&recorder, bytes, &device).unwrap();
        let ours = BatchNorm::<Flex>::new(4, &device).load_record(record);
        assert_eq!(host(ours.running_mean.value()), vec![1.0, 2.0, 3.0, 4.0]);
    }
}
