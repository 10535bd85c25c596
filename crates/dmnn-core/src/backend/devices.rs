//! Moving tensors and networks between devices of one backend, for data-parallel replicas.
//!
//! Burn 0.21 moves a tensor between two devices of a CubeCL backend with the runtime's
//! device-to-device copy (`ComputeClient::to_client_tensor`: a server `send` and `recv`), which
//! only cubecl-cuda implements: on WGPU any `to_device` between two devices panics with "not
//! implemented" (cubecl-runtime 0.10, `server/base.rs`), so Burn's multi-device strategy cannot
//! run there as it is. A copy through host memory works on every backend; it is what
//! [`to_device`] and [`fork_replica`] do where the devices differ, and nothing where they are
//! the same (a CPU's replicas share its one device: no copy at all). Upstream fix: a host
//! fallback in `to_client_tensor` when the server has no device-to-device copy, as `to_client`
//! already has (docs/decisions.md).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

/// `tensor` on `device`: itself where it is there already, else a copy through host memory.
pub fn to_device<B: Backend, const D: usize>(tensor: Tensor<B, D>, device: &B::Device) -> Tensor<B, D> {
    if &tensor.device() == device {
        return tensor;
    }
    Tensor::from_data(tensor.into_data(), device)
}

fn int_to_device<B: Backend, const D: usize>(tensor: Tensor<B, D, Int>, device: &B::Device) -> Tensor<B, D, Int> {
    if &tensor.device() == device {
        return tensor;
    }
    Tensor::from_data(tensor.into_data(), device)
}

fn bool_to_device<B: Backend, const D: usize>(tensor: Tensor<B, D, Bool>, device: &B::Device) -> Tensor<B, D, Bool> {
    if &tensor.device() == device {
        return tensor;
    }
    Tensor::from_data(tensor.into_data(), device)
}

/// A data-parallel replica of `module` on `device`, as Burn's `Module::fork` makes one (each
/// parameter moved, detached, keeping whether it requires a gradient) but through
/// [`to_device`]; the batch norms' running statistics stay where they are, on the main device,
/// where [`BatchNorm2d`](crate::layers::BatchNorm2d) keeps them (the main device's replica
/// updates them).
pub fn fork_replica<B: Backend, M: Module<B>>(module: M, device: &B::Device) -> M {
    module.map(&mut Fork { device: device.clone(), path: Vec::new() })
}

struct Fork<B: Backend> {
    device: B::Device,
    /// `(field, container)` of the modules entered.
    path: Vec<(String, String)>,
}

impl<B: Backend> Fork<B> {
    /// Whether the mapper is in a batch norm's running statistics: ours
    /// ([`BatchNorm2d`](crate::layers::BatchNorm2d) and the controllers'
    /// [`BatchNorm`](crate::gate::BatchNorm)), which keep them on the main device.
    fn in_running_statistics(&self) -> bool {
        self.path.last().is_some_and(|(field, container)| {
            matches!(container.as_str(), "Struct:BatchNorm2d" | "Struct:BatchNorm")
                && (field == "running_mean" || field == "running_var")
        })
    }
}

impl<B: Backend> ModuleMapper<B> for Fork<B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.in_running_statistics() {
            return param;
        }
        let device = &self.device;
        param.map(|tensor| {
            let grad = tensor.is_require_grad();
            let moved = to_device(tensor.detach(), device);
            if grad {
                moved.require_grad()
            } else {
                moved
            }
        })
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<B, D, Int>>) -> Param<Tensor<B, D, Int>> {
        let device = &self.device;
        param.map(|tensor| int_to_device(tensor, device))
    }

    fn map_bool<const D: usize>(&mut self, param: Param<Tensor<B, D, Bool>>) -> Param<Tensor<B, D, Bool>> {
        let device = &self.device;
        param.map(|tensor| bool_to_device(tensor, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DmnnConfig;
    use burn::backend::{Autodiff, Flex};
    use burn::module::ModuleVisitor;

    type AD = Autodiff<Flex>;

    struct Values(Vec<f32>, usize);

    impl ModuleVisitor<AD> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
            self.1 += usize::from(param.val().is_require_grad());
            self.0.extend(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }

    /// On one device a replica is the network itself: every value, and which of them train.
    #[test]
    fn a_replica_on_the_same_device_is_the_network() {
        let device = Default::default();
        let model = DmnnConfig::preset("dmnn_small").unwrap().init::<AD>(&device);
        let (mut before, mut after) = (Values(Vec::new(), 0), Values(Vec::new(), 0));
        model.visit(&mut before);
        fork_replica(model, &device).visit(&mut after);
        assert_eq!(before.0, after.0);
        assert_eq!(before.1, after.1);
        assert!(after.1 > 0, "parameters still require their gradients");
    }
}
