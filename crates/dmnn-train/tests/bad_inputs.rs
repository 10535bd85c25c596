//! Bad input, tried as a hostile user would: every case exits non-zero with a message that
//! names the value or the file, and none panics or aborts.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;

/// Runs `dmnn args` and checks that it fails cleanly with a message holding `expected`.
fn refused(args: &[&str], expected: &str) {
    let out = run(dmnn().args(args));
    let msg = text(&out);
    assert!(!out.status.success(), "dmnn {args:?} succeeded: {msg}");
    // 1: our error, 2: clap's (a value its parser refuses)
    assert!(matches!(out.status.code(), Some(1 | 2)), "dmnn {args:?} did not exit with a clean error: {msg}");
    assert!(!msg.contains("panicked"), "dmnn {args:?} panicked: {msg}");
    assert!(msg.contains(expected), "dmnn {args:?}: expected '{expected}' in: {msg}");
}

fn gzip(path: &Path, bytes: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap();
}

fn idx_images(dims: [u32; 3], pixels: &[u8]) -> Vec<u8> {
    let mut bytes = 0x0803u32.to_be_bytes().to_vec();
    dims.iter().for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
    bytes.extend_from_slice(pixels);
    bytes
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = 0x0801u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// A Fashion-MNIST directory whose training split is the vendored one and whose test split is
/// `n` images of `side`x`side`, or the given raw image file.
fn fashion_dir(root: &Path, name: &str, test_images: Vec<u8>, n: usize) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/fashion-mnist");
    for f in ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"] {
        std::fs::copy(vendored.join(f), dir.join(f)).unwrap();
    }
    gzip(&dir.join("t10k-images-idx3-ubyte.gz"), &test_images);
    gzip(&dir.join("t10k-labels-idx1-ubyte.gz"), &idx_labels(&vec![3; n]));
    dir
}

#[test]
fn command_line_values_out_of_their_domain_are_clean_errors() {
    refused(&["cost", "--model", "dmnn50", "--num-classes", "0"], "num_classes=0");
    refused(&["cost", "--model", "dmnn50", "--image-size", "0"], "image_size=0");
    refused(&["cost", "--model", "dmnn50", "--image-size", "100000000"], "image_size=100000000");
    refused(&["train", "--width-mult", "1e6", "--epochs", "1"], "exceeds");
    refused(&["train", "--weight-decay", "nan"], "weight_decay=NaN");
    refused(&["train", "--grad-clip=-1"], "grad_clip=-1");
    refused(&["train", "--grad-clip", "0"], "grad_clip=0");
    refused(&["train", "--warmup-epochs", "nan"], "warmup_epochs=NaN");
    refused(&["train", "--warmup-epochs=-1"], "warmup_epochs=-1");
    refused(&["train", "--lr-schedule", "step", "--lr-step-epochs", "0"], "every_epochs=0");
    refused(&["train", "--lr-step-epochs", "3"], "--lr-step-epochs 3 applies to the step schedule");
    refused(&["train", "--image-size", "64"], "--image-size 64 applies to ImageNet-layout data");
    refused(&["bench", "--memory-case", "dmnn_small:28:0:0.5:sparse"], "batch '0' is not a positive integer");
    refused(&["bench", "--memory-case", "dmnn_small:28:8:1.5:sparse"], "rate '1.5' is not a number in [0, 1]");
}

