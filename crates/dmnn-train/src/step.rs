//! The model as Burn's `Learner` sees it: [`DmnnClassifier`] wraps a [`Dmnn`] with its
//! objective and implements `TrainStep` / `InferenceStep`; [`StepOutput`] is what every metric
//! reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::{
    AutodiffModule, Content, Devices, EmptyRecord, HasAutodiffModule, Module, ModuleDisplay, ModuleDisplayDefault,
    ModuleMapper, ModuleVisitor, Param, ParamId,
};
use burn::optim::GradientsParams;
use burn::prelude::ToElement;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::metric::ItemLazy;
use burn::train::{InferenceStep, Interrupter, TrainOutput, TrainStep};
use dmnn_core::gate::TemperatureSchedule;
use dmnn_core::{Dmnn, ForwardOptions, ObjectiveConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::ClassificationBatch;
use crate::run::CheckpointReads;

/// Training state shared by every clone of the model: the run's length (for the temperature
/// schedule), its data-parallel replicas (for the loss scale) and the non-finite-loss guard. The step itself comes with every batch
/// ([`ClassificationBatch::step`]), from the data order of `(seed, epoch)`.
pub struct TrainProgress {
    total_steps: usize,
    steps_per_epoch: usize,
    replicas: usize,
    stopped_at: Mutex<Option<(usize, f64)>>,
    stop: AtomicBool,
    interrupter: Mutex<Option<Interrupter>>,
    checkpoints: Arc<CheckpointReads>,
}

impl core::fmt::Debug for TrainProgress {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TrainProgress({} steps)", self.total_steps)
    }
}

impl TrainProgress {
    /// Progress of a run of `total_steps` optimiser steps, `steps_per_epoch` per epoch, each
    /// over the batches of `replicas` data-parallel replicas.
    pub fn new(total_steps: usize, steps_per_epoch: usize, replicas: usize) -> Arc<Self> {
        Arc::new(Self {
            total_steps: total_steps.max(1),
            steps_per_epoch: steps_per_epoch.max(1),
            replicas: replicas.max(1),
            stopped_at: Mutex::new(None),
            stop: AtomicBool::new(false),
            interrupter: Mutex::new(None),
            checkpoints: Default::default(),
        })
    }

    /// The checkpoint records being read off the training thread: a step waits for them
    /// (see [`CheckpointReads`]).
    pub fn checkpoint_reads(&self) -> Arc<CheckpointReads> {
        self.checkpoints.clone()
    }

    /// The Learner's interrupter, used to stop on a non-finite loss.
    pub fn set_interrupter(&self, interrupter: Interrupter) {
        *self.interrupter.lock().unwrap() = Some(interrupter);
    }

    /// Where in the run step `step` (1-based) is, in `(0, 1]`: what the temperature schedule
    /// reads.
    pub fn fraction(&self, step: usize) -> f64 {
        step as f64 / self.total_steps as f64
    }

    /// The 1-based step and the loss value at which training stopped on a non-finite loss.
    pub fn non_finite(&self) -> Option<(usize, f64)> {
        *self.stopped_at.lock().unwrap()
    }

    fn fail(&self, step: usize, value: f64) {
        self.stop.store(true, Ordering::SeqCst);
        let mut at = self.stopped_at.lock().unwrap();
        if at.is_none() {
            *at = Some((step, value));
            let epoch = (step - 1) / self.steps_per_epoch + 1;
            let msg = format!("non-finite loss ({value}) at step {step} (epoch {epoch})");
            if let Some(i) = self.interrupter.lock().unwrap().as_ref() {
                i.stop(Some(&msg));
            }
        }
    }
}

/// A [`Dmnn`] with its training objective: the module Burn's `Learner` trains.
///
/// Its `Module` implementation is the one `#[derive(Module)]` writes (the same record, so
/// checkpoints are unchanged), except `fork`: Burn's multi-device strategy forks the model onto
/// each replica's device, and Burn 0.21 cannot move a tensor between two WGPU devices, so the
/// fork copies through host memory where the devices differ
/// ([`fork_replica`](dmnn_core::backend::fork_replica)) and remembers the device it came from:
/// the replica's gradients go back there ([`DmnnClassifier::home`]).
#[derive(Debug)]
pub struct DmnnClassifier<B: Backend> {
    /// The network.
    pub model: Dmnn<B>,
    /// The objective (not a parameter).
    pub objective: ObjectiveConfig,
    /// Weight decay of convolution and linear weights (not batch norm, not biases).
    pub weight_decay: f64,
    /// Gumbel temperature over training.
    pub temperature: TemperatureSchedule,
    /// Shared progress (not a parameter).
    pub progress: Arc<TrainProgress>,
    /// On a replica: the device of the model it was forked from (where the optimiser runs),
    /// where its gradients are sent; `None` on the model itself.
    pub home: Option<B::Device>,
}

