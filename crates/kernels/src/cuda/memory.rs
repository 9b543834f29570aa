//! Device-resident values: typed device buffers from the [caching
//! allocator](super::allocator), and the copies between host and device.
//!
//! All work is queued on the runtime's one stream. A copy to the host waits for the
//! stream (the value must be computed first); a copy to the device is queued like a
//! kernel.

use super::allocator::{Block, CachingAllocator, RawDevice, RawError};
use super::runtime::{runtime, Runtime};
use crate::buffer::HostBuffer;
use crate::dtype::DType;
use crate::error::KernelError;
use cudarc::driver::sys::CUresult;
use std::sync::OnceLock;

/// `cuMemAlloc` / `cuMemFree` on device 0.
pub struct Driver {
    rt: &'static Runtime,
}

impl RawDevice for Driver {
    fn alloc(&self, bytes: usize) -> Result<u64, RawError> {
        self.rt.bind().map_err(|e| RawError::Other(e.to_string()))?;
        // SAFETY: the context is current on this thread; the size is non-zero.
        match unsafe { cudarc::driver::result::malloc_sync(bytes) } {
            Ok(p) => Ok(p),
            Err(e) if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY => Err(RawError::OutOfMemory),
            Err(e) => Err(RawError::Other(e.to_string())),
        }
    }

    fn free(&self, ptr: u64, _bytes: usize) {
        if self.rt.bind().is_ok() {
            // work queued on the stream may still use the block: wait for it first
            let _ = self.rt.synchronize();
            // SAFETY: `ptr` came from `malloc_sync` and no block refers to it any more.
            let _ = unsafe { cudarc::driver::result::free_sync(ptr) };
        }
    }

    fn name(&self) -> String {
        "cuda:0".into()
    }
}

static ALLOCATOR: OnceLock<CachingAllocator<Driver>> = OnceLock::new();

/// The process-wide device allocator (creates the runtime on first use).
pub fn allocator() -> Result<&'static CachingAllocator<Driver>, KernelError> {
    let rt = runtime()?;
    Ok(ALLOCATOR.get_or_init(|| CachingAllocator::new(Driver { rt })))
}

/// The allocator's counters, or `None` when no device memory was ever allocated.
pub fn stats() -> Option<super::allocator::AllocatorStats> {
    ALLOCATOR.get().map(CachingAllocator::stats)
}

/// Values of one dtype in device memory, contiguous, row-major.
pub struct DeviceBuffer {
    block: Block,
    dtype: DType,
    len: usize,
}

impl DeviceBuffer {
    /// Uninitialised device memory for `len` values of `dtype`; `what` names the use
    /// in an out-of-memory error.
    pub fn alloc(dtype: DType, len: usize, what: &str) -> Result<DeviceBuffer, KernelError> {
        let bytes = len.saturating_mul(dtype.size_in_bytes());
        let block = allocator()?.alloc(bytes, &format!("{what}: {len} elements of {dtype}"))?;
        Ok(DeviceBuffer { block, dtype, len })
    }

    /// A device copy of host data (queued on the stream); `what` names the use in an
    /// out-of-memory error.
    pub fn upload(host: &HostBuffer, what: &str) -> Result<DeviceBuffer, KernelError> {
        let d = DeviceBuffer::alloc(host.dtype(), host.len(), what)?;
        if !host.is_empty() {
            let rt = runtime()?;
            rt.bind()?;
            // SAFETY: the block holds at least `size_in_bytes` bytes; for pageable
            // memory the driver has staged the source when the call returns.
            unsafe { cudarc::driver::result::memcpy_htod_async(d.ptr(), host.as_bytes(), rt.cu_stream()) }
                .map_err(|e| copy_err("host-to-device copy", &d, e))?;
        }
        Ok(d)
    }

