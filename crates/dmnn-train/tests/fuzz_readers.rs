//! Mutation fuzz of every reader a user's file reaches: IDX images and labels (gzip), CIFAR
//! records, JPEG and PNG (the ImageNet reader's decode), PyTorch and safetensors checkpoints, and
//! dmnn's MessagePack model records. Seeded and deterministic: the corpus is the repository's
//! own files (`data/`, the torchvision fixtures) and small files built from them, mutated by
//! a fixed-seed generator, plus header-aware cases (zero and huge dimensions). A reader may
//! refuse a file, never panic; an abort (a huge allocation) kills the test process and fails it.

mod common;

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::module::Module;
use burn::record::Recorder;
use common::TempDir;
use dmnn_core::{Dmnn, DmnnConfig};
use dmnn_train::data::{cifar, decode_rgb, read_idx_images, read_idx_labels, Split};
use dmnn_train::run::{load_record_checked, AtomicRecorder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One mutation of `bytes`: flipped bytes, a cut, inserted bytes, an extreme 32-bit value
/// written over a header-sized window, or a repeated slice.
fn mutate(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if b.is_empty() {
        return vec![rng.random()];
    }
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
        }
        1 => b.truncate(rng.random_range(0..b.len())),
        2 => {
            let at = rng.random_range(0..=b.len());
            let extra: Vec<u8> = (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
            b.splice(at..at, extra);
        }
        3 => {
            let at = rng.random_range(0..b.len().min(64));
            let value: u32 = [0, 1, 0xFFFF_FFFF, 0x7FFF_FFFF, 0x0100_0000, rng.random()][rng.random_range(0..6)];
            for (k, byte) in value.to_be_bytes().into_iter().enumerate() {
                if let Some(slot) = b.get_mut(at + k) {
                    *slot = byte;
                }
            }
        }
        _ => {
            let start = rng.random_range(0..b.len());
            let end = rng.random_range(start..b.len().min(start + 256) + 1);
            let piece = b[start..end].to_vec();
            let at = rng.random_range(0..=b.len());
            b.splice(at..at, piece);
        }
    }
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()), &mut bytes)
        .unwrap();
    bytes
}

/// Runs `cases` mutations of `seed_bytes` through `read` (which gets the path of the mutated
/// file); returns how many panicked.
fn fuzz(
    name: &str,
    dir: &Path,
    file_name: &str,
    seed_bytes: &[u8],
    cases: usize,
    seed: u64,
    wrap: impl Fn(Vec<u8>) -> Vec<u8>,
    read: impl Fn(&Path),
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let path = dir.join(file_name);
    let mut panics = 0;
    for case in 0..cases {
        let bytes = wrap(mutate(&mut rng, seed_bytes));
        std::fs::write(&path, &bytes).unwrap();
        if catch_unwind(AssertUnwindSafe(|| read(&path))).is_err() {
            eprintln!("{name}: case {case} panicked (seed {seed})");
            panics += 1;
        }
    }
    panics
}

