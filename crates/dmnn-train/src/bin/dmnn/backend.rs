//! Backend selection: the CPU backend (Flex) always; WGPU and CUDA when built with the `wgpu` /
//! `cuda` features. The only place the binary names a concrete backend.

use anyhow::{bail, Result};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::{AutodiffBackend, Backend};

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

/// Starts `device` with one tiny operation, so that a missing driver or device is an error that
/// says so rather than a panic deep inside the backend's device thread (whose own message, printed
/// above, names the library or device that is missing).
#[allow(dead_code)] // used by the GPU backends only
fn start_device<B: Backend>(device: &B::Device, backend: &str, needs: &str) -> Result<()> {
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data();
    }));
    match started {
        Ok(()) => Ok(()),
        Err(_) => {
            bail!("the {backend} backend could not start device {device:?}: it needs {needs} (see the message above)")
        }
    }
}

/// Runs `job` on the requested backend and device index. A GPU backend's name carries Burn's own
/// (`wgpu (fusion<cubecl<wgpu<...>>>)`), so the startup line shows whether kernel fusion is on.
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
            start_device::<Wgpu>(&d, "wgpu", "a Vulkan, Metal or DX12 driver (Mesa's lavapipe for a CPU)")?;
            let name = format!("wgpu ({})", <Wgpu as Backend>::name(&d));
            job.run::<Autodiff<Wgpu>>(d, &name)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::cuda::{Cuda, CudaDevice};
            let d = CudaDevice::new(device.unwrap_or(0));
            start_device::<Cuda>(&d, "cuda", "an NVIDIA GPU with its driver (libcuda.so) and NVRTC")?;
            let name = format!("cuda ({})", <Cuda as Backend>::name(&d));
            job.run::<Autodiff<Cuda>>(d, &name)
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
