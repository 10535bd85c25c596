//! CIFAR-10 and CIFAR-100 in their binary format, from a local path.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_{1..5}.bin`, `test_batch.bin`, records of one
//! label byte and 3072 pixel bytes (1024 per channel, R, G, B). CIFAR-100 (`cifar-100-binary/`):
//! `train.bin`, `test.bin`, records of a coarse and a fine label byte and 3072 pixel bytes; the
//! fine label is used.

use std::path::Path;

use super::{DataError, InMemoryImages, Split};

/// The CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// Per-channel mean of CIFAR-10 training images.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation of CIFAR-10 training images.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// Per-channel mean of CIFAR-100 training images.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// Per-channel standard deviation of CIFAR-100 training images.
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];

const PIXELS: usize = 3 * 32 * 32;

fn read_records(path: &Path, label_bytes: usize, pixels: &mut Vec<u8>, labels: &mut Vec<u16>) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(DataError::io(path))?;
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(DataError::format(
            path,
            format!("{} bytes is not a whole number of {record}-byte CIFAR records", bytes.len()),
        ));
    }
    for r in bytes.chunks_exact(record) {
        labels.push(r[label_bytes - 1] as u16);
        pixels.extend_from_slice(&r[label_bytes..]);
    }
    Ok(())
}

/// Loads a split of CIFAR-10 or CIFAR-100 from `dir` (the directory holding the `.bin` files,
/// or its parent).
pub fn cifar(dir: &Path, split: Split) -> Result<InMemoryImages, DataError> {
    let candidates = [dir.to_path_buf(), dir.join("cifar-10-batches-bin"), dir.join("cifar-100-binary")];
    let (dir, hundred) = candidates
        .iter()
        .find_map(|d| {
            if d.join("test_batch.bin").is_file() {
                Some((d.clone(), false))
            } else if d.join("test.bin").is_file() {
                Some((d.clone(), true))
            } else {
                None
            }
        })
        .ok_or_else(|| DataError::Missing {
            what: "CIFAR binary files (test_batch.bin or test.bin)".into(),
            path: dir.to_path_buf(),
        })?;
    let files: Vec<String> = match (hundred, split) {
        (false, Split::Train) => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        (false, Split::Test) => vec!["test_batch.bin".into()],
        (true, Split::Train) => vec!["train.bin".into()],
        (true, Split::Test) => vec!["test.bin".into()],
    };
    let (label_bytes, classes, mean, std, name) = if hundred {
        (2, 100, CIFAR100_MEAN, CIFAR100_STD, "CIFAR-100")
    } else {
        (1, 10, CIFAR10_MEAN, CIFAR10_STD, "CIFAR-10")
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        read_records(&dir.join(f), label_bytes, &mut pixels, &mut labels)?;
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(DataError::format(&dir, format!("label {bad} outside 0..{classes}")));
    }
    let split_name = if split == Split::Train { "train" } else { "test" };
    let images = InMemoryImages::new(
        format!("{name} {split_name}"),
        pixels,
        labels,
        [3, 32, 32],
        classes,
        mean.to_vec(),
        std.to_vec(),
    )
    .with_augment(super::SmallAugment { pad_crop: 4, hflip: true });
    Ok(if hundred { images } else { images.with_class_names(&CIFAR10_CLASSES) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageSource;

    #[test]
    fn reads_cifar10_records() {
        let dir = std::env::temp_dir().join(format!("dmnn-cifar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        for label in [3u8, 7] {
            bytes.push(label);
            bytes.extend(std::iter::repeat_n(label * 10, PIXELS));
        }
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        let data = cifar(&dir, Split::Test).unwrap();
        assert_eq!((data.len(), data.num_classes()), (2, 10));
        let mut out = vec![0.0; PIXELS];
        assert_eq!(data.load(1, None, &mut out).unwrap(), 7);
        assert!((out[0] - (70.0 / 255.0 - CIFAR10_MEAN[0]) / CIFAR10_STD[0]).abs() < 1e-6);
        // a missing training batch names the file
        let err = cifar(&dir, Split::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin"), "{err}");
        std::fs::write(dir.join("test_batch.bin"), &bytes[..100]).unwrap();
        assert!(cifar(&dir, Split::Test).unwrap_err().to_string().contains("not a whole number"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
