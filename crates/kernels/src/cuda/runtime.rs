//! Running IR kernels on a CUDA device through the driver API (cudarc).
//!
//! This first version keeps values on the host: each kernel's inputs are copied to
//! the device, the kernel runs, and its outputs are copied back. It exists to run the
//! whole numeric test suite on a GPU (`JIT_BACKEND=cuda`); device-resident values,
//! the caching allocator and the on-disk cache are the next steps.

use super::{emit, nvrtc, probe};
use crate::buffer::HostBuffer;
use crate::cache::{KernelCache, FRAMEWORK_VERSION};
use crate::dtype::DType;
use crate::error::KernelError;
use crate::ir::{Kernel, Launch, Store};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
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
    nvrtc: (i32, i32),
}

/// A loaded kernel.
pub struct Loaded {
    func: CudaFunction,
    /// The block-per-output variant of a reduction kernel.
    block: Option<CudaFunction>,
    /// Its CUDA source.
    pub source: String,
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
            let nv = nvrtc::version()?;
            let made = catch_unwind(AssertUnwindSafe(|| -> Result<Runtime, KernelError> {
                let ctx = CudaContext::new(0).map_err(driver_err("cuCtxCreate"))?;
                let (major, minor) = ctx.compute_capability().map_err(driver_err("compute capability"))?;
                let sms = ctx
                    .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                    .map_err(driver_err("multiprocessor count"))?;
                let stream = ctx.default_stream();
                Ok(Runtime { _ctx: ctx, stream, arch: format!("sm_{major}{minor}"), sms: sms.max(1) as u32, nvrtc: nv })
            }));
            made.unwrap_or_else(|_| {
                Err(KernelError::Internal { op: "cuda init".into(), reason: "the CUDA driver panicked".into() })
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The CUDA backend's compiled-kernel cache.
pub fn cache() -> &'static KernelCache<Loaded> {
    crate::cache::global(&CACHE)
}

fn bytes_of(b: &HostBuffer) -> &[u8] {
    // SAFETY: the pointer is valid for `size_in_bytes` bytes of plain data.
    unsafe { std::slice::from_raw_parts(b.as_ptr(), b.size_in_bytes()) }
}

fn from_bytes(d: DType, bytes: &[u8], n: usize) -> HostBuffer {
    let mut out = HostBuffer::zeros(d, n);
    if d == DType::Bool {
        return HostBuffer::Bool(bytes.iter().take(n).map(|&b| b != 0).collect());
    }
    let len = out.size_in_bytes().min(bytes.len());
    // SAFETY: `out` owns `size_in_bytes` bytes; every bit pattern is a valid value of
    // the non-bool dtypes.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr(), len) };
    out
}

impl Runtime {
    fn upload<T: cudarc::driver::DeviceRepr>(&self, data: &[T], pad: T) -> Result<CudaSlice<T>, KernelError> {
        // a zero-length allocation has no valid pointer: pad empty arrays to one
        let r = if data.is_empty() { self.stream.clone_htod(&[pad]) } else { self.stream.clone_htod(data) };
        r.map_err(|e| {
            if e.to_string().contains("OUT_OF_MEMORY") {
                KernelError::OutOfMemory {
                    device: "cuda:0".into(),
                    bytes: std::mem::size_of_val(data) as u128,
                    what: "a kernel buffer".into(),
                }
            } else {
                driver_err("host-to-device copy")(e)
            }
        })
    }

    fn load(&self, kernel: &Kernel) -> Result<Arc<Loaded>, KernelError> {
        let key = crate::ir::fnv128(
            format!(
                "cuda|{}|nvrtc-{}.{}|{}|jit-{FRAMEWORK_VERSION}|{kernel}",
                self.arch,
                self.nvrtc.0,
                self.nvrtc.1,
                nvrtc::OPTIONS.join(" ")
            )
            .as_bytes(),
        );
        cache().get_or_compile(&key, || {
            let source = emit::translation_unit(kernel, "kernel");
            let cubin = nvrtc::compile_cubin(&source, &self.arch)?;
            let module = self
                ._ctx
                .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
                .map_err(driver_err("cuModuleLoadData"))?;
            let func = module.load_function("kernel").map_err(driver_err("cuModuleGetFunction"))?;
            let block = if emit::has_block_variant(kernel) {
                Some(module.load_function("kernel_block").map_err(driver_err("cuModuleGetFunction"))?)
            } else {
                None
            };
            Ok(Loaded { func, block, source })
        })
    }

    /// Runs `kernel` on the device with host inputs and returns host outputs.
    pub fn run(
        &self,
        kernel: &Kernel,
        launch: &Launch,
        inputs: &[&HostBuffer],
    ) -> Result<Vec<HostBuffer>, KernelError> {
        launch.check(kernel, inputs)?;
        let loaded = self.load(kernel)?;
        let ins = inputs.iter().map(|b| self.upload(bytes_of(b), 0u8)).collect::<Result<Vec<_>, _>>()?;
        let host_outs: Vec<HostBuffer> = kernel
            .outputs
            .iter()
            .zip(&launch.output_lens)
            .map(|(o, &n)| match &o.store {
                Store::Scatter { op, .. } if o.dtype.is_float() => {
                    Ok(HostBuffer::filled(o.dtype, n, op.identity_f64()))
                }
                Store::Scatter { op, .. } => {
                    Ok(HostBuffer::from_i64s(o.dtype, std::iter::repeat_n(op.identity_for(o.dtype), n)))
                }
                Store::Dense => HostBuffer::try_zeros(o.dtype, n),
            })
            .collect::<Result<_, _>>()?;
        let mut outs = host_outs.iter().map(|b| self.upload(bytes_of(b), 0u8)).collect::<Result<Vec<_>, _>>()?;
        let as_i64 = |v: &[usize]| v.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let args = self.upload(&launch.args, 0i64)?;
        let oshape = self.upload(&as_i64(&launch.out_shape), 0i64)?;
        let rshape = self.upload(&as_i64(&launch.red_shape), 0i64)?;
        let params = self.upload(&launch.params, 0f64)?;
        let n: i64 = launch.out_shape.iter().product::<usize>() as i64;
        if n > 0 {
            let threads = 256u32;
            let red_n: u64 = launch.red_shape.iter().map(|&d| d as u64).product();
            // a block per output when each output reduces enough elements to keep a
            // block busy; one thread per output otherwise
            let (func, blocks) = match &loaded.block {
                Some(block) if red_n >= 128 => (block, (n as u64).min(u64::from(self.sms) * 16) as u32),
                _ if kernel.has_scatter() => (&loaded.func, 1),
                _ => (&loaded.func, ((n as u64).div_ceil(u64::from(threads))).min(u64::from(self.sms) * 32) as u32),
            };
            let cfg = LaunchConfig { grid_dim: (blocks.max(1), 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            let mut b = self.stream.launch_builder(func);
            b.arg(&n);
            for i in &ins {
                b.arg(i);
            }
            for o in &mut outs {
                b.arg(o);
            }
            b.arg(&args).arg(&oshape).arg(&rshape).arg(&params);
            // SAFETY: the argument list matches the emitted kernel's parameters, every
            // pointer addresses a live device buffer of the sizes the launch describes.
            unsafe { b.launch(cfg) }.map_err(driver_err("kernel launch"))?;
        }
        let mut result = Vec::with_capacity(outs.len());
        for ((o, dev), &len) in kernel.outputs.iter().zip(&outs).zip(&launch.output_lens) {
            let bytes = self.stream.clone_dtoh(dev).map_err(driver_err("device-to-host copy"))?;
            result.push(from_bytes(o.dtype, &bytes, len));
        }
        Ok(result)
    }
}

/// Runs `kernel` on CUDA device 0 (see [`Runtime::run`]).
pub fn run(kernel: &Kernel, launch: &Launch, inputs: &[&HostBuffer]) -> Result<Vec<HostBuffer>, KernelError> {
    runtime()?.run(kernel, launch, inputs)
}
