//! Fashion-MNIST (Xiao et al., arXiv 1708.07747) from its gzip IDX files.
//!
//! The four files are vendored under `data/fashion-mnist/` (MIT, from Debian's
//! `dataset-fashion-mnist`), so the main job needs no network.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::{DataError, InMemoryImages};

/// Mean of Fashion-MNIST training pixels (in [0, 1]).
pub const FASHION_MNIST_MEAN: f32 = 0.2860;
/// Standard deviation of Fashion-MNIST training pixels.
pub const FASHION_MNIST_STD: f32 = 0.3530;
/// Class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// A split of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training split.
    Train,
    /// The test (or validation) split.
    Test,
}

/// Where the vendored Fashion-MNIST lives, looked up in order: `$DMNN_FASHION_MNIST`, the
/// repository's `data/fashion-mnist` (from the source tree this binary was built in, then the
/// working directory), Debian's `/usr/share/datasets/fashion-mnist`.
pub fn default_fashion_mnist_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("DMNN_FASHION_MNIST").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist")),
        Some(PathBuf::from("data/fashion-mnist")),
        Some(PathBuf::from("/usr/share/datasets/fashion-mnist")),
    ];
    let first = candidates[1].clone().unwrap();
    candidates.into_iter().flatten().find(|dir| dir.join("train-images-idx3-ubyte.gz").is_file()).unwrap_or(first)
}

/// The largest IDX payload read (Fashion-MNIST's training images are 47 MB).
const MAX_IDX_BYTES: usize = 1 << 31;

/// Reads a gzip IDX file of `dims` dimensions with `magic`: its header's dimensions and its
/// payload. The size the header announces is computed with checked arithmetic and bounded
/// before anything is read, and the payload is read up to that size only: a crafted header or a
/// gzip bomb is an error naming the file, never a huge allocation.
fn read_idx<const N: usize>(path: &Path, magic: u32, what: &str) -> Result<(Vec<u8>, [usize; N]), DataError> {
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut reader = GzDecoder::new(file);
    let unreadable = |e: std::io::Error| DataError::format(path, format!("not a readable gzip file ({e})"));
    let header_len = 4 + 4 * N;
    let mut header = vec![0u8; header_len];
    let mut got = 0;
    while got < header_len {
        match reader.read(&mut header[got..]).map_err(unreadable)? {
            0 => break,
            n => got += n,
        }
    }
    let be_u32 = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    if got < header_len || be_u32(0) != magic {
        return Err(DataError::format(path, format!("not an IDX {what} file (magic 0x{magic:08x})")));
    }
    let dims: [usize; N] = std::array::from_fn(|i| be_u32(4 + 4 * i) as usize);
    let payload = dims.iter().try_fold(1usize, |size, &d| size.checked_mul(d)).filter(|&p| p <= MAX_IDX_BYTES);
    let Some(payload) = payload else {
        return Err(DataError::format(
            path,
            format!("IDX header says {dims:?}: more than {MAX_IDX_BYTES} bytes, not a dataset this reader takes"),
        ));
    };
    let mut bytes = Vec::new();
    (&mut reader).take(payload as u64 + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() != payload {
        let actual = if bytes.len() > payload { "more".to_string() } else { (header_len + bytes.len()).to_string() };
        return Err(DataError::format(
            path,
            format!("IDX header says {dims:?} ({} bytes) but the file has {actual} bytes", header_len + payload),
        ));
    }
    Ok((bytes, dims))
}

/// Reads a gzip IDX image file: `(pixels, [count, rows, cols])`.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, [usize; 3]), DataError> {
    let (pixels, dims) = read_idx::<3>(path, 0x0803, "image")?;
    if let [_, 0, _] | [_, _, 0] = dims {
        return Err(DataError::format(path, format!("IDX header says {dims:?}: images of zero pixels")));
    }
    Ok((pixels, dims))
}

/// Reads a gzip IDX label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    Ok(read_idx::<1>(path, 0x0801, "label")?.0)
}

/// Loads a split of Fashion-MNIST (or MNIST: same files) from `dir`.
pub fn fashion_mnist(dir: &Path, split: Split) -> Result<InMemoryImages, DataError> {
    if !dir.is_dir() {
        return Err(DataError::Missing { what: "Fashion-MNIST directory".into(), path: dir.to_path_buf() });
    }
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let (pixels, [n, h, w]) = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if labels.len() != n {
        return Err(DataError::format(&labels_path, format!("{} labels for {n} images", labels.len())));
    }
    if let Some(bad) = labels.iter().find(|&&l| l >= 10) {
        return Err(DataError::format(&labels_path, format!("label {bad} outside 0..10")));
    }
    Ok(InMemoryImages::new(
        format!("Fashion-MNIST {prefix}"),
        pixels,
        labels.into_iter().map(u16::from).collect(),
        [1, h, w],
        10,
        vec![FASHION_MNIST_MEAN],
        vec![FASHION_MNIST_STD],
    )
    .with_class_names(&FASHION_MNIST_CLASSES))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageSource;

    #[test]
    fn vendored_test_split_loads() {
        let data = fashion_mnist(&default_fashion_mnist_dir(), Split::Test).unwrap();
        assert_eq!(data.len(), 10_000);
        assert_eq!(data.image_shape(), [1, 28, 28]);
        // the test split is balanced: 1000 images per class
        let mut counts = [0usize; 10];
        data.labels().iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [1000; 10]);
    }

    #[test]
    fn missing_directory_names_the_path() {
        let err = fashion_mnist(Path::new("/nonexistent/fmnist"), Split::Train).unwrap_err();
        assert_eq!(err.to_string(), "Fashion-MNIST directory not found: /nonexistent/fmnist");
    }

    #[test]
    fn corrupt_file_is_a_format_error() {
        let dir = std::env::temp_dir().join(format!("dmnn-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t10k-images-idx3-ubyte.gz");
        std::fs::write(&path, b"not gzip").unwrap();
        let err = read_idx_images(&path).unwrap_err().to_string();
        assert!(err.contains("not a readable gzip file"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
