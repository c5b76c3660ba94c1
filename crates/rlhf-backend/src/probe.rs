//! Whether a compiled-in backend can run on this machine, asked before any work is given to it.
//!
//! burn's GPU runtimes set their device up on a server thread of their own the first time a
//! tensor touches it. When that set-up fails (no CUDA driver, no Vulkan adapter) the server
//! thread panics and the caller can wait for an answer that never comes. So a GPU backend is
//! checked once per process, before [`crate::device`] hands it out:
//!
//! * CUDA: the driver library is loaded and `cuInit` is called on the calling thread (cudarc's
//!   loader panics when `libcuda.so` is missing; that panic is caught and turned into the
//!   reason), then the driver must report at least one device;
//! * every GPU backend: a two-element sum runs on a probe thread and must return `3` within
//!   [`PROBE_TIMEOUT`]; a panic on any thread meanwhile is caught and becomes the reason.
//!
//! Panic messages seen while probing are kept for the error and not printed: the user sees one
//! error that names the backend and the cause, never a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use burn::prelude::*;

use crate::BackendKind;

/// How long the first operation on a GPU backend may take (its kernels are compiled then).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

/// One GPU adapter or device a backend can see.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Adapter {
    /// The device's name as its driver reports it (`NVIDIA H200`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// What kind of device it is: `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu`, `other`.
    pub device_type: String,
    /// The API it is reached through (`cuda`, `vulkan`, `metal`, `dx12`, `gl`).
    pub api: String,
}

impl Adapter {
    /// Whether this is a real GPU (not a CPU driver such as Mesa's lavapipe).
    pub fn is_gpu(&self) -> bool {
        self.device_type.ends_with("gpu")
    }
}

/// While alive, panic reports on every thread are kept here instead of being printed.
struct QuietPanics {
    seen: Arc<Mutex<Vec<String>>>,
    previous: Option<Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>>,
}

impl QuietPanics {
    fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let previous = std::panic::take_hook();
        let sink = Arc::clone(&seen);
        std::panic::set_hook(Box::new(move |info| {
            if let Ok(mut v) = sink.lock() {
                v.push(info.to_string());
            }
        }));
        Self {
            seen,
            previous: Some(previous),
        }
    }

    /// The first panic report seen so far.
    fn first(&self) -> Option<String> {
        self.seen.lock().ok().and_then(|v| v.first().cloned())
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

/// Runs `f`, turning a panic into `Err(message)` without printing it (the GPU probes' driver
/// loaders panic where a driver is missing).
#[cfg(any(feature = "cuda", feature = "wgpu", test))]
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let quiet = QuietPanics::start();
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        quiet
            .first()
            .unwrap_or_else(|| payload_text(payload.as_ref()))
    })
}

#[cfg(any(feature = "cuda", feature = "wgpu", test))]
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// The first line of a panic report, without the `panicked at file:line:` prefix, and without
/// the list of every library name a loader tried (cudarc's runs to hundreds of characters).
fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.contains("panicked at"))
        .unwrap_or(text);
    let line = line.split(" - searched for").next().unwrap_or(line).trim();
    if line.chars().count() > 300 {
        line.chars().take(300).collect::<String>() + "…"
    } else {
        line.to_string()
    }
}

/// Runs a two-element sum on `device` on a probe thread and waits at most `timeout` for it.
fn runs_a_sum(device: &Device, timeout: Duration) -> Result<(), String> {
    let quiet = QuietPanics::start();
    let (tx, rx) = channel();
    let dev = device.clone();
    std::thread::Builder::new()
        .name("rlhf-backend-probe".into())
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| {
                Tensor::<1>::from_floats([1.0, 2.0], &dev)
                    .sum()
                    .into_scalar::<f32>()
            }));
            let _ = tx.send(r);
        })
        .map_err(|e| format!("could not start a probe thread: {e}"))?;
    let answer = rx.recv_timeout(timeout);
    let panicked = quiet.first().map(|m| first_line(&m));
    drop(quiet);
    match answer {
        Ok(Ok(3.0)) => Ok(()),
        Ok(Ok(v)) => Err(format!("a test sum 1 + 2 gave {v}")),
        Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
            Err(panicked.unwrap_or_else(|| "the test operation failed".into()))
        }
        Err(RecvTimeoutError::Timeout) => Err(match panicked {
            Some(m) => format!("the device failed to start: {m}"),
            None => format!("a test operation gave no answer within {timeout:?}"),
        }),
    }
}

