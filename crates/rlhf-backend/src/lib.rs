//! `rlhf-backend` owns one decision: which burn device the computation runs on.
//!
//! burn 0.22 has no backend type parameter; a [`burn::prelude::Device`] picks the backend at run
//! time. This crate maps a user's [`BackendKind`] (from `--backend cpu|ndarray|wgpu|cuda`) to a
//! device, and is the only crate that names burn's backend features.
//!
//! Architecture invariant: a backend that was not compiled in is an error that names the cargo
//! feature to enable ([`BackendError::NotCompiled`]), never a silent fallback to another backend.

mod probe;

use std::fmt;
use std::str::FromStr;

pub use burn::prelude::Device;
pub use probe::{Adapter, PROBE_TIMEOUT, adapters};

/// The execution backends a user can ask for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// burn's Flex CPU backend (pure Rust, always compiled in). The default.
    #[default]
    Cpu,
    /// burn's NdArray CPU backend (cargo feature `ndarray`; deprecated by burn, kept for users
    /// of older burn versions who know it).
    Ndarray,
    /// wgpu: Vulkan, Metal, DX12 or WebGPU (cargo feature `wgpu`).
    Wgpu,
    /// CUDA (cargo feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [BackendKind; 4] = [Self::Cpu, Self::Ndarray, Self::Wgpu, Self::Cuda];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// The cargo feature that compiles this backend in (`None` for the always-present CPU).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Cpu => None,
            Self::Ndarray => Some("ndarray"),
            Self::Wgpu => Some("wgpu"),
            Self::Cuda => Some("cuda"),
        }
    }

    /// Whether this binary was compiled with the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The kinds compiled into this binary.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled()).collect()
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s.to_ascii_lowercase())
            .ok_or_else(|| BackendError::Unknown {
                given: s.to_string(),
            })
    }
}

/// Errors choosing a backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The name is not one of the known backends.
    #[error("unknown backend `{given}`: expected one of cpu, ndarray, wgpu, cuda")]
    Unknown {
        /// What the user wrote.
        given: String,
    },
    /// The backend exists but this binary was built without it.
    #[error(
        "backend `{kind}` is not compiled into this binary: rebuild with `--features {feature}` \
         (for example `cargo run --release -p rlhf-cli --features {feature} -- ...`)"
    )]
    NotCompiled {
        /// The backend asked for.
        kind: BackendKind,
        /// The cargo feature that compiles it in.
        feature: &'static str,
    },
    /// The backend is compiled in but cannot run on this machine (no driver, no device).
    #[error("backend `{kind}` cannot run on this machine: {reason}")]
    Unavailable {
        /// The backend asked for.
        kind: BackendKind,
        /// What the driver or the runtime reported.
        reason: String,
    },
}

/// The device for `kind`, without autodiff (inference, sampling, evaluation).
///
/// A GPU backend is checked once per process before it is handed out (its driver loads, it
/// sees a device and a test sum returns within [`PROBE_TIMEOUT`]): a machine without one gets
/// [`BackendError::Unavailable`] naming the cause, never a panic or a hang.
pub fn device(kind: BackendKind) -> Result<Device, BackendError> {
    let device = unchecked_device(kind)?;
    probe::check(kind, &device).map_err(|reason| BackendError::Unavailable { kind, reason })?;
    Ok(device)
}

fn unchecked_device(kind: BackendKind) -> Result<Device, BackendError> {
    match kind {
        BackendKind::Cpu => Ok(Device::flex()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        BackendKind::Ndarray => Ok(Device::ndarray()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => Ok(Device::cuda(0)),
        #[allow(unreachable_patterns)]
        other => Err(BackendError::NotCompiled {
            kind: other,
            feature: other.feature().unwrap_or("flex"),
        }),
    }
}

/// The device for `kind` with autodiff enabled (training).
pub fn train_device(kind: BackendKind) -> Result<Device, BackendError> {
    Ok(device(kind)?.autodiff())
}

/// The device tests run on: `RLHF_TEST_BACKEND` (`cpu`, `ndarray`, `wgpu`, `cuda`) when set,
/// else the CPU.
///
/// # Panics
/// Panics with the [`BackendError`] message when the variable names a backend that is unknown
/// or not compiled in: a test run must never silently fall back to another backend.
pub fn test_device() -> Device {
    let kind = test_backend();
    device(kind).unwrap_or_else(|e| panic!("RLHF_TEST_BACKEND: {e}"))
}

/// The backend kind named by `RLHF_TEST_BACKEND` (default `cpu`).
pub fn test_backend() -> BackendKind {
    match std::env::var("RLHF_TEST_BACKEND") {
        Ok(s) if !s.is_empty() => s
            .parse()
            .unwrap_or_else(|e| panic!("RLHF_TEST_BACKEND: {e}")),
        _ => BackendKind::Cpu,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::prelude::*;

    #[test]
    fn parses_names_and_rejects_unknown() {
        assert_eq!("cpu".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        assert_eq!("WGPU".parse::<BackendKind>().unwrap(), BackendKind::Wgpu);
        let err = "tpu".parse::<BackendKind>().unwrap_err();
        assert!(err.to_string().contains("tpu"));
    }

    #[test]
    fn missing_backend_names_the_feature() {
        for kind in BackendKind::ALL {
            if kind.is_compiled() {
                continue;
            }
            let err = device(kind).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(kind.feature().unwrap()), "{msg}");
        }
    }

    /// Built with CUDA: a machine with a GPU computes on it, one without gets an error that
    /// names the cause (this returns instead of panicking or hanging on burn's device thread).
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_is_a_device_or_an_error_naming_the_cause() {
        match device(BackendKind::Cuda) {
            Ok(dev) => {
                let s = Tensor::<1>::from_floats([1.0, 2.0], &dev).sum();
                assert_eq!(s.into_scalar::<f32>(), 3.0);
                assert!(!adapters(BackendKind::Cuda).is_empty());
            }
            Err(BackendError::Unavailable { kind, reason }) => {
                assert_eq!(kind, BackendKind::Cuda);
                assert!(reason.contains("CUDA") || reason.contains("cu"), "{reason}");
                assert!(adapters(BackendKind::Cuda).is_empty());
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }

    #[test]
    fn cpu_device_computes() {
        let dev = device(BackendKind::Cpu).unwrap();
        let t = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &dev);
        let s = t.sum().into_scalar::<f32>();
        assert_eq!(s, 6.0);
    }

    #[test]
    fn train_device_has_autodiff() {
        let dev = train_device(BackendKind::Cpu).unwrap();
        assert!(dev.is_autodiff());
        let x = Tensor::<1>::from_floats([1.0, 2.0], &dev).require_grad();
        let grads = (x.clone() * x.clone()).sum().backward();
        let g = x.grad(&grads).unwrap();
        let v: Vec<f32> = g.into_data().try_into_vec_as::<f32>().unwrap();
        assert_eq!(v, vec![2.0, 4.0]);
    }
}
