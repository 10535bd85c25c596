//! The gate controller of DMNN (Su et al., "Dynamic Multi-path Neural Network",
//! arXiv 1902.10949, §3.2), as fixed by DESIGN §4.
//!
//! For block `l` with input `x_l` and the state `h_{l-1}` handed on by the previous block:
//!
//! ```text
//! s_l = GAP(x_l)                        [B, C_in]
//! e_l = relu(BN(Linear_l(C_in -> d)))   [B, d]     one per block
//! h_l = GRUCell(e_l, h_{l-1})           [B, d]     shared by all blocks (or LSTM, or none: h_l = e_l)
//! z_l = Linear_l(d -> 2N)               [B, N, 2]  per-path (off, on) logits
//! a_l = Linear(d -> K)(h_l)             [B, K]     auxiliary class prediction (optional)
//! ```

use core::fmt;
use core::str::FromStr;

use burn::config::Config;
use burn::module::{Initializer, Module, Param};
use burn::nn::gru::{Gru, GruConfig};
use burn::nn::lstm::{Lstm, LstmConfig, LstmState};
use burn::nn::{Linear, LinearConfig};

use crate::BatchNorm;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::GateError;
use crate::gumbel::{deterministic_gates, gumbel_noise, gumbel_straight_through, GateOptions};
use crate::params::param_count;

/// What a controller remembers from the blocks before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrevState {
    /// Every block decides from its own input only (`h_l = e_l`).
    None,
    /// A GRU cell shared by all blocks carries the state (the paper's default).
    #[default]
    Gru,
    /// An LSTM cell shared by all blocks carries the state.
    Lstm,
}

impl PrevState {
    /// The names [`PrevState::from_str`] accepts.
    pub const NAMES: [&'static str; 3] = ["none", "gru", "lstm"];
}

impl fmt::Display for PrevState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Gru => "gru",
            Self::Lstm => "lstm",
        })
    }
}

impl FromStr for PrevState {
    type Err = GateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "gru" => Ok(Self::Gru),
            "lstm" => Ok(Self::Lstm),
            other => Err(GateError::Unknown { what: "prev_state", value: other.to_string(), known: &Self::NAMES }),
        }
    }
}

/// One gated block as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatedBlockSpec {
    /// Channels of the block's input (what the controller pools).
    pub channels_in: usize,
    /// Whether this block's controller carries an auxiliary category head.
    pub aux_head: bool,
}

/// Configuration of the gate controllers of a whole network.
///
/// The Gumbel temperature and the inference threshold are not part of it: a forward pass hands
/// them in ([`GateOptions`]), from a temperature schedule in training or a run-time threshold.
#[derive(Config, Debug)]
pub struct ControllerConfig {
    /// Width `d` of the embedding and of the recurrent state.
    #[config(default = 32)]
    pub hidden_size: usize,
    /// How the state is handed from block to block.
    #[config(default = "PrevState::Gru")]
    pub prev_state: PrevState,
    /// Whether auxiliary category heads predict the class from the controller state.
    #[config(default = true)]
    pub category_head: bool,
    /// Initial bias of the `(off, on)` logits; `(0.1, 2.0)` opens a path ~87 % of the time.
    #[config(default = "[0.1, 2.0]")]
    pub logit_bias: [f64; 2],
    /// Standard deviation of the initial weights of the logit layer (small: start near the bias).
    #[config(default = 0.01)]
    pub logit_weight_std: f64,
}

