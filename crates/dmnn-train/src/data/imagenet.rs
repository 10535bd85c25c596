//! ImageNet (ILSVRC-2012) from a local directory, never downloaded.
//!
//! Layouts (DESIGN §8):
//! - `train/<wnid>/*` — one folder per class;
//! - `val/<wnid>/*`, or a flat `val/*` with a label file: Kaggle's `LOC_val_solution.csv`, a
//!   text file of `<file> <wnid>` or `<file> <class index>` lines, or the devkit's
//!   `ILSVRC2012_validation_ground_truth.txt` (one ILSVRC2012_ID per line, in file order) with a
//!   file listing the wnid of every ILSVRC2012_ID (`--val-synsets`, see docs/training.md).
//!
//! The class index is the rank of the wnid in sorted order (torchvision's `ImageFolder`).
//! Images are decoded by content, not extension (one training file is a PNG, some are CMYK or
//! grayscale); all become RGB. A file that does not decode is reported and skipped by the loader.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use image::RgbImage;
use rand::rngs::StdRng;

use super::{DataError, ImageSource, ImageTransform, SampleError, Split};

/// Where the labels of a flat validation folder come from.
#[derive(Debug, Clone, Default)]
pub struct ValLabels {
    /// The label file; found automatically next to `val/` when `None`.
    pub file: Option<PathBuf>,
    /// For the devkit's ground truth: the wnid of every ILSVRC2012_ID, one per line.
    pub synsets: Option<PathBuf>,
}

/// Label file names looked for in the dataset root and in `val/`.
const LABEL_FILES: [&str; 4] =
    ["LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt", "val_labels.txt", "val.txt"];

/// An image-classification folder: files and their class indices.
pub struct ImageFolder {
    root: PathBuf,
    entries: Vec<(PathBuf, u32)>,
    classes: Vec<String>,
    transform: ImageTransform,
}

fn list_dir(path: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(DataError::io(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    entries.sort();
    Ok(entries)
}

fn class_dirs(split_dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    Ok(list_dir(split_dir)?.into_iter().filter(|p| p.is_dir()).collect())
}

fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A label as written in a validation label file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RawLabel {
    Wnid(String),
    Index(usize),
}

/// Reads a validation label file into `image stem -> label`.
fn read_val_labels(
    path: &Path,
    synsets: Option<&Path>,
    files: &[PathBuf],
) -> Result<HashMap<String, RawLabel>, DataError> {
    let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
    let mut labels = HashMap::new();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".csv") {
        // Kaggle: ImageId,PredictionString  (first token of the prediction string is the wnid)
        for (n, line) in text.lines().enumerate().skip(1) {
            let Some((id, pred)) = line.split_once(',') else { continue };
            let wnid = pred
                .split_whitespace()
                .next()
                .ok_or_else(|| DataError::format(path, format!("line {}: no wnid in '{line}'", n + 1)))?;
            labels.insert(id.trim().to_string(), RawLabel::Wnid(wnid.to_string()));
        }
    } else if text.lines().filter(|l| !l.trim().is_empty()).all(|l| l.trim().parse::<usize>().is_ok()) {
        // devkit: one ILSVRC2012_ID (1-based) per line, for the val files in sorted order
        let synsets = synsets.ok_or_else(|| {
            DataError::format(
                path,
                "devkit ground truth holds ILSVRC2012_IDs; pass --val-synsets with the wnid of every ID \
                 (one per line, ID order; see docs/training.md)",
            )
        })?;
        let wnids: Vec<String> = std::fs::read_to_string(synsets)
            .map_err(DataError::io(synsets))?
            .lines()
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
            .collect();
        let ids: Vec<usize> =
            text.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().parse().unwrap()).collect();
        if ids.len() != files.len() {
            return Err(DataError::format(path, format!("{} labels for {} images in val/", ids.len(), files.len())));
        }
        for (file, id) in files.iter().zip(ids) {
            let wnid = wnids
                .get(id.wrapping_sub(1))
                .filter(|w| !w.is_empty())
                .ok_or_else(|| DataError::format(synsets, format!("no wnid for ILSVRC2012_ID {id}")))?;
            labels.insert(stem(file), RawLabel::Wnid(wnid.clone()));
        }
    } else {
        // "<file> <wnid>" or "<file> <class index>"
        for (n, line) in text.lines().enumerate() {
            let mut parts = line.split_whitespace();
            let (Some(file), Some(label)) = (parts.next(), parts.next()) else { continue };
            let key = stem(Path::new(file));
            let label = match label.parse::<usize>() {
                Ok(i) => RawLabel::Index(i),
                Err(_) if label.starts_with('n') => RawLabel::Wnid(label.to_string()),
                Err(_) => return Err(DataError::format(path, format!("line {}: cannot read label '{label}'", n + 1))),
            };
            labels.insert(key, label);
        }
    }
    if labels.is_empty() {
        return Err(DataError::format(path, "no labels found"));
    }
    Ok(labels)
}

