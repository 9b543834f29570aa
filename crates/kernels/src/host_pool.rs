//! A caching allocator for large host buffers.
//!
//! A fresh allocation of tens of megabytes comes from the operating system as new
//! pages, and the first write to each page faults: on the 2-core test machine a
//! 35 MB kernel output costs about 11 ms of page faults before the kernel has done
//! anything, more than some kernels take. Running the same network again allocates
//! the same sizes in the same order, so the buffers that [`Buffer`](crate::Buffer)s
//! release are kept here, keyed by dtype and length, and handed out again.
//!
//! Only buffers of at least [`MIN_POOLED_BYTES`] are kept (the system allocator
//! serves small ones well). The pool holds at most its cap, `JIT_HOST_POOL_MB`
//! megabytes (default 1024; `0` turns pooling off), and drops the least recently
//! released buffer first. When an allocation fails the pool is emptied and the
//! allocation tried once more before the out-of-memory error.
//!
//! Every host allocation for a value goes through [`take`], which also keeps the
//! process inside the host memory it may use, so that running out of memory is an
//! error naming the allocation rather than the operating system killing the process
//! (Linux grants a request for more memory than is free, and kills the process when
//! the pages are written):
//! - an allocation of at least [`CHECKED_BYTES`] larger than the memory the system
//!   reports available (`MemAvailable` plus free swap, read from `/proc/meminfo`) is
//!   refused;
//! - `JIT_HOST_MEMORY_MB` (or [`set_memory_limit`]) caps the bytes the framework's
//!   live buffers may hold; an allocation that would take them past it is refused.

use crate::dtype::DType;
use crate::{HostBuffer, KernelError};
use half::{bf16, f16};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Buffers smaller than this many bytes are not pooled.
pub const MIN_POOLED_BYTES: usize = 1 << 20;

/// Allocations of at least this many bytes are checked against the memory the
/// system reports available.
pub const CHECKED_BYTES: usize = 64 << 20;

/// The cap of [`set_memory_limit`]; `usize::MAX` for none, `NOT_READ` before the
/// environment variable is read.
static LIMIT: AtomicUsize = AtomicUsize::new(NOT_READ);
const NOT_READ: usize = usize::MAX - 1;

/// The cap on the bytes held by live [`Buffer`](crate::Buffer)s, if one is set (by
/// [`set_memory_limit`], or else by `JIT_HOST_MEMORY_MB`).
pub fn memory_limit() -> Option<usize> {
    let mut l = LIMIT.load(Ordering::Relaxed);
    if l == NOT_READ {
        let from_env = match std::env::var("JIT_HOST_MEMORY_MB") {
            Err(_) => usize::MAX,
            Ok(v) => {
                match v.trim().parse::<usize>() {
                    Ok(mb) => mb.saturating_mul(1 << 20).min(NOT_READ - 1),
                    Err(_) => {
                        eprintln!("warning: JIT_HOST_MEMORY_MB={v:?} is not a whole number of MiB; no host memory limit is set");
                        usize::MAX
                    }
                }
            }
        };
        // a concurrent set_memory_limit wins over the environment
        l = match LIMIT.compare_exchange(NOT_READ, from_env, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => from_env,
            Err(now) => now,
        };
    }
    (l != usize::MAX).then_some(l)
}

/// Caps the bytes the framework's live buffers may hold (`None`: no cap, the
/// default unless `JIT_HOST_MEMORY_MB` is set); an allocation that would take them
/// past the cap is an out-of-memory error. Returns the previous cap. The cap is
/// process-wide.
pub fn set_memory_limit(bytes: Option<usize>) -> Option<usize> {
    let old = memory_limit();
    LIMIT.store(bytes.map_or(usize::MAX, |b| b.min(NOT_READ - 1)), Ordering::Relaxed);
    old
}

/// Bytes the system can still give this process without killing it: `MemAvailable`
/// plus `SwapFree` from `/proc/meminfo`; `None` where that is not readable.
pub fn system_available_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<usize> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: usize = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb.saturating_mul(1024))
    };
    Some(field("MemAvailable:")?.saturating_add(field("SwapFree:").unwrap_or(0)))
}

