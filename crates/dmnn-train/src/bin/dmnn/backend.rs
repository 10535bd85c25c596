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
pub trait BackendJob: Sized {
    /// What the work returns.
    type Output;
    /// Runs on backend `B` and `device`; `name` says which backend, for reports.
    fn run<B: AutodiffBackend>(self, device: B::Device, name: &str) -> Result<Self::Output>;
    /// Runs on several devices of `B` (`--devices`), the first the main one. Work that uses one
    /// device takes one.
    fn run_on<B: AutodiffBackend>(self, devices: Vec<B::Device>, name: &str) -> Result<Self::Output> {
        match <[B::Device; 1]>::try_from(devices) {
            Ok([device]) => self.run::<B>(device, name),
            Err(devices) => bail!("this command runs on one device, not on {devices:?}"),
        }
    }
}

/// A device of `--device` / `--devices`: an index (the N-th GPU: CUDA's ordinal, WGPU's N-th
/// discrete GPU) or, for WGPU, an adapter kind: `cpu` (a CPU adapter such as Mesa's lavapipe),
/// `default` (the adapter WGPU prefers), `integrated:N`, `virtual:N`. Two specs that name one
/// adapter (`cpu` and `default` on a machine whose only adapter is lavapipe) are two logical
/// devices of it, each with its own queue and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The N-th GPU.
    Index(usize),
    /// A WGPU adapter kind and its index among adapters of that kind.
    Kind(String, usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(i) = s.parse() {
            return Ok(Self::Index(i));
        }
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (k, i.parse().map_err(|_| format!("device '{s}': '{i}' is not an index"))?),
            None => (s, 0),
        };
        match kind {
            "cpu" | "default" if index == 0 => Ok(Self::Kind(kind.into(), 0)),
            "integrated" | "virtual" | "discrete" => Ok(Self::Kind(kind.into(), index)),
            _ => Err(format!(
                "device '{s}' is not an index (0, 1, ...) or a WGPU adapter (cpu, default, discrete:N, integrated:N, \
                 virtual:N)"
            )),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{i}"),
            Self::Kind(k, 0) if k == "cpu" || k == "default" => write!(f, "{k}"),
            Self::Kind(k, i) => write!(f, "{k}:{i}"),
        }
    }
}

/// The specs as the user wrote them, for messages.
fn listed(specs: &[DeviceSpec]) -> String {
    specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// Refuses a spec list that names a device twice.
fn check_distinct(specs: &[DeviceSpec]) -> Result<()> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].contains(s) {
            bail!("--devices {}: device {s} is named twice; each replica needs a device of its own", listed(specs));
        }
    }
    Ok(())
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
            bail!(
                "the {backend} backend could not start device {device:?}: the message above says why (no such device, \
                 or no driver: it needs {needs})"
            )
        }
    }
}

/// Runs `job` on the requested backend and device index. A GPU backend's name carries Burn's own
/// (`wgpu (fusion<cubecl<wgpu<...>>>)`), so the startup line shows whether kernel fusion is on.
pub fn dispatch<J: BackendJob>(kind: BackendKind, device: Option<usize>, job: J) -> Result<J::Output> {
    dispatch_on(kind, &device.map(DeviceSpec::Index).into_iter().collect::<Vec<_>>(), job)
}

/// Runs `job` on the devices `specs` of the requested backend (none: its default device); every
/// device is started first, so that one that is missing is an error naming it.
pub fn dispatch_on<J: BackendJob>(kind: BackendKind, specs: &[DeviceSpec], job: J) -> Result<J::Output> {
    check_distinct(specs)?;
    match kind {
        BackendKind::Cpu => {
            if let Some(other) = specs.iter().find(|s| **s != DeviceSpec::Index(0)) {
                let asked =
                    if specs.len() > 1 { format!("--devices {}", listed(specs)) } else { format!("--device {other}") };
                bail!(
                    "the cpu (Flex) backend has one device, Cpu (index 0): {asked} is not available; on the CPU, \
                     `--replicas N` runs N data-parallel replicas on its cores"
                );
            }
            job.run_on::<Autodiff<Flex>>(vec![Default::default()], "cpu (Flex)")
        }
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            use burn::backend::wgpu::{Wgpu, WgpuDevice};
            let device = |s: &DeviceSpec| match s {
                DeviceSpec::Index(i) => WgpuDevice::DiscreteGpu(*i),
                DeviceSpec::Kind(k, i) => match k.as_str() {
                    "cpu" => WgpuDevice::Cpu,
                    "integrated" => WgpuDevice::IntegratedGpu(*i),
                    "virtual" => WgpuDevice::VirtualGpu(*i),
                    "discrete" => WgpuDevice::DiscreteGpu(*i),
                    _ => WgpuDevice::DefaultDevice,
                },
            };
            let devices: Vec<_> = match specs {
                [] => vec![WgpuDevice::DefaultDevice],
                _ => specs.iter().map(device).collect(),
            };
            for d in &devices {
                start_device::<Wgpu>(d, "wgpu", "a Vulkan, Metal or DX12 driver (Mesa's lavapipe for a CPU)")?;
            }
            let name = format!("wgpu ({})", <Wgpu as Backend>::name(&devices[0]));
            job.run_on::<Autodiff<Wgpu>>(devices, &name)
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            use burn::backend::cuda::{Cuda, CudaDevice};
            let mut devices = Vec::new();
            for s in specs {
                match s {
                    DeviceSpec::Index(i) => devices.push(CudaDevice::new(*i)),
                    other => bail!("device '{other}' is a WGPU adapter; CUDA devices are indices (0, 1, ...)"),
                }
            }
            if devices.is_empty() {
                devices.push(CudaDevice::new(0));
            }
            for d in &devices {
                start_device::<Cuda>(d, "cuda", "an NVIDIA GPU with its driver (libcuda.so) and NVRTC")?;
            }
            let name = format!("cuda ({})", <Cuda as Backend>::name(&devices[0]));
            job.run_on::<Autodiff<Cuda>>(devices, &name)
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
