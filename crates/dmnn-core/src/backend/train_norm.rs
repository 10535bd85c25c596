//! Training batch norm on the host ([`FastPath::HostBatchNorm`](super::FastPath)): one autodiff
//! operation whose forward computes each channel's statistics and the normalised, scaled output
//! in two passes, and whose backward the three gradients in two more.
//!
//! Written with tensor operations, a training batch norm is some twenty operations forward and
//! as many again backward (means, centring, squares, tiling of the per-channel vectors, running
//! statistics), each a pass over the activation with its own allocation. On burn-flex with the
//! small activations of a CPU network these per-operation costs, not the arithmetic, are what the
//! batch norms cost. Same formulas as `BatchNorm2d` (biased batch variance, epsilon inside the
//! square root), accumulated in `f64`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use rayon::prelude::*;

use super::autodiff::{device, host, NormOutput};

/// Channel statistics and values of one batch norm, kept for the backward pass.
#[derive(Debug, Clone)]
struct NormState<I: Backend> {
    input: I::FloatTensorPrimitive,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
    /// `[batch, channels, positions]`.
    dims: [usize; 3],
}

#[derive(Debug)]
struct BatchNormBackward;

/// Independent `f32` accumulators per pass: enough to keep the vector units busy (a single
/// running sum is one dependent addition per value) and few enough values each for `f32`.
const LANES: usize = 16;

/// `Σ f(a[i], b[i])` over two equally long slices: `f32` partial sums in [`LANES`] lanes, added
/// up in `f64`.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(&x, &y)| f(x, y) as f64).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            lanes[i] += f(ca[i], cb[i]);
        }
    }
    lanes.iter().map(|&v| v as f64).sum::<f64>() + tail
}

/// `Σ f(a, b)` over every value of channel `c` of two NCHW buffers of `dims`.
fn channel_sum(
    a: &[f32],
    b: &[f32],
    [batch, channels, positions]: [usize; 3],
    c: usize,
    f: impl Fn(f32, f32) -> f32 + Copy,
) -> f64 {
    (0..batch)
        .map(|n| {
            let plane = (n * channels + c) * positions..(n * channels + c + 1) * positions;
            lane_sum(&a[plane.clone()], &b[plane], f)
        })
        .sum()
}

impl<I: Backend> Backward<I, 3> for BatchNormBackward {
    type State = NormState<I>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<I>(&ops.node)));
        let NormState { input, mean, inv_std, gamma, dims } = ops.state;
        let [batch, channels, positions] = dims;
        let dev = grad.device();
        let shape = grad.dims();
        let x = host(Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(input)));
        let dy = host(grad);
        let n = (batch * positions) as f64;
        // per channel: Σ dy and Σ dy · x̂
        let sums: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let m = mean[c];
                let sum_dy = channel_sum(&dy, &dy, dims, c, |g, _| g);
                let sum_dy_centred = channel_sum(&dy, &x, dims, c, |g, v| g * (v - m));
                (sum_dy, sum_dy_centred * inv_std[c] as f64)
            })
            .collect();
        if let Some(node) = node_x {
            let mut dx = vec![0f32; dy.len()];
            dx.par_chunks_mut(positions).enumerate().for_each(|(plane, out)| {
                let c = plane % channels;
                let (sum_dy, sum_dy_xhat) = sums[c];
                let (m, s) = (mean[c], inv_std[c]);
                let k = gamma[c] * s;
                let (a, b) = ((sum_dy / n) as f32, (sum_dy_xhat / n) as f32);
                let start = plane * positions;
                for ((o, &g), &v) in out.iter_mut().zip(&dy[start..start + positions]).zip(&x[start..start + positions])
                {
                    *o = k * (g - a - (v - m) * s * b);
                }
            });
            grads.register::<I>(node.id, device::<I, 4>(dx, shape, &dev).into_primitive().tensor());
        }
        if let Some(node) = node_gamma {
            let dgamma = sums.iter().map(|&(_, s)| s as f32).collect();
            grads.register::<I>(node.id, device::<I, 1>(dgamma, [channels], &dev).into_primitive().tensor());
        }
        if let Some(node) = node_beta {
            let dbeta = sums.iter().map(|&(s, _)| s as f32).collect();
            grads.register::<I>(node.id, device::<I, 1>(dbeta, [channels], &dev).into_primitive().tensor());
        }
    }
}