#[test]
fn eval_values_out_of_their_domain_are_clean_errors() {
    let tmp = TempDir::new("bad-eval");
    let run_dir = tmp.path().join("run");
    let out = run(dmnn().args(quick_fashion_args(&run_dir, 1)));
    assert!(out.status.success(), "{}", text(&out));
    let dir = run_dir.to_str().unwrap();
    for threshold in ["1.5", "1.0", "nan", "-0.1"] {
        refused(&["eval", "--checkpoint", dir, &format!("--threshold={threshold}")], "threshold");
    }
    refused(&["eval", "--checkpoint", dir, "--batch-size", "0"], "batch_size=0");
    refused(&["eval", "--checkpoint", dir, "--max-batches", "0"], "max_batches=0");

    let static_dir = tmp.path().join("static");
    let out = run(dmnn().args(quick_fashion_args(&static_dir, 1)).args(["--model", "resnet_small"]));
    assert!(out.status.success(), "{}", text(&out));
    refused(
        &["eval", "--checkpoint", static_dir.to_str().unwrap(), "--recalibrate-batches", "2"],
        "is static (no gates)",
    );

    // a record of another architecture: resnet_small's weights where dmnn_small's belong
    let other = static_dir.join("model.mpk");
    let mut args = quick_fashion_args(&tmp.path().join("from-other"), 1);
    args.extend(["--initial-weights".to_string(), other.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "was written for another architecture");
    // with its checksum: a whole, undamaged record, only of another network
    std::fs::copy(&other, run_dir.join("model.mpk")).unwrap();
    std::fs::copy(static_dir.join("model.mpk.sha256"), run_dir.join("model.mpk.sha256")).unwrap();
    refused(&["eval", "--checkpoint", dir], "model.mpk was written for another architecture");
    let out = tmp.path().join("x.safetensors");
    refused(&["export", "--checkpoint", dir, "--out", out.to_str().unwrap()], "was written for another architecture");
    let init_out = tmp.path().join("init");
    refused(
        &["init-from-torchvision", "--weights", other.to_str().unwrap(), "--model", "dmnn_small", "--out"]
            .into_iter()
            .chain([init_out.to_str().unwrap()])
            .collect::<Vec<_>>(),
        "was written for another architecture",
    );
}

#[test]
fn idx_files_with_bad_headers_or_splits_are_clean_errors() {
    let tmp = TempDir::new("bad-idx");
    let train = |dir: &Path| {
        let mut args: Vec<String> = quick_fashion_args(&tmp.path().join("run"), 1);
        args.extend(["--data".to_string(), dir.display().to_string()]);
        args
    };
    let cases = [
        ("zero-images", idx_images([0, 28, 28], &[]), 0, "holds no images"),
        ("zero-pixels", idx_images([5, 0, 0], &[]), 5, "images of zero pixels"),
        ("wrapping", idx_images([10000, 350476688, 3289581145], &[0; 64]), 10000, "more than"),
        ("other-size", idx_images([4, 32, 32], &[7; 4 * 32 * 32]), 4, "1x32x32 images but model"),
        ("tiny", idx_images([4, 2, 2], &[7; 16]), 4, "1x2x2 images but model"),
        ("short", idx_images([4, 28, 28], &[7; 100]), 4, "IDX header says [4, 28, 28]"),
    ];
    for (name, images, n, expected) in cases {
        let dir = fashion_dir(tmp.path(), name, images, n);
        let out = run(dmnn().args(train(&dir)));
        let msg = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {msg}");
        assert!(!msg.contains("panicked") && msg.contains(expected), "{name}: expected '{expected}' in: {msg}");
        assert!(msg.contains("t10k-images") || msg.contains(&*dir.to_string_lossy()), "{name}: names no file: {msg}");
    }
}

/// Each command's help is its own: `train-imagenet` has no `--dataset` (it is always
/// ImageNet), no small-dataset augmentation switches, and needs `--data`.
#[test]
fn help_texts_describe_their_own_command() {
    let help = text(&run(dmnn().arg("--help")));
    assert!(help.contains("Dynamic Multi-path Neural Networks: train, evaluate and measure"), "{help}");
    assert!(!help.contains("Training, evaluation and datasets for dmnn"), "the library's description: {help}");
    let imagenet = text(&run(dmnn().args(["train-imagenet", "--help"])));
    assert!(!imagenet.contains("--dataset") && !imagenet.contains("--no-augment"), "{imagenet}");
    assert!(imagenet.contains("ImageNet root, with train/<wnid>/ and val/"), "{imagenet}");
    let train = text(&run(dmnn().args(["train", "--help"])));
    assert!(train.contains("--dataset") && train.contains("--no-augment"), "{train}");
    refused(&["train-imagenet", "--epochs", "1"], "--data <DATA>");
}