#[test]
fn readers_refuse_mutated_files_without_panicking() {
    let tmp = TempDir::new("fuzz");
    let dir = tmp.path();
    let mut panics = 0;

    // IDX: the first 20 Fashion-MNIST test images and labels, mutated before and after gzip
    let fashion = repo().join("data/fashion-mnist");
    let images = gunzip(&fashion.join("t10k-images-idx3-ubyte.gz"));
    let mut small = images[..16].to_vec();
    small[4..8].copy_from_slice(&20u32.to_be_bytes());
    small.extend_from_slice(&images[16..16 + 20 * 784]);
    let labels = gunzip(&fashion.join("t10k-labels-idx1-ubyte.gz"));
    let mut small_labels = labels[..8].to_vec();
    small_labels[4..8].copy_from_slice(&20u32.to_be_bytes());
    small_labels.extend_from_slice(&labels[8..28]);
    let idx = |p: &Path| drop(read_idx_images(p));
    panics += fuzz("idx images", dir, "i.gz", &small, 800, 1, |b| gzip(&b), idx);
    panics += fuzz("idx images (gzip bytes)", dir, "i.gz", &gzip(&small), 300, 2, |b| b, idx);
    panics += fuzz("idx labels", dir, "l.gz", &small_labels, 400, 3, |b| gzip(&b), |p| drop(read_idx_labels(p)));
    // header-aware: zero and huge dimensions, products that wrap
    for dims in [[0u32, 0, 0], [1, 0, 28], [u32::MAX, u32::MAX, u32::MAX], [10000, 350476688, 3289581145], [1, 1, 1]] {
        let mut header = 0x0803u32.to_be_bytes().to_vec();
        dims.iter().for_each(|d| header.extend_from_slice(&d.to_be_bytes()));
        std::fs::write(dir.join("h.gz"), gzip(&header)).unwrap();
        if catch_unwind(AssertUnwindSafe(|| read_idx_images(&dir.join("h.gz")))).is_err() {
            eprintln!("idx header {dims:?} panicked");
            panics += 1;
        }
    }

    // CIFAR-10: a test batch of 10 records built from Fashion-MNIST pixels
    let cifar_dir = dir.join("cifar");
    std::fs::create_dir_all(&cifar_dir).unwrap();
    let records: Vec<u8> =
        (0..10).flat_map(|r| std::iter::once(r as u8).chain(images[16..].iter().copied().cycle().take(3072))).collect();
    panics += fuzz(
        "cifar",
        &cifar_dir,
        "test_batch.bin",
        &records,
        300,
        4,
        |b| b,
        |p| drop(cifar(p.parent().unwrap(), Split::Test)),
    );

    // JPEG and PNG: small versions of the CC0 photographs
    for (k, name) in ["chelsea.jpg", "camera.jpg", "chelsea_cmyk.jpg", "coffee.jpg"].into_iter().enumerate() {
        let bytes = std::fs::read(repo().join("data/photos").join(name)).unwrap();
        let image = image::load_from_memory(&bytes).unwrap().thumbnail(48, 48);
        let mut jpeg = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        let mut png = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let decode = |p: &Path| drop(decode_rgb(p));
        panics += fuzz(name, dir, "x.JPEG", &jpeg, 250, 10 + k as u64, |b| b, decode);
        panics += fuzz(name, dir, "y.JPEG", &png, 150, 20 + k as u64, |b| b, decode);
    }
    // the CMYK original itself (Adobe markers), unshrunk
    let cmyk = std::fs::read(repo().join("data/photos/chelsea_cmyk.jpg")).unwrap();
    panics += fuzz("cmyk", dir, "z.JPEG", &cmyk, 60, 30, |b| b, |p| drop(decode_rgb(p)));

    // PyTorch and safetensors checkpoints
    let fixtures = repo().join("crates/dmnn-core/tests/fixtures");
    for (k, name) in ["tv_basic.safetensors", "tv_basic.pth"].into_iter().enumerate() {
        let bytes = std::fs::read(fixtures.join(name)).unwrap();
        let read = |p: &Path| drop(dmnn_core::weights::read_checkpoint(p));
        panics += fuzz(name, dir, name, &bytes, 300, 40 + k as u64, |b| b, read);
    }

    // dmnn model records: a half-width dmnn_small, written and mutated, loaded into its model
    let config = DmnnConfig::preset("dmnn_small").unwrap().scale_width(0.5);
    let device = Default::default();
    let model: Dmnn<Flex> = config.init(&device);
    let record_path = dir.join("model");
    Recorder::<Flex>::record(&AtomicRecorder, model.clone().into_record(), record_path.clone()).unwrap();
    let bytes = std::fs::read(record_path.with_extension("mpk")).unwrap();
    panics += fuzz(
        "model record",
        dir,
        "m.mpk",
        &bytes,
        300,
        50,
        |b| b,
        |p| {
            let record: Result<<Dmnn<Flex> as Module<Flex>>::Record, _> =
                Recorder::<Flex>::load(&AtomicRecorder, p.with_extension(""), &device);
            if let Ok(record) = record {
                drop(load_record_checked(config.init::<Flex>(&device), record, p));
            }
        },
    );

    assert_eq!(panics, 0, "{panics} mutated files made a reader panic (see the lines above)");
}
