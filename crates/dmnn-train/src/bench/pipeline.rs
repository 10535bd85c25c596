//! Throughput of the ImageNet input pipeline on one core.

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::data::{decode_rgb, ImageTransform};
use crate::error::{Result, TrainError};

/// Throughput of the ImageNet training input pipeline on one core: decode (by content) +
/// RandomResizedCrop 224 + horizontal flip + normalise, over real photographs of ImageNet size
/// (`data/photos`, 300–640 px JPEGs). Returns `(photographs, images, seconds, images per second
/// per core)`.
///
/// # Errors
/// If the folder holds no JPEG photograph or one does not decode.
pub fn bench_pipeline(photos: &std::path::Path, images: usize) -> Result<(usize, usize, f64, f64)> {
    let files: Vec<PathBuf> = std::fs::read_dir(photos)
        .map_err(|e| TrainError::io(photos, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg") && !p.to_string_lossy().contains("cmyk"))
        .collect();
    if files.is_empty() {
        return Err(TrainError::Other(format!("no JPEG photographs in {}", photos.display())));
    }
    let transform = ImageTransform::new(224);
    let mut out = vec![0f32; 3 * 224 * 224];
    let mut rng = StdRng::seed_from_u64(0);
    // warm the page cache
    for f in &files {
        let _ = std::fs::read(f).map_err(|e| TrainError::io(f, e))?;
    }
    let start = Instant::now();
    for i in 0..images {
        let file = &files[i % files.len()];
        let image = decode_rgb(file).map_err(|e| TrainError::Other(format!("{}: {e}", file.display())))?;
        transform.apply(&image, Some(&mut rng), &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((files.len(), images, secs, images as f64 / secs))
}
