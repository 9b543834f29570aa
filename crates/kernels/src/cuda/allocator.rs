//! The device caching allocator.
//!
//! Device allocations are slow (`cuMemAlloc` synchronises and takes tens of
//! microseconds) and a network allocates the same sizes on every run. Freed blocks go
//! to a free list per size class and the next request of that class takes one back.
//! All work runs on one stream, in order, so a block released after its last reader
//! was *queued* may be handed out at once: the next writer is queued after that
//! reader.
//!
//! When the device runs out of memory the allocator returns every cached block to the
//! driver and tries once more; if that fails too, the error names the size asked
//! for, what it was for, and how much the framework holds. It never falls back to
//! managed memory.
//!
//! The logic is generic over [`RawDevice`] so that it is tested without a GPU.

use crate::error::KernelError;
use std::collections::HashMap;
use std::sync::Mutex;

/// Requests up to this size round up to a multiple of [`SMALL_STEP`]; larger ones to
/// a multiple of [`LARGE_STEP`].
pub const SMALL_LIMIT: usize = 1 << 20;
/// Rounding step of small requests (bytes).
pub const SMALL_STEP: usize = 512;
/// Rounding step of large requests (bytes).
pub const LARGE_STEP: usize = 2 << 20;

/// The size class of a request: what is actually allocated for it.
pub fn size_class(bytes: usize) -> usize {
    let bytes = bytes.max(1);
    let step = if bytes <= SMALL_LIMIT { SMALL_STEP } else { LARGE_STEP };
    bytes.div_ceil(step).saturating_mul(step)
}

/// Why a raw allocation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawError {
    /// The device has no room for it.
    OutOfMemory,
    /// Anything else the driver reported.
    Other(String),
}

/// The driver calls the allocator is built on.
pub trait RawDevice: Send + Sync {
    /// Allocates `bytes` bytes of device memory and returns its address.
    fn alloc(&self, bytes: usize) -> Result<u64, RawError>;
    /// Returns memory obtained from [`RawDevice::alloc`] to the driver.
    fn free(&self, ptr: u64, bytes: usize);
    /// Name of the device for messages (`cuda:0`).
    fn name(&self) -> String;
}

/// Counters of an allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllocatorStats {
    /// Requests served.
    pub requests: u64,
    /// Requests served from the cache.
    pub reused: u64,
    /// Allocations made by the driver.
    pub driver_allocs: u64,
    /// Times the cache was emptied because the device was out of memory.
    pub oom_flushes: u64,
    /// Bytes handed out and not yet released (in size classes).
    pub in_use: usize,
    /// Bytes held in the free lists.
    pub cached: usize,
    /// Highest `in_use` seen.
    pub peak_in_use: usize,
}

impl std::fmt::Display for AllocatorStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device memory: {} requests ({} reused, {} driver allocations, {} out-of-memory flushes), {:.1} MiB in use, {:.1} MiB cached, peak {:.1} MiB",
            self.requests,
            self.reused,
            self.driver_allocs,
            self.oom_flushes,
            self.in_use as f64 / 1048576.0,
            self.cached as f64 / 1048576.0,
            self.peak_in_use as f64 / 1048576.0
        )
    }
}

#[derive(Default)]
struct State {
    free: HashMap<usize, Vec<u64>>,
    stats: AllocatorStats,
}

/// Something blocks can be given back to (the allocator that made them).
pub trait Release: Send + Sync {
    /// Takes back a block of size class `class` at `ptr`.
    fn release(&self, ptr: u64, class: usize);
}

/// A block of device memory; returned to its allocator when dropped.
pub struct Block {
    ptr: u64,
    bytes: usize,
    class: usize,
    owner: &'static dyn Release,
}

