//! Running IR kernels on a CUDA device through the driver API (cudarc).
//!
//! Values live on the device between kernels ([`Buffer`] keeps a device copy and a
//! host copy made on demand); device memory comes from the [caching
//! allocator](super::allocator). Kernels take their sizes, strides and parameters
//! as one struct passed by value, so a launch needs no allocation or copy besides
//! its outputs. Everything is queued on one stream.

use super::emit::IndexWidth;
use super::memory::DeviceBuffer;
use super::{emit, nvrtc, probe};
use crate::buffer::{Buffer, HostBuffer};
use crate::cache::KernelCache;
use crate::error::KernelError;
use crate::ir::{Kernel, Launch, Store};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

/// A context on device 0 with what the emitter needs to know about it.
pub struct Runtime {
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `sm_XY` of the device.
    pub arch: String,
    /// Multiprocessors.
    pub sms: u32,
}

/// A loaded kernel.
pub struct Loaded {
    func: CudaFunction,
    /// The block-per-output variant of a reduction kernel.
    block: Option<CudaFunction>,
    /// The 16-byte variant of an element-wise kernel (see [`emit::has_vector_variant`]).
    vector: Option<CudaFunction>,
}

// SAFETY: CUDA functions and modules may be used from any thread of the process; the
// context is bound to the calling thread before every use by cudarc.
unsafe impl Send for Loaded {}
// SAFETY: as above.
unsafe impl Sync for Loaded {}

static RUNTIME: OnceLock<Result<Runtime, KernelError>> = OnceLock::new();
static CACHE: OnceLock<KernelCache<Loaded>> = OnceLock::new();

fn driver_err(op: &str) -> impl Fn(cudarc::driver::DriverError) -> KernelError + '_ {
    move |e| KernelError::Internal { op: op.to_string(), reason: e.to_string() }
}