/// The checks [`take`] makes before it allocates, for a buffer of `n` elements of
/// `dtype` that its caller allocates itself: an out-of-memory error naming `what`
/// when the buffer would pass the [memory limit](memory_limit) or the memory the
/// system has available.
pub fn check(dtype: DType, n: usize, what: &str) -> Result<(), KernelError> {
    let bytes = n.saturating_mul(dtype.size_in_bytes());
    past_limit(bytes).or_else(|| past_system(bytes)).map_or(Ok(()), |why| Err(oom_because(dtype, n, bytes, what, &why)))
}

/// Why a buffer of `bytes` may not be taken: it would take the live buffers past
/// the [memory limit](memory_limit).
fn past_limit(bytes: usize) -> Option<String> {
    let limit = memory_limit()?;
    let live = crate::buffer::live_bytes();
    (live.saturating_add(bytes) > limit).then(|| {
        format!(
            "the framework's live buffers hold {live} bytes and the host memory limit is {limit} bytes \
             (JIT_HOST_MEMORY_MB or jit_core::set_host_memory_limit)"
        )
    })
}

/// Why a fresh allocation of `bytes` (at least [`CHECKED_BYTES`]) may not be made:
/// it is larger than the memory the system has available, even after the pool is
/// emptied to make room.
fn past_system(bytes: usize) -> Option<String> {
    if bytes < CHECKED_BYTES {
        return None;
    }
    let mut avail = system_available_bytes()?;
    // pooled buffers count as available once the pool is emptied
    if bytes > avail && release() > 0 {
        avail = system_available_bytes().unwrap_or(avail);
    }
    (bytes > avail).then(|| {
        format!(
            "the system has {avail} bytes available (MemAvailable plus SwapFree in /proc/meminfo) and the \
             framework's live buffers hold {} bytes",
            crate::buffer::live_bytes()
        )
    })
}

/// What the caller needs in a buffer it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Every element zero.
    Zeroed,
    /// Any values: the caller writes every element before anything reads it.
    Overwritten,
}

/// Counters of the pool (process-wide).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of released buffers the pool holds now.
    pub pooled_bytes: usize,
    /// Buffers it holds now.
    pub pooled_buffers: usize,
    /// Allocations served from the pool.
    pub hits: u64,
    /// Poolable allocations that had to ask the system.
    pub misses: u64,
    /// The cap in bytes.
    pub cap_bytes: usize,
}

struct Pool {
    /// Released buffers, least recently released first.
    free: Vec<HostBuffer>,
    stats: PoolStats,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let cap_mb =
            std::env::var("JIT_HOST_POOL_MB").ok().and_then(|v| v.trim().parse::<usize>().ok()).unwrap_or(1024);
        let stats = PoolStats { cap_bytes: cap_mb.saturating_mul(1 << 20), ..PoolStats::default() };
        Mutex::new(Pool { free: Vec::new(), stats })
    })
}

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // a panic while holding the lock leaves the pool consistent (every update is a
    // single push, remove or counter change), so a poisoned lock is still usable
    pool().lock().unwrap_or_else(|e| e.into_inner())
}

/// The pool's counters.
pub fn stats() -> PoolStats {
    lock().stats
}

/// Sets the cap in bytes (0 turns pooling off), dropping buffers above it; returns
/// the previous cap.
pub fn set_cap(bytes: usize) -> usize {
    let mut p = lock();
    let old = std::mem::replace(&mut p.stats.cap_bytes, bytes);
    let dropped = trim(&mut p);
    drop(p);
    drop(dropped);
    old
}

/// Frees every pooled buffer (they go back to the system); returns the bytes freed.
pub fn release() -> usize {
    let mut p = lock();
    let freed = std::mem::take(&mut p.free);
    p.stats.pooled_bytes = 0;
    p.stats.pooled_buffers = 0;
    drop(p);
    freed.iter().map(HostBuffer::size_in_bytes).sum()
}

