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

/// The most classes a label file of class indices may name when there is no `train/` to list them.
const MAX_CLASSES: usize = 1 << 20;

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

/// The image files of a class folder, as torchvision's `ImageFolder` finds them: every file
/// below it, in sub-folders too (a folder named `x.JPEG` is searched, not dropped), in sorted
/// order. A link that leads nowhere stays in the list, so that the loader reports it with its
/// path like any file that does not decode.
fn class_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for path in list_dir(&folder)? {
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
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
    } else if text.lines().filter(|l| !l.trim().is_empty()).all(|l| l.trim().parse::<i64>().is_ok()) {
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
        // (line number, ID), every line a number by the test above
        let ids: Vec<(usize, i64)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| (n + 1, l.trim().parse().unwrap_or(0)))
            .collect();
        if ids.len() != files.len() {
            return Err(DataError::format(path, format!("{} labels for {} images in val/", ids.len(), files.len())));
        }
        for (file, (line, id)) in files.iter().zip(ids) {
            let wnid = usize::try_from(id)
                .ok()
                .and_then(|id| id.checked_sub(1))
                .and_then(|i| wnids.get(i))
                .filter(|w| !w.is_empty())
                .ok_or_else(|| {
                    DataError::format(
                        path,
                        format!(
                            "line {line}: ILSVRC2012_ID {id} has no wnid in {} (IDs run from 1 to {})",
                            synsets.display(),
                            wnids.len()
                        ),
                    )
                })?;
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
        let loose_files =
            split == Split::Test && list_dir(&split_dir)?.into_iter().any(|p| !p.is_dir() && !is_label_file(&p));
        if let (true, Some(dir)) = (loose_files, split_classes.first()) {
            // one layout or the other: a stray folder must not turn a flat val/ into class folders
            return Err(DataError::format(
                dir,
                format!(
                    "{} holds both image files and folders: a flat split holds only images (and a label file), \
                     a per-class split only class folders",
                    split_dir.display()
                ),
            ));
        }
        let mut classes: Vec<String> = if train_dir.is_dir() {
            class_dirs(&train_dir)?.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        } else {
            split_classes.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        let mut entries = Vec::new();
        let mut empty_class = None;
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
                let files = class_files(dir)?;
                if files.is_empty() {
                    empty_class.get_or_insert_with(|| dir.clone());
                }
                entries.extend(files.into_iter().map(|file| (file, label)));
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
                    Some(RawLabel::Index(i)) if *i < classes.len() || (classes.is_empty() && *i < MAX_CLASSES) => {
                        *i as u32
                    }
                    Some(RawLabel::Index(i)) => {
                        return Err(DataError::format(
                            &label_file,
                            format!(
                                "{key}: class index {i} is not one of the {} classes of {}",
                                if classes.is_empty() { MAX_CLASSES } else { classes.len() },
                                if classes.is_empty() {
                                    "a label file without train/".into()
                                } else {
                                    train_dir.display().to_string()
                                },
                            ),
                        ))
                    }
                    None => return Err(DataError::format(&label_file, format!("no label for {}", file.display()))),
                };
                entries.push((file, label));
            }
        }
        if entries.is_empty() {
            return Err(DataError::EmptySplit { what: format!("{split:?} split"), path: split_dir });
        }
        if let Some(dir) = empty_class {
            // it would be a class no image teaches: torchvision's ImageFolder refuses it too
            return Err(DataError::format(dir, "class folder holds no file"));
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

/// Whether JPEG bytes reach their end-of-image marker. A file cut short decodes "fine" with a
/// lenient decoder (the missing rows come out grey); PIL and torchvision refuse it as truncated,
/// and so does dmnn. The check walks the file's segments as a decoder does: every marker segment
/// by its length (so an EXIF thumbnail inside APP1 is skipped whole), every scan's entropy-coded
/// data up to the first marker that is not a stuffed `FF 00` or a restart marker, until `FF D9`.
/// What follows the end-of-image marker is not looked at: trailing bytes, even ones that look like
/// another scan (`FF DA`), do not make a complete file truncated, as in PIL.
pub fn jpeg_is_complete(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut at = 2;
    loop {
        // a marker: one or more 0xFF (fill bytes), then its code
        if bytes.get(at) != Some(&0xFF) {
            return false;
        }
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&code) = bytes.get(at) else { return false };
        at += 1;
        match code {
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => continue, // markers without a length
            _ => {}
        }
        let Some(length) = bytes.get(at..at + 2).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]]))) else {
            return false;
        };
        if length < 2 || at + length > bytes.len() {
            return false;
        }
        at += length;
        if code == 0xDA {
            // entropy-coded data: runs until an 0xFF that is neither stuffed nor a restart marker
            loop {
                let Some(offset) = bytes[at..].iter().position(|&b| b == 0xFF) else { return false };
                at += offset;
                match bytes.get(at + 1) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => at += 2,
                    Some(_) => break,
                }
            }
        }
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
    // `into_rgb8` keeps the decoded buffer of an RGB image instead of copying it
    Ok(image.into_rgb8())
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

    fn class_names(&self) -> Vec<String> {
        self.classes.clone()
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
        assert!(!jpeg_is_complete(&bytes[2..]), "no start-of-image marker");
    }

    /// Bytes after the end-of-image marker that look like a scan (`FF DA`) do not make a valid
    /// JPEG truncated: PIL and torchvision decode it, and so does dmnn; a file of another encoder
    /// cut anywhere in its scan is still truncated.
    #[test]
    fn trailing_bytes_after_the_end_of_image_marker_are_ignored() {
        let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/photos");
        let mut bytes = std::fs::read(photos.join("chelsea.jpg")).unwrap();
        let expected = decode_rgb(&photos.join("chelsea.jpg")).unwrap();
        bytes.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00, 0x12, 0x34]);
        let dir = std::env::temp_dir().join(format!("dmnn-trailing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trailing.JPEG");
        std::fs::write(&path, &bytes).unwrap();
        let decoded = decode_rgb(&path).unwrap_or_else(|e| panic!("rejected: {e}"));
        assert_eq!(decoded.as_raw(), expected.as_raw());

        let mut reencoded = Vec::new();
        let image = image::open(photos.join("camera.jpg")).unwrap();
        image.write_to(&mut std::io::Cursor::new(&mut reencoded), image::ImageFormat::Jpeg).unwrap();
        assert!(jpeg_is_complete(&reencoded));
        for cut in [reencoded.len() / 3, reencoded.len() - 3] {
            assert!(!jpeg_is_complete(&reencoded[..cut]), "cut at {cut}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A scratch ImageNet-layout tree of 4x4 PNGs, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let root = std::env::temp_dir().join(format!("dmnn-layout-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            Self(root)
        }

        fn image(&self, rel: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            RgbImage::from_pixel(4, 4, image::Rgb([10, 200, 30]))
                .save_with_format(&path, image::ImageFormat::Png)
                .unwrap();
            path
        }

        fn file(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        }

        fn open(&self, split: Split, labels: &ValLabels) -> Result<ImageFolder, String> {
            ImageFolder::imagenet(&self.0, split, 8, labels).map_err(|e| e.to_string())
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_empty_class_folder_is_an_error_naming_it() {
        let tree = Tree::new("empty-class");
        tree.image("train/n01/a.JPEG");
        std::fs::create_dir_all(tree.0.join("train/n02")).unwrap();
        let err = tree.open(Split::Train, &ValLabels::default()).err().expect("an empty class folder is refused");
        assert!(err.contains("n02") && err.contains("holds no file"), "{err}");
    }

    /// As torchvision's `ImageFolder`: the files of sub-folders count (a folder named `x.JPEG`
    /// too), and a link to nowhere is a sample the loader reports with its path, not a silent gap.
    #[test]
    fn sub_folders_are_searched_and_dangling_links_are_reported() {
        let tree = Tree::new("links");
        tree.image("train/n01/a.JPEG");
        tree.image("train/n01/b.JPEG/inner.JPEG");
        let dangling = tree.0.join("train/n01/dangling.JPEG");
        std::os::unix::fs::symlink(tree.0.join("nowhere.JPEG"), &dangling).unwrap();
        let folder = tree.open(Split::Train, &ValLabels::default()).unwrap();
        assert_eq!(folder.len(), 3);
        let mut out = vec![0.0; 3 * 8 * 8];
        let index = folder.entries.iter().position(|(p, _)| p == &dangling).expect("the link is a sample");
        let err = folder.load(index, None, &mut out).expect_err("a link to nowhere does not load");
        assert!(err.path.contains("dangling.JPEG"), "{err:?}");
        let inner = folder.entries.iter().position(|(p, _)| p.ends_with("b.JPEG/inner.JPEG")).unwrap();
        assert_eq!(folder.load(inner, None, &mut out).unwrap(), 0);
    }

    #[test]
    fn a_folder_in_a_flat_val_is_an_error_naming_it() {
        let tree = Tree::new("flat-val");
        tree.image("train/n01/a.JPEG");
        tree.image("val/v1.JPEG");
        std::fs::create_dir_all(tree.0.join("val/stray.JPEG")).unwrap();
        let labels = ValLabels { file: Some(tree.file("val_labels.txt", "v1.JPEG n01\n")), synsets: None };
        let err = tree.open(Split::Test, &labels).err().expect("a mixed val/ is refused");
        assert!(err.contains("stray.JPEG") && err.contains("both image files and folders"), "{err}");
    }

    #[test]
    fn label_ids_and_indices_out_of_range_are_errors_naming_them() {
        let tree = Tree::new("labels");
        for class in ["n01", "n02", "n03"] {
            tree.image(&format!("train/{class}/a.JPEG"));
        }
        tree.image("val/ILSVRC2012_val_00000001.JPEG");
        tree.image("val/ILSVRC2012_val_00000002.JPEG");
        let synsets = tree.file("synsets.txt", "n01\nn02\nn03\n");
        let truth = tree.file("ILSVRC2012_validation_ground_truth.txt", "2\n-1\n");
        let labels = ValLabels { file: Some(truth), synsets: Some(synsets.clone()) };
        let err = tree.open(Split::Test, &labels).err().expect("ID -1 is refused");
        assert!(err.contains("line 2") && err.contains("ILSVRC2012_ID -1"), "{err}");

        let indices = tree.file("val_labels.txt", "ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 7\n");
        let labels = ValLabels { file: Some(indices), synsets: None };
        let err = tree.open(Split::Test, &labels).err().expect("class index 7 of 3 is refused");
        assert!(err.contains("class index 7") && err.contains("3 classes"), "{err}");

        let good = tree.file("val_labels.txt", "ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 2\n");
        let folder = tree.open(Split::Test, &ValLabels { file: Some(good), synsets: None }).unwrap();
        assert_eq!(folder.num_classes(), 3);
    }
}