/// The record of a [`DmnnClassifier`]: the network's (the other fields are settings).
#[derive(burn::record::Record)]
pub struct DmnnClassifierRecord<B: Backend> {
    /// The network's record.
    pub model: <Dmnn<B> as Module<B>>::Record,
    #[allow(missing_docs)]
    pub objective: EmptyRecord,
    #[allow(missing_docs)]
    pub weight_decay: EmptyRecord,
    #[allow(missing_docs)]
    pub temperature: EmptyRecord,
    #[allow(missing_docs)]
    pub progress: EmptyRecord,
}

impl<B: Backend> DmnnClassifier<B> {
    fn with_model<C: Backend>(&self, model: Dmnn<C>, home: Option<C::Device>) -> DmnnClassifier<C> {
        DmnnClassifier {
            model,
            objective: self.objective.clone(),
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            progress: self.progress.clone(),
            home,
        }
    }
}

impl<B: Backend> Clone for DmnnClassifier<B> {
    fn clone(&self) -> Self {
        self.with_model(self.model.clone(), self.home.clone())
    }
}

const CONTAINER: &str = "Struct:DmnnClassifier";

impl<B: Backend> Module<B> for DmnnClassifier<B> {
    type Record = DmnnClassifierRecord<B>;

    fn load_record(self, record: Self::Record) -> Self {
        let model = self.model.clone().load_record(record.model);
        self.with_model(model, self.home.clone())
    }

    fn into_record(self) -> Self::Record {
        DmnnClassifierRecord {
            model: self.model.into_record(),
            objective: EmptyRecord::new(),
            weight_decay: EmptyRecord::new(),
            temperature: EmptyRecord::new(),
            progress: EmptyRecord::new(),
        }
    }

    fn num_params(&self) -> usize {
        Module::num_params(&self.model)
    }

    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        visitor.enter_module("model", CONTAINER);
        self.model.visit(visitor);
        visitor.exit_module("model", CONTAINER);
    }

    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        mapper.enter_module("model", CONTAINER);
        let model = self.model.clone().map(mapper);
        mapper.exit_module("model", CONTAINER);
        self.with_model(model, self.home.clone())
    }

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.model.collect_devices(devices)
    }

    fn to_device(self, device: &B::Device) -> Self {
        let model = self.model.clone().to_device(device);
        self.with_model(model, self.home.clone())
    }

    fn fork(self, device: &B::Device) -> Self {
        let home = self.home.clone().or_else(|| self.model.devices().into_iter().next());
        let model = dmnn_core::backend::fork_replica(self.model.clone(), device);
        self.with_model(model, home)
    }
}

impl<B: AutodiffBackend> AutodiffModule<B> for DmnnClassifier<B> {
    type InnerModule = DmnnClassifier<B::InnerBackend>;

    fn valid(&self) -> Self::InnerModule {
        self.with_model(self.model.valid(), None)
    }

    fn from_inner(module: Self::InnerModule) -> Self {
        module.with_model(Dmnn::from_inner(module.model.clone()), None)
    }
}

impl<B: AutodiffBackend> HasAutodiffModule<B> for DmnnClassifier<B::InnerBackend> {
    type TrainModule = DmnnClassifier<B>;
}

impl<B: Backend> core::fmt::Display for DmnnClassifier<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DmnnClassifier({})", self.model.config.name)
    }
}

impl<B: Backend> ModuleDisplayDefault for DmnnClassifier<B> {
    fn content(&self, content: Content) -> Option<Content> {
        content.set_top_level_type("DmnnClassifier").add("model", &self.model).optional()
    }

    fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl<B: Backend> ModuleDisplay for DmnnClassifier<B> {}

/// Host-side statistics of one step: what metrics, logs and reports read.
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    /// Samples in the batch.
    pub batch_size: usize,
    /// Total loss.
    pub loss: f64,
    /// Classifier cross-entropy.
    pub ce: f64,
    /// Auxiliary cross-entropy.
    pub aux: f64,
    /// Cost penalty (unweighted).
    pub cost: f64,
    /// Samples whose top-1 prediction is right.
    pub correct_top1: usize,
    /// Samples whose label is among the top 5 predictions.
    pub correct_top5: usize,
    /// Executed MACs of every sample.
    pub macs: Vec<f64>,
    /// MACs of the network with every path on.
    pub macs_full: f64,
    /// Open-path rate of every gated block (mean over the batch and paths).
    pub block_rates: Vec<f64>,
}

