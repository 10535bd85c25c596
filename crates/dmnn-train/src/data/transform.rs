//! ImageNet-style transforms on decoded RGB images, written straight into a normalised
//! channel-major `f32` buffer (crop, resize, flip and normalise in one pass).
//!
//! - Training: torchvision's `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` and
//!   `RandomHorizontalFlip()`.
//! - Evaluation: `Resize(size · 256/224)` then `CenterCrop(size)`, computed as one crop of the
//!   original image followed by one resize.
//!
//! Resizing is separable with a triangle (bilinear) kernel widened by the scale factor when
//! shrinking, as PIL's antialiased bilinear filter and torchvision's `antialias=True` do.

use image::RgbImage;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// ImageNet per-channel mean (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A crop box in pixels of the source image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// Parameters of the ImageNet transforms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageTransform {
    /// Output side in pixels (224).
    pub size: usize,
    /// Smallest and largest crop area, as a share of the image (0.08, 1.0).
    pub scale: [f64; 2],
    /// Smallest and largest aspect ratio of the crop (3/4, 4/3).
    pub ratio: [f64; 2],
    /// Evaluation crop share: the image is resized so that its shorter side is
    /// `size / crop_share` (256 for 224) and the centre `size x size` kept.
    pub crop_share: f64,
}

impl ImageTransform {
    /// The standard transforms for `size x size` outputs.
    pub fn new(size: usize) -> Self {
        Self { size, scale: [0.08, 1.0], ratio: [3.0 / 4.0, 4.0 / 3.0], crop_share: 224.0 / 256.0 }
    }

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform
    /// aspect ratio, then a centre crop clamped to the ratio range.
    pub fn random_crop(&self, width: u32, height: u32, rng: &mut StdRng) -> CropBox {
        let (w_img, h_img) = (width as f64, height as f64);
        let area = w_img * h_img;
        let (log_lo, log_hi) = (self.ratio[0].ln(), self.ratio[1].ln());
        for _ in 0..10 {
            let target = area * rng.random_range(self.scale[0]..=self.scale[1]);
            let aspect = rng.random_range(log_lo..=log_hi).exp();
            let w = (target * aspect).sqrt().round();
            let h = (target / aspect).sqrt().round();
            if w > 0.0 && h > 0.0 && w <= w_img && h <= h_img {
                let (w, h) = (w as u32, h as u32);
                let y = rng.random_range(0..=height - h);
                let x = rng.random_range(0..=width - w);
                return CropBox { x, y, width: w, height: h };
            }
        }
        let in_ratio = w_img / h_img;
        let (w, h) = if in_ratio < self.ratio[0] {
            (width, (w_img / self.ratio[0]).round() as u32)
        } else if in_ratio > self.ratio[1] {
            ((h_img * self.ratio[1]).round() as u32, height)
        } else {
            (width, height)
        };
        let (w, h) = (w.clamp(1, width), h.clamp(1, height));
        CropBox { x: (width - w) / 2, y: (height - h) / 2, width: w, height: h }
    }

    /// The evaluation crop: the centre square that becomes `size x size` after resizing the
    /// shorter side to `size / crop_share`.
    pub fn center_crop(&self, width: u32, height: u32) -> CropBox {
        let side = ((width.min(height) as f64) * self.crop_share).round().max(1.0) as u32;
        let side = side.min(width).min(height);
        CropBox { x: (width - side) / 2, y: (height - side) / 2, width: side, height: side }
    }

    /// Applies the training (`rng` given) or evaluation transform and writes the normalised
    /// `[3, size, size]` result into `out`.
    pub fn apply(&self, image: &RgbImage, rng: Option<&mut StdRng>, out: &mut [f32]) {
        let (width, height) = image.dimensions();
        let (crop, flip) = match rng {
            Some(rng) => {
                let crop = self.random_crop(width, height, rng);
                (crop, rng.random_bool(0.5))
            }
            None => (self.center_crop(width, height), false),
        };
        resize_normalize(image, crop, self.size, flip, out);
    }
}

/// Filter taps of a 1-D triangle resampler from `in_len` source pixels (starting at `offset`) to
/// `out_len` outputs: for every output, the first source index and the normalised weights.
fn taps(offset: u32, in_len: u32, out_len: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_len as f64 / out_len as f64;
    let support = scale.max(1.0); // widen the kernel when shrinking (antialias)
    (0..out_len)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = ((center - support).floor().max(0.0)) as usize;
            let hi = ((center + support).ceil() as usize).min(in_len as usize);
            let mut w: Vec<f32> = (lo..hi)
                .map(|i| {
                    let d = ((i as f64 + 0.5) - center).abs() / support;
                    (1.0 - d).max(0.0) as f32
                })
                .collect();
            let sum: f32 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                // degenerate: nearest pixel
                w.iter_mut().for_each(|v| *v = 0.0);
                if let Some(first) = w.first_mut() {
                    *first = 1.0;
                }
            }
            (offset as usize + lo, w)
        })
        .collect()
}

