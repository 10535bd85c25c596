//! The backend seam (DESIGN §10): the one place that decides which backend-specific fast paths
//! apply, and the fast paths themselves.
//!
//! The model and the executors never look at the backend. They run their layers through
//! [`Kernels`], which asks [`FastPaths`] once per pass what applies and otherwise calls Burn's own
//! operations. [`FastPaths::probe`] is the only place in dmnn-core that reads the backend's name;
//! the environment variable [`FAST_PATHS_ENV`] (`DMNN_FAST_PATHS=off`) turns every fast path off
//! for A/B benchmarks and bug hunts, and [`crate::ForwardOptions::with_fast_paths`] sets them per
//! pass for a backend the probe does not know (a renamed wrapper, say).
//!
//! Each fast path works around a named limitation of an upstream Burn backend
//! ([`FastPath::works_around`]), so it can be deleted when Burn fixes it. Results are the same
//! with and without them up to floating-point rounding; within a pass every execution mode uses
//! the same ones, so sparse and masked execution agree to the bit either way.

mod autodiff;
mod branches;
mod devices;
mod gemm;
mod host_affine;
mod im2col;
mod kernels;
mod pool;
mod tiled_conv;
mod train_conv;
mod train_norm;

use std::sync::OnceLock;

use burn::tensor::backend::Backend;

pub use autodiff::AutodiffKernels;
pub use branches::{map_branches, MAX_CONCURRENT_ELEMENTS, MIN_CONCURRENT_ELEMENTS};
pub(crate) use branches::{sum_branches, Branch};
pub use devices::{fork_replica, to_device};
pub use im2col::IM2COL_MAX_POSITIONS;
pub use kernels::Kernels;

/// Environment variable that overrides the probe: `off` (or `none`, `0`) turns every fast path
/// off; a comma-separated list of [`FastPath::name`]s keeps only those of the probed ones; unset,
/// `on` or `auto` keeps what the probe finds.
pub const FAST_PATHS_ENV: &str = "DMNN_FAST_PATHS";

/// A backend-specific way of running part of the network faster than Burn's own operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FastPath {
    /// A block's independent branches (shortcut, paths, sample groups) run as concurrent rayon
    /// tasks in inference on a CPU backend.
    ConcurrentBranches,
    /// When the whole batch is one image, spatial convolutions run as one host-built im2col
    /// matrix times the weight matrix.
    OneImageIm2col,
    /// The stem's max pool runs on the host buffer in inference.
    HostMaxPool,
    /// In inference, spatial convolutions of a batch run as burn-flex's own tiles of im2col and
    /// matrix product, bit for bit, without its serial layout change and buffers
    /// (`backend/tiled_conv.rs`).
    HostTiledConv,
    /// In inference, a batch norm and the ReLU after it run as one pass over the host buffer.
    HostAffine,
    /// A strided 1x1 projection subsamples its input first and runs a pointwise convolution.
    SubsampledProjection,
    /// In training, convolutions run as an autodiff operation whose backward is a host im2col,
    /// two matrix products and a host col2im ([`AutodiffKernels`]).
    MatmulConv,
    /// In training, batch norms run as one autodiff operation on the host, forward and backward
    /// ([`AutodiffKernels`]).
    HostBatchNorm,
    /// Sparse execution holds the batch as groups of samples that share a gate pattern, each
    /// group's paths run on its own tensor ([`GroupedBatch`](crate::exec::GroupedBatch)), in
    /// inference and training; without it each path gathers its samples from the whole batch
    /// and adds its output back (a bounded number of kernel launches per block).
    GroupedSparse,
}

impl FastPath {
    /// Every fast path.
    pub const ALL: [FastPath; 9] = [
        Self::ConcurrentBranches,
        Self::OneImageIm2col,
        Self::HostMaxPool,
        Self::HostTiledConv,
        Self::HostAffine,
        Self::SubsampledProjection,
        Self::MatmulConv,
        Self::HostBatchNorm,
        Self::GroupedSparse,
    ];