/// `gamma · (x − mean) / sqrt(var + epsilon) + beta` with the batch's own per-channel mean and
/// biased variance, as one autodiff operation; returns the output and (without gradient) the mean
/// and the biased variance, for the running statistics.
///
/// # Shapes
/// - `x`: `[batch, channels, height, width]`
/// - `gamma`, `beta`: `[channels]`
/// - output: as `x`; mean and variance `[channels]`
pub(crate) fn host_batch_norm<I: Backend>(
    x: Tensor<Autodiff<I>, 4>,
    gamma: Tensor<Autodiff<I>, 1>,
    beta: Tensor<Autodiff<I>, 1>,
    epsilon: f64,
) -> NormOutput<Autodiff<I>> {
    let shape = x.dims();
    let [batch, channels, height, width] = shape;
    let dims = [batch, channels, height * width];
    let positions = height * width;
    let x = x.into_primitive().tensor();
    let gamma = gamma.into_primitive().tensor();
    let beta = beta.into_primitive().tensor();
    let inner_x = Tensor::<I, 4>::from_primitive(TensorPrimitive::Float(x.primitive.clone()));
    let dev = inner_x.device();
    let gamma_values = host(Tensor::<I, 1>::from_primitive(TensorPrimitive::Float(gamma.primitive.clone())));
    let beta_values = host(Tensor::<I, 1>::from_primitive(TensorPrimitive::Float(beta.primitive.clone())));
    let values = host(inner_x.clone());
    let n = (batch * positions) as f64;
    // two passes per channel: the mean, then the variance about it
    let stats: Vec<(f32, f32)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let mean = (channel_sum(&values, &values, dims, c, |v, _| v) / n) as f32;
            let var = channel_sum(&values, &values, dims, c, |v, _| (v - mean) * (v - mean)) / n;
            (mean, var as f32)
        })
        .collect();
    let mean: Vec<f32> = stats.iter().map(|s| s.0).collect();
    let var: Vec<f32> = stats.iter().map(|s| s.1).collect();
    let inv_std: Vec<f32> = var.iter().map(|&v| 1.0 / ((v as f64 + epsilon).sqrt() as f32)).collect();
    let mut y = vec![0f32; values.len()];
    y.par_chunks_mut(positions).enumerate().for_each(|(plane, out)| {
        let c = plane % channels;
        let (m, k, b) = (mean[c], gamma_values[c] * inv_std[c], beta_values[c]);
        for (o, &v) in out.iter_mut().zip(&values[plane * positions..(plane + 1) * positions]) {
            *o = (v - m) * k + b;
        }
    });
    let output = device::<I, 4>(y, shape, &dev).into_primitive().tensor();
    let nodes = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
    let out = match BatchNormBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = NormState::<I> {
                input: inner_x.into_primitive().tensor(),
                mean: mean.clone(),
                inv_std,
                gamma: gamma_values.to_vec(),
                dims,
            };
            prep.finish(state, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    let statistic = |v: Vec<f32>| Tensor::<Autodiff<I>, 1>::from_inner(device::<I, 1>(v, [channels], &dev));
    (Tensor::from_primitive(TensorPrimitive::Float(out)), statistic(mean), statistic(var))
}

#[cfg(test)]
mod tests {
    use crate::backend::{AutodiffKernels, FastPath, FastPaths, Kernels};
    use crate::layers::BatchNorm2dConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::tensor::{Distribution, Tensor, Tolerance};

    type AD = Autodiff<Flex>;

    /// Output, gradients of input, scale and shift, and running statistics of the host batch norm
    /// against `BatchNorm2d`'s tensor formulation.
    #[test]
    fn equals_the_tensor_batch_norm() {
        let device = Default::default();
        let fast = Kernels::<AD>::new(&device, 3, FastPaths::NONE.with(FastPath::HostBatchNorm))
            .with_autodiff_kernels(AutodiffKernels::of());
        for [b, c, h, w] in [[3, 5, 4, 6], [1, 2, 7, 7], [8, 3, 1, 1]] {
            let mut reference = BatchNorm2dConfig::new(c).init::<AD>(&device);
            let gamma = Tensor::<AD, 1>::random([c], Distribution::Normal(1.0, 0.3), &device);
            let beta = Tensor::<AD, 1>::random([c], Distribution::Normal(0.0, 0.3), &device);
            reference.gamma = Param::from_tensor(gamma.clone());
            reference.beta = Param::from_tensor(beta.clone());
            let mut host = BatchNorm2dConfig::new(c).init::<AD>(&device);
            host.gamma = Param::from_tensor(gamma);
            host.beta = Param::from_tensor(beta);
            let x = Tensor::<AD, 4>::random([b, c, h, w], Distribution::Normal(2.0, 3.0), &device).require_grad();
            let r = Tensor::<AD, 4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let expected = reference.forward(x.clone());
            let got = fast.norm(&host, x.clone());
            got.to_data().assert_approx_eq::<f32>(&expected.to_data(), Tolerance::absolute(1e-4));
            let ge = (expected * r.clone()).sum().backward();
            let gg = (got * r).sum().backward();
            let close = |a: Tensor<Flex, 1>, b: Tensor<Flex, 1>| {
                a.to_data().assert_approx_eq::<f32>(&b.to_data(), Tolerance::absolute(1e-3))
            };
            x.grad(&gg)
                .unwrap()
                .to_data()
                .assert_approx_eq::<f32>(&x.grad(&ge).unwrap().to_data(), Tolerance::absolute(1e-4));
            close(host.gamma.grad(&gg).unwrap(), reference.gamma.grad(&ge).unwrap());
            close(host.beta.grad(&gg).unwrap(), reference.beta.grad(&ge).unwrap());
            close(host.running_mean.value_sync().inner(), reference.running_mean.value_sync().inner());
            close(host.running_var.value_sync().inner(), reference.running_var.value_sync().inner());
        }
    }
}
