//! Which device models run on: `--device cpu|cuda[:N]|auto`.
//!
//! candle's CUDA backend is compiled only with this crate's off-by-default
//! `cuda` feature (it needs the CUDA toolkit at build time); without it, asking
//! for CUDA is an error that says how to get it, and `auto` is the CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

/// A device as a user names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU.
    Cpu,
    /// CUDA GPU number `N` (`cuda` is `cuda:0`).
    Cuda(usize),
    /// CUDA GPU 0 when this build has CUDA and a GPU answers; the CPU otherwise (the default).
    #[default]
    Auto,
}

/// A device that cannot be named or opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not `cpu`, `cuda`, `cuda:N` or `auto`.
    #[error("unknown device {0:?}: expected cpu, cuda, cuda:N or auto")]
    Unknown(String),
    /// CUDA was asked of a build without it.
    #[error(
        "{0} was asked for, but this semla was built without CUDA: rebuild with `--features cuda` (needs the CUDA toolkit), or use --device cpu"
    )]
    NotCompiled(DeviceSpec),
    /// The CUDA device did not open.
    #[error("cannot open {spec}: {source}")]
    Open {
        /// The device asked for.
        spec: DeviceSpec,
        /// candle's error.
        source: candle_core::Error,
    },
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, DeviceError> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(text.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => write!(f, "auto"),
        }
    }
}

impl DeviceSpec {
    /// Opens the device. `auto` falls back to the CPU when this build has no
    /// CUDA or no GPU answers; an explicit `cuda[:N]` never falls back.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !cuda_compiled() {
                    return Err(DeviceError::NotCompiled(self));
                }
                Device::new_cuda(ordinal).map_err(|source| DeviceError::Open { spec: self, source })
            }
            Self::Auto => {
                if cuda_compiled() && candle_core::utils::cuda_is_available() {
                    match Device::new_cuda(0) {
                        Ok(device) => return Ok(device),
                        Err(e) => {
                            tracing::warn!("--device auto: CUDA did not open ({e}); using the CPU")
                        }
                    }
                }
                Ok(Device::Cpu)
            }
        }
    }
}

/// Whether this build carries candle's CUDA backend (the `cuda` feature).
pub fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// The optional features this build was compiled with, for `semla --version`.
pub fn compiled_features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cuda_compiled() {
        features.push("cuda");
    }
    features
}

/// A short name of an opened device for logs and result files (`cpu`, `cuda:0`).
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_others() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("CUDA".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        for bad in ["cuda:", "cuda:x", "cuda:-1", "tpu", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("expected cpu, cuda, cuda:N or auto"),
                "{bad}: {err}"
            );
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_and_auto_open_here() {
        assert!(matches!(DeviceSpec::Cpu.open().unwrap(), Device::Cpu));
        let auto = DeviceSpec::Auto.open().unwrap();
        if !cuda_compiled() {
            assert!(matches!(auto, Device::Cpu));
            assert_eq!(compiled_features(), Vec::<&str>::new());
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        if cuda_compiled() {
            return;
        }
        let err = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
        assert!(
            err.contains("cuda:1") && err.contains("--features cuda"),
            "{err}"
        );
    }
}