/// The device-side output of a step, synced to [`StepStats`] off the training thread (Burn's
/// Learner reads it on its event processor's thread): one tensor holding, in order, the loss, the
/// cross-entropy, the auxiliary loss, the cost penalty, the gated blocks' open rates, every
/// sample's executed MACs, its label and its logits.
///
/// One tensor made for it, so that no clone of it stays with the training thread: Burn 0.21's
/// fusion (the WGPU and CUDA backends) judges from the count of a tensor's clones whether a read
/// may free it, and that count can change between the judgement and the read. When another
/// thread drops a clone in between, the tensor is freed before it is read, and the read fails
/// ("Should have handle for tensor"). The loss and the logits themselves live on in the autodiff
/// graph and the batch, on the training thread.
pub struct StepOutput<B: Backend> {
    values: Tensor<B, 1>,
    batch_size: usize,
    blocks: usize,
    macs_full: f64,
}

impl<B: Backend> StepOutput<B> {
    /// Packs a step's output: `terms` are the loss, the cross-entropy, the auxiliary loss and
    /// the cost penalty (`[1]` each); `block_rates` is `[L]`, `macs` and `targets` are `[N]`,
    /// `logits` is `[N, classes]`.
    fn pack(
        terms: [Tensor<B, 1>; 4],
        block_rates: Option<Tensor<B, 1>>,
        macs: Tensor<B, 1>,
        targets: Tensor<B, 1, Int>,
        logits: Tensor<B, 2>,
        macs_full: f64,
    ) -> Self {
        let [batch_size, num_classes] = logits.dims();
        let blocks = block_rates.as_ref().map_or(0, |r| r.dims()[0]);
        let mut parts = terms.to_vec();
        parts.extend(block_rates);
        parts.extend([macs, targets.float(), logits.reshape([batch_size * num_classes])]);
        Self { values: Tensor::cat(parts, 0), batch_size, blocks, macs_full }
    }
}

impl<B: Backend> ItemLazy for StepOutput<B> {
    type ItemSync = StepStats;

    fn sync(self) -> StepStats {
        let (n, blocks) = (self.batch_size, self.blocks);
        let values = self.values.into_data().convert::<f64>().to_vec::<f64>().expect("f64 values");
        let (terms, rest) = values.split_at(4);
        let (block_rates, rest) = rest.split_at(blocks);
        let (macs, rest) = rest.split_at(n);
        let (targets, logits) = rest.split_at(n);
        let num_classes = logits.len() / n.max(1);
        let (mut top1, mut top5) = (0, 0);
        for (b, &y) in targets.iter().enumerate() {
            let row = &logits[b * num_classes..(b + 1) * num_classes];
            let target = row[y as usize];
            // a row with a NaN logit ranks nothing: wrong, never right by default
            if row.iter().any(|v| v.is_nan()) {
                continue;
            }
            // rank of the target: classes scoring strictly higher (ties resolved in its favour)
            let higher = row.iter().filter(|&&v| v > target).count();
            top1 += usize::from(higher == 0);
            top5 += usize::from(higher < 5);
        }
        StepStats {
            batch_size: n,
            loss: terms[0],
            ce: terms[1],
            aux: terms[2],
            cost: terms[3],
            correct_top1: top1,
            correct_top5: top5,
            macs: macs.to_vec(),
            macs_full: self.macs_full,
            block_rates: block_rates.to_vec(),
        }
    }
}

/// Draws the Gumbel noise of every gated block from a batch seed (host generator, so a step is
/// reproducible whatever the backend's generator did before).
pub fn batch_noise<B: Backend>(
    seed: u64,
    blocks: usize,
    batch_size: usize,
    num_paths: usize,
    device: &B::Device,
) -> Vec<Tensor<B, 3>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..blocks)
        .map(|_| {
            let n = batch_size * num_paths * 2;
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    let u: f64 = rng.random_range(1e-6..1.0 - 1e-6);
                    -(-u.ln()).ln() as f32
                })
                .collect();
            Tensor::from_data(TensorData::new(values, [batch_size, num_paths, 2]), device)
        })
        .collect()
}