    /// Whether the fast path is for training (autodiff) rather than inference.
    pub fn is_training(self) -> bool {
        matches!(self, Self::MatmulConv | Self::HostBatchNorm)
    }

    /// Whether the fast path applies both in training and in inference.
    pub fn is_for_both(self) -> bool {
        matches!(self, Self::GroupedSparse)
    }

    /// The name used in [`FAST_PATHS_ENV`] and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConcurrentBranches => "concurrent-branches",
            Self::OneImageIm2col => "one-image-im2col",
            Self::HostMaxPool => "host-max-pool",
            Self::HostTiledConv => "host-tiled-conv",
            Self::HostAffine => "host-affine",
            Self::SubsampledProjection => "subsampled-projection",
            Self::MatmulConv => "matmul-conv",
            Self::HostBatchNorm => "host-batch-norm",
            Self::GroupedSparse => "grouped-sparse",
        }
    }

    /// The upstream limitation this fast path works around; it can go when the limitation does.
    pub fn works_around(self) -> &'static str {
        match self {
            Self::ConcurrentBranches => {
                "burn-flex parallelises inside each operation only; on small tensors (allocation, layout \
                 changes, loop tails) a core sits idle"
            }
            Self::OneImageIm2col => {
                "burn-flex's conv2d tiles 512 output positions per image after a serial NHWC conversion, \
                 so one image leaves a core idle"
            }
            Self::HostMaxPool => "burn-flex's max_pool2d always computes argmax indices in a branchy scalar kernel",
            Self::HostTiledConv => {
                "burn-flex's conv2d converts the whole batch to NHWC on one thread, zeroes an im2col buffer \
                 per tile and copies each tile's product out of a buffer of its own"
            }
            Self::HostAffine => {
                "burn-flex has no fused multiply-add of a per-channel affine: a batch norm's scale and \
                 shift, and the ReLU after it, are three passes, each writing a new buffer"
            }
            Self::SubsampledProjection => {
                "burn-flex runs a strided 1x1 convolution through im2col with a serial layout change of \
                 the whole input"
            }
            Self::MatmulConv => {
                "burn-autodiff differentiates conv2d with conv_transpose2d and a conv2d of the swapped \
                 batch, which burn-flex runs far below matmul speed and mostly on one core"
            }
            Self::HostBatchNorm => {
                "a training batch norm is some forty burn tensor operations forward and backward, each \
                 with its own pass and allocation (burn has no fused batch-norm kernel for burn-flex)"
            }
            Self::GroupedSparse => {
                "on a host backend a path's select and select_assign are two more passes over its \
                 samples and its sum is no longer formed in place; sample groups need neither, and on \
                 a GPU backend they would launch each path's kernels once per group instead"
            }
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

/// A set of [`FastPath`]s: what applies to one backend and device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FastPaths(u16);

impl FastPaths {
    /// No fast path: Burn's own operations everywhere.
    pub const NONE: FastPaths = FastPaths(0);

    /// The fast paths for backend `B` on `device`, after the [`FAST_PATHS_ENV`] override.
    pub fn probe<B: Backend>(device: &B::Device) -> Self {
        let found = Self::for_backend(&B::name(device), B::ad_enabled(device));
        match env_override() {
            Some(keep) => Self(found.0 & keep.0),
            None => found,
        }
    }

    /// The fast paths for a backend of this name (as `Backend::name` gives it, wrappers such as
    /// `autodiff<...>`, `fusion<...>` or `dispatch<...>` included), with or without autodiff.
    ///
    /// All of them are fast paths of the host CPU backends. In inference: concurrent branches
    /// on Flex and NdArray, the rest on Flex. In training: the convolutions as matrix products,
    /// on Flex and NdArray. GPU backends have their own queues and kernels.
    pub fn for_backend(name: &str, autodiff: bool) -> Self {
        let inner = innermost_backend(name);
        if autodiff {
            return match inner {
                "flex" => {
                    Self::NONE.with(FastPath::MatmulConv).with(FastPath::HostBatchNorm).with(FastPath::GroupedSparse)
                }
                "ndarray" => Self::NONE.with(FastPath::MatmulConv).with(FastPath::HostBatchNorm),
                _ => Self::NONE,
            };
        }
        match inner {
            "flex" => Self::NONE
                .with(FastPath::ConcurrentBranches)
                .with(FastPath::OneImageIm2col)
                .with(FastPath::HostMaxPool)
                .with(FastPath::HostTiledConv)
                .with(FastPath::HostAffine)
                .with(FastPath::SubsampledProjection)
                .with(FastPath::GroupedSparse),
            "ndarray" => Self::NONE.with(FastPath::ConcurrentBranches),
            _ => Self::NONE,
        }
    }

    /// Whether `path` applies.
    pub fn contains(self, path: FastPath) -> bool {
        self.0 & path.bit() != 0
    }

    /// The set with `path` added.
    pub fn with(self, path: FastPath) -> Self {
        Self(self.0 | path.bit())
    }

    /// The set without `path`.
    pub fn without(self, path: FastPath) -> Self {
        Self(self.0 & !path.bit())
    }

    /// The training fast paths of the set (`training`) or its inference ones; those for both
    /// either way.
    pub fn for_training(self, training: bool) -> Self {
        self.iter().filter(|p| p.is_for_both() || p.is_training() == training).fold(Self::NONE, Self::with)
    }

    /// The fast paths of the set, in [`FastPath::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = FastPath> {
        FastPath::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// Their names joined by commas, or `none`.
    pub fn describe(self) -> String {
        let names: Vec<&str> = self.iter().map(FastPath::name).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// Whether training on the backend of this name (as `Backend::name` gives it) differentiates a
/// strided 1x1 convolution as a subsample (every `s`-th row and column) and a pointwise convolution
/// instead of Burn's strided convolution: on the CubeCL backends (WGPU, CUDA).
///
/// Not a fast path but a correction, so [`FAST_PATHS_ENV`] does not turn it off. Burn 0.21's
/// CubeCL backends compute the input gradient of a strided 1x1 convolution with an autotuned
/// `conv_transpose2d` (`burn-cubecl`, `conv_data_backward_fallback`: the implicit-GEMM
/// candidates refuse a stride), and for some shapes it came back as zeros at every position the
/// kernel covers; the autotuner times its candidates per device and keeps the faster without
/// comparing values, so whether a projection shortcut's input gradient was right depended on
/// the device (measured on two lavapipe devices: zeros at 3->5 channels on both, at 4->8 on
/// one, at 8->16 on the other; right at 16->32 and above; a dynamic network's replica on the
/// second device computed other gradients than the first, issue 15).
/// The forward pass is right either way; the subsampled one gives the same values, and its
/// backward (a `select`'s and a pointwise convolution's) is right on every device tried.
/// Upstream fix: correct the `conv_transpose2d` kernel that returns zeros for these shapes
/// (a kernel smaller than its stride), and test autotune candidates against each other
/// (docs/decisions.md).
pub fn subsample_strided_pointwise_in_training(backend_name: &str) -> bool {
    backend_name.contains("cubecl")
}

/// The name of the backend inside any wrappers: `autodiff<fusion<cuda>>` is `cuda`.
fn innermost_backend(name: &str) -> &str {
    let mut inner = name.trim();
    while let (Some(open), true) = (inner.find('<'), inner.ends_with('>')) {
        inner = &inner[open + 1..inner.len() - 1];
    }
    inner
}

/// The set [`FAST_PATHS_ENV`] allows, read once per process; `None` when it leaves the probe
/// alone.
fn env_override() -> Option<FastPaths> {
    static OVERRIDE: OnceLock<Option<FastPaths>> = OnceLock::new();
    *OVERRIDE.get_or_init(|| std::env::var(FAST_PATHS_ENV).ok().and_then(|v| parse_override(&v)))
}

/// Parses a [`FAST_PATHS_ENV`] value; unknown names are ignored with a warning on stderr.
fn parse_override(value: &str) -> Option<FastPaths> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "on" | "auto" => None,
        "off" | "none" | "0" => Some(FastPaths::NONE),
        list => {
            let mut keep = FastPaths::NONE;
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                match FastPath::ALL.into_iter().find(|p| p.name() == name) {
                    Some(path) => keep = keep.with(path),
                    None => eprintln!(
                        "warning: {FAST_PATHS_ENV}: unknown fast path '{name}' ignored (known: {})",
                        FastPath::ALL.map(FastPath::name).join(", ")
                    ),
                }
            }
            Some(keep)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn flex_gets_the_inference_fast_paths_and_autodiff_flex_the_training_one() {
        let device = Default::default();
        let flex = FastPaths::for_backend(&Flex::name(&device), false);
        let inference: Vec<FastPath> = FastPath::ALL.into_iter().filter(|p| !p.is_training()).collect();
        assert_eq!(flex.iter().collect::<Vec<_>>(), inference);
        // Autodiff<Flex> is a wrapped backend: its name is `autodiff<flex>`
        let ad = FastPaths::for_backend(&Autodiff::<Flex>::name(&device), Autodiff::<Flex>::ad_enabled(&device));
        assert_eq!(ad.describe(), "matmul-conv, host-batch-norm, grouped-sparse");
        assert_eq!(FastPaths::probe::<Autodiff<Flex>>(&device), ad);
    }

    /// The correction of a strided 1x1 convolution's gradient applies to the CubeCL backends,
    /// fused or not, and to no host backend.
    #[test]
    fn strided_pointwise_is_subsampled_in_training_on_cubecl_backends_only() {
        for name in ["autodiff<fusion<cubecl<wgpu<wgsl>>>>", "fusion<cubecl<cuda>>", "cubecl<wgpu<spirv>>"] {
            assert!(subsample_strided_pointwise_in_training(name), "{name}");
        }
        let flex = Autodiff::<Flex>::name(&Default::default());
        for name in [flex.as_str(), "autodiff<ndarray>", "flex"] {
            assert!(!subsample_strided_pointwise_in_training(name), "{name}");
        }
    }

    #[test]
    fn wrapped_backends_are_recognised_by_their_inner_name() {
        for name in ["flex", "dispatch<flex>", "fusion<flex>", "router<dispatch<flex>>"] {
            assert_eq!(FastPaths::for_backend(name, false), FastPaths::for_backend("flex", false), "{name}");
        }
        assert_eq!(FastPaths::for_backend("dispatch<ndarray>", false).describe(), "concurrent-branches");
        assert_eq!(
            FastPaths::for_backend("autodiff<dispatch<flex>>", true).describe(),
            "matmul-conv, host-batch-norm, grouped-sparse"
        );
        assert_eq!(FastPaths::for_backend("autodiff<fusion<cuda>>", true), FastPaths::NONE);
        for gpu in ["fusion<cubecl<cuda>>", "wgpu", "fusion<wgpu<vulkan>>"] {
            assert_eq!(FastPaths::for_backend(gpu, false).describe(), "none", "{gpu}");
        }
    }

    #[test]
    fn the_override_turns_fast_paths_off_or_keeps_some() {
        assert_eq!(parse_override("off"), Some(FastPaths::NONE));
        assert_eq!(parse_override(" OFF "), Some(FastPaths::NONE));
        assert_eq!(parse_override("on"), None);
        assert_eq!(parse_override(""), None);
        let some = parse_override("host-max-pool, one-image-im2col,bogus").unwrap();
        assert_eq!(some.describe(), "one-image-im2col, host-max-pool");
        let all = FastPaths::for_backend("flex", false);
        assert!(!all.without(FastPath::HostMaxPool).contains(FastPath::HostMaxPool));
        assert!(FastPath::ALL.iter().all(|p| !p.works_around().is_empty()));
    }
}
