//! A Burn [`DataLoader`] over an [`ImageSource`] that is reproducible across restarts.
//!
//! Burn's `BatchDataLoader` shuffles with a generator that advances each epoch, so a run
//! resumed from a checkpoint would see another data order than the run it continues. Here the
//! order of epoch `e` is a function of `(seed, e)` only, augmentation of a sample of
//! `(seed, e, index)`, and each batch carries a seed of `(seed, e, batch)` for the Gumbel
//! noise: a resumed run replays exactly what the uninterrupted run would have done.
//!
//! Samples are decoded on a pool of worker threads while the previous batch trains (a bounded
//! queue of ready batches). A sample that fails to load is reported once with its path and left
//! out of its batch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rayon::prelude::*;

use super::{ImageSource, SampleError};

/// A batch of labelled images.
#[derive(Debug, Clone)]
pub struct ClassificationBatch<B: Backend> {
    /// Normalised images, `[batch_size, channels, height, width]`.
    pub images: Tensor<B, 4>,
    /// Class indices, `[batch_size]`.
    pub targets: Tensor<B, 1, Int>,
    /// Seed of this batch's random decisions in the model (Gumbel noise).
    pub seed: u64,
    /// Position of the batch in the run, 0-based: `epoch · batches_per_epoch + batch` (what a
    /// temperature schedule and error messages read).
    pub step: usize,
}

/// Mixes seeds (SplitMix64 finaliser).
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(h << 6).wrapping_add(h >> 2);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// The samples that could not be loaded, shared by all copies of a loader.
#[derive(Clone, Default)]
pub struct SkippedSamples {
    inner: Arc<Mutex<Vec<SampleError>>>,
}

impl SkippedSamples {
    fn record(&self, error: SampleError) {
        let mut list = self.inner.lock().unwrap();
        if !list.iter().any(|e| e.path == error.path) {
            eprintln!("warning: skipping unreadable image {}: {}", error.path, error.reason);
            list.push(error);
        }
    }

    /// Distinct samples skipped so far.
    pub fn list(&self) -> Vec<SampleError> {
        self.inner.lock().unwrap().clone()
    }
}

/// Settings of an [`EpochLoader`].
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// `Some(seed)`: shuffle every epoch and augment (training); `None`: dataset order, no
    /// augmentation (evaluation).
    pub shuffle: Option<u64>,
    /// Stop an epoch after this many batches (quick runs).
    pub max_batches: Option<usize>,
    /// Decode threads (0: one per core).
    pub workers: usize,
    /// Batches decoded ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderConfig {
    /// A training loader: shuffled and augmented with `seed`.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        Self { batch_size, shuffle: Some(seed), max_batches: None, workers: 0, prefetch: 2 }
    }

    /// An evaluation loader: dataset order, no augmentation.
    pub fn eval(batch_size: usize) -> Self {
        Self { batch_size, shuffle: None, max_batches: None, workers: 0, prefetch: 2 }
    }
}

/// The data loader: the order, augmentation and Gumbel seeds of an epoch depend on `(seed,
/// epoch)` only, so a resumed run replays the uninterrupted one; samples decode on worker threads
/// ahead of the training step.
pub struct EpochLoader<B: Backend> {
    source: Arc<dyn ImageSource>,
    config: LoaderConfig,
    range: (usize, usize),
    epoch: Arc<AtomicUsize>,
    device: B::Device,
    pool: Arc<rayon::ThreadPool>,
    skipped: SkippedSamples,
}