/// Crops `crop` out of `image`, resizes it to `size x size`, optionally flips it horizontally,
/// normalises with the ImageNet mean and std and writes `[3, size, size]` into `out`.
pub fn resize_normalize(image: &RgbImage, crop: CropBox, size: usize, flip: bool, out: &mut [f32]) {
    assert_eq!(out.len(), 3 * size * size, "output buffer for a 3x{size}x{size} image");
    let (img_w, _) = image.dimensions();
    let raw = image.as_raw();
    let xs = taps(crop.x, crop.width, size);
    let ys = taps(crop.y, crop.height, size);
    // horizontal pass over the rows the vertical pass needs: [crop.height][size][3]
    let row0 = crop.y as usize;
    let rows = crop.height as usize;
    let mut tmp = vec![0f32; rows * size * 3];
    for r in 0..rows {
        let src = &raw[(row0 + r) * img_w as usize * 3..];
        let dst = &mut tmp[r * size * 3..(r + 1) * size * 3];
        for (o, (start, w)) in xs.iter().enumerate() {
            let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
            for (k, &wk) in w.iter().enumerate() {
                let p = (start + k) * 3;
                a += wk * src[p] as f32;
                b += wk * src[p + 1] as f32;
                c += wk * src[p + 2] as f32;
            }
            let o = if flip { size - 1 - o } else { o };
            dst[o * 3] = a;
            dst[o * 3 + 1] = b;
            dst[o * 3 + 2] = c;
        }
    }
    let scale: [f32; 3] = core::array::from_fn(|ch| 1.0 / (255.0 * IMAGENET_STD[ch]));
    let shift: [f32; 3] = core::array::from_fn(|ch| -IMAGENET_MEAN[ch] / IMAGENET_STD[ch]);
    let plane = size * size;
    for (oy, (start, w)) in ys.iter().enumerate() {
        let base = start - row0;
        for ox in 0..size {
            let mut acc = [0f32; 3];
            for (k, &wk) in w.iter().enumerate() {
                let p = ((base + k) * size + ox) * 3;
                acc[0] += wk * tmp[p];
                acc[1] += wk * tmp[p + 1];
                acc[2] += wk * tmp[p + 2];
            }
            for ch in 0..3 {
                out[ch * plane + oy * size + ox] = acc[ch] * scale[ch] + shift[ch];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn random_crops_stay_inside_and_respect_ranges() {
        let t = ImageTransform::new(224);
        let mut rng = StdRng::seed_from_u64(0);
        for _ in 0..2000 {
            let c = t.random_crop(500, 375, &mut rng);
            assert!(c.x + c.width <= 500 && c.y + c.height <= 375, "{c:?}");
            let area = (c.width * c.height) as f64 / (500.0 * 375.0);
            assert!(area > 0.07 && area <= 1.0, "{c:?}");
        }
        // a very wide image falls back to the clamped centre crop at some point
        let c = t.random_crop(1000, 10, &mut rng);
        assert!(c.width <= 1000 && c.height <= 10);
    }

    #[test]
    fn center_crop_is_the_resize_256_crop_224() {
        let c = ImageTransform::new(224).center_crop(512, 256);
        assert_eq!(c, CropBox { x: 144, y: 16, width: 224, height: 224 });
    }

    #[test]
    fn constant_image_stays_constant_and_flip_mirrors() {
        let mut img = RgbImage::from_pixel(40, 30, image::Rgb([255, 128, 0]));
        let mut out = vec![0.0; 3 * 8 * 8];
        resize_normalize(&img, CropBox { x: 3, y: 2, width: 30, height: 20 }, 8, false, &mut out);
        let expect = [(1.0 - 0.485) / 0.229, (128.0 / 255.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225];
        for ch in 0..3 {
            for v in &out[ch * 64..(ch + 1) * 64] {
                assert!((v - expect[ch]).abs() < 1e-4, "channel {ch}: {v} vs {}", expect[ch]);
            }
        }
        // left half white, right half black: flipping swaps the halves
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 20 { image::Rgb([255; 3]) } else { image::Rgb([0; 3]) };
        }
        let full = CropBox { x: 0, y: 0, width: 40, height: 30 };
        let (mut a, mut b) = (vec![0.0; 3 * 8 * 8], vec![0.0; 3 * 8 * 8]);
        resize_normalize(&img, full, 8, false, &mut a);
        resize_normalize(&img, full, 8, true, &mut b);
        assert!(a[0] > 2.0 && a[7] < -2.0);
        for x in 0..8 {
            assert!((a[x] - b[7 - x]).abs() < 1e-5);
        }
    }
}
