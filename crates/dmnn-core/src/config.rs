//! The network configuration: one public, serialisable [`DmnnConfig`] describes every preset, so
//! a checkpoint always carries the architecture that made it.

use burn::config::Config;
use dmnn_gate::{ControllerConfig, GatedBlockSpec};
use serde::{Deserialize, Serialize};

use crate::block::{BlockKind, MultiPathBlockConfig};
use crate::error::ConfigError;
use crate::layers::conv_out_size;

/// Kernel size, stride and padding (on every side) of a square window: a convolution or a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Side of the kernel.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on every side.
    pub padding: usize,
}

impl Window {
    /// Output size along one axis of an input of `size`.
    pub fn output_size(&self, size: usize) -> usize {
        conv_out_size(size, self.kernel, self.stride, self.padding)
    }
}

/// The stem in front of the first stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StemKind {
    /// torchvision's ResNet stem: 7x7 convolution with stride 2, batch norm, ReLU, 3x3 max pool
    /// with stride 2 (for 224 px images).
    ImageNet,
    /// One 3x3 convolution with the given stride, batch norm and ReLU, no pooling (for 28–32 px
    /// images).
    Conv3x3 {
        /// Stride of the convolution.
        stride: usize,
    },
}

impl StemKind {
    /// The stem convolution: 7x7/2 padding 3 for the ImageNet stem, 3x3 padding 1 with the
    /// given stride for the small one.
    pub fn conv(&self) -> Window {
        match *self {
            Self::ImageNet => Window { kernel: 7, stride: 2, padding: 3 },
            Self::Conv3x3 { stride } => Window { kernel: 3, stride, padding: 1 },
        }
    }

    /// The stem max pool: 3x3/2 padding 1 for the ImageNet stem (torchvision's ResNet), none for
    /// the small one.
    pub fn pool(&self) -> Option<Window> {
        match self {
            Self::ImageNet => Some(Window { kernel: 3, stride: 2, padding: 1 }),
            Self::Conv3x3 { .. } => None,
        }
    }
}

/// Configuration of a DMNN-ResNet (and, with one path and no controller, of a plain ResNet).
#[derive(Config, Debug)]
pub struct DmnnConfig {
    /// Name of the model (the preset it came from, or `custom`).
    pub name: String,
    /// Number of classes of the classifier.
    pub num_classes: usize,
    /// Residual unit of every block.
    pub block: BlockKind,
    /// Number of blocks in each stage.
    pub stage_depths: Vec<usize>,
    /// Inner width of a stage's blocks with all paths together, as in a ResNet (64, 128, 256,
    /// 512 for ResNet-50); blocks output `expansion · width` channels.
    pub stage_widths: Vec<usize>,
    /// Number of gated paths `N` per block.
    #[config(default = 1)]
    pub num_paths: usize,
    /// Width of one path in each stage; `None` splits `stage_widths` evenly into `num_paths`.
    #[config(default = "None")]
    pub path_widths: Option<Vec<usize>>,
    /// Channels of the input images.
    #[config(default = 3)]
    pub in_channels: usize,
    /// The stem.
    #[config(default = "StemKind::ImageNet")]
    pub stem: StemKind,
    /// Output channels of the stem.
    #[config(default = 64)]
    pub stem_width: usize,
    /// Gate controllers; `None` makes a static network (every path always on).
    #[config(default = "None")]
    pub controller: Option<ControllerConfig>,
    /// Input size the model is meant for (used by reports when no size is given).
    #[config(default = 224)]
    pub image_size: usize,
}