impl<B: Backend> EpochLoader<B> {
    /// A loader over `source` on `device`.
    ///
    /// # Panics
    /// If `batch_size` is zero.
    pub fn new(source: Arc<dyn ImageSource>, config: LoaderConfig, device: B::Device) -> Self {
        assert!(config.batch_size > 0, "batch_size=0 must be positive");
        let threads = if config.workers == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            config.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("dmnn-data-{i}"))
            .build()
            .expect("data worker pool");
        let range = (0, source.len());
        Self {
            source,
            config,
            range,
            epoch: Arc::new(AtomicUsize::new(0)),
            device,
            pool: Arc::new(pool),
            skipped: SkippedSamples::default(),
        }
    }

    /// Makes the next call to `iter` produce epoch `epoch` (0-based): for resuming.
    pub fn set_epoch(&self, epoch: usize) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }

    /// The samples skipped so far.
    pub fn skipped(&self) -> SkippedSamples {
        self.skipped.clone()
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = (self.range.1 - self.range.0).div_ceil(self.config.batch_size);
        self.config.max_batches.map_or(n, |m| n.min(m))
    }

    /// Optimiser steps per epoch when the loader is split between `replicas` data-parallel
    /// replicas, as Burn's multi-device strategy splits it (`split_dataloader`: equal contiguous
    /// shares, the last one takes the rest, each a loader of its own): the batches of the largest
    /// share. One replica: [`EpochLoader::num_batches`].
    pub fn steps_per_epoch(&self, replicas: usize) -> usize {
        let replicas = replicas.max(1);
        let len = self.range.1 - self.range.0;
        let largest = len - (replicas - 1) * (len / replicas);
        let n = largest.div_ceil(self.config.batch_size);
        self.config.max_batches.map_or(n, |m| n.min(m))
    }

    /// Another handle on the same loader: the same data, epoch counter and list of skipped
    /// samples (what the Learner takes while the driver keeps its own).
    pub fn clone_loader(&self) -> Self {
        self.copy_with(self.device.clone(), self.range, self.epoch.clone())
    }

    fn copy_with(&self, device: B::Device, range: (usize, usize), epoch: Arc<AtomicUsize>) -> Self {
        Self {
            source: self.source.clone(),
            config: self.config.clone(),
            range,
            epoch,
            device,
            pool: self.pool.clone(),
            skipped: self.skipped.clone(),
        }
    }
}

struct HostBatch {
    pixels: Vec<f32>,
    labels: Vec<i64>,
    seed: u64,
    step: usize,
}

struct EpochIterator<B: Backend> {
    receiver: Receiver<HostBatch>,
    device: B::Device,
    shape: [usize; 3],
    processed: usize,
    total: usize,
}

impl<B: Backend> Iterator for EpochIterator<B> {
    type Item = ClassificationBatch<B>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.receiver.recv().ok()?;
        let n = batch.labels.len();
        self.processed += n;
        let [c, h, w] = self.shape;
        Some(ClassificationBatch {
            images: Tensor::from_data(TensorData::new(batch.pixels, [n, c, h, w]), &self.device),
            targets: Tensor::from_data(TensorData::new(batch.labels, [n]), &self.device),
            seed: batch.seed,
            step: batch.step,
        })
    }
}

impl<B: Backend> DataLoaderIterator<ClassificationBatch<B>> for EpochIterator<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.processed, self.total)
    }
}

