//! Counting the kernels a pass launches on a GPU backend.
//!
//! CubeCL (under Burn's WGPU and CUDA backends) opens a `launch_inner` trace span for every
//! kernel it launches when its `tracing` feature is on, which the `wgpu` and `cuda` features
//! turn on. [`install_kernel_counter`] installs a process-wide tracing subscriber that only
//! counts those spans; [`count_kernels`] reads the count around a closure. On the CPU backend, or
//! a build without a GPU feature, nothing is counted.

#[cfg(feature = "gpu-kernel-count")]
mod counter {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata, Subscriber};

    /// The span CubeCL opens per kernel launch.
    const LAUNCH_SPAN: &str = "launch_inner";

    pub(super) static LAUNCHES: AtomicU64 = AtomicU64::new(0);
    pub(super) static INSTALLED: AtomicBool = AtomicBool::new(false);

    struct LaunchCounter;

    fn is_launch(metadata: &Metadata<'_>) -> bool {
        metadata.is_span() && metadata.name() == LAUNCH_SPAN && metadata.target().starts_with("cubecl_runtime")
    }

    impl Subscriber for LaunchCounter {
        fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
            if is_launch(metadata) {
                Interest::always()
            } else {
                Interest::never()
            }
        }

        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            is_launch(metadata)
        }

        fn new_span(&self, _: &Attributes<'_>) -> Id {
            LAUNCHES.fetch_add(1, Ordering::Relaxed);
            Id::from_u64(1)
        }

        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub(super) fn install() -> bool {
        if INSTALLED.load(Ordering::SeqCst) {
            return true;
        }
        let ok = tracing::subscriber::set_global_default(LaunchCounter).is_ok();
        INSTALLED.store(ok, Ordering::SeqCst);
        ok
    }
}

/// Installs the kernel counter (once per process). Returns whether kernels are counted: false
/// on a build without a GPU backend, or when another tracing subscriber is already installed.
pub fn install_kernel_counter() -> bool {
    #[cfg(feature = "gpu-kernel-count")]
    {
        counter::install()
    }
    #[cfg(not(feature = "gpu-kernel-count"))]
    {
        false
    }
}

/// The kernels `f` launches, when the counter is installed; `f` must sync the device before it
/// returns (a fused backend launches at the sync). Without the counter `f` does not run: the
/// count is a pass of its own, not worth its time where nothing is counted.
pub fn count_kernels(f: impl FnOnce()) -> Option<u64> {
    #[cfg(feature = "gpu-kernel-count")]
    {
        use std::sync::atomic::Ordering;
        if counter::INSTALLED.load(Ordering::SeqCst) {
            let before = counter::LAUNCHES.load(Ordering::SeqCst);
            f();
            return Some(counter::LAUNCHES.load(Ordering::SeqCst) - before);
        }
    }
    let _ = f;
    None
}