    /// Sets every byte to `byte` (queued on the stream).
    pub fn memset(&self, byte: u8) -> Result<(), KernelError> {
        let rt = runtime()?;
        rt.bind()?;
        let n = self.len * self.dtype.size_in_bytes();
        if n > 0 {
            // SAFETY: the block holds at least `n` bytes.
            unsafe { cudarc::driver::result::memset_d8_async(self.ptr(), byte, n, rt.cu_stream()) }
                .map_err(|e| copy_err("device memset", self, e))?;
        }
        Ok(())
    }

    /// Copies `self` into `dst` on the device (queued on the stream); the two hold
    /// the same number of bytes.
    pub fn copy_to(&self, dst: &DeviceBuffer) -> Result<(), KernelError> {
        let n = self.len * self.dtype.size_in_bytes();
        if dst.len * dst.dtype.size_in_bytes() != n {
            return Err(KernelError::Internal {
                op: "device copy".into(),
                reason: format!("{self:?} and {dst:?} differ in size"),
            });
        }
        let rt = runtime()?;
        rt.bind()?;
        if n > 0 {
            // SAFETY: both blocks hold at least `n` bytes.
            unsafe { cudarc::driver::result::memcpy_dtod_async(dst.ptr(), self.ptr(), n, rt.cu_stream()) }
                .map_err(|e| copy_err("device-to-device copy", self, e))?;
        }
        Ok(())
    }

    /// A host copy (waits for the work queued before it).
    pub fn download(&self) -> Result<HostBuffer, KernelError> {
        let rt = runtime()?;
        rt.bind()?;
        if self.dtype == DType::Bool {
            // copied as bytes, then read as 0 / non-zero
            let mut raw = vec![0u8; self.len];
            if self.len > 0 {
                // SAFETY: the block holds `len` bytes; the copy completes before the
                // stream sync returns.
                unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut raw, self.ptr(), rt.cu_stream()) }
                    .map_err(|e| copy_err("device-to-host copy", self, e))?;
                rt.synchronize()?;
            }
            return Ok(HostBuffer::Bool(raw.into_iter().map(|b| b != 0).collect()));
        }
        let mut host = crate::host_pool::take(
            self.dtype,
            self.len,
            crate::host_pool::Fill::Overwritten,
            "a value copied from the device",
        )?;
        if self.len > 0 {
            let bytes = host.size_in_bytes();
            // SAFETY: `host` owns `bytes` bytes of a dtype for which every bit pattern
            // is a valid value (bool is handled above).
            let dst = unsafe { std::slice::from_raw_parts_mut(host.as_mut_ptr(), bytes) };
            // SAFETY: the device block holds `bytes` bytes; the copy completes before
            // the stream sync returns.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, self.ptr(), rt.cu_stream()) }
                .map_err(|e| copy_err("device-to-host copy", self, e))?;
            rt.synchronize()?;
        }
        Ok(host)
    }

    /// Device address of the first element.
    pub fn ptr(&self) -> u64 {
        self.block.ptr()
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>[{}] at {:#x}", self.dtype, self.len, self.ptr())
    }
}

fn copy_err(op: &str, d: &DeviceBuffer, e: cudarc::driver::DriverError) -> KernelError {
    KernelError::Internal { op: op.into(), reason: format!("{} elements of {}: {e}", d.len, d.dtype) }
}

/// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written per
/// second), best of `reps` copies of `bytes` bytes: the limit an element-wise
/// kernel that reads and writes once can approach.
pub fn copy_bandwidth_gbps(bytes: usize, reps: usize) -> Result<f64, KernelError> {
    let a = DeviceBuffer::alloc(DType::U8, bytes, "the copy-bandwidth source")?;
    let b = DeviceBuffer::alloc(DType::U8, bytes, "the copy-bandwidth destination")?;
    a.memset(1)?;
    let rt = runtime()?;
    a.copy_to(&b)?; // warm-up
    rt.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let t = std::time::Instant::now();
        a.copy_to(&b)?;
        rt.synchronize()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * bytes as f64 / best / 1e9)
}
