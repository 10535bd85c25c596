//! An inference batch norm, and the ReLU after it, in one pass over the host buffer
//! ([`FastPath::HostAffine`](super::FastPath::HostAffine)).
//!
//! In inference a batch norm is a per-channel affine, `x · scale + shift`. As Burn tensor
//! operations on burn-flex that is two broadcast passes, each writing a new buffer, and the ReLU
//! that follows most of them a third; a ResNet-50 pass spent some 9 % of its time in them. Here
//! the three are one pass over the activation, in place where burn-flex hands its buffer over,
//! with the same arithmetic per value (`x · scale`, then `+ shift`, then `max(0)` as burn-flex's
//! ReLU computes it), so the values are the tensor operations', bit for bit.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use super::autodiff::host;

/// Values per rayon task.
const VALUES_PER_TASK: usize = 1 << 15;

/// Whether [`host_affine`] takes `x`: `f32` values.
pub(crate) fn host_affine_fits<B: Backend>(x: &Tensor<B, 4>) -> bool {
    x.dtype() == DType::F32
}

/// `x · scale + shift` per channel, then `max(0)` if `relu`.
///
/// # Shapes
/// - `x`: `[batch_size, channels, height, width]`
/// - `scale`, `shift`: `[channels]`
/// - output: same as `x`
pub(crate) fn host_affine<B: Backend>(
    x: Tensor<B, 4>,
    scale: Tensor<B, 1>,
    shift: Tensor<B, 1>,
    relu: bool,
) -> Tensor<B, 4> {
    let dims = x.dims();
    let [_, channels, height, width] = dims;
    let plane = height * width;
    let device = x.device();
    let (scale, shift) = (host(scale), host(shift));
    let mut values = host(x);
    if let Some(planes_per_task) = VALUES_PER_TASK.checked_div(plane).map(|n| n.max(1)) {
        values.par_chunks_mut(plane * planes_per_task).enumerate().for_each(|(task, planes)| {
            for (i, plane) in planes.chunks_exact_mut(plane).enumerate() {
                let c = (task * planes_per_task + i) % channels;
                let (s, t) = (scale[c], shift[c]);
                if relu {
                    plane.iter_mut().for_each(|v| *v = (*v * s + t).max(0.0));
                } else {
                    plane.iter_mut().for_each(|v| *v = *v * s + t);
                }
            }
        });
    }
    values.into_tensor(dims, &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::activation::relu;
    use burn::tensor::Distribution;

    fn bits(t: Tensor<Flex, 4>) -> Vec<u32> {
        t.into_data().to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// The tensor operations' values, bit for bit, with and without the ReLU, on planes larger
    /// and smaller than a task.
    #[test]
    fn equals_the_tensor_operations_bit_for_bit() {
        let device = Default::default();
        for [batch, channels, side] in [[2, 3, 5], [3, 64, 56], [1, 7, 1], [4, 512, 7]] {
            let x = Tensor::<Flex, 4>::random([batch, channels, side, side], Distribution::Normal(0.0, 1.0), &device);
            let scale = Tensor::<Flex, 1>::random([channels], Distribution::Normal(1.0, 0.5), &device);
            let shift = Tensor::<Flex, 1>::random([channels], Distribution::Normal(0.0, 0.5), &device);
            let broadcast = |v: &Tensor<Flex, 1>| v.clone().reshape([1, channels, 1, 1]);
            let expected = x.clone() * broadcast(&scale) + broadcast(&shift);
            let name = format!("{batch}x{channels}x{side}x{side}");
            let affine = host_affine(x.clone(), scale.clone(), shift.clone(), false);
            assert_eq!(bits(affine), bits(expected.clone()), "{name}");
            let with_relu = host_affine(x, scale, shift, true);
            assert_eq!(bits(with_relu), bits(relu(expected)), "{name} with ReLU");
        }
    }
}