impl Block {
    /// Device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes asked for (the block may be larger: its size class).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.owner.release(self.ptr, self.class);
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block({:#x}, {} bytes)", self.ptr, self.bytes)
    }
}

/// A caching allocator over a [`RawDevice`]. It lives for the whole process (blocks
/// hold a `'static` reference to it).
pub struct CachingAllocator<R: RawDevice> {
    raw: R,
    state: Mutex<State>,
}

impl<R: RawDevice> CachingAllocator<R> {
    /// An allocator with empty free lists.
    pub fn new(raw: R) -> Self {
        CachingAllocator { raw, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A block of at least `bytes` bytes; `what` says what it is for (in errors).
    pub fn alloc(&'static self, bytes: usize, what: &str) -> Result<Block, KernelError> {
        let class = size_class(bytes);
        {
            let mut s = self.lock();
            s.stats.requests += 1;
            if let Some(ptr) = s.free.get_mut(&class).and_then(Vec::pop) {
                s.stats.reused += 1;
                s.stats.cached -= class;
                s.stats.in_use += class;
                s.stats.peak_in_use = s.stats.peak_in_use.max(s.stats.in_use);
                return Ok(Block { ptr, bytes, class, owner: self });
            }
        }
        let ptr = match self.raw.alloc(class) {
            Ok(p) => p,
            Err(RawError::OutOfMemory) => {
                let released = self.empty_cache();
                self.lock().stats.oom_flushes += 1;
                match self.raw.alloc(class) {
                    Ok(p) => p,
                    Err(RawError::OutOfMemory) => {
                        let in_use = self.lock().stats.in_use;
                        return Err(KernelError::OutOfMemory {
                            device: self.raw.name(),
                            bytes: bytes as u128,
                            what: format!(
                                "{what}; the framework holds {in_use} bytes of live values and released {released} cached bytes before trying again; free values you no longer need, use smaller inputs, or select the CPU with JIT_DEVICE=cpu"
                            ),
                        });
                    }
                    Err(RawError::Other(e)) => return Err(other(bytes, what, e)),
                }
            }
            Err(RawError::Other(e)) => return Err(other(bytes, what, e)),
        };
        let mut s = self.lock();
        s.stats.driver_allocs += 1;
        s.stats.in_use += class;
        s.stats.peak_in_use = s.stats.peak_in_use.max(s.stats.in_use);
        Ok(Block { ptr, bytes, class, owner: self })
    }

    /// Returns every cached block to the driver; the number of bytes released.
    pub fn empty_cache(&self) -> usize {
        let blocks: Vec<(usize, Vec<u64>)> = {
            let mut s = self.lock();
            s.stats.cached = 0;
            s.free.drain().collect()
        };
        let mut released = 0;
        for (class, ptrs) in blocks {
            for p in ptrs {
                self.raw.free(p, class);
                released += class;
            }
        }
        released
    }

    /// The counters.
    pub fn stats(&self) -> AllocatorStats {
        self.lock().stats
    }
}

fn other(bytes: usize, what: &str, e: String) -> KernelError {
    KernelError::Internal { op: "device allocation".into(), reason: format!("{bytes} bytes for {what}: {e}") }
}

impl<R: RawDevice> Release for CachingAllocator<R> {
    fn release(&self, ptr: u64, class: usize) {
        let mut s = self.lock();
        s.stats.in_use -= class;
        s.stats.cached += class;
        s.free.entry(class).or_default().push(ptr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A fake device with `capacity` bytes that hands out increasing addresses.
    struct Fake {
        capacity: usize,
        used: AtomicUsize,
        next: AtomicU64,
        frees: AtomicUsize,
    }

    impl RawDevice for Fake {
        fn alloc(&self, bytes: usize) -> Result<u64, RawError> {
            if self.used.load(Ordering::SeqCst) + bytes > self.capacity {
                return Err(RawError::OutOfMemory);
            }
            self.used.fetch_add(bytes, Ordering::SeqCst);
            Ok(self.next.fetch_add(bytes as u64, Ordering::SeqCst))
        }
        fn free(&self, _ptr: u64, bytes: usize) {
            self.used.fetch_sub(bytes, Ordering::SeqCst);
            self.frees.fetch_add(1, Ordering::SeqCst);
        }
        fn name(&self) -> String {
            "fake:0".into()
        }
    }

    fn fake(capacity: usize) -> &'static CachingAllocator<Fake> {
        Box::leak(Box::new(CachingAllocator::new(Fake {
            capacity,
            used: AtomicUsize::new(0),
            next: AtomicU64::new(0x1000),
            frees: AtomicUsize::new(0),
        })))
    }

    #[test]
    fn size_classes_round_up() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class(5 << 20), 6 << 20);
        assert_eq!(size_class(256 << 20), 256 << 20);
    }

    #[test]
    fn freed_blocks_are_reused_by_class() {
        let a = fake(1 << 30);
        let b1 = a.alloc(1000, "x").unwrap();
        let p1 = b1.ptr();
        drop(b1);
        assert_eq!(a.stats().cached, 1024);
        // same class (1000 and 600 both round to 1024): the same block comes back
        let b2 = a.alloc(600, "y").unwrap();
        assert_eq!(b2.ptr(), p1);
        assert_eq!(b2.bytes(), 600);
        // another class: a new block
        let b3 = a.alloc(3 << 20, "z").unwrap();
        assert_ne!(b3.ptr(), p1);
        let s = a.stats();
        assert_eq!((s.requests, s.reused, s.driver_allocs), (3, 1, 2));
        assert_eq!(s.in_use, 1024 + (4 << 20));
        assert_eq!(s.cached, 0);
        drop((b2, b3));
        assert_eq!(a.stats().in_use, 0);
        assert_eq!(a.stats().peak_in_use, 1024 + (4 << 20));
    }

    #[test]
    fn out_of_memory_flushes_the_cache_and_retries() {
        let a = fake(8 << 20);
        let blocks: Vec<Block> = (0..3).map(|_| a.alloc(2 << 20, "w").unwrap()).collect();
        drop(blocks); // 6 MiB cached, 2 MiB free on the device
        let big = a.alloc(7 << 20, "a kernel output").unwrap();
        let s = a.stats();
        assert_eq!(s.oom_flushes, 1);
        assert_eq!(s.cached, 0);
        assert_eq!(a.raw.frees.load(Ordering::SeqCst), 3);
        assert_eq!(big.bytes(), 7 << 20);
        // now truly out of memory: a clear error with the sizes
        let e = a.alloc(4 << 20, "a kernel output").unwrap_err().to_string();
        assert!(
            e.starts_with("out of memory on fake:0: could not allocate 4194304 bytes (a kernel output; the framework holds 8388608 bytes of live values and released 0 cached bytes"),
            "{e}"
        );
        assert!(e.contains("JIT_DEVICE=cpu"), "{e}");
    }

    #[test]
    fn empty_cache_returns_everything() {
        let a = fake(1 << 30);
        let bs: Vec<Block> = [100, 5000, 3 << 20].iter().map(|&n| a.alloc(n, "t").unwrap()).collect();
        drop(bs);
        assert_eq!(a.empty_cache(), 512 + 5120 + (4 << 20));
        assert_eq!(a.raw.used.load(Ordering::SeqCst), 0);
        assert!(a.stats().to_string().starts_with("device memory: 3 requests (0 reused, 3 driver allocations"));
    }
}