/// Adds `weight_decay · w` to the gradient of every weight of rank ≥ 2 (convolutions, linear
/// layers, recurrent cells): biases and batch-norm scales and shifts are not decayed.
struct DecayWeights<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    weight_decay: f64,
    _b: core::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for DecayWeights<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if D < 2 {
            return;
        }
        let id: ParamId = param.id;
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) {
            let decayed = grad + param.val().inner().mul_scalar(self.weight_decay);
            self.grads.register::<B::InnerBackend, D>(id, decayed);
        }
    }
}

/// Moves every gradient of a replica to the main device, through host memory where needed
/// ([`to_device`](dmnn_core::backend::to_device)).
struct SendHome<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    home: &'a B::Device,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SendHome<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, dmnn_core::backend::to_device(grad, self.home));
        }
    }
}

impl<B: Backend> DmnnClassifier<B> {
    /// A classifier that only evaluates (no weight decay, constant temperature, no schedule).
    pub fn for_inference(model: Dmnn<B>, objective: ObjectiveConfig) -> Self {
        Self {
            model,
            objective,
            weight_decay: 0.0,
            temperature: Default::default(),
            progress: TrainProgress::new(1, 1, 1),
            home: None,
        }
    }

    /// The step output of a forward pass (loss terms, predictions, executed MACs).
    pub fn output_of(&self, out: dmnn_core::DmnnOutput<B>, targets: Tensor<B, 1, Int>) -> StepOutput<B> {
        self.output(out, targets).0
    }

    fn output(&self, out: dmnn_core::DmnnOutput<B>, targets: Tensor<B, 1, Int>) -> (StepOutput<B>, Tensor<B, 1>) {
        let terms = self.objective.loss(&out, targets.clone());
        let block_rates = (!out.gates.is_empty()).then(|| {
            Tensor::cat(out.gates.iter().map(|g| g.clone().detach().mean()).collect(), 0)
            // [L]
        });
        let macs_full = out.cost.macs_full() as f64;
        let total = terms.total.clone();
        (
            StepOutput::pack(
                [terms.total, terms.ce, terms.aux, terms.cost].map(Tensor::detach),
                block_rates,
                out.macs.detach(),
                targets,
                out.logits.detach(),
                macs_full,
            ),
            total,
        )
    }
}

impl<B: AutodiffBackend> TrainStep for DmnnClassifier<B> {
    type Input = ClassificationBatch<B>;
    type Output = StepOutput<B>;

    /// One replica's share of a step: its forward pass, and the gradients of its loss and weight
    /// decay divided by the number of replicas (Burn sums the replicas' gradients), so that the
    /// optimiser sees the global batch's mean gradient.
    fn step(&self, batch: ClassificationBatch<B>) -> TrainOutput<StepOutput<B>> {
        self.timed_step(batch).0
    }
}

/// Where one replica's step spent its time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimes {
    /// The forward pass and the objective, up to the loss on the host.
    pub forward: std::time::Duration,
    /// The backward pass and the weight decay (on an asynchronous backend: until the gradients
    /// are queued).
    pub backward: std::time::Duration,
}

/// Runs `f` in the rayon pool of the calling replica's thread: each data-parallel replica has a
/// pool of its own with its share of the cores (one each for two replicas on two cores), so the
/// replicas are the parallelism and none waits on tasks of the other in the shared pool. The CPU
/// backend's operations run their rayon work in the pool they are called from; GPU backends
/// only queue work from it.
fn in_replica_pool<R: Send>(replicas: usize, f: impl FnOnce() -> R + Send) -> R {
    thread_local! {
        static POOL: std::cell::OnceCell<rayon::ThreadPool> = const { std::cell::OnceCell::new() };
    }
    POOL.with(|pool| {
        let pool = pool.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            rayon::ThreadPoolBuilder::new()
                .num_threads((cores / replicas).max(1))
                .thread_name(|i| format!("dmnn-replica-{i}"))
                .build()
                .expect("a replica's thread pool")
        });
        pool.install(f)
    })
}

impl<B: AutodiffBackend> DmnnClassifier<B> {
    /// [`TrainStep::step`] with the time its forward and backward passes took (for the
    /// benchmark); with several replicas it runs in the calling replica's thread pool.
    pub fn timed_step(&self, batch: ClassificationBatch<B>) -> (TrainOutput<StepOutput<B>>, StepTimes) {
        match self.progress.replicas {
            1 => self.step_replica(batch),
            replicas => in_replica_pool(replicas, || self.step_replica(batch)),
        }
    }

