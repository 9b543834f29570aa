//! NVRTC: CUDA C to a cubin for the device's exact architecture (so that a newer
//! NVRTC never hands the driver a PTX it cannot load).

use super::emit::IndexWidth;
use crate::cache::FRAMEWORK_VERSION;
use crate::disk_cache::DiskCache;
use crate::error::KernelError;
use crate::ir::Kernel;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COMPILES: AtomicU64 = AtomicU64::new(0);

/// Number of NVRTC compilations this process ran (a warm disk cache keeps it at 0).
pub fn compiles() -> u64 {
    COMPILES.load(Ordering::Relaxed)
}

/// The disk level of the CUDA kernel cache (see [`crate::disk_cache`]), or `None`
/// when it is turned off. Read from the environment once.
pub fn disk_cache() -> Option<&'static DiskCache> {
    static DISK: OnceLock<Option<DiskCache>> = OnceLock::new();
    DISK.get_or_init(DiskCache::from_env).as_ref()
}

/// The cache key of `kernel`'s binary for `arch`: its canonical IR text with the
/// architecture, NVRTC's version and options, and the framework's version.
pub fn kernel_key(kernel: &Kernel, arch: &str) -> Result<String, KernelError> {
    let (major, minor) = version()?;
    Ok(crate::ir::fnv128(
        format!("cuda|{arch}|nvrtc-{major}.{minor}|{}|jit-{FRAMEWORK_VERSION}|{kernel}", OPTIONS.join(" ")).as_bytes(),
    ))
}

/// A kernel's cubin and where it came from.
pub struct Cubin {
    /// The binary for the device's architecture.
    pub binary: Vec<u8>,
    /// The cache key.
    pub key: String,
    /// True when it was read from the disk cache (no compile).
    pub from_disk: bool,
}

/// The cubin of `kernel` for `arch` (kernel `kernel`, and `kernel_block` for a
/// reduction): read from `disk` when a valid entry is there, else compiled with
/// NVRTC and stored. A compile error names the kernel's IR and where its CUDA source
/// was written (or shows the source when there is no disk cache).
pub fn cubin_for(kernel: &Kernel, arch: &str, disk: Option<&DiskCache>) -> Result<Cubin, KernelError> {
    cubin_for_width(kernel, IndexWidth::Wide, arch, disk)
}

/// [`cubin_for`] with the index arithmetic of `width`; the 32-bit module has its
/// own key (the 64-bit one keeps the key it always had).
pub fn cubin_for_width(
    kernel: &Kernel,
    width: IndexWidth,
    arch: &str,
    disk: Option<&DiskCache>,
) -> Result<Cubin, KernelError> {
    let mut key = kernel_key(kernel, arch)?;
    if width == IndexWidth::Narrow {
        key = crate::ir::fnv128(format!("{key}|idx32").as_bytes());
    }
    if let Some(binary) = disk.and_then(|d| d.load(&key)) {
        return Ok(Cubin { binary, key, from_disk: true });
    }
    let source = super::emit::translation_unit_with(kernel, "kernel", width);
    let binary = match compile_cubin(&source, arch) {
        Ok(b) => b,
        Err(KernelError::Compile { backend, message, .. }) => {
            let shown = match disk.map(|d| (d.dir().join(format!("{key}.failed.src")), d)) {
                Some((path, _)) if std::fs::write(&path, &source).is_ok() => {
                    format!("{message}\n--- CUDA source: {} ---", path.display())
                }
                _ => format!("{message}\n--- CUDA source ---\n{source}"),
            };
            return Err(KernelError::Compile { backend, message: shown, ir: kernel.to_string() });
        }
        Err(e) => return Err(e),
    };
    if let Some(d) = disk {
        if let Err(e) = d.store(&key, &binary, &source) {
            // the kernel still runs; the next process compiles it again
            eprintln!("[jit] kernel cache: {e}");
        }
    }
    Ok(Cubin { binary, key, from_disk: false })
}

/// Options every compile uses (part of the cache key).
pub const OPTIONS: &[&str] = &["--std=c++17", "--fmad=true"];

/// NVRTC's version as (major, minor); an error when libnvrtc cannot be loaded.
pub fn version() -> Result<(i32, i32), KernelError> {
    require()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: libnvrtc is present (checked above); the pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| KernelError::Internal { op: "nvrtcVersion".into(), reason: e.to_string() })?;
    Ok((major, minor))
}