impl ControllerConfig {
    /// Builds the controllers of `blocks.len()` gated blocks with `num_paths` paths each.
    ///
    /// # Panics
    /// If `hidden_size` or `num_paths` is zero, or a block's `channels_in` is zero, or an auxiliary
    /// head is asked for with `num_classes == 0`.
    pub fn init<B: Backend>(
        &self,
        blocks: &[GatedBlockSpec],
        num_paths: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Controller<B> {
        assert!(self.hidden_size > 0, "controller hidden_size=0 must be positive");
        assert!(num_paths > 0, "controller num_paths=0 must be positive");
        let d = self.hidden_size;
        let blocks = blocks
            .iter()
            .enumerate()
            .map(|(l, spec)| {
                assert!(spec.channels_in > 0, "block {l}: controller channels_in=0 must be positive");
                let aux_head = (self.category_head && spec.aux_head).then(|| {
                    assert!(num_classes > 0, "an auxiliary category head needs num_classes > 0");
                    LinearConfig::new(d, num_classes).init(device)
                });
                BlockController {
                    embed: LinearConfig::new(spec.channels_in, d).init(device),
                    embed_norm: BatchNorm::new(d, device),
                    gate_logits: self.init_logit_layer(num_paths, device),
                    aux_head,
                }
            })
            .collect();
        let recurrent = match self.prev_state {
            PrevState::None => None,
            PrevState::Gru => Some(RecurrentCell::Gru(GruConfig::new(d, d, true).init(device))),
            PrevState::Lstm => Some(RecurrentCell::Lstm(LstmConfig::new(d, d, true).init(device))),
        };
        Controller { blocks, recurrent, num_paths }
    }

    fn init_logit_layer<B: Backend>(&self, num_paths: usize, device: &B::Device) -> Linear<B> {
        let mut layer = LinearConfig::new(self.hidden_size, 2 * num_paths)
            .with_initializer(Initializer::Normal { mean: 0.0, std: self.logit_weight_std })
            .init(device);
        let bias: Vec<f32> = (0..num_paths).flat_map(|_| self.logit_bias.map(|b| b as f32)).collect();
        layer.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(bias, [2 * num_paths]), device)));
        layer
    }

    /// Parameters of one block's controller (embedding, its batch norm, logit layer), without the
    /// auxiliary head.
    pub fn block_param_count(&self, channels_in: usize, num_paths: usize) -> usize {
        let d = self.hidden_size;
        (channels_in * d + d) + 2 * d + (d * 2 * num_paths + 2 * num_paths)
    }

    /// Parameters of the shared recurrent cell.
    pub fn recurrent_param_count(&self) -> usize {
        let d = self.hidden_size;
        let per_gate = 2 * (d * d + d); // input and hidden transforms, both biased
        match self.prev_state {
            PrevState::None => 0,
            PrevState::Gru => 3 * per_gate,
            PrevState::Lstm => 4 * per_gate,
        }
    }

    /// Parameters of one auxiliary category head.
    pub fn aux_param_count(&self, num_classes: usize) -> usize {
        self.hidden_size * num_classes + num_classes
    }

    /// Multiply-accumulates of one block's controller for one sample: embedding, recurrent cell
    /// and logit layer. Pooling, batch norm and activations are not counted; the auxiliary head is
    /// training-only and not counted either.
    pub fn block_macs(&self, channels_in: usize, num_paths: usize) -> u64 {
        let d = self.hidden_size as u64;
        let recurrent = match self.prev_state {
            PrevState::None => 0,
            PrevState::Gru => 3 * 2 * d * d,
            PrevState::Lstm => 4 * 2 * d * d,
        };
        channels_in as u64 * d + recurrent + d * 2 * num_paths as u64
    }
}

/// The controller of one block: embedding, logit layer and optional auxiliary head.
#[derive(Module, Debug)]
pub struct BlockController<B: Backend> {
    /// `Linear(C_in -> d)` applied to the pooled block input.
    pub embed: Linear<B>,
    /// Batch norm of the embedding.
    pub embed_norm: BatchNorm<B>,
    /// `Linear(d -> 2N)`: the `(off, on)` logits of every path.
    pub gate_logits: Linear<B>,
    /// `Linear(d -> K)`: auxiliary class prediction from the controller state.
    pub aux_head: Option<Linear<B>>,
}

/// The recurrent cell the controllers of a network share ([`PrevState::Gru`] or
/// [`PrevState::Lstm`]).
// a module enum: always one of the two, held once per network
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum RecurrentCell<B: Backend> {
    /// A GRU cell.
    Gru(Gru<B>),
    /// An LSTM cell.
    Lstm(Lstm<B>),
}

/// The gate controllers of a network: one [`BlockController`] per gated block and the recurrent
/// cell they share.
#[derive(Module, Debug)]
pub struct Controller<B: Backend> {
    /// Per-block controllers, in network order.
    pub blocks: Vec<BlockController<B>>,
    /// The shared recurrent cell; `None` with [`PrevState::None`].
    pub recurrent: Option<RecurrentCell<B>>,
    /// Paths per block.
    pub num_paths: usize,
}

/// Global average pooling: `[batch_size, channels, height, width]` to `[batch_size, channels]`.
pub fn global_avg_pool<B: Backend>(input: Tensor<B, 4>) -> Tensor<B, 2> {
    let [batch_size, channels, _, _] = input.dims();
    input.mean_dim(3).mean_dim(2).reshape([batch_size, channels])
}

/// The state a controller hands to the next block's controller.
#[derive(Debug, Clone)]
pub struct ControllerState<B: Backend> {
    hidden: Option<Tensor<B, 2>>,
    cell: Option<Tensor<B, 2>>,
}

impl<B: Backend> Default for ControllerState<B> {
    /// The state before the first block: zeros.
    fn default() -> Self {
        Self { hidden: None, cell: None }
    }
}

impl<B: Backend> ControllerState<B> {
    /// The hidden state `h_l`, `[batch_size, hidden_size]`; `None` before the first block.
    pub fn hidden(&self) -> Option<&Tensor<B, 2>> {
        self.hidden.as_ref()
    }
}

