//! Batch normalisation for `[batch, channels, height, width]` feature maps.
//!
//! Same parameters, buffers and semantics as `torch.nn.BatchNorm2d` (and Burn's `BatchNorm`):
//! `gamma`, `beta`, `running_mean`, `running_var`, momentum 0.1, epsilon 1e-5; batch statistics
//! with autodiff, running statistics without. The running variance is updated with the unbiased
//! batch variance, as PyTorch does.
//!
//! Why not Burn's `BatchNorm`: it broadcasts `[1, C, 1, 1]` vectors against `[B, C, H, W]`
//! maps, which Burn's CPU backend (Flex) runs through a scalar strided iterator. Here every
//! per-channel vector is first tiled to `[B, C, 1, 1]` (a few hundred values), which Flex
//! broadcasts with SIMD (docs/decisions.md has the measurement). The arithmetic is the same on
//! every backend. As Burn's `BatchNorm`, the running statistics follow the input's device, so a
//! module forked onto another device (multi-device training) normalises with them there.

use burn::config::Config;
use burn::module::{Module, Param, RunningState};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Configuration of a [`BatchNorm2d`].
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    /// Number of channels.
    pub num_features: usize,
    /// Added to the variance for numerical stability.
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Weight of the current batch in the running statistics.
    #[config(default = 0.1)]
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// Builds the module: `gamma = 1`, `beta = 0`, running mean 0 and variance 1.
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm2d<B> {
        assert!(self.num_features > 0, "batch norm num_features=0 must be positive");
        let c = self.num_features;
        BatchNorm2d {
            gamma: Param::from_tensor(Tensor::ones([c], device)),
            beta: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

/// Batch normalisation over the batch and spatial dimensions of a 4-D feature map.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    /// Scale, `[channels]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift, `[channels]`.
    pub beta: Param<Tensor<B, 1>>,
    /// Running mean, `[channels]`.
    pub running_mean: RunningState<Tensor<B, 1>>,
    /// Running variance, `[channels]`.
    pub running_var: RunningState<Tensor<B, 1>>,
    /// Momentum of the running statistics.
    pub momentum: f64,
    /// Epsilon added to the variance.
    pub epsilon: f64,
}

/// Tiles a per-channel vector `[C]` to `[B, C, 1, 1]`.
fn per_sample<B: Backend>(v: Tensor<B, 1>, batch_size: usize) -> Tensor<B, 4> {
    let [c] = v.dims();
    v.reshape([1, c]).repeat_dim(0, batch_size).reshape([batch_size, c, 1, 1])
}

impl<B: Backend> BatchNorm2d<B> {
    /// Normalises with batch statistics under autodiff and running statistics otherwise.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels, height, width]`
    /// - output: same as `input`
    pub fn forward(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, channels, _, _] = input.dims();
        assert_eq!(
            channels,
            self.gamma.dims()[0],
            "batch norm over {} channels got an input with {channels} channels",
            self.gamma.dims()[0]
        );
        let device = input.device();
        if B::ad_enabled(&device) {
            self.forward_train(input)
        } else {
            Self::apply_affine(input, &self.inference_affine(&device))
        }
    }

    /// The per-channel `(scale, shift)` of inference, `y = x · scale + shift`, each `[channels]`,
    /// on `device`.
    pub(crate) fn inference_affine(&self, device: &B::Device) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let running_var = self.running_var.value().to_device(device);
        let running_mean = self.running_mean.value().to_device(device);
        let inv_std = running_var.add_scalar(self.epsilon).sqrt().recip();
        let scale = self.gamma.val() * inv_std; // [C]
        let shift = self.beta.val() - running_mean * scale.clone(); // [C]
        (scale, shift)
    }

    /// Applies an affine from [`BatchNorm2d::inference_affine`].
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels, height, width]`
    /// - output: same as `input`
    pub(crate) fn apply_affine(input: Tensor<B, 4>, (scale, shift): &(Tensor<B, 1>, Tensor<B, 1>)) -> Tensor<B, 4> {
        let [batch_size, ..] = input.dims();
        input * per_sample(scale.clone(), batch_size) + per_sample(shift.clone(), batch_size)
    }

    /// Moves the running statistics toward a batch's `mean` and biased `var` over `n` values per
    /// channel (the running variance takes the unbiased one, as PyTorch).
    ///
    /// Data-parallel replicas (docs/training.md): each replica on the device that holds the
    /// statistics (the main device) updates them, and the running value after the step is the
    /// mean of those updates (Burn's `RunningState` averages them over the replicas' threads):
    /// every replica of a CPU's, which share its one device. A replica on another device (a
    /// second GPU; see [`fork_replica`](crate::backend::fork_replica)) leaves them alone, as
    /// PyTorch's DataParallel keeps device 0's statistics: no copy between devices in its step.
    pub(crate) fn update_running(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>, n: usize) {
        let m = self.momentum;
        let unbiased = if n > 1 { n as f64 / (n - 1) as f64 } else { 1.0 };
        let device = mean.device();
        if self.running_mean.value().device() != device {
            return;
        }
        let running_mean =
            self.running_mean.value_sync().to_device(&device).mul_scalar(1.0 - m) + mean.detach().mul_scalar(m);
        let running_var = self.running_var.value_sync().to_device(&device).mul_scalar(1.0 - m)
            + var.detach().mul_scalar(m * unbiased);
        self.running_mean.update(running_mean.detach());
        self.running_var.update(running_var.detach());
    }

    fn forward_train(&self, input: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch_size, channels, height, width] = input.dims();
        let n = batch_size * height * width;
        let x = input.reshape([batch_size, channels, height * width]);
        let mean = x.clone().mean_dim(2).mean_dim(0).reshape([channels]); // [C]
        let tiled_mean =
            mean.clone().reshape([1, channels]).repeat_dim(0, batch_size).reshape([batch_size, channels, 1]);
        let centered = x - tiled_mean; // [B, C, HW]
        let var = centered.clone().square().mean_dim(2).mean_dim(0).reshape([channels]); // biased, [C]

        self.update_running(mean.clone(), var.clone(), n);

        let scale = self.gamma.val() * var.add_scalar(self.epsilon).sqrt().recip(); // [C]
        let y = centered.reshape([batch_size, channels, height, width]);
        y * per_sample(scale, batch_size) + per_sample(self.beta.val(), batch_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;
    use burn::tensor::{Distribution, Tolerance};

    type AD = Autodiff<Flex>;

    /// Burn's own BatchNorm is the reference (apart from the unbiased running variance).
    #[test]
    fn matches_burn_batch_norm_in_training_and_inference() {
        let device = Default::default();
        let ours = BatchNorm2dConfig::new(3).init::<AD>(&device);
        let mut burns = BatchNormConfig::new(3).init::<AD>(&device);
        let gamma = Tensor::<AD, 1>::from_floats([0.5, 1.5, -1.0], &device);
        let beta = Tensor::<AD, 1>::from_floats([0.1, -0.2, 0.3], &device);
        let ours =
            BatchNorm2d { gamma: Param::from_tensor(gamma.clone()), beta: Param::from_tensor(beta.clone()), ..ours };
        burns.gamma = Param::from_tensor(gamma);
        burns.beta = Param::from_tensor(beta);

        let x = Tensor::<AD, 4>::random([4, 3, 5, 6], Distribution::Normal(2.0, 3.0), &device).require_grad();
        let y_ours = ours.forward(x.clone());
        let y_burn = burns.forward(x.clone());
        y_ours.to_data().assert_approx_eq::<f32>(&y_burn.to_data(), Tolerance::absolute(1e-4));

        let w = Tensor::<AD, 4>::random([4, 3, 5, 6], Distribution::Default, &device);
        let g_ours = (y_ours * w.clone()).sum().backward();
        let gx_ours = x.grad(&g_ours).unwrap();
        let gg_ours = ours.gamma.grad(&g_ours).unwrap();
        let g_burn = (y_burn * w).sum().backward();
        x.grad(&g_burn).unwrap().to_data().assert_approx_eq::<f32>(&gx_ours.to_data(), Tolerance::absolute(1e-4));
        burns
            .gamma
            .grad(&g_burn)
            .unwrap()
            .to_data()
            .assert_approx_eq::<f32>(&gg_ours.to_data(), Tolerance::absolute(1e-3));

        // running mean as Burn's (0.1 · batch mean ≈ 0.2); running variance unbiased (n = 4*5*6 = 120)
        let rm: Vec<f32> = ours.running_mean.value_sync().to_data().to_vec().unwrap();
        assert!(rm.iter().all(|m| (m - 0.2).abs() < 0.15), "running mean {rm:?}");
        ours.running_mean
            .value_sync()
            .to_data()
            .assert_approx_eq::<f32>(&burns.running_mean.value_sync().to_data(), Tolerance::absolute(1e-5));
        let burn_var = burns.running_var.value_sync().sub_scalar(0.9).mul_scalar(120.0 / 119.0).add_scalar(0.9);
        ours.running_var.value_sync().to_data().assert_approx_eq::<f32>(&burn_var.to_data(), Tolerance::absolute(1e-4));

        let (ours, burns) = (ours.valid(), burns.valid());
        let x = x.inner();
        let burns_unbiased = {
            let mut b = burns.clone();
            b.running_var = RunningState::new(ours.running_var.value_sync());
            b
        };
        ours.forward(x.clone())
            .to_data()
            .assert_approx_eq::<f32>(&burns_unbiased.forward(x).to_data(), Tolerance::absolute(1e-4));
    }

    /// Per-channel mean and unbiased variance of `[B, C, H, W]`.
    fn channel_stats(x: &Tensor<AD, 4>) -> (Tensor<AD, 1>, Tensor<AD, 1>) {
        let [_, c, _, _] = x.dims();
        let flat = x.clone().permute([1, 0, 2, 3]).reshape([c as i32, -1]);
        (flat.clone().mean_dim(1).reshape([c]), flat.var(1).reshape([c]))
    }

    /// The rule of data-parallel training (docs/training.md): Burn's multi-device strategy runs
    /// each replica on a thread of its own with a fork of the model; a replica normalises with
    /// its own batch's statistics (as PyTorch's DataParallel and DDP without SyncBatchNorm), and
    /// the running statistics after the step are the mean of the replicas' updates, all made
    /// from the same value: `(1 - m) · r + m · mean_i(batch statistic_i)`.
    #[test]
    fn replicas_normalise_with_their_own_batch_and_average_the_running_statistics() {
        let device = Default::default();
        let bn = BatchNorm2dConfig::new(3).init::<AD>(&device);
        let a = Tensor::<AD, 4>::random([4, 3, 5, 6], Distribution::Normal(1.0, 2.0), &device);
        let b = Tensor::<AD, 4>::random([2, 3, 5, 6], Distribution::Normal(-2.0, 0.5), &device);
        let outputs: Vec<Tensor<AD, 4>> = std::thread::scope(|s| {
            let replicas: Vec<_> = [a.clone(), b.clone()]
                .into_iter()
                .map(|x| {
                    let replica = bn.clone().fork(&device);
                    s.spawn(move || replica.forward(x))
                })
                .collect();
            replicas.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for (x, y) in [&a, &b].into_iter().zip(&outputs) {
            let alone = BatchNorm2dConfig::new(3).init::<AD>(&device).forward(x.clone());
            y.to_data().assert_approx_eq::<f32>(&alone.to_data(), Tolerance::absolute(1e-5));
        }
        let ((mean_a, var_a), (mean_b, var_b)) = (channel_stats(&a), channel_stats(&b));
        let mean = (mean_a + mean_b).mul_scalar(0.5 * 0.1);
        let var = (var_a + var_b).mul_scalar(0.5 * 0.1).add_scalar(0.9);
        let synced = bn.valid();
        synced.running_mean.value().to_data().assert_approx_eq::<f32>(&mean.to_data(), Tolerance::absolute(1e-5));
        synced.running_var.value().to_data().assert_approx_eq::<f32>(&var.to_data(), Tolerance::absolute(1e-5));
        // not one replica's statistics: the two batches are far apart
        let (mean_a, _) = channel_stats(&a);
        let one: Vec<f32> = mean_a.mul_scalar(0.1).into_data().to_vec().unwrap();
        let both: Vec<f32> = synced.running_mean.value().into_data().to_vec().unwrap();
        assert!(one.iter().zip(&both).all(|(o, b)| (o - b).abs() > 0.05), "{one:?} vs {both:?}");
    }
}