impl ImageFolder {
    /// Opens a split of an ImageNet-layout directory.
    ///
    /// # Errors
    /// A missing root or split directory, an empty split, an unreadable or incomplete label
    /// file; each names the path.
    pub fn imagenet(root: &Path, split: Split, image_size: usize, val_labels: &ValLabels) -> Result<Self, DataError> {
        if !root.is_dir() {
            return Err(DataError::Missing { what: "ImageNet directory".into(), path: root.to_path_buf() });
        }
        let train_dir = root.join("train");
        let split_dir = match split {
            Split::Train => train_dir.clone(),
            Split::Test => root.join("val"),
        };
        if !split_dir.is_dir() {
            let what = if split == Split::Train { "training split (train/)" } else { "validation split (val/)" };
            return Err(DataError::Missing { what: what.into(), path: split_dir });
        }
        let split_classes = class_dirs(&split_dir)?;
        let mut classes: Vec<String> = if train_dir.is_dir() {
            class_dirs(&train_dir)?.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        } else {
            split_classes.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        let mut entries = Vec::new();
        if !split_classes.is_empty() {
            let index: HashMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
            for dir in &split_classes {
                let name = dir.file_name().unwrap().to_string_lossy();
                let Some(&label) = index.get(name.as_ref()) else {
                    return Err(DataError::format(
                        dir,
                        format!("class '{name}' is not a class of {}", train_dir.display()),
                    ));
                };
                for file in list_dir(dir)?.into_iter().filter(|p| p.is_file()) {
                    entries.push((file, label));
                }
            }
        } else {
            // flat val/: labels from a file
            let files: Vec<PathBuf> =
                list_dir(&split_dir)?.into_iter().filter(|p| p.is_file() && !is_label_file(p)).collect();
            let label_file = match &val_labels.file {
                Some(f) => f.clone(),
                None => LABEL_FILES
                    .iter()
                    .flat_map(|n| [root.join(n), split_dir.join(n)])
                    .find(|p| p.is_file())
                    .ok_or_else(|| DataError::Missing {
                        what: format!("label file for the flat val/ folder (one of {})", LABEL_FILES.join(", ")),
                        path: root.to_path_buf(),
                    })?,
            };
            let labels = read_val_labels(&label_file, val_labels.synsets.as_deref(), &files)?;
            if classes.is_empty() {
                let wnids: BTreeSet<&str> = labels
                    .values()
                    .filter_map(|l| match l {
                        RawLabel::Wnid(w) => Some(w.as_str()),
                        RawLabel::Index(_) => None,
                    })
                    .collect();
                classes = wnids.into_iter().map(String::from).collect();
            }
            let index: HashMap<&str, u32> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u32)).collect();
            for file in files {
                let key = stem(&file);
                let label = match labels.get(&key) {
                    Some(RawLabel::Wnid(w)) => *index.get(w.as_str()).ok_or_else(|| {
                        DataError::format(
                            &label_file,
                            format!("{key}: wnid {w} is not one of the {} classes", classes.len()),
                        )
                    })?,
                    Some(RawLabel::Index(i)) => *i as u32,
                    None => return Err(DataError::format(&label_file, format!("no label for {}", file.display()))),
                };
                entries.push((file, label));
            }
        }
        if entries.is_empty() {
            return Err(DataError::EmptySplit { what: format!("{split:?} split"), path: split_dir });
        }
        let num_classes = classes.len().max(entries.iter().map(|e| e.1 as usize + 1).max().unwrap_or(0));
        if classes.len() < num_classes {
            classes.extend((classes.len()..num_classes).map(|i| format!("class{i}")));
        }
        Ok(Self { root: root.to_path_buf(), entries, classes, transform: ImageTransform::new(image_size) })
    }

    /// The class names (wnids), by class index.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