fn require() -> Result<(), KernelError> {
    if super::nvrtc_present() {
        Ok(())
    } else {
        Err(KernelError::LibraryMissing {
            library: "libnvrtc (the CUDA run-time compiler)".into(),
            detail: "not found on the loader path".into(),
            hint: "install CUDA 13 or the PyPI package nvidia-cuda-nvrtc==13.0.88 and add its nvidia/cu13/lib to LD_LIBRARY_PATH, or select the CPU with JIT_DEVICE=cpu".into(),
        })
    }
}

/// Compiles `source` for `arch` (e.g. `sm_90`) to a cubin. A compile error carries
/// NVRTC's log and the source. NVRTC runs on a thread of its own with a large stack:
/// the compiler recurses deeply on long kernels.
pub fn compile_cubin(source: &str, arch: &str) -> Result<Vec<u8>, KernelError> {
    require()?;
    COMPILES.fetch_add(1, Ordering::Relaxed);
    on_compiler_thread(source, arch, Stage::Cubin)?
        .ok_or_else(|| KernelError::Internal { op: "nvrtc".into(), reason: "the compiler returned no cubin".into() })
}

/// Runs only NVRTC's C++ front end on `source` for `arch` (`-fdevice-syntax-only`):
/// every language error (an unknown name, a type mismatch, a bad template) is
/// reported as [`compile_cubin`] would report it, in about 1/100 of the time,
/// because no PTX is generated or assembled. What it cannot see are the
/// assembler's limits (shared memory, inline PTX). Not counted by [`compiles`].
pub fn check_syntax(source: &str, arch: &str) -> Result<(), KernelError> {
    require()?;
    on_compiler_thread(source, arch, Stage::Syntax).map(|_| ())
}

/// How far [`compile_here`] takes a program.
#[derive(Clone, Copy)]
enum Stage {
    /// Through the assembler, to a cubin for the architecture.
    Cubin,
    /// The front end only.
    Syntax,
}

fn on_compiler_thread(source: &str, arch: &str, stage: Stage) -> Result<Option<Vec<u8>>, KernelError> {
    let (src, arch) = (source.to_string(), arch.to_string());
    std::thread::Builder::new()
        .name("nvrtc".into())
        .stack_size(256 << 20)
        .spawn(move || compile_here(&src, &arch, stage))
        .map_err(|e| KernelError::Internal {
            op: "nvrtc".into(),
            reason: format!("cannot start the compiler thread: {e}"),
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(KernelError::Internal { op: "nvrtc".into(), reason: "the compiler thread panicked".into() })
        })
}

fn compile_here(source: &str, arch: &str, stage: Stage) -> Result<Option<Vec<u8>>, KernelError> {
    let fail = |message: String| KernelError::Compile { backend: "cuda", message, ir: source.to_string() };
    let src = CString::new(source).map_err(|e| fail(e.to_string()))?;
    let prog = cudarc::nvrtc::result::create_program(&src, None).map_err(|e| fail(e.to_string()))?;
    let mut opts: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    match stage {
        Stage::Cubin => opts.push(format!("--gpu-architecture={arch}")),
        Stage::Syntax => {
            // a virtual architecture: the front end's checks depend on the compute
            // capability only
            opts.push(format!("--gpu-architecture={}", arch.replacen("sm_", "compute_", 1)));
            opts.push("-fdevice-syntax-only".into());
        }
    }
    // SAFETY: `prog` was created above and is destroyed below, once.
    let out = unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(prog, &opts);
        let result = match compiled {
            Ok(()) if matches!(stage, Stage::Syntax) => Ok(None),
            Ok(()) => {
                let mut size = 0usize;
                let r = cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size).result();
                match r {
                    Ok(()) => {
                        let mut bin = vec![0u8; size];
                        cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast())
                            .result()
                            .map(|()| Some(bin))
                            .map_err(|e| fail(format!("nvrtcGetCUBIN: {e}")))
                    }
                    Err(e) => Err(fail(format!("nvrtcGetCUBINSize: {e}"))),
                }
            }
            Err(e) => {
                let log = cudarc::nvrtc::result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                        String::from_utf8_lossy(&bytes).into_owned()
                    })
                    .unwrap_or_default();
                Err(fail(format!("{e}\n{log}")))
            }
        };
        let _ = cudarc::nvrtc::result::destroy_program(prog);
        result
    };
    out
}