    fn step_replica(&self, batch: ClassificationBatch<B>) -> (TrainOutput<StepOutput<B>>, StepTimes) {
        // the optimiser step after this one drops tensors a checkpoint may still be reading
        self.progress.checkpoints.wait();
        let start = std::time::Instant::now();
        let step = batch.step + 1;
        let [batch_size, ..] = batch.images.dims();
        let device = batch.images.device();
        let noise = batch_noise(batch.seed, self.model.num_blocks(), batch_size, self.model.config.num_paths, &device);
        let temperature = self.temperature.at(self.progress.fraction(step));
        let options = ForwardOptions::default().with_noise(noise).with_temperature(temperature).with_autodiff_kernels();
        let out = self.model.forward_with(batch.images, options);
        let (output, loss) = self.output(out, batch.targets);
        let value = loss.clone().into_scalar().to_f64();
        let forward = start.elapsed();
        if !value.is_finite() || self.progress.stop.load(Ordering::SeqCst) {
            // leave the weights as they are: no gradients, and the run stops
            self.progress.fail(step, value);
            let times = StepTimes { forward, backward: Default::default() };
            return (TrainOutput { grads: GradientsParams::new(), item: output }, times);
        }
        let replicas = self.progress.replicas;
        let loss = if replicas > 1 { loss.div_scalar(replicas as f64) } else { loss };
        let mut grads = GradientsParams::from_grads(loss.backward(), self);
        if self.weight_decay > 0.0 {
            self.visit(&mut DecayWeights::<B> {
                grads: &mut grads,
                weight_decay: self.weight_decay / replicas as f64,
                _b: Default::default(),
            });
        }
        if let Some(home) = self.home.as_ref().filter(|&home| *home != device) {
            // Burn sums the replicas' gradients on the main device; these are already there
            self.visit(&mut SendHome::<B> { grads: &mut grads, home });
        }
        let times = StepTimes { forward, backward: start.elapsed() - forward };
        (TrainOutput { grads, item: output }, times)
    }
}

impl<B: Backend> InferenceStep for DmnnClassifier<B> {
    type Input = ClassificationBatch<B>;
    type Output = StepOutput<B>;

    fn step(&self, batch: ClassificationBatch<B>) -> StepOutput<B> {
        let out = self.model.forward(batch.images);
        self.output(out, batch.targets).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn a_nan_logit_is_never_a_correct_prediction() {
        let device = Default::default();
        let logits = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![f32::NAN, f32::NAN, 1.0, 0.0, 0.0, 2.0], [3, 2]),
            &device,
        );
        let targets = Tensor::<Flex, 1, Int>::from_data(TensorData::new(vec![0i64, 0, 1], [3]), &device);
        let terms = [0.0, 1.0, 2.0, 3.0].map(|v| Tensor::<Flex, 1>::from_floats([v], &device));
        let out = StepOutput::pack(terms, None, Tensor::zeros([3], &device), targets, logits, 1.0);
        let stats = out.sync();
        // the NaN row is wrong at top-1 and top-5 alike, the two others right
        assert_eq!((stats.correct_top1, stats.correct_top5), (2, 2));
    }

    /// Every field comes back from the one packed tensor where it belongs.
    #[test]
    fn a_step_output_reads_back_every_field() {
        let device = Default::default();
        let terms = [0.5, 1.5, 2.5, 3.5].map(|v| Tensor::<Flex, 1>::from_floats([v], &device));
        let rates = Tensor::<Flex, 1>::from_floats([0.25, 0.75], &device);
        let macs = Tensor::<Flex, 1>::from_floats([10.0, 20.0, 30.0], &device);
        let targets = Tensor::<Flex, 1, Int>::from_data(TensorData::new(vec![2i64, 0, 1], [3]), &device);
        // sample 0: class 2 ranks second (wrong, top-5 right); 1: right; 2: right
        let logits = Tensor::<Flex, 2>::from_floats([[0.0, 5.0, 4.0], [9.0, 1.0, 2.0], [0.0, 1.0, 0.5]], &device);
        let stats = StepOutput::pack(terms, Some(rates), macs, targets, logits, 60.0).sync();
        assert_eq!(stats.batch_size, 3);
        assert_eq!([stats.loss, stats.ce, stats.aux, stats.cost], [0.5, 1.5, 2.5, 3.5]);
        assert_eq!(stats.block_rates, vec![0.25, 0.75]);
        assert_eq!(stats.macs, vec![10.0, 20.0, 30.0]);
        assert_eq!(stats.macs_full, 60.0);
        assert_eq!((stats.correct_top1, stats.correct_top5), (2, 3));
    }
}
