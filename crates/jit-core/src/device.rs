//! Devices.

use crate::error::{Error, Result};
use std::fmt;

/// Where a value lives and runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The host CPU.
    #[default]
    Cpu,
    /// CUDA device with the given ordinal.
    Cuda(usize),
}

impl Device {
    /// Parses `cpu`, `cuda` (device 0) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Device> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    n.parse().map(Device::Cuda).map_err(|_| bad_device(&s))
                } else {
                    Err(bad_device(&s))
                }
            }
        }
    }

    /// The device named by the `JIT_DEVICE` environment variable, or the CPU.
    pub fn from_env() -> Result<Device> {
        match std::env::var("JIT_DEVICE") {
            Ok(s) if !s.trim().is_empty() => Device::parse(&s),
            _ => Ok(Device::Cpu),
        }
    }
}

fn bad_device(s: &str) -> Error {
    Error::Device {
        op: "device".into(),
        msg: format!("unknown device {s:?}; expected \"cpu\", \"cuda\" or \"cuda:N\""),
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("CUDA:1").unwrap(), Device::Cuda(1));
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        let e = Device::parse("tpu").unwrap_err().to_string();
        assert!(e.contains("\"tpu\"") && e.contains("cuda:N"), "{e}");
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }
}
