//! Run-time discovery of the CUDA libraries.
//!
//! The crate is built with cudarc's dynamic loading, so it builds and runs on
//! machines without CUDA. cudarc panics on first use when a library is missing; this
//! module probes first and turns absence into a [`KernelError::LibraryMissing`] that
//! says what was looked for and how to run on the CPU instead.

pub mod allocator;
pub mod blas;
pub mod dnn;
pub mod emit;
pub mod memory;
pub mod nvrtc;
pub mod runtime;

use crate::error::KernelError;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What the probe found on a machine with a usable driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInfo {
    /// Number of CUDA devices the driver reports.
    pub device_count: usize,
    /// Driver API version (e.g. 13000 for CUDA 13.0).
    pub driver_version: i32,
    /// Whether libnvrtc (the run-time compiler) can be loaded.
    pub nvrtc_present: bool,
}

const CPU_HINT: &str = "install the NVIDIA driver and CUDA 13 libraries, or select the CPU with JIT_DEVICE=cpu";

fn candidates(lib: &str) -> String {
    let names = cudarc::get_lib_name_candidates(lib);
    let shown: Vec<&str> = names.iter().map(String::as_str).take(4).collect();
    format!("tried {} and {} more names on the loader path", shown.join(", "), names.len().saturating_sub(4))
}

/// Whether f32 matrix products and convolutions may use TF32 tensor cores
/// (`JIT_ALLOW_TF32=1`, PyTorch's `allow_tf32`); read once per process.
pub fn tf32_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("JIT_ALLOW_TF32").is_ok_and(|v| v.trim() == "1"))
}

/// True when libnvrtc can be loaded (no GPU needed).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library by name; no symbol is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Checks that libcuda loads and the driver initialises; reports the device count.
pub fn probe() -> Result<CudaInfo, KernelError> {
    // SAFETY: only tries to open the library by name; no symbol is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(KernelError::LibraryMissing {
            library: "libcuda (the NVIDIA driver library)".into(),
            detail: candidates("cuda"),
            hint: CPU_HINT.into(),
        });
    }
    let driver = catch_unwind(AssertUnwindSafe(|| -> Result<(usize, i32), String> {
        cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {e}"))?;
        let count = cudarc::driver::result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {e}"))?;
        let mut version = 0;
        // SAFETY: the driver library is loaded and initialised; the pointer is valid.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| format!("cuDriverGetVersion failed: {e}"))?;
        Ok((count.max(0) as usize, version))
    }));
    let (device_count, driver_version) = match driver {
        Ok(Ok(v)) => v,
        Ok(Err(detail)) => {
            return Err(KernelError::LibraryMissing {
                library: "a working CUDA driver".into(),
                detail,
                hint: CPU_HINT.into(),
            })
        }
        Err(_) => {
            return Err(KernelError::LibraryMissing {
                library: "libcuda (the NVIDIA driver library)".into(),
                detail: "the library loaded but a required symbol is missing (driver too old?)".into(),
                hint: CPU_HINT.into(),
            })
        }
    };
    Ok(CudaInfo { device_count, driver_version, nvrtc_present: nvrtc_present() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_explains_absence() {
        match probe() {
            Ok(info) => assert!(info.driver_version > 0),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("JIT_DEVICE=cpu"), "{msg}");
                assert!(msg.contains("libcuda") || msg.contains("driver"), "{msg}");
            }
        }
    }
}
