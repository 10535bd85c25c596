//! Backend selection: the CPU backend (Flex) always; WGPU and CUDA when built with the `wgpu` /
//! `cuda` features. The only place the binary names a concrete backend.

use anyhow::{bail, Result};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::AutodiffBackend;

/// The backends `dmnn` can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Burn's pure-Rust CPU backend (Flex).
    Cpu,
    /// WGPU (Vulkan, Metal, DX12, WebGPU); needs the `wgpu` feature.
    Wgpu,
    /// CUDA; needs the `cuda` feature (NVRTC at run time).
    Cuda,
}

/// Work to run on whichever backend was chosen.
pub trait BackendJob {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` and `device`; `name` says which backend, for reports.
    fn run<B: AutodiffBackend>(self, device: B::Device, name: &str) -> Result<Self::Output>;
}

/// Runs `job` on the requested backend and device index.
pub fn dispatch<J: BackendJob>(kind: BackendKind, device: Option<usize>, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Cpu => {
            if device.is_some_and(|d| d != 0) {
                bail!("the CPU backend has one device; --device {} is not available", device.unwrap());
            }
            job.run::<Autodiff<Flex>>(Default::default(), "cpu (Flex)")
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use burn::backend::wgpu::{Wgpu, WgpuDevice};
            let d = match device {
                Some(i) => WgpuDevice::DiscreteGpu(i),
                None => WgpuDevice::DefaultDevice,
            };
            job.run::<Autodiff<Wgpu>>(d, "wgpu")
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::cuda::{Cuda, CudaDevice};
            job.run::<Autodiff<Cuda>>(CudaDevice::new(device.unwrap_or(0)), "cuda")
        }
        #[allow(unreachable_patterns)]
        other => {
            let name = format!("{other:?}").to_lowercase();
            bail!(
                "this dmnn binary was built without the `{name}` backend; run `cargo xtask <command> --backend {name}` \
                 (or build with `--features {name}`)"
            )
        }
    }
}
