//! The compiled-kernel cache (in memory) and its counters.
//!
//! The key hashes the kernel's canonical IR text together with the backend, the
//! target, the compiler version and the framework version. Sizes, strides and
//! offsets are kernel arguments and are not part of the text, so a new input size of
//! the same structure hits the cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Counters of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups that found a compiled kernel.
    pub hits: u64,
    /// Lookups that compiled.
    pub misses: u64,
    /// Total time spent compiling.
    pub compile_time: Duration,
    /// Kernels held.
    pub entries: u64,
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = if self.misses > 0 { self.compile_time.as_secs_f64() * 1e3 / self.misses as f64 } else { 0.0 };
        write!(
            f,
            "kernel cache: {} entries, {} hits, {} misses, {:.1} ms compiling ({per:.2} ms per kernel)",
            self.entries,
            self.hits,
            self.misses,
            self.compile_time.as_secs_f64() * 1e3
        )
    }
}

/// A cache of compiled kernels of type `T`, keyed by string.
pub struct KernelCache<T> {
    map: Mutex<HashMap<String, Arc<T>>>,
    hits: AtomicU64,
    misses: AtomicU64,
    compile_ns: AtomicU64,
}

impl<T> Default for KernelCache<T> {
    fn default() -> Self {
        KernelCache {
            map: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            compile_ns: AtomicU64::new(0),
        }
    }
}

impl<T> KernelCache<T> {
    /// The entry for `key`, compiling it with `compile` on a miss. Two threads that
    /// miss at once may both compile; the first result is kept.
    pub fn get_or_compile<E>(&self, key: &str, compile: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        if let Some(hit) = self.lock().get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.clone());
        }
        let start = std::time::Instant::now();
        let compiled = Arc::new(compile()?);
        self.compile_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.misses.fetch_add(1, Ordering::Relaxed);
        Ok(self.lock().entry(key.to_string()).or_insert(compiled).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<T>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            compile_time: Duration::from_nanos(self.compile_ns.load(Ordering::Relaxed)),
            entries: self.lock().len() as u64,
        }
    }

    /// Drops every entry (counters are kept).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// The framework version that is part of every key.
pub const FRAMEWORK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Process-wide cache of a backend's kernels.
pub fn global<T: Send + Sync + 'static>(cell: &'static OnceLock<KernelCache<T>>) -> &'static KernelCache<T> {
    cell.get_or_init(KernelCache::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hits_and_misses() {
        let c: KernelCache<u32> = KernelCache::default();
        let a = c.get_or_compile::<()>("k", || Ok(1)).unwrap();
        let b = c.get_or_compile::<()>("k", || panic!("must not compile twice")).unwrap();
        assert_eq!((*a, *b), (1, 1));
        let _ = c.get_or_compile::<()>("other", || Ok(2)).unwrap();
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.entries), (1, 2, 2));
        assert!(s.to_string().starts_with("kernel cache: 2 entries, 1 hits, 2 misses"));
        assert!(c.get_or_compile("bad", || Err("no")).is_err());
        assert_eq!(c.stats().misses, 2, "a failed compile is not an entry");
    }
}