fn is_label_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| LABEL_FILES.contains(&n.to_string_lossy().as_ref()))
}

/// Whether JPEG bytes end their last scan with an EOI marker. A file cut short decodes "fine"
/// with a lenient decoder (the missing rows come out grey); PIL and torchvision refuse it as
/// truncated, and so does dmnn. Entropy-coded data never holds `FF D9` (a data `FF` is always
/// followed by `00` or a restart marker), and an EXIF thumbnail's EOI comes before the main
/// image's scans, so the EOI must follow the last start-of-scan marker.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_sos {
        Some(sos) => bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Decodes an image file by its content (whatever its extension) into RGB.
pub fn decode_rgb(path: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let reader =
        image::ImageReader::new(std::io::Cursor::new(&bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    match reader.format() {
        None => return Err("not an image (unknown format)".into()),
        Some(image::ImageFormat::Jpeg) if !jpeg_is_complete(&bytes) => {
            return Err("truncated JPEG (no end-of-image marker after the last scan)".into())
        }
        Some(_) => {}
    }
    let image = reader.decode().map_err(|e| e.to_string())?;
    Ok(image.to_rgb8())
}

impl ImageSource for ImageFolder {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn image_shape(&self) -> [usize; 3] {
        [3, self.transform.size, self.transform.size]
    }

    fn load(&self, index: usize, augment: Option<&mut StdRng>, out: &mut [f32]) -> Result<usize, SampleError> {
        let (path, label) = &self.entries[index];
        let image = decode_rgb(path).map_err(|reason| SampleError { path: path.display().to_string(), reason })?;
        if image.width() == 0 || image.height() == 0 {
            return Err(SampleError { path: path.display().to_string(), reason: "empty image".into() });
        }
        self.transform.apply(&image, augment, out);
        Ok(*label as usize)
    }

    fn describe(&self) -> String {
        format!(
            "ImageNet-layout folder {} ({} images, {} classes)",
            self.root.display(),
            self.entries.len(),
            self.classes.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_photos_by_content_and_rejects_truncated_jpegs() {
        let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/photos");
        for name in ["chelsea.jpg", "camera.jpg", "chelsea_cmyk.jpg"] {
            let img = decode_rgb(&photos.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(img.width() > 0, "{name}");
        }
        // CMYK comes out as plausible colours: the cat photo is not mostly black or white
        let cmyk = decode_rgb(&photos.join("chelsea_cmyk.jpg")).unwrap();
        let rgb = decode_rgb(&photos.join("chelsea.jpg")).unwrap();
        let mean = |im: &RgbImage| {
            im.pixels().map(|p| p.0.iter().map(|&v| v as f64).sum::<f64>() / 3.0).sum::<f64>()
                / (im.width() * im.height()) as f64
        };
        assert!((mean(&cmyk) - mean(&rgb)).abs() < 25.0, "CMYK mean {} vs RGB mean {}", mean(&cmyk), mean(&rgb));
        let bytes = std::fs::read(photos.join("chelsea.jpg")).unwrap();
        assert!(jpeg_is_complete(&bytes));
        assert!(!jpeg_is_complete(&bytes[..bytes.len() / 2]));
        assert!(!jpeg_is_complete(&bytes[..bytes.len() - 2]));
    }
}
