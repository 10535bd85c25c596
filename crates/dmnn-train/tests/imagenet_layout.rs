//! `train-imagenet` end to end on a tiny ImageNet-layout tree built from real photographs
//! (`data/photos`, CC0 / public domain): a grayscale JPEG, a CMYK JPEG, a PNG named `.JPEG`, a
//! truncated file, and a flat `val/` folder with `LOC_val_solution.csv`.

mod common;

use std::path::Path;

use common::*;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

fn photos() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/photos")
}

fn small(name: &str) -> DynamicImage {
    image::open(photos().join(name)).unwrap().resize_exact(80, 60, FilterType::Triangle)
}

fn save_jpeg(img: &DynamicImage, path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    img.write_to(&mut f, ImageFormat::Jpeg).unwrap();
}

/// Builds the tree; returns the path of the truncated file.
fn build_tree(root: &Path) -> std::path::PathBuf {
    let cat = root.join("train/n02123045");
    let cup = root.join("train/n07930864");
    let val = root.join("val");
    for d in [&cat, &cup, &val] {
        std::fs::create_dir_all(d).unwrap();
    }
    let chelsea = small("chelsea.jpg");
    let coffee = small("coffee.jpg");
    for i in 0..4 {
        let c = if i % 2 == 0 { chelsea.clone() } else { chelsea.fliph() };
        save_jpeg(&c.crop_imm(i * 4, 0, 70, 60), &cat.join(format!("n02123045_{i}.JPEG")));
        let k = if i % 2 == 0 { coffee.clone() } else { coffee.fliph() };
        save_jpeg(&k.crop_imm(0, i * 3, 80, 50), &cup.join(format!("n07930864_{i}.JPEG")));
    }
    // grayscale JPEG (real grayscale photograph)
    save_jpeg(&DynamicImage::ImageLuma8(small("camera.jpg").to_luma8()), &cat.join("n02123045_gray.JPEG"));
    // CMYK JPEG (made by Pillow: the image crate does not write CMYK)
    std::fs::copy(photos().join("chelsea_cmyk.jpg"), cat.join("n02123045_cmyk.JPEG")).unwrap();
    // a PNG with a .JPEG name, as one ImageNet training file is
    coffee.save_with_format(cup.join("n07930864_png.JPEG"), ImageFormat::Png).unwrap();
    // a truncated JPEG
    let truncated = cup.join("n07930864_truncated.JPEG");
    let mut bytes = Vec::new();
    coffee.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // flat validation folder with Kaggle's label file
    let mut csv = String::from("ImageId,PredictionString\n");
    for i in 1..=4 {
        let (img, wnid) = if i % 2 == 1 { (chelsea.clone(), "n02123045") } else { (coffee.clone(), "n07930864") };
        let id = format!("ILSVRC2012_val_{i:08}");
        save_jpeg(&img, &val.join(format!("{id}.JPEG")));
        csv.push_str(&format!("{id},{wnid} 1 2 60 50 {wnid} 3 4 20 20\n"));
    }
    std::fs::write(root.join("LOC_val_solution.csv"), csv).unwrap();
    truncated
}