/// The runtime for device 0, created on first use. Never panics: a missing driver,
/// NVRTC or device is an error that says which.
pub fn runtime() -> Result<&'static Runtime, KernelError> {
    RUNTIME
        .get_or_init(|| {
            let info = probe()?;
            if info.device_count == 0 {
                return Err(KernelError::LibraryMissing {
                    library: "a CUDA device".into(),
                    detail: "the driver reports no devices".into(),
                    hint: "select the CPU with JIT_DEVICE=cpu".into(),
                });
            }
            // NVRTC must be present before anything is compiled
            nvrtc::version()?;
            let made = catch_unwind(AssertUnwindSafe(|| -> Result<Runtime, KernelError> {
                let ctx = CudaContext::new(0).map_err(driver_err("cuCtxCreate"))?;
                let (major, minor) = ctx.compute_capability().map_err(driver_err("compute capability"))?;
                let sms = ctx
                    .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                    .map_err(driver_err("multiprocessor count"))?;
                let stream = ctx.default_stream();
                Ok(Runtime { _ctx: ctx, stream, arch: format!("sm_{major}{minor}"), sms: sms.max(1) as u32 })
            }));
            made.unwrap_or_else(|_| {
                Err(KernelError::Internal { op: "cuda init".into(), reason: "the CUDA driver panicked".into() })
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Waits until the work queued on device 0's stream has finished; returns at once
/// when the runtime was never started (nothing can be queued then). Launches and
/// library calls only queue work, so timing needs this.
pub fn synchronize_if_started() -> Result<(), KernelError> {
    match RUNTIME.get() {
        Some(Ok(rt)) => {
            rt.bind()?;
            rt.synchronize()
        }
        _ => Ok(()),
    }
}

/// The CUDA backend's compiled-kernel cache.
pub fn cache() -> &'static KernelCache<Loaded> {
    crate::cache::global(&CACHE)
}

/// A kernel's metadata parameter as the emitted `jmeta_*` struct lays it out: the
/// arrays `a`, `o`, `r` (i64) and `p` (f64 bits), each at least one element long.
/// The launch passes the address of the first word; the driver copies as many bytes
/// as the kernel's struct declares into the kernel's parameter space.
fn meta_words(kernel: &Kernel, launch: &Launch) -> Result<Vec<u64>, KernelError> {
    let lens = emit::meta_lens(kernel);
    let total: usize = lens.iter().sum();
    // kernel parameters may take up to 32 KiB on the architectures CUDA 13 supports
    if total > 3800 {
        return Err(KernelError::Internal {
            op: "kernel launch".into(),
            reason: format!("the kernel takes {total} metadata words, more than a launch can pass"),
        });
    }
    let mut words = Vec::with_capacity(total);
    let mut push = |part: &mut dyn Iterator<Item = u64>, len: usize| {
        let end = words.len() + len;
        words.extend(part);
        words.resize(end, 0);
    };
    push(&mut launch.args.iter().map(|&a| a as u64), lens[0]);
    push(&mut launch.out_shape.iter().map(|&d| d as u64), lens[1]);
    push(&mut launch.red_shape.iter().map(|&d| d as u64), lens[2]);
    push(&mut launch.params.iter().map(|p| p.to_bits()), lens[3]);
    Ok(words)
}

impl Runtime {
    /// Makes the context current on the calling thread.
    pub fn bind(&self) -> Result<(), KernelError> {
        self._ctx.bind_to_thread().map_err(driver_err("cuCtxSetCurrent"))
    }

    /// Waits for everything queued on the stream.
    pub fn synchronize(&self) -> Result<(), KernelError> {
        self.stream.synchronize().map_err(driver_err("stream synchronize"))
    }

    /// The stream every kernel and copy is queued on.
    pub fn cu_stream(&self) -> cudarc::driver::sys::CUstream {
        self.stream.cu_stream()
    }

    fn load(&self, kernel: &Kernel, width: IndexWidth) -> Result<Arc<Loaded>, KernelError> {
        // level 1: loaded modules by structure and index width (the key of the disk
        // level adds the compiler's version, fixed for the process)
        let mut mem_key = kernel.structural_hash();
        if width == IndexWidth::Narrow {
            mem_key.push_str("|idx32");
        }
        cache().get_or_compile(&mem_key, || {
            let cubin = nvrtc::cubin_for_width(kernel, width, &self.arch, nvrtc::disk_cache())?;
            self.bind()?;
            let module = self
                ._ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin.binary))
                .map_err(driver_err("cuModuleLoadData"))?;
            let func = module.load_function("kernel").map_err(driver_err("cuModuleGetFunction"))?;
            let block = if emit::has_block_variant(kernel) {
                Some(module.load_function("kernel_block").map_err(driver_err("cuModuleGetFunction"))?)
            } else {
                None
            };
            let vector = if emit::has_vector_variant(kernel) {
                Some(module.load_function("kernel_v4").map_err(driver_err("cuModuleGetFunction"))?)
            } else {
                None
            };
            Ok(Loaded { func, block, vector })
        })
    }

    /// Runs `kernel` on the device. Inputs are copied to the device once if they are
    /// not there yet (the copy stays with the value); outputs stay on the device
    /// until the host reads them.
    pub fn run(&self, kernel: &Kernel, launch: &Launch, inputs: &[&Buffer]) -> Result<Vec<Buffer>, KernelError> {
        launch.check_dtypes(kernel, inputs.iter().map(|b| b.dtype()))?;
        // 32-bit index arithmetic when every index value of this launch fits (the
        // common case: cheaper division and modulo); the 64-bit module otherwise
        let width = if emit::narrow_fits(kernel, launch) { IndexWidth::Narrow } else { IndexWidth::Wide };
        let loaded = self.load(kernel, width)?;
        self.bind()?;
        let ins: Vec<u64> = inputs.iter().map(|b| b.device().map(DeviceBuffer::ptr)).collect::<Result<_, _>>()?;
        let outs: Vec<DeviceBuffer> = kernel
            .outputs
            .iter()
            .zip(&launch.output_lens)
            .map(|(o, &n)| {
                let Store::Scatter { op, .. } = &o.store else {
                    return DeviceBuffer::alloc(o.dtype, n, "a kernel output");
                };
                // scatter outputs start at the identity of their combine op
                let init = if o.dtype.is_float() {
                    HostBuffer::filled(o.dtype, n, op.identity_f64())
                } else {
                    HostBuffer::from_i64s(o.dtype, std::iter::repeat_n(op.identity_for(o.dtype), n))
                };
                if init.as_bytes().iter().any(|&b| b != 0) {
                    return DeviceBuffer::upload(&init, "a kernel output");
                }
                let d = DeviceBuffer::alloc(o.dtype, n, "a kernel output")?;
                d.memset(0)?;
                Ok(d)
            })
            .collect::<Result<_, KernelError>>()?;
        let meta = meta_words(kernel, launch)?;
        let n: i64 = launch.out_shape.iter().product::<usize>() as i64;
        if n > 0 {
            let threads = 256u32;
            let red_n: u64 = launch.red_shape.iter().map(|&d| d as u64).product();
            // scatter kernels: one thread per row of a proven disjoint split (one row
            // of everything without one)
            let row_len: i64 =
                crate::scatter_split::row_split(kernel, launch, 1 << 16).map_or(n, |split| split.row_len as i64).max(1);
            // a block per output when each output reduces enough elements to keep a
            // block busy; one thread per output otherwise
            let plain = &loaded.func;
            let vector = loaded.vector.as_ref().filter(|_| emit::vector_fits(kernel, launch));
            let (func, blocks) = match (&loaded.block, vector) {
                (Some(block), _) if red_n >= 128 => (block, (n as u64).min(u64::from(self.sms) * 16) as u32),
                // four positions per thread, 16-byte loads and stores
                (_, Some(v)) => {
                    let quads = (n as u64) / 4;
                    (v, quads.div_ceil(u64::from(threads)).min(u64::from(self.sms) * 32) as u32)
                }
                _ if kernel.has_scatter() => {
                    let rows = (n as u64).div_ceil(row_len as u64);
                    (plain, rows.div_ceil(u64::from(threads)).min(u64::from(self.sms) * 32) as u32)
                }
                _ => (plain, ((n as u64).div_ceil(u64::from(threads))).min(u64::from(self.sms) * 32) as u32),
            };
            let cfg = LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            let out_ptrs: Vec<u64> = outs.iter().map(DeviceBuffer::ptr).collect();
            let mut b = self.stream.launch_builder(func);
            b.arg(&n);
            if kernel.has_scatter() {
                b.arg(&row_len);
            }
            for i in &ins {
                b.arg(i);
            }
            for o in &out_ptrs {
                b.arg(o);
            }
            b.arg(&meta[0]);
            // SAFETY: the argument list matches the emitted kernel's parameters (the
            // metadata words are laid out as the kernel's struct); every pointer addresses a live
            // device block of the sizes the launch describes, kept alive until the
            // blocks are released, after which only stream-ordered work can reuse them.
            unsafe { b.launch(cfg) }.map_err(driver_err("kernel launch"))?;
        }
        Ok(outs.into_iter().map(Buffer::from_device).collect())
    }
}

/// Runs `kernel` on CUDA device 0 (see [`Runtime::run`]).
pub fn run(kernel: &Kernel, launch: &Launch, inputs: &[&Buffer]) -> Result<Vec<Buffer>, KernelError> {
    runtime()?.run(kernel, launch, inputs)
}