/// Removes the oldest buffers until the pool fits its cap; returns them so that the
/// caller frees them outside the lock.
fn trim(p: &mut Pool) -> Vec<HostBuffer> {
    let mut over = 0;
    let mut bytes = p.stats.pooled_bytes;
    while bytes > p.stats.cap_bytes && over < p.free.len() {
        bytes -= p.free[over].size_in_bytes();
        over += 1;
    }
    p.stats.pooled_bytes = bytes;
    let dropped: Vec<HostBuffer> = p.free.drain(..over).collect();
    p.stats.pooled_buffers = p.free.len();
    dropped
}

/// Keeps a released buffer for reuse when it is large enough and the pool has room.
pub fn give(buf: HostBuffer) {
    let bytes = buf.size_in_bytes();
    if bytes < MIN_POOLED_BYTES {
        return;
    }
    let mut p = lock();
    if bytes > p.stats.cap_bytes {
        return;
    }
    p.free.push(buf);
    p.stats.pooled_bytes += bytes;
    let dropped = trim(&mut p);
    drop(p);
    drop(dropped);
}

/// A pooled buffer of exactly `n` elements of `dtype`, if one is there.
fn reuse(dtype: DType, n: usize) -> Option<HostBuffer> {
    let mut p = lock();
    let at = p.free.iter().rposition(|b| b.dtype() == dtype && b.len() == n);
    match at {
        Some(i) => {
            let b = p.free.remove(i);
            p.stats.pooled_bytes -= b.size_in_bytes();
            p.stats.pooled_buffers = p.free.len();
            p.stats.hits += 1;
            Some(b)
        }
        None => {
            p.stats.misses += 1;
            None
        }
    }
}

/// A buffer of `n` elements of `dtype` with the contents `fill` asks for: a pooled
/// one when a released buffer of that dtype and length is there, else a fresh one
/// (zeroed by the system without touching its pages); an out-of-memory error naming
/// `what` and the size when the system has no room even after the pool is emptied,
/// or when the buffer would pass the [memory limit](memory_limit) (see the module
/// documentation).
pub fn take(dtype: DType, n: usize, fill: Fill, what: &str) -> Result<HostBuffer, KernelError> {
    let bytes = n.saturating_mul(dtype.size_in_bytes());
    let refuse = |why: String| Err(oom_because(dtype, n, bytes, what, &why));
    if let Some(why) = past_limit(bytes) {
        return refuse(why);
    }
    if bytes >= MIN_POOLED_BYTES {
        if let Some(mut b) = reuse(dtype, n) {
            if fill == Fill::Zeroed {
                zero(&mut b);
            }
            return Ok(b);
        }
    }
    if let Some(why) = past_system(bytes) {
        return refuse(why);
    }
    match zeroed(dtype, n) {
        Some(b) => Ok(b),
        None if release() > 0 => zeroed(dtype, n).ok_or_else(|| oom(dtype, n, bytes, what)),
        None => Err(oom(dtype, n, bytes, what)),
    }
}

/// [`take`] for an f32 vector.
pub fn take_f32(n: usize, fill: Fill, what: &str) -> Result<Vec<f32>, KernelError> {
    match take(DType::F32, n, fill, what)? {
        HostBuffer::F32(v) => Ok(v),
        _ => unreachable!("an f32 buffer was asked for"),
    }
}

fn oom_because(dtype: DType, n: usize, bytes: usize, what: &str, why: &str) -> KernelError {
    KernelError::OutOfMemory {
        device: "cpu".into(),
        bytes: bytes as u128,
        what: format!("{what}: {n} elements of {dtype}; {why}"),
    }
}

fn oom(dtype: DType, n: usize, bytes: usize, what: &str) -> KernelError {
    KernelError::OutOfMemory {
        device: "cpu".into(),
        bytes: bytes as u128,
        what: format!("{what}: {n} elements of {dtype}"),
    }
}