impl DmnnConfig {
    /// Checks the invariants.
    ///
    /// # Errors
    /// The first invariant that does not hold, naming the offending values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        /// The widest layer a configuration may ask for (channels, classes, controller width), and
        /// the largest input side.
        const MAX_WIDTH: usize = 1 << 16;
        /// The most parameters a configuration may have (with the auxiliary heads).
        const MAX_PARAMS: usize = 1 << 31;
        /// The most residual blocks of a configuration.
        const MAX_BLOCKS: usize = 1 << 12;
        let model = || self.name.clone();
        let stages = self.stage_depths.len();
        if stages == 0 {
            return Err(ConfigError::EmptyStages { model: model() });
        }
        if self.stage_widths.len() != stages {
            return Err(ConfigError::StageCount {
                model: model(),
                field: "stage_widths",
                len: self.stage_widths.len(),
                stages,
            });
        }
        if self.num_paths == 0 || self.num_classes == 0 || self.in_channels == 0 || self.stem_width == 0 {
            return Err(ConfigError::NotPositive {
                model: model(),
                values: format!(
                    "num_paths={}, num_classes={}, in_channels={}, stem_width={}",
                    self.num_paths, self.num_classes, self.in_channels, self.stem_width
                ),
            });
        }
        if let StemKind::Conv3x3 { stride: 0 } = self.stem {
            return Err(ConfigError::StemStride { model: model() });
        }
        match &self.path_widths {
            Some(p) if p.len() != stages => {
                return Err(ConfigError::StageCount { model: model(), field: "path_widths", len: p.len(), stages });
            }
            Some(p) if p.contains(&0) => return Err(ConfigError::PathWidths { model: model(), widths: p.clone() }),
            Some(_) => {}
            None => {
                for &width in &self.stage_widths {
                    if width == 0 || width % self.num_paths != 0 {
                        return Err(ConfigError::Indivisible { model: model(), width, num_paths: self.num_paths });
                    }
                }
            }
        }
        if self.controller.as_ref().is_some_and(|c| c.hidden_size == 0) {
            return Err(ConfigError::ControllerWidth { model: model() });
        }
        if self.image_size == 0 {
            return Err(ConfigError::ImageSize { model: model(), size: 0 });
        }
        if self.image_size > MAX_WIDTH {
            return Err(ConfigError::TooLarge {
                model: model(),
                what: format!("image_size={}", self.image_size),
                limit: format!("{MAX_WIDTH} pixels"),
            });
        }
        // the sizes are checked before any arithmetic on them can overflow, and before allocation
        let widest = [self.stem_width, self.num_classes, self.controller.as_ref().map_or(0, |c| c.hidden_size)]
            .into_iter()
            .chain(self.stage_widths.iter().copied())
            .chain(self.path_widths.iter().flatten().copied())
            .max()
            .unwrap_or(0);
        if widest > MAX_WIDTH || self.in_channels > MAX_WIDTH {
            return Err(ConfigError::TooLarge {
                model: model(),
                what: format!("a width of {}", widest.max(self.in_channels)),
                limit: format!("{MAX_WIDTH} channels"),
            });
        }
        let blocks: usize = self.stage_depths.iter().fold(0, |sum, &d| sum.saturating_add(d));
        if blocks > MAX_BLOCKS {
            return Err(ConfigError::TooLarge {
                model: model(),
                what: format!("a depth of {blocks} blocks"),
                limit: format!("{MAX_BLOCKS} blocks"),
            });
        }
        let params = self.cost_unchecked([1, 1]).params_training();
        if params > MAX_PARAMS {
            return Err(ConfigError::TooLarge {
                model: model(),
                what: format!("{params} parameters"),
                limit: format!("{MAX_PARAMS} parameters (8 GiB of f32)"),
            });
        }
        Ok(())
    }

    /// The spatial size after the stem for an input of `[height, width]`.
    pub fn stem_output_size(&self, height: usize, width: usize) -> [usize; 2] {
        let (conv, pool) = (self.stem.conv(), self.stem.pool());
        let after = |size: usize| {
            let size = conv.output_size(size);
            pool.map_or(size, |p| p.output_size(size))
        };
        [after(height), after(width)]
    }

    /// Path width of stage `stage`.
    pub fn path_width(&self, stage: usize) -> usize {
        match &self.path_widths {
            Some(p) => p[stage],
            None => self.stage_widths[stage] / self.num_paths,
        }
    }

    /// Output channels of the last stage (the classifier's input).
    pub fn feature_channels(&self) -> usize {
        self.block.expansion() * self.stage_widths[self.stage_widths.len() - 1]
    }

    /// The configuration of every block, in network order, as `(stage, block config)`.
    ///
    /// # Panics
    /// If the configuration is invalid (see [`DmnnConfig::validate`]).
    pub fn blocks(&self) -> Vec<(usize, MultiPathBlockConfig)> {
        if let Err(e) = self.validate() {
            panic!("{e}");
        }
        self.blocks_unchecked()
    }

    /// [`DmnnConfig::blocks`] of a configuration whose counts are known to be positive (what
    /// [`DmnnConfig::validate`] itself measures the network with).
    pub(crate) fn blocks_unchecked(&self) -> Vec<(usize, MultiPathBlockConfig)> {
        let mut channels_in = self.stem_width;
        let mut blocks = Vec::new();
        for (stage, (&depth, &width)) in self.stage_depths.iter().zip(&self.stage_widths).enumerate() {
            let channels_out = self.block.expansion() * width;
            for b in 0..depth {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let config = MultiPathBlockConfig::new(
                    self.block,
                    channels_in,
                    channels_out,
                    self.num_paths,
                    self.path_width(stage),
                )
                .with_stride(stride);
                blocks.push((stage, config));
                channels_in = channels_out;
            }
        }
        blocks
    }

    /// The controllers' view of a list of blocks from [`DmnnConfig::blocks`].
    pub(crate) fn specs_of(blocks: &[(usize, MultiPathBlockConfig)]) -> Vec<GatedBlockSpec> {
        blocks
            .iter()
            .enumerate()
            .map(|(l, (stage, block))| GatedBlockSpec {
                channels_in: block.channels_in,
                aux_head: blocks.get(l + 1).is_none_or(|(next, _)| next != stage),
            })
            .collect()
    }

    /// The one-path ResNet a multi-path configuration is cut from (same depth, stage widths and
    /// stem; no controllers): what [`crate::weights::init_from_resnet`] slices.
    pub fn source_resnet(&self) -> Self {
        let mut resnet = self.clone();
        resnet.num_paths = 1;
        resnet.path_widths = None;
        resnet.controller = None;
        resnet.name = format!("{}-source", self.name);
        resnet
    }

    /// Whether the network has gate controllers.
    pub fn is_dynamic(&self) -> bool {
        self.controller.is_some()
    }

    /// The same network with every stage width (and path width) scaled by `factor`, rounded to
    /// a multiple of the number of paths: a static baseline of about the same MACs as a
    /// dynamic model at some rate is `scale_width(rate.sqrt())` without the controller.
    pub fn scale_width(mut self, factor: f64) -> Self {
        let n = self.num_paths;
        let round = |w: usize, m: usize| (((w as f64 * factor) / m as f64).round() as usize).max(1) * m;
        self.stage_widths = self.stage_widths.iter().map(|&w| round(w, n)).collect();
        self.stem_width = round(self.stem_width, 1);
        if let Some(p) = &self.path_widths {
            self.path_widths = Some(p.iter().map(|&w| round(w, 1)).collect());
        }
        self
    }
}
