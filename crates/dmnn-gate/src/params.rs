//! Parameter counting as PyTorch does it: learnable tensors only.
//!
//! Burn's `Module::num_params` also counts batch norm's running mean and variance (they are
//! `RunningState`s visited like parameters); PyTorch calls those buffers. Every count in dmnn —
//! presets, reports, the `cost` command — uses [`param_count`], so they compare with torchvision.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Names of the batch-norm buffers that Burn visits like parameters.
const BUFFERS: [&str; 2] = ["running_mean", "running_var"];

#[derive(Default)]
struct LearnableCounter {
    path: Vec<String>,
    count: usize,
}

impl<B: Backend> ModuleVisitor<B> for LearnableCounter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let is_buffer = self.path.last().is_some_and(|n| BUFFERS.contains(&n.as_str()));
        if !is_buffer {
            self.count += param.shape().num_elements();
        }
    }
}

/// Number of learnable parameters of a module (batch-norm running statistics excluded).
pub fn param_count<B: Backend, M: Module<B>>(module: &M) -> usize {
    let mut counter = LearnableCounter::default();
    module.visit(&mut counter);
    counter.count
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::BatchNormConfig;

    #[test]
    fn batch_norm_counts_scale_and_shift_only() {
        let bn = BatchNormConfig::new(5).init::<Flex>(&Default::default());
        assert_eq!(bn.num_params(), 20); // Burn: gamma, beta, running mean and variance
        assert_eq!(param_count(&bn), 10);
    }
}