/// A zero-filled buffer from the system (pages untouched), or `None` when the
/// allocation fails.
fn zeroed(dtype: DType, n: usize) -> Option<HostBuffer> {
    fn go<T: Copy>(n: usize) -> Option<Vec<T>> {
        let layout = std::alloc::Layout::array::<T>(n).ok()?;
        if layout.size() == 0 {
            return Some(Vec::new());
        }
        // SAFETY: the layout has non-zero size; a non-null result is a zeroed block of
        // `n` elements of `T`, for which all-zero bits are a valid value (every element
        // type of a buffer is), owned by the returned Vec with the same layout.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut T;
            if p.is_null() {
                return None;
            }
            Some(Vec::from_raw_parts(p, n, n))
        }
    }
    Some(match dtype {
        DType::Bool => HostBuffer::Bool(go(n)?),
        DType::U8 => HostBuffer::U8(go(n)?),
        DType::I32 => HostBuffer::I32(go(n)?),
        DType::I64 => HostBuffer::I64(go(n)?),
        DType::F16 => HostBuffer::F16(go(n)?),
        DType::BF16 => HostBuffer::BF16(go(n)?),
        DType::F32 => HostBuffer::F32(go(n)?),
        DType::F64 => HostBuffer::F64(go(n)?),
    })
}

/// Sets every element to zero, in parallel for large buffers.
fn zero(b: &mut HostBuffer) {
    fn fill<T: Copy + Send + Sync>(v: &mut [T], z: T) {
        let chunk = 1 << 18;
        if v.len() > chunk {
            v.par_chunks_mut(chunk).for_each(|c| c.fill(z));
        } else {
            v.fill(z);
        }
    }
    match b {
        HostBuffer::Bool(v) => fill(v, false),
        HostBuffer::U8(v) => fill(v, 0),
        HostBuffer::I32(v) => fill(v, 0),
        HostBuffer::I64(v) => fill(v, 0),
        HostBuffer::F16(v) => fill(v, f16::ZERO),
        HostBuffer::BF16(v) => fill(v, bf16::ZERO),
        HostBuffer::F32(v) => fill(v, 0.0),
        HostBuffer::F64(v) => fill(v, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the pool is process-wide, so its steps must not interleave with
    // another test's.
    #[test]
    fn reuses_zeroes_and_respects_its_cap() {
        let n = (MIN_POOLED_BYTES / 4) * 3 + 5; // an odd length above the threshold
        let before = stats();
        let mut a = take_f32(n, Fill::Overwritten, "a test buffer").unwrap();
        assert!(a.iter().all(|&x| x == 0.0), "a fresh buffer comes zeroed");
        a[7] = 3.5;
        let ptr = a.as_ptr();
        give(HostBuffer::F32(a));
        // same dtype and length: the same memory comes back, old values and all
        let b = take_f32(n, Fill::Overwritten, "a test buffer").unwrap();
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b[7], 3.5);
        give(HostBuffer::F32(b));
        // asked zeroed: zeroed
        let c = take_f32(n, Fill::Zeroed, "a test buffer").unwrap();
        assert_eq!(c.as_ptr(), ptr);
        assert!(c.iter().all(|&x| x == 0.0));
        // another dtype or length does not match
        give(HostBuffer::F32(c));
        let d = take(DType::I32, n, Fill::Overwritten, "a test buffer").unwrap();
        assert!(d.as_slice::<i32>().unwrap().iter().all(|&x| x == 0));
        let e = take_f32(n + 1, Fill::Overwritten, "a test buffer").unwrap();
        assert_ne!(e.as_ptr(), ptr);
        let after = stats();
        assert!(after.hits >= before.hits + 2 && after.misses >= before.misses + 3);
        // small buffers are not kept
        let small_before = stats().pooled_buffers;
        give(HostBuffer::F32(vec![1.0; 16]));
        assert_eq!(stats().pooled_buffers, small_before);
        // the cap evicts the oldest buffer first, and 0 turns pooling off
        let old = set_cap(n * 4 + 100); // room for one buffer of n f32
        give(d);
        give(HostBuffer::F32(e));
        let s = stats();
        assert_eq!((s.pooled_buffers, s.pooled_bytes), (1, (n + 1) * 4), "only the newer buffer stays");
        set_cap(0);
        assert_eq!(stats().pooled_bytes, 0);
        give(HostBuffer::F32(vec![0.0; n]));
        assert_eq!(stats().pooled_buffers, 0);
        set_cap(old);
        assert_eq!(release(), 0);
    }
}
