//! The backend seam under the plain CPU backend (Flex), under `Autodiff<Flex>`, and under a
//! wrapped backend: Burn's `Dispatch` over Flex, whose name is `dispatch<flex>`.

use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use burn_dispatch::{Dispatch, DispatchDevice};
use burn_store::ModuleSnapshot;
use dmnn_core::{Dmnn, DmnnConfig, ExecutionMode, FastPath, FastPaths, ForwardOptions};

fn dispatch_flex() -> DispatchDevice {
    DispatchDevice::Flex(Default::default())
}

#[test]
fn the_probe_sees_through_wrappers_and_autodiff() {
    let flex = FastPaths::probe::<Flex>(&Default::default());
    let inference: Vec<FastPath> = FastPath::ALL.into_iter().filter(|p| !p.is_training()).collect();
    assert_eq!(flex.iter().collect::<Vec<_>>(), inference, "Flex in inference gets every inference fast path");
    let training = FastPaths::probe::<Autodiff<Flex>>(&Default::default());
    assert_eq!(
        training.iter().collect::<Vec<_>>(),
        vec![FastPath::MatmulConv, FastPath::HostBatchNorm, FastPath::GroupedSparse],
        "training gets the matmul convolution, the host batch norm and grouped sparse execution"
    );
    assert_eq!(Dispatch::name(&dispatch_flex()), "dispatch<flex>");
    assert_eq!(FastPaths::probe::<Dispatch>(&dispatch_flex()), flex, "a wrapped Flex is still Flex");
    let autodiff = DispatchDevice::autodiff(dispatch_flex());
    assert_eq!(FastPaths::probe::<Dispatch>(&autodiff), training);
}

/// The same weights on another backend (through burn-store's snapshots).
fn on<B2: Backend>(model: &Dmnn<Flex>, device: &B2::Device) -> Dmnn<B2> {
    let mut other = model.config.init::<B2>(device);
    let result = other.apply(model.collect(None, None, true), None, None, true);
    assert!(result.errors.is_empty() && result.missing.is_empty(), "{:?} {:?}", result.errors, result.missing);
    other
}

#[test]
fn a_wrapped_backend_computes_what_flex_computes() {
    let config = DmnnConfig::preset("dmnn_small").unwrap();
    let flex_model = config.init::<Flex>(&Default::default());
    let x = Tensor::<Flex, 4>::random([5, 1, 28, 28], Distribution::Normal(0.0, 1.0), &Default::default());
    let gates: Vec<Tensor<Flex, 2>> = (0..flex_model.num_blocks())
        .map(|_| Tensor::random([5, 2], Distribution::Bernoulli(0.6), &Default::default()))
        .collect();
    let expected =
        flex_model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates.clone()));

    let device = dispatch_flex();
    let model = on::<Dispatch>(&flex_model, &device);
    let x = Tensor::<Dispatch, 4>::from_data(x.into_data(), &device);
    let gates: Vec<Tensor<Dispatch, 2>> =
        gates.into_iter().map(|g| Tensor::from_data(g.into_data(), &device)).collect();
    let sparse = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Sparse).with_gates(gates.clone()));
    let masked = model.forward_with(x.clone(), ForwardOptions::mode(ExecutionMode::Masked).with_gates(gates.clone()));
    let sparse: TensorData = sparse.logits.into_data();
    sparse.assert_eq(&masked.logits.into_data(), true);
    sparse.assert_eq(&expected.logits.into_data(), true);
    // and with every fast path off, still sparse == masked to the bit
    let off = |mode| ForwardOptions::mode(mode).with_gates(gates.clone()).with_fast_paths(FastPaths::NONE);
    let sparse = model.forward_with(x.clone(), off(ExecutionMode::Sparse)).logits.into_data();
    sparse.assert_eq(&model.forward_with(x, off(ExecutionMode::Masked)).logits.into_data(), true);
}
