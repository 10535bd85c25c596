//! The training fast paths of the backend seam: autodiff operations for Burn's `Autodiff<I>`
//! over any inner backend `I`, reached from code generic over `B: Backend`.
//!
//! The model code is generic over `B: Backend`; the operations exist for `Autodiff<I>`.
//! [`AutodiffKernels::of`] bridges the two: where the backend is known to be an autodiff
//! backend (the training step), it checks that `B` is `Autodiff<B::InnerBackend>` and hands the
//! pass functions that cast the tensors to that type and back (a checked `Any` downcast, no
//! `unsafe`).

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::im2col::ConvGeometry;
use super::train_conv::matmul_conv2d;
use super::train_norm::host_batch_norm;
use crate::layers::BatchNorm2d;

/// A batch's normalised output and its per-channel mean and biased variance (no gradient).
pub(crate) type NormOutput<B> = (Tensor<B, 4>, Tensor<B, 1>, Tensor<B, 1>);

/// The training operations of backend `B`: present when `B` is Burn's `Autodiff<I>` (without
/// checkpointing) over some inner backend `I`.
pub struct AutodiffKernels<B: Backend> {
    conv: fn(&Conv2d<B>, Tensor<B, 4>, ConvGeometry) -> Tensor<B, 4>,
    norm: fn(&BatchNorm2d<B>, Tensor<B, 4>) -> NormOutput<B>,
}

impl<B: Backend> Clone for AutodiffKernels<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for AutodiffKernels<B> {}

impl<B: Backend> core::fmt::Debug for AutodiffKernels<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AutodiffKernels")
    }
}

impl<B: AutodiffBackend> AutodiffKernels<B> {
    /// The training operations of `B`, if `B` is `Autodiff<B::InnerBackend>`.
    pub fn of() -> Option<Self> {
        (TypeId::of::<B>() == TypeId::of::<Autodiff<B::InnerBackend>>())
            .then_some(Self { conv: conv_autodiff::<B>, norm: norm_autodiff::<B> })
    }
}

impl<B: Backend> AutodiffKernels<B> {
    /// `conv.forward(x)` with a backward pass of matrix products.
    pub(crate) fn conv(&self, conv: &Conv2d<B>, x: Tensor<B, 4>, geometry: ConvGeometry) -> Tensor<B, 4> {
        (self.conv)(conv, x, geometry)
    }

    /// A training batch norm computed on the host in a few passes, forward and backward.
    pub(crate) fn norm(&self, bn: &BatchNorm2d<B>, x: Tensor<B, 4>) -> NormOutput<B> {
        (self.norm)(bn, x)
    }
}

/// `value` as the type it is (a checked downcast: `T` and `U` are the same type).
fn cast<T: 'static, U: 'static>(value: T) -> U {
    *(Box::new(value) as Box<dyn Any>).downcast::<U>().expect("the backend type was checked")
}

fn conv_autodiff<B: AutodiffBackend>(conv: &Conv2d<B>, x: Tensor<B, 4>, g: ConvGeometry) -> Tensor<B, 4> {
    let x: Tensor<Autodiff<B::InnerBackend>, 4> = cast(x);
    let weight: Tensor<Autodiff<B::InnerBackend>, 4> = cast(conv.weight.val());
    cast(matmul_conv2d(x, weight, g))
}

fn norm_autodiff<B: AutodiffBackend>(bn: &BatchNorm2d<B>, x: Tensor<B, 4>) -> NormOutput<B> {
    let x: Tensor<Autodiff<B::InnerBackend>, 4> = cast(x);
    let gamma: Tensor<Autodiff<B::InnerBackend>, 1> = cast(bn.gamma.val());
    let beta: Tensor<Autodiff<B::InnerBackend>, 1> = cast(bn.beta.val());
    let (y, mean, var) = host_batch_norm(x, gamma, beta, bn.epsilon);
    (cast(y), cast(mean), cast(var))
}

/// The values of an inner tensor as `f32` on the host: the backend's own buffer where it hands
/// it over (burn-flex does for a tensor nothing else holds), read in place.
pub(crate) fn host<I: Backend, const D: usize>(t: Tensor<I, D>) -> HostValues {
    let data = t.into_data().convert::<f32>();
    match data.as_slice::<f32>() {
        Ok(_) => HostValues::Data(data),
        // a buffer not aligned for f32
        Err(_) => HostValues::Copied(data.iter::<f32>().collect()),
    }
}

/// A tensor's `f32` values on the host ([`host`]): its data, or a copy where the data's bytes
/// cannot be read as `f32` in place (`TensorData::into_vec` copies every buffer whose alignment
/// is not `f32`'s, as burn-flex's are).
pub(crate) enum HostValues {
    Data(TensorData),
    Copied(Vec<f32>),
}

impl core::ops::Deref for HostValues {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match self {
            Self::Data(data) => data.as_slice::<f32>().expect("checked by `host`"),
            Self::Copied(values) => values,
        }
    }
}

impl core::ops::DerefMut for HostValues {
    fn deref_mut(&mut self) -> &mut [f32] {
        match self {
            Self::Data(data) => data.as_mut_slice::<f32>().expect("checked by `host`"),
            Self::Copied(values) => values,
        }
    }
}

impl HostValues {
    /// The values as a tensor of `shape` on `device`: the data handed back where it was read in
    /// place (no copy on burn-flex).
    pub(crate) fn into_tensor<I: Backend, const D: usize>(self, shape: [usize; D], device: &I::Device) -> Tensor<I, D> {
        match self {
            Self::Data(data) => Tensor::<I, D>::from_data(data, device).reshape(shape),
            Self::Copied(values) => self::device(values, shape, device),
        }
    }
}

/// Host values as an inner tensor.
pub(crate) fn device<I: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &I::Device,
) -> Tensor<I, D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