#[test]
fn train_imagenet_then_eval_on_a_tiny_tree() {
    let tmp = TempDir::new("imagenet");
    let data = tmp.path().join("imagenet");
    let truncated = build_tree(&data);
    let run_dir = tmp.path().join("run");

    let out = run(dmnn()
        .args(["train-imagenet", "--plain", "--data"])
        .arg(&data)
        .args([
            "--model",
            "dmnn_small",
            "--num-classes",
            "2",
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--eval-batch-size",
            "4",
            "--workers",
            "2",
            "--out",
        ])
        .arg(&run_dir));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    // the bad file is reported with its path and skipped; the rest trained
    assert!(log.contains("skipping unreadable image") && log.contains("n07930864_truncated.JPEG"), "{log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    let skipped = summary["skipped_images"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "only the truncated file is skipped: {skipped:?}");
    assert!(skipped[0].as_str().unwrap().contains(&*truncated.file_name().unwrap().to_string_lossy()));
    assert_eq!(summary["epochs"], 2);
    let csv = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    // its report shows the photographs de-normalised back to colour, classes by wnid
    let report = run_dir.join("report");
    assert!(std::fs::read_to_string(report.join("report.md")).unwrap().contains("easy_hard.png"));
    let tiles = image::open(report.join("easy_hard.png")).unwrap().to_rgb8();
    let coloured = tiles.pixels().filter(|p| p.0[0].abs_diff(p.0[1]) > 40 || p.0[1].abs_diff(p.0[2]) > 40).count();
    assert!(coloured > 2000, "{coloured} coloured pixels: the photographs are not shown in colour");
    assert!(report.join("open_rates.png").is_file() && report.join("curves.png").is_file());

    let out = run(dmnn().args(["eval", "--checkpoint"]).arg(&run_dir).arg("--data").arg(&data));
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("| model | top-1 err % | top-5 err % | params (M) | GMACs |"), "{table}");
    assert!(table.contains("| dmnn_small |") && table.contains(" ± "), "{table}");
    assert!(table.contains("4 images"), "{table}");
    assert!(table.contains("open rate per block: 0:"), "{table}");
}

#[test]
fn class_count_mismatch_is_an_error_before_training() {
    let tmp = TempDir::new("imagenet-classes");
    let data = tmp.path().join("imagenet");
    build_tree(&data);
    let out = run(dmnn()
        .args(["train-imagenet", "--plain", "--data"])
        .arg(&data)
        .args(["--model", "dmnn_small", "--image-size", "32", "--epochs", "1", "--out"])
        .arg(tmp.path().join("run")));
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("has 2 classes but model 'dmnn_small' has num_classes=1000")
            && msg.contains(&*data.to_string_lossy()),
        "{msg}"
    );
}

#[test]
fn empty_split_is_an_error_naming_it() {
    let tmp = TempDir::new("imagenet-empty");
    let data = tmp.path().join("imagenet");
    std::fs::create_dir_all(data.join("train/n01440764")).unwrap();
    std::fs::create_dir_all(data.join("val/n01440764")).unwrap();
    let out = run(dmnn().args(["train-imagenet", "--plain", "--data"]).arg(&data).args(["--epochs", "1"]));
    assert!(!out.status.success());
    assert!(text(&out).contains("is empty: no images under") && text(&out).contains("train"), "{}", text(&out));
}

/// An unreadable validation image is read by the per-epoch validation and by the final test
/// pass; it is one image, reported once (it used to be reported by each loader).
#[test]
fn an_unreadable_validation_image_is_reported_once() {
    let tmp = TempDir::new("imagenet-bad-val");
    let data = tmp.path().join("imagenet");
    build_tree(&data);
    std::fs::write(data.join("val/ILSVRC2012_val_00000005.JPEG"), b"not an image").unwrap();
    let csv = data.join("LOC_val_solution.csv");
    let mut labels = std::fs::read_to_string(&csv).unwrap();
    labels.push_str("ILSVRC2012_val_00000005,n02123045 1 2 3 4\n");
    std::fs::write(&csv, labels).unwrap();
    let run_dir = tmp.path().join("run");
    let out = run(dmnn()
        .args(["train-imagenet", "--plain", "--data"])
        .arg(&data)
        .args(["--model", "dmnn_small", "--num-classes", "2", "--image-size", "32", "--epochs", "1"])
        .args(["--batch-size", "4", "--eval-batch-size", "4", "--workers", "1", "--out"])
        .arg(&run_dir));
    let log = text(&out);
    assert!(out.status.success(), "{log}");
    let reports = log.matches("skipping unreadable image").count();
    assert_eq!(log.matches("ILSVRC2012_val_00000005.JPEG").count(), 1, "{log}");
    assert_eq!(reports, 2, "the truncated training file and the bad validation file: {log}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["skipped_images"].as_array().unwrap().len(), 2, "{summary}");
}