/// What a block's controller produces.
#[derive(Debug, Clone)]
pub struct ControllerOutput<B: Backend> {
    /// Per-path `(off, on)` logits, `[batch_size, num_paths, 2]`.
    pub logits: Tensor<B, 3>,
    /// Auxiliary class logits `[batch_size, num_classes]` when this block has a category head and
    /// the backend trains (autodiff); `None` at inference.
    pub aux_logits: Option<Tensor<B, 2>>,
    /// The state handed on to the next block.
    pub state: ControllerState<B>,
}

impl<B: Backend> Controller<B> {
    /// Number of gated blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// How the state is handed from block to block.
    pub fn prev_state(&self) -> PrevState {
        match &self.recurrent {
            None => PrevState::None,
            Some(RecurrentCell::Gru(_)) => PrevState::Gru,
            Some(RecurrentCell::Lstm(_)) => PrevState::Lstm,
        }
    }

    /// Runs the controller of block `block` on the block's input.
    ///
    /// # Shapes
    /// - `input`: `[batch_size, channels_in, height, width]`
    /// - output logits: `[batch_size, num_paths, 2]`
    ///
    /// # Panics
    /// If `block` is out of range.
    pub fn forward(&self, block: usize, input: Tensor<B, 4>, state: ControllerState<B>) -> ControllerOutput<B> {
        self.forward_pooled(block, global_avg_pool(input), state)
    }

    /// [`Controller::forward`] on the block input already pooled over its spatial dimensions
    /// (sparse execution pools each group of samples on its own).
    ///
    /// # Shapes
    /// - `pooled`: `[batch_size, channels_in]`
    /// - output logits: `[batch_size, num_paths, 2]`
    ///
    /// # Panics
    /// If `block` is out of range.
    pub fn forward_pooled(&self, block: usize, pooled: Tensor<B, 2>, state: ControllerState<B>) -> ControllerOutput<B> {
        let ctrl = self.blocks.get(block).unwrap_or_else(|| {
            panic!("controller block index {block} out of range: the network has {} gated blocks", self.blocks.len())
        });
        let [batch_size, _] = pooled.dims();
        let embedding = relu(ctrl.embed_norm.forward(ctrl.embed.forward(pooled))); // [B, d]
        let state = self.recur(embedding, state);
        let hidden = state.hidden.clone().expect("recur always sets the hidden state");
        let logits = ctrl.gate_logits.forward(hidden.clone()).reshape([batch_size, self.num_paths, 2]); // [B, N, (off, on)]
                                                                                                        // the category heads only serve the training loss
        let aux_logits =
            ctrl.aux_head.as_ref().filter(|_| B::ad_enabled(&hidden.device())).map(|head| head.forward(hidden));
        ControllerOutput { logits, aux_logits, state }
    }

    fn recur(&self, embedding: Tensor<B, 2>, state: ControllerState<B>) -> ControllerState<B> {
        match &self.recurrent {
            Some(RecurrentCell::Gru(gru)) => {
                let h = gru.forward(embedding.unsqueeze_dim(1), state.hidden).squeeze_dim::<2>(1); // [B, d]
                ControllerState { hidden: Some(h), cell: None }
            }
            Some(RecurrentCell::Lstm(lstm)) => {
                let prev = match (state.cell, state.hidden) {
                    (Some(c), Some(h)) => Some(LstmState::new(c, h)),
                    _ => None,
                };
                let (_, next) = lstm.forward(embedding.unsqueeze_dim(1), prev);
                ControllerState { hidden: Some(next.hidden), cell: Some(next.cell) }
            }
            None => ControllerState { hidden: Some(embedding), cell: None },
        }
    }

    /// Turns logits into 0/1 gates. With autodiff (training) this is the straight-through Gumbel
    /// gate at `options.temperature()`, with `noise` if given and fresh Gumbel noise otherwise;
    /// without autodiff it is the deterministic gate at `options.threshold()` and `noise` is
    /// ignored.
    ///
    /// # Shapes
    /// - `logits`, `noise`: `[batch_size, num_paths, 2]`
    /// - output: `[batch_size, num_paths]`
    pub fn gates(&self, logits: Tensor<B, 3>, noise: Option<Tensor<B, 3>>, options: GateOptions) -> Tensor<B, 2> {
        let device = logits.device();
        if B::ad_enabled(&device) {
            let noise = noise.unwrap_or_else(|| gumbel_noise(logits.dims(), &device));
            gumbel_straight_through(logits, noise, options.temperature())
        } else {
            deterministic_gates(logits, options.threshold())
        }
    }

