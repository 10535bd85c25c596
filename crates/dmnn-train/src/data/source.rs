//! The sample-level interface every dataset implements, and in-memory datasets.

use rand::rngs::StdRng;
use rand::Rng;

/// A sample that could not be produced (e.g. an image that does not decode).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SampleError {
    /// The file (or `dataset[index]`) of the sample.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// A dataset of labelled images.
pub trait ImageSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether the dataset has no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes.
    fn num_classes(&self) -> usize;

    /// Shape `[channels, height, width]` of the images [`ImageSource::load`] writes.
    fn image_shape(&self) -> [usize; 3];

    /// Writes sample `index`, normalised, channel-major, into `out` (`channels·height·width`
    /// values) and returns its label. `augment` carries the random generator of the training
    /// augmentation; `None` gives the deterministic evaluation transform.
    fn load(&self, index: usize, augment: Option<&mut StdRng>, out: &mut [f32]) -> Result<usize, SampleError>;

    /// A short description of the dataset for logs.
    fn describe(&self) -> String;
    /// Per-channel mean and standard deviation (of pixel / 255) that [`ImageSource::load`]
    /// normalised with: what turns a loaded image back into colours (reports).
    fn normalisation(&self) -> (Vec<f32>, Vec<f32>) {
        (crate::data::IMAGENET_MEAN.to_vec(), crate::data::IMAGENET_STD.to_vec())
    }
    /// The name of every class, in label order (numbers where the dataset has no names).
    fn class_names(&self) -> Vec<String> {
        (0..self.num_classes()).map(|c| c.to_string()).collect()
    }
}

/// Training augmentation of small in-memory images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SmallAugment {
    /// Zero-pad by this many pixels, then crop back at a random offset (0: no crop).
    pub pad_crop: usize,
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
}

impl Default for SmallAugment {
    fn default() -> Self {
        Self { pad_crop: 2, hflip: true }
    }
}

/// Images held in memory as bytes (Fashion-MNIST, CIFAR).
#[derive(Clone)]
pub struct InMemoryImages {
    name: String,
    pixels: Vec<u8>,
    labels: Vec<u16>,
    shape: [usize; 3],
    num_classes: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
    augment: SmallAugment,
    class_names: Option<Vec<String>>,
}

impl InMemoryImages {
    /// Wraps `pixels` (`len · channels · height · width` bytes, channel-major per image) and one
    /// label per image, normalised by per-channel `mean` and `std` (of pixel / 255).
    ///
    /// # Panics
    /// If the sizes disagree or a label is out of range.
    pub fn new(
        name: impl Into<String>,
        pixels: Vec<u8>,
        labels: Vec<u16>,
        shape: [usize; 3],
        num_classes: usize,
        mean: Vec<f32>,
        std: Vec<f32>,
    ) -> Self {
        let per_image = shape.iter().product::<usize>();
        assert_eq!(pixels.len(), labels.len() * per_image, "pixels for {} images of shape {shape:?}", labels.len());
        assert_eq!(mean.len(), shape[0], "one mean per channel");
        assert_eq!(std.len(), shape[0], "one std per channel");
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= num_classes) {
            panic!("label {bad} out of range for {num_classes} classes");
        }
        Self {
            name: name.into(),
            pixels,
            labels,
            shape,
            num_classes,
            mean,
            std,
            augment: SmallAugment::default(),
            class_names: None,
        }
    }

    /// Sets the training augmentation.
    pub fn with_augment(mut self, augment: SmallAugment) -> Self {
        self.augment = augment;
        self
    }

    /// Names the classes (one name per class, in label order).
    ///
    /// # Panics
    /// If there is not one name per class.
    pub fn with_class_names(mut self, names: &[&str]) -> Self {
        assert_eq!(names.len(), self.num_classes, "one name per class");
        self.class_names = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }

    /// The label of every sample.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }
}

impl std::fmt::Debug for InMemoryImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ImageSource for InMemoryImages {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    fn load(&self, index: usize, augment: Option<&mut StdRng>, out: &mut [f32]) -> Result<usize, SampleError> {
        let [c, h, w] = self.shape;
        let image = &self.pixels[index * c * h * w..(index + 1) * c * h * w];
        let (dy, dx, flip) = match augment {
            Some(rng) => {
                let p = self.augment.pad_crop as i64;
                let dy = if p > 0 { rng.random_range(-p..=p) as isize } else { 0 };
                let dx = if p > 0 { rng.random_range(-p..=p) as isize } else { 0 };
                (dy, dx, self.augment.hflip && rng.random_bool(0.5))
            }
            None => (0, 0, false),
        };
        for ch in 0..c {
            let (mean, std) = (self.mean[ch], self.std[ch]);
            // a zero (black) pixel after normalisation: what zero padding gives
            let pad_value = -mean / std;
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    out[(ch * h + y) * w + x] = if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                        pad_value
                    } else {
                        let v = image[(ch * h + sy as usize) * w + sx as usize] as f32 / 255.0;
                        (v - mean) / std
                    };
                }
            }
        }
        Ok(self.labels[index] as usize)
    }

    fn describe(&self) -> String {
        let [c, h, w] = self.shape;
        format!("{} ({} images, {c}x{h}x{w}, {} classes)", self.name, self.len(), self.num_classes)
    }

    fn normalisation(&self) -> (Vec<f32>, Vec<f32>) {
        (self.mean.clone(), self.std.clone())
    }

    fn class_names(&self) -> Vec<String> {
        match &self.class_names {
            Some(names) => names.clone(),
            None => (0..self.num_classes).map(|c| c.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn tiny() -> InMemoryImages {
        // two 1x2x3 images: 0..6 and 6..12, labels 0 and 1
        InMemoryImages::new("tiny", (0..12).collect(), vec![0, 1], [1, 2, 3], 2, vec![0.0], vec![1.0 / 255.0])
    }

    #[test]
    fn evaluation_load_normalises_without_augmentation() {
        let mut out = [0.0; 6];
        assert_eq!(tiny().load(1, None, &mut out).unwrap(), 1);
        for (v, expected) in out.iter().zip(6..12) {
            assert!((v - expected as f32).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn augmentation_is_reproducible_and_flips() {
        let data = tiny().with_augment(SmallAugment { pad_crop: 0, hflip: true });
        let mut seen_flip = false;
        for seed in 0..16 {
            let (mut a, mut b) = ([0.0; 6], [0.0; 6]);
            data.load(0, Some(&mut StdRng::seed_from_u64(seed)), &mut a).unwrap();
            data.load(0, Some(&mut StdRng::seed_from_u64(seed)), &mut b).unwrap();
            assert_eq!(a, b);
            let rounded: Vec<f32> = a.iter().map(|v| v.round()).collect();
            seen_flip |= rounded == [2.0, 1.0, 0.0, 5.0, 4.0, 3.0];
        }
        assert!(seen_flip);
    }

    #[test]
    #[should_panic = "label 5 out of range for 2 classes"]
    fn label_out_of_range_panics() {
        let _ = InMemoryImages::new("bad", vec![0; 6], vec![5], [1, 2, 3], 2, vec![0.0], vec![1.0]);
    }
}