impl<B: Backend> DataLoader<B, ClassificationBatch<B>> for EpochLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ClassificationBatch<B>> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) as u64;
        let mut order: Vec<usize> = (self.range.0..self.range.1).collect();
        let seed = self.config.shuffle;
        if let Some(seed) = seed {
            order.shuffle(&mut StdRng::seed_from_u64(mix_seed(&[seed, epoch])));
        }
        let batch_size = self.config.batch_size;
        let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        if let Some(m) = self.config.max_batches {
            batches.truncate(m);
        }
        let total = batches.iter().map(Vec::len).sum();
        let batches_per_epoch = batches.len();
        // a slice of the data (one data-parallel replica's share) draws its own Gumbel noise
        let share = self.range.0 as u64;
        let (sender, receiver) = sync_channel(self.config.prefetch.max(1));
        let (source, pool, skipped) = (self.source.clone(), self.pool.clone(), self.skipped.clone());
        let shape = source.image_shape();
        let per_image = shape.iter().product::<usize>();
        std::thread::Builder::new()
            .name("dmnn-loader".into())
            .spawn(move || {
                for (b, indices) in batches.into_iter().enumerate() {
                    let loaded: Vec<Option<(Vec<f32>, usize)>> = pool.install(|| {
                        indices
                            .par_iter()
                            .map(|&i| {
                                let mut rng = seed.map(|s| StdRng::seed_from_u64(mix_seed(&[s, epoch, i as u64])));
                                let mut out = vec![0f32; per_image];
                                match source.load(i, rng.as_mut(), &mut out) {
                                    Ok(label) => Some((out, label)),
                                    Err(e) => {
                                        skipped.record(e);
                                        None
                                    }
                                }
                            })
                            .collect()
                    });
                    let mut pixels = Vec::with_capacity(indices.len() * per_image);
                    let mut labels = Vec::with_capacity(indices.len());
                    for (p, l) in loaded.into_iter().flatten() {
                        pixels.extend_from_slice(&p);
                        labels.push(l as i64);
                    }
                    if labels.is_empty() {
                        continue;
                    }
                    let batch_seed = match share {
                        0 => mix_seed(&[seed.unwrap_or(0), epoch, b as u64, 0xBA7C]),
                        start => mix_seed(&[seed.unwrap_or(0), epoch, b as u64, 0xBA7C, start]),
                    };
                    let step = epoch as usize * batches_per_epoch + b;
                    if sender.send(HostBatch { pixels, labels, seed: batch_seed, step }).is_err() {
                        return; // the consumer stopped early
                    }
                }
            })
            .expect("spawn the data loader thread");
        Box::new(EpochIterator::<B> { receiver, device: self.device.clone(), shape, processed: 0, total })
    }

    /// The samples the loader draws its batches from (`max_batches` caps an epoch's batches, not
    /// this): what Burn's multi-device strategy splits between the replicas, so that with a cap
    /// each replica still draws from its share of the whole data.
    fn num_items(&self) -> usize {
        self.range.1 - self.range.0
    }

    fn to_device(&self, device: &B::Device) -> Arc<dyn DataLoader<B, ClassificationBatch<B>>> {
        Arc::new(self.copy_with(device.clone(), self.range, self.epoch.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, ClassificationBatch<B>>> {
        let range = (self.range.0 + start, (self.range.0 + end).min(self.range.1));
        let epoch = Arc::new(AtomicUsize::new(self.epoch.load(Ordering::SeqCst)));
        Arc::new(self.copy_with(self.device.clone(), range, epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::InMemoryImages;
    use burn::backend::Flex;

    /// 10 1x1x1 images whose pixel is the index; image 3 "fails to decode".
    struct Numbers;
    impl ImageSource for Numbers {
        fn len(&self) -> usize {
            10
        }
        fn num_classes(&self) -> usize {
            10
        }
        fn image_shape(&self) -> [usize; 3] {
            [1, 1, 1]
        }
        fn load(&self, index: usize, _: Option<&mut StdRng>, out: &mut [f32]) -> Result<usize, SampleError> {
            if index == 3 {
                return Err(SampleError { path: "img3.JPEG".into(), reason: "truncated".into() });
            }
            out[0] = index as f32;
            Ok(index)
        }
        fn describe(&self) -> String {
            "numbers".into()
        }
    }

    fn epoch_labels(loader: &EpochLoader<Flex>) -> Vec<Vec<i64>> {
        loader.iter().map(|b| b.targets.into_data().convert::<i64>().to_vec().unwrap()).collect()
    }

    #[test]
    fn order_depends_on_seed_and_epoch_only() {
        let source: Arc<dyn ImageSource> = Arc::new(Numbers);
        let a = EpochLoader::<Flex>::new(source.clone(), LoaderConfig::train(4, 7), Default::default());
        let (e0, e1) = (epoch_labels(&a), epoch_labels(&a));
        assert_ne!(e0, e1, "each epoch shuffles differently");
        // a fresh loader set to epoch 1 replays epoch 1
        let b = EpochLoader::<Flex>::new(source, LoaderConfig::train(4, 7), Default::default());
        b.set_epoch(1);
        assert_eq!(epoch_labels(&b), e1);
        // the failing sample is left out and reported once
        assert_eq!(e0.iter().map(Vec::len).sum::<usize>(), 9);
        assert_eq!(a.skipped().list().len(), 1);
        assert_eq!(a.skipped().list()[0].path, "img3.JPEG");
    }

    #[test]
    fn evaluation_order_is_the_dataset_order() {
        let loader = EpochLoader::<Flex>::new(Arc::new(Numbers), LoaderConfig::eval(4), Default::default());
        assert_eq!(epoch_labels(&loader), vec![vec![0, 1, 2], vec![4, 5, 6, 7], vec![8, 9]]);
        let images: Vec<f32> = loader.iter().next().unwrap().images.into_data().to_vec().unwrap();
        assert_eq!(images, vec![0.0, 1.0, 2.0]);
    }

    #[test]
    fn max_batches_and_slices() {
        let data =
            InMemoryImages::new("z", vec![0; 20], (0..20).map(|i| i % 2).collect(), [1, 1, 1], 2, vec![0.0], vec![1.0]);
        let mut config = LoaderConfig::eval(3);
        config.max_batches = Some(2);
        let loader = EpochLoader::<Flex>::new(Arc::new(data), config, Default::default());
        assert_eq!(loader.num_batches(), 2);
        assert_eq!(epoch_labels(&loader).len(), 2);
        let part = loader.slice(10, 14);
        assert_eq!(part.num_items(), 4);
    }

    /// Burn's multi-device strategy splits the loader into contiguous shares: each replica draws
    /// from its own half of the data (with a cap too), gets its own Gumbel seeds, and the steps
    /// per epoch are the largest share's batches.
    #[test]
    fn replicas_draw_their_own_share_and_their_own_noise() {
        use burn::data::dataloader::split::split_dataloader;
        let data = InMemoryImages::new("z", vec![0; 21], (0..21).collect(), [1, 1, 1], 21, vec![0.0], vec![1.0]);
        for cap in [None, Some(2)] {
            let mut config = LoaderConfig::train(4, 9);
            config.max_batches = cap;
            let loader = EpochLoader::<Flex>::new(Arc::new(data.clone()), config, Default::default());
            let device = Default::default();
            let shares = split_dataloader(Arc::new(loader.clone_loader()), &[device, device]);
            let epochs: Vec<Vec<ClassificationBatch<Flex>>> = shares.iter().map(|s| s.iter().collect()).collect();
            let steps = epochs.iter().map(Vec::len).max().unwrap();
            assert_eq!(loader.steps_per_epoch(2), steps, "cap {cap:?}");
            assert_eq!(steps, cap.unwrap_or(3), "10 and 11 images in batches of 4");
            let labels = |e: &[ClassificationBatch<Flex>]| -> Vec<i64> {
                e.iter().flat_map(|b| b.targets.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap()).collect()
            };
            assert!(labels(&epochs[0]).iter().all(|&l| l < 10), "the first share is the first half");
            assert!(labels(&epochs[1]).iter().all(|&l| l >= 10), "the second share is the second half");
            for (a, b) in epochs[0].iter().zip(&epochs[1]) {
                assert_eq!(a.step, b.step, "replicas are at the same step");
                assert_ne!(a.seed, b.seed, "each replica draws its own Gumbel noise");
            }
        }
        let one = EpochLoader::<Flex>::new(Arc::new(data), LoaderConfig::train(4, 9), Default::default());
        assert_eq!(one.steps_per_epoch(1), one.num_batches());
    }
}