    /// Parameters of the auxiliary heads (training only).
    pub fn aux_param_count(&self) -> usize {
        self.blocks.iter().filter_map(|b| b.aux_head.as_ref()).map(param_count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::tensor::Distribution;

    type B = Flex;
    type AD = Autodiff<Flex>;

    fn specs() -> Vec<GatedBlockSpec> {
        vec![
            GatedBlockSpec { channels_in: 8, aux_head: false },
            GatedBlockSpec { channels_in: 8, aux_head: true },
            GatedBlockSpec { channels_in: 16, aux_head: true },
        ]
    }

    #[test]
    fn shapes_through_all_blocks() {
        let device = Default::default();
        for prev in [PrevState::None, PrevState::Gru, PrevState::Lstm] {
            let config = ControllerConfig::new().with_hidden_size(4).with_prev_state(prev);
            let ctrl = config.init::<B>(&specs(), 3, 5, &device);
            let mut state = ControllerState::default();
            for (l, spec) in specs().iter().enumerate() {
                let x = Tensor::<B, 4>::random([2, spec.channels_in, 3, 3], Distribution::Default, &device);
                let out = ctrl.forward(l, x, state);
                assert_eq!(out.logits.dims(), [2, 3, 2]);
                assert!(out.aux_logits.is_none(), "no category head at inference");
                assert_eq!(out.state.hidden().unwrap().dims(), [2, 4]);
                state = out.state;
            }
        }
    }

    #[test]
    fn category_heads_predict_in_training() {
        let device = Default::default();
        let ctrl = ControllerConfig::new().with_hidden_size(4).init::<AD>(&specs(), 3, 5, &device);
        let mut state = ControllerState::default();
        for (l, spec) in specs().iter().enumerate() {
            let x = Tensor::<AD, 4>::random([2, spec.channels_in, 3, 3], Distribution::Default, &device);
            let out = ctrl.forward(l, x, state);
            assert_eq!(out.aux_logits.as_ref().map(|a| a.dims()), spec.aux_head.then_some([2, 5]));
            state = out.state;
        }
    }

    #[test]
    fn analytic_param_count_matches_module() {
        let device = Default::default();
        for prev in [PrevState::None, PrevState::Gru, PrevState::Lstm] {
            for category_head in [false, true] {
                let config =
                    ControllerConfig::new().with_hidden_size(6).with_prev_state(prev).with_category_head(category_head);
                let ctrl = config.init::<B>(&specs(), 2, 7, &device);
                let blocks: usize = specs().iter().map(|s| config.block_param_count(s.channels_in, 2)).sum();
                let aux = if category_head { 2 * config.aux_param_count(7) } else { 0 };
                assert_eq!(ctrl.aux_param_count(), aux);
                assert_eq!(param_count(&ctrl), blocks + config.recurrent_param_count() + aux, "{prev}");
            }
        }
    }

    #[test]
    fn initial_paths_mostly_open() {
        let device = Default::default();
        let ctrl = ControllerConfig::new().init::<B>(&specs(), 2, 10, &device);
        let x = Tensor::<B, 4>::random([64, 8, 4, 4], Distribution::Default, &device);
        let out = ctrl.forward(0, x, ControllerState::default());
        let on = ctrl.gates(out.logits, None, GateOptions::default()).mean().into_scalar();
        assert!(on > 0.99, "deterministic gates should start open, got open rate {on}");
    }

    #[test]
    fn training_gates_are_random_inference_gates_are_not() {
        let device = Default::default();
        let x = Tensor::<AD, 4>::random([256, 8, 2, 2], Distribution::Default, &device);
        let ctrl = ControllerConfig::new().init::<AD>(&specs(), 2, 10, &device);
        let out = ctrl.forward(0, x.clone(), ControllerState::default());
        let rate = ctrl.gates(out.logits, None, GateOptions::default()).mean().into_scalar();
        // sigmoid(2.0 - 0.1) = 0.87: the Gumbel gate opens most paths, but not all
        assert!((0.75..0.97).contains(&rate), "training open rate {rate}");

        let ctrl = ctrl.valid();
        let x = x.inner();
        let g1 =
            ctrl.gates(ctrl.forward(0, x.clone(), ControllerState::default()).logits, None, GateOptions::default());
        let g2 = ctrl.gates(ctrl.forward(0, x, ControllerState::default()).logits, None, GateOptions::default());
        g1.into_data().assert_eq(&g2.into_data(), true);
    }

    #[test]
    fn prev_state_parses() {
        assert_eq!("GRU".parse::<PrevState>(), Ok(PrevState::Gru));
        assert!("rnn".parse::<PrevState>().unwrap_err().to_string().contains("'rnn'"));
    }

    #[test]
    #[should_panic = "controller block index 3 out of range: the network has 3 gated blocks"]
    fn block_out_of_range_panics() {
        let device = Default::default();
        let ctrl = ControllerConfig::new().init::<B>(&specs(), 2, 10, &device);
        let x = Tensor::<B, 4>::zeros([1, 8, 2, 2], &device);
        let _ = ctrl.forward(3, x, ControllerState::default());
    }
}