/// The adapters `kind` can see (empty for the CPU backends, and where none can be listed).
pub fn adapters(kind: BackendKind) -> Vec<Adapter> {
    match kind {
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => cuda::devices().unwrap_or_default(),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => wgpu_adapters::list(),
        _ => Vec::new(),
    }
}

/// Checks once per process that `kind` can run here (always `Ok` for the CPU backends).
pub(crate) fn check(kind: BackendKind, device: &Device) -> Result<(), String> {
    static CHECKED: [OnceLock<Result<(), String>>; 4] = [const { OnceLock::new() }; 4];
    let slot = &CHECKED[BackendKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()];
    slot.get_or_init(|| match kind {
        BackendKind::Cpu | BackendKind::Ndarray => Ok(()),
        BackendKind::Cuda => driver_check(kind).and_then(|()| runs_a_sum(device, PROBE_TIMEOUT)),
        BackendKind::Wgpu => runs_a_sum(device, PROBE_TIMEOUT),
    })
    .clone()
}

#[allow(unused_variables)]
fn driver_check(kind: BackendKind) -> Result<(), String> {
    #[cfg(feature = "cuda")]
    if kind == BackendKind::Cuda {
        return cuda::devices().map(|_| ());
    }
    Ok(())
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{Adapter, first_line, quietly};
    use cudarc::driver::result;

    /// The CUDA devices the driver reports, or why there are none.
    pub fn devices() -> Result<Vec<Adapter>, String> {
        match quietly(result::init) {
            Err(panic) => {
                return Err(format!(
                    "the CUDA driver library could not be loaded (is an NVIDIA driver \
                     installed?): {}",
                    first_line(&panic)
                ));
            }
            Ok(Err(e)) => return Err(format!("cuInit failed: {e}")),
            Ok(Ok(())) => {}
        }
        let n = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
        if n < 1 {
            return Err("the CUDA driver reports no device".into());
        }
        Ok((0..n)
            .map(|i| Adapter {
                name: result::device::get(i)
                    .and_then(result::device::get_name)
                    .unwrap_or_else(|e| format!("device {i} ({e})")),
                device_type: "discrete-gpu".into(),
                api: "cuda".into(),
            })
            .collect())
    }
}

#[cfg(feature = "wgpu")]
mod wgpu_adapters {
    use super::{Adapter, quietly};
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    /// Every adapter wgpu's default instance can enumerate (none if listing them panics).
    pub fn list() -> Vec<Adapter> {
        quietly(|| {
            let instance = wgpu::Instance::default();
            block_on(instance.enumerate_adapters(wgpu::Backends::all()))
                .iter()
                .map(|a| describe(&a.get_info()))
                .collect()
        })
        .unwrap_or_default()
    }

    fn describe(info: &wgpu::AdapterInfo) -> Adapter {
        let device_type = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
            wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
            wgpu::DeviceType::VirtualGpu => "virtual-gpu",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        Adapter {
            name: info.name.clone(),
            device_type: device_type.into(),
            api: info.backend.to_str().into(),
        }
    }

    /// Polls a future to completion on this thread (native wgpu futures are ready at once).
    fn block_on<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quietly_turns_a_panic_into_its_message() {
        let r: Result<(), String> = quietly(|| panic!("no driver here"));
        let msg = r.unwrap_err();
        assert!(msg.contains("no driver here"), "{msg}");
        assert_eq!(quietly(|| 7), Ok(7));
    }

    #[test]
    fn first_line_drops_the_location() {
        let text = "panicked at src/x.rs:3:4:\nUnable to load libcuda.so\nmore";
        assert_eq!(first_line(text), "Unable to load libcuda.so");
        let text = "Unable to dynamically load the \"cuda\" shared library - searched for library names: [\"libcuda.so\"]";
        assert_eq!(
            first_line(text),
            "Unable to dynamically load the \"cuda\" shared library"
        );
        assert_eq!(first_line(&"x".repeat(500)).chars().count(), 301);
    }

    #[test]
    fn a_working_device_passes_the_sum() {
        assert_eq!(runs_a_sum(&Device::flex(), Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn only_gpu_types_count_as_gpus() {
        let a = |t: &str| Adapter {
            name: "x".into(),
            device_type: t.into(),
            api: "vulkan".into(),
        };
        assert!(a("discrete-gpu").is_gpu());
        assert!(a("integrated-gpu").is_gpu());
        assert!(!a("cpu").is_gpu());
        assert!(!a("other").is_gpu());
    }
}
