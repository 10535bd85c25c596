//! The analytic cost model (DESIGN §6).
//!
//! MACs count the multiply-accumulates of convolutions and linear layers (one multiply-add = 1;
//! the paper calls them FLOPs). Batch norm, ReLU, pooling and additions are not counted. The
//! auxiliary category heads are training-only: counted in `params_aux`, never in inference MACs.

use serde::{Deserialize, Serialize};

use crate::config::DmnnConfig;

/// The cost of one gated block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCost {
    /// Stage the block belongs to (0-based).
    pub stage: usize,
    /// Number of paths.
    pub num_paths: usize,
    /// MACs of one path for one sample.
    pub path_macs: u64,
    /// MACs of the shortcut (projection) for one sample; part of the ungated MACs.
    pub shortcut_macs: u64,
    /// MACs of the block's controller for one sample; part of the ungated MACs.
    pub controller_macs: u64,
}

/// Parameters and MACs of a model at one input size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostReport {
    /// Model name.
    pub model: String,
    /// Input `[height, width]` the MACs are counted for.
    pub image_size: [usize; 2],
    /// Parameters of the backbone: stem, blocks (every path, per-path batch norms), shortcuts,
    /// classifier.
    pub params_backbone: usize,
    /// Parameters of the gate controllers used at inference (embeddings, recurrent cell, logits).
    pub params_controllers: usize,
    /// Parameters of the auxiliary category heads (training only).
    pub params_aux: usize,
    /// MACs of the stem for one sample.
    pub stem_macs: u64,
    /// MACs of the classifier for one sample.
    pub head_macs: u64,
    /// Per-block costs, in network order.
    pub blocks: Vec<BlockCost>,
}

impl CostReport {
    /// Inference parameters: backbone and controllers, without the auxiliary heads.
    pub fn params(&self) -> usize {
        self.params_backbone + self.params_controllers
    }

    /// Parameters held in training: inference parameters and auxiliary heads.
    pub fn params_training(&self) -> usize {
        self.params() + self.params_aux
    }

    /// MACs of all controllers for one sample.
    pub fn controller_macs(&self) -> u64 {
        self.blocks.iter().map(|b| b.controller_macs).sum()
    }

    /// MACs that run whatever the gates say: stem, shortcuts, controllers, classifier.
    pub fn ungated_macs(&self) -> u64 {
        self.stem_macs + self.head_macs + self.blocks.iter().map(|b| b.shortcut_macs + b.controller_macs).sum::<u64>()
    }

    /// MACs of all paths of all blocks for one sample.
    pub fn gated_macs_full(&self) -> u64 {
        self.blocks.iter().map(|b| b.path_macs * b.num_paths as u64).sum()
    }

    /// MACs of one sample with every path on (controllers included).
    pub fn macs_full(&self) -> u64 {
        self.ungated_macs() + self.gated_macs_full()
    }

    /// MACs of one sample whose block `l` has `open[l]` paths on.
    pub fn macs_with_open_paths(&self, open: &[usize]) -> u64 {
        assert_eq!(open.len(), self.blocks.len(), "open path counts: one per block");
        self.ungated_macs() + self.blocks.iter().zip(open).map(|(b, &n)| b.path_macs * n as u64).sum::<u64>()
    }
}

impl DmnnConfig {
    /// The analytic cost of the model for `[height, width]` inputs.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`DmnnConfig::validate`]).
    pub fn cost(&self, image_size: [usize; 2]) -> CostReport {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        self.cost_unchecked(image_size)
    }

    /// [`DmnnConfig::cost`] without validating first: for [`DmnnConfig::validate`], which
    /// counts the parameters after checking every count it multiplies.
    pub(crate) fn cost_unchecked(&self, image_size: [usize; 2]) -> CostReport {
        let [height, width] = image_size;
        let stem = self.stem.conv();
        let k = stem.kernel;
        let stem_hw = stem.output_size(height) * stem.output_size(width);
        let stem_macs = (self.in_channels * self.stem_width * k * k * stem_hw) as u64;
        let stem_params = self.in_channels * self.stem_width * k * k + 2 * self.stem_width;

        let mut params_backbone = stem_params;
        let mut params_controllers = 0;
        let mut params_aux = 0;
        let mut blocks = Vec::new();
        let [mut h, mut w] = self.stem_output_size(height, width);
        let configs = self.blocks_unchecked();
        let specs = Self::specs_of(&configs);
        for ((stage, block), spec) in configs.into_iter().zip(specs) {
            params_backbone += block.param_count();
            let controller_macs = match &self.controller {
                Some(c) => {
                    params_controllers += c.block_param_count(block.channels_in, block.num_paths);
                    if c.category_head && spec.aux_head {
                        params_aux += c.aux_param_count(self.num_classes);
                    }
                    c.block_macs(block.channels_in, block.num_paths)
                }
                None => 0,
            };
            blocks.push(BlockCost {
                stage,
                num_paths: block.num_paths,
                path_macs: block.path_macs(h, w),
                shortcut_macs: block.shortcut_macs(h, w),
                controller_macs,
            });
            [h, w] = block.output_size(h, w);
        }
        if let Some(c) = &self.controller {
            params_controllers += c.recurrent_param_count();
        }
        let features = self.feature_channels();
        params_backbone += features * self.num_classes + self.num_classes;
        CostReport {
            model: self.name.clone(),
            image_size,
            params_backbone,
            params_controllers,
            params_aux,
            stem_macs,
            head_macs: (features * self.num_classes) as u64,
            blocks,
        }
    }
}
