//! Named models: presets are data fed to one configuration path.
//!
//! | name | blocks | paths | input |
//! |---|---|---|---|
//! | `resnet18`, `resnet34` | basic, \[2,2,2,2\] / \[3,4,6,3\] | 1, no controller | 224 px, 1000 classes |
//! | `resnet50`, `resnet101` | bottleneck, \[3,4,6,3\] / \[3,4,23,3\] | 1, no controller | 224 px |
//! | `dmnn50`, `dmnn101` | bottleneck | 2 x 40·2^stage (ResNeXt 2x40d shape) | 224 px |
//! | `dmnn50_4x24d` | bottleneck, \[3,4,6,3\] | 4 x 24·2^stage | 224 px |
//! | `dmnn50_2x32d` | bottleneck, \[3,4,6,3\] | 2 x 32·2^stage (ResNet-50's width, for init from it) | 224 px |
//! | `dmnn_small` | basic, \[2,2,2\], widths 16/32/64, stem 3x3/2 | 2 | 28 px, 1 channel, 10 classes |
//! | `resnet_small` | as `dmnn_small`, one path, no controller | 1 | 28 px |
//! | `resnet_small_thin` | `resnet_small` at ~0.7 of its MACs | 1 | 28 px |
//!
//! The small presets are sized for training on a 2-core CPU in minutes (Fashion-MNIST).

use dmnn_gate::ControllerConfig;

use crate::block::BlockKind;
use crate::config::{DmnnConfig, StemKind};
use crate::error::UnknownModel;

/// Blocks per stage of ResNet-18.
pub const RESNET18_BLOCKS: [usize; 4] = [2, 2, 2, 2];
/// Blocks per stage of ResNet-34 and ResNet-50.
pub const RESNET50_BLOCKS: [usize; 4] = [3, 4, 6, 3];
/// Blocks per stage of ResNet-101.
pub const RESNET101_BLOCKS: [usize; 4] = [3, 4, 23, 3];
/// Stage widths of the ImageNet ResNets.
pub const RESNET_WIDTHS: [usize; 4] = [64, 128, 256, 512];
/// Blocks per stage of the small presets.
pub const SMALL_BLOCKS: [usize; 3] = [2, 2, 2];
/// Stage widths of the small presets.
pub const SMALL_WIDTHS: [usize; 3] = [16, 32, 64];
/// Width factor of `resnet_small_thin`: MACs scale with its square (0.84² ≈ 0.7).
pub const SMALL_THIN_FACTOR: f64 = 0.84;

fn imagenet(name: &str, block: BlockKind, depths: &[usize]) -> DmnnConfig {
    DmnnConfig::new(name.to_string(), 1000, block, depths.to_vec(), RESNET_WIDTHS.to_vec())
}

fn dmnn(name: &str, depths: &[usize], num_paths: usize, path_base: usize) -> DmnnConfig {
    imagenet(name, BlockKind::Bottleneck, depths)
        .with_num_paths(num_paths)
        .with_path_widths(Some((0..4).map(|s| path_base << s).collect()))
        .with_controller(Some(ControllerConfig::new()))
}

fn small(name: &str) -> DmnnConfig {
    DmnnConfig::new(name.to_string(), 10, BlockKind::Basic, SMALL_BLOCKS.to_vec(), SMALL_WIDTHS.to_vec())
        .with_in_channels(1)
        .with_stem(StemKind::Conv3x3 { stride: 2 })
        .with_stem_width(SMALL_WIDTHS[0])
        .with_image_size(28)
}

/// How a preset is built from its name.
type Build = fn(&str) -> DmnnConfig;

/// Every preset: its name and how it is built from the name (the one list of presets).
const TABLE: [(&str, Build); 11] = [
    ("resnet18", |n| imagenet(n, BlockKind::Basic, &RESNET18_BLOCKS)),
    ("resnet34", |n| imagenet(n, BlockKind::Basic, &RESNET50_BLOCKS)),
    ("resnet50", |n| imagenet(n, BlockKind::Bottleneck, &RESNET50_BLOCKS)),
    ("resnet101", |n| imagenet(n, BlockKind::Bottleneck, &RESNET101_BLOCKS)),
    ("dmnn50", |n| dmnn(n, &RESNET50_BLOCKS, 2, 40)),
    ("dmnn50_4x24d", |n| dmnn(n, &RESNET50_BLOCKS, 4, 24)),
    ("dmnn50_2x32d", |n| dmnn(n, &RESNET50_BLOCKS, 2, 32)),
    ("dmnn101", |n| dmnn(n, &RESNET101_BLOCKS, 2, 40)),
    ("dmnn_small", |n| small(n).with_num_paths(2).with_controller(Some(ControllerConfig::new().with_hidden_size(16)))),
    ("resnet_small", small),
    ("resnet_small_thin", |n| small(n).scale_width(SMALL_THIN_FACTOR)),
];

/// Names of all presets, in the order of the module docs.
pub const PRESETS: [&str; TABLE.len()] = {
    let mut names = [""; TABLE.len()];
    let mut i = 0;
    while i < TABLE.len() {
        names[i] = TABLE[i].0;
        i += 1;
    }
    names
};

impl DmnnConfig {
    /// The configuration of a named preset (see the [module docs](crate::presets)).
    ///
    /// # Errors
    /// If `name` is not one of [`PRESETS`].
    pub fn preset(name: &str) -> Result<Self, UnknownModel> {
        TABLE
            .iter()
            .find(|(preset, _)| *preset == name)
            .map(|(preset, build)| build(preset))
            .ok_or_else(|| UnknownModel { name: name.to_string(), known: PRESETS.to_vec() })
    }
}
