//! A synthetic tree in ImageNet's layout (`train/<wnid>/*.JPEG`, `val/<wnid>/*.JPEG`) of real JPEG
//! files: what `scripts/gpu-check.sh` trains on where no dataset is at hand, so that the
//! measurement includes JPEG decoding, resizing and cropping as on ImageNet itself.
//!
//! Each class is a colour and a stripe orientation under noise, on images of varying size and
//! aspect (as ImageNet's are); a network learns the classes within a few hundred steps, so a loss
//! that does not fall is a signal too.

use std::path::{Path, PathBuf};

use image::{ImageFormat, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::DataError;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticImagenet {
    /// Number of classes (wnids `n90000000`, `n90000001`, ...).
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Shortest and longest side of an image, pixels.
    pub sides: (u32, u32),
    /// Seed of every pixel.
    pub seed: u64,
}

impl Default for SyntheticImagenet {
    fn default() -> Self {
        Self { classes: 10, train_per_class: 100, val_per_class: 10, sides: (200, 400), seed: 0 }
    }
}

impl SyntheticImagenet {
    /// The wnid of class `k`.
    pub fn wnid(k: usize) -> String {
        format!("n{:08}", 90_000_000 + k)
    }

    /// Writes the tree under `root`, which must not exist or be empty; returns the number of
    /// files written. Files are written in parallel.
    ///
    /// # Errors
    /// A `root` that holds files, a zero count, or a file that cannot be written.
    pub fn write(&self, root: &Path) -> Result<usize, DataError> {
        if self.classes == 0 || self.train_per_class == 0 || self.val_per_class == 0 {
            return Err(DataError::format(root, "a synthetic tree needs at least one class and one image per split"));
        }
        if self.sides.0 < 8 || self.sides.0 > self.sides.1 {
            return Err(DataError::format(root, format!("image sides {:?} are not 8 <= min <= max", self.sides)));
        }
        if std::fs::read_dir(root).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(DataError::format(
                root,
                "refusing to write a synthetic tree into a directory that holds files",
            ));
        }
        let mut files: Vec<(PathBuf, usize, u64)> = Vec::new();
        for (split, per_class) in [("train", self.train_per_class), ("val", self.val_per_class)] {
            for k in 0..self.classes {
                let dir = root.join(split).join(Self::wnid(k));
                std::fs::create_dir_all(&dir).map_err(DataError::io(&dir))?;
                for i in 0..per_class {
                    let name = format!("{}_{i}.JPEG", Self::wnid(k));
                    let seed = self.seed ^ (files.len() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    files.push((dir.join(name), k, seed));
                }
            }
        }
        files.par_iter().try_for_each(|(path, class, seed)| {
            self.image(*class, *seed)
                .save_with_format(path, ImageFormat::Jpeg)
                .map_err(|e| DataError::format(path, format!("writing a JPEG: {e}")))
        })?;
        Ok(files.len())
    }

    /// One image of class `class`.
    fn image(&self, class: usize, seed: u64) -> RgbImage {
        let mut rng = StdRng::seed_from_u64(seed);
        let (lo, hi) = self.sides;
        let (w, h) = (rng.random_range(lo..=hi), rng.random_range(lo..=hi));
        // the class: a hue and a stripe angle
        let hue = class as f32 / self.classes as f32;
        let angle = std::f32::consts::PI * (class % 4) as f32 / 4.0;
        let base = hue_to_rgb(hue);
        let (dx, dy) = (angle.cos(), angle.sin());
        let period = rng.random_range(12.0..24.0f32);
        RgbImage::from_fn(w, h, |x, y| {
            let stripe = 0.5 + 0.5 * ((x as f32 * dx + y as f32 * dy) * std::f32::consts::TAU / period).sin();
            let noise: f32 = rng.random_range(-0.15..0.15);
            let px = |c: f32| ((c * (0.35 + 0.65 * stripe) + noise).clamp(0.0, 1.0) * 255.0) as u8;
            Rgb([px(base[0]), px(base[1]), px(base[2])])
        })
    }
}

/// A saturated colour of hue `h` in [0, 1).
fn hue_to_rgb(h: f32) -> [f32; 3] {
    let f = |n: f32| {
        let k = (n + h * 6.0) % 6.0;
        1.0 - (k.min(4.0 - k).clamp(0.0, 1.0))
    };
    [f(5.0), f(3.0), f(1.0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{ImageSource, Split, ValLabels};

    #[test]
    fn the_tree_reads_as_imagenet_and_refuses_a_full_directory() {
        let root = std::env::temp_dir().join(format!("dmnn-synth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spec = SyntheticImagenet { classes: 3, train_per_class: 4, val_per_class: 2, sides: (40, 60), seed: 1 };
        assert_eq!(spec.write(&root).unwrap(), 3 * 6);
        let train = crate::data::ImageFolder::imagenet(&root, Split::Train, 32, &ValLabels::default()).unwrap();
        assert_eq!((train.len(), train.num_classes()), (12, 3));
        let val = crate::data::ImageFolder::imagenet(&root, Split::Test, 32, &ValLabels::default()).unwrap();
        assert_eq!(val.len(), 6);
        let err = spec.write(&root).unwrap_err().to_string();
        assert!(err.contains("holds files") && err.contains(&root.display().to_string()), "{err}");
        let zero = SyntheticImagenet { classes: 0, ..spec };
        assert!(zero.write(&root.join("other")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
