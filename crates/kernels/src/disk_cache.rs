//! The compiled-kernel cache's second level: binaries on disk, so that a new process
//! loads the kernels an earlier one compiled instead of compiling them again.
//!
//! Layout: `<dir>/v1/<key>.bin` (a header, then the binary) with the source it was
//! compiled from next to it as `<key>.src` (for debugging; never read back). The
//! directory is `$JIT_CACHE_DIR`, else `$XDG_CACHE_HOME/jit-style/kernels`, else
//! `~/.cache/jit-style/kernels`; `JIT_DISK_CACHE=0` turns the level off and
//! `JIT_CACHE_MAX_MB` caps its size (default 2048).
//!
//! - Writes are atomic: a file is written under a temporary name in the same
//!   directory and renamed into place, so a crash never leaves a partial entry under
//!   an entry's name.
//! - Every entry carries its length and a checksum. A truncated or corrupt entry is
//!   reported once per process on stderr, deleted, and the kernel recompiled.
//! - A hit refreshes the entry's modification time; when a store takes the directory
//!   over its cap, the least recently used entries are removed until it fits.

use crate::ir::fnv128;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// Version of the layout (a directory level, so that a new layout ignores old ones).
pub const LAYOUT: &str = "v1";
const MAGIC: &[u8; 8] = b"JITKBIN1";
const HEADER: usize = 8 + 8 + 32;

/// Counters of a disk cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskStats {
    /// Lookups that found a valid entry.
    pub hits: u64,
    /// Lookups that found nothing.
    pub misses: u64,
    /// Entries written.
    pub writes: u64,
    /// Entries found truncated or corrupt (deleted and recompiled).
    pub corrupt: u64,
    /// Entries removed to keep the directory under its cap.
    pub evicted: u64,
}

/// A directory of compiled kernels.
pub struct DiskCache {
    dir: PathBuf,
    cap_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    writes: AtomicU64,
    corrupt: AtomicU64,
    evicted: AtomicU64,
    reported: AtomicBool,
}

/// The default root directory (before the layout version), from the environment.
pub fn default_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("JIT_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("jit-style").join("kernels"))
}

impl DiskCache {
    /// A cache under `root` (the layout version is a directory below it) holding at
    /// most `cap_bytes` bytes. The directory is created; an error names it.
    pub fn new(root: &Path, cap_bytes: u64) -> std::io::Result<DiskCache> {
        let dir = root.join(LAYOUT);
        std::fs::create_dir_all(&dir)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display())))?;
        Ok(DiskCache {
            dir,
            cap_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            reported: AtomicBool::new(false),
        })
    }

    /// The cache the environment asks for, or `None` when it is turned off or its
    /// directory cannot be created (said once on stderr).
    pub fn from_env() -> Option<DiskCache> {
        if std::env::var("JIT_DISK_CACHE").is_ok_and(|v| matches!(v.trim(), "0" | "off" | "false")) {
            return None;
        }
        let cap_mb: u64 = std::env::var("JIT_CACHE_MAX_MB").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(2048);
        let root = default_root()?;
        match DiskCache::new(&root, cap_mb.saturating_mul(1 << 20)) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("[jit] kernel cache: the disk level is off: {e} (set JIT_CACHE_DIR to a writable directory)");
                None
            }
        }
    }

    /// The directory entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the binary of `key`.
    pub fn binary_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.bin"))
    }

    /// Path of the source of `key`.
    pub fn source_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.src"))
    }

    /// The binary stored under `key`, if a valid one is there.
    pub fn load(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.binary_path(key);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(_) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        match decode(&bytes) {
            Ok(payload) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                // least recently used is judged by modification time
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(payload.to_vec())
            }
            Err(why) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                self.misses.fetch_add(1, Ordering::Relaxed);
                if !self.reported.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "[jit] kernel cache: {} is {why}; it is deleted and the kernel recompiled (further reports of this kind are not printed)",
                        path.display()
                    );
                }
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `binary` under `key` with the `source` it was compiled from, then
    /// evicts the least recently used entries while the directory is over its cap.
    pub fn store(&self, key: &str, binary: &[u8], source: &str) -> std::io::Result<()> {
        // the source first: an entry whose binary exists always has its source
        atomic_write(&self.source_path(key), source.as_bytes())?;
        let mut framed = Vec::with_capacity(HEADER + binary.len());
        framed.extend_from_slice(MAGIC);
        framed.extend_from_slice(&(binary.len() as u64).to_le_bytes());
        framed.extend_from_slice(fnv128(binary).as_bytes());
        framed.extend_from_slice(binary);
        atomic_write(&self.binary_path(key), &framed)?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.evict();
        Ok(())
    }

    /// Total bytes of the entries (binaries and sources).
    pub fn size_bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.bytes).sum()
    }

    fn entries(&self) -> Vec<Entry> {
        let mut by_key: std::collections::HashMap<String, Entry> = std::collections::HashMap::new();
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        for f in rd.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Some((key, ext)) = name.rsplit_once('.') else { continue };
            if ext != "bin" && ext != "src" {
                continue;
            }
            let Ok(meta) = f.metadata() else { continue };
            let e = by_key.entry(key.to_string()).or_insert(Entry {
                key: key.to_string(),
                bytes: 0,
                used: SystemTime::UNIX_EPOCH,
            });
            e.bytes += meta.len();
            if ext == "bin" {
                e.used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            }
        }
        by_key.into_values().collect()
    }

    /// Removes least recently used entries until the directory is under its cap.
    fn evict(&self) {
        let mut entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        if total <= self.cap_bytes {
            return;
        }
        entries.sort_by_key(|e| e.used);
        for e in entries {
            if total <= self.cap_bytes {
                break;
            }
            // the binary first: a source without a binary is never read
            let _ = std::fs::remove_file(self.binary_path(&e.key));
            let _ = std::fs::remove_file(self.source_path(&e.key));
            total = total.saturating_sub(e.bytes);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters.
    pub fn stats(&self) -> DiskStats {
        DiskStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

struct Entry {
    key: String,
    bytes: u64,
    used: SystemTime,
}

fn decode(bytes: &[u8]) -> Result<&[u8], &'static str> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err("not a kernel cache entry (bad header)");
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| "truncated")?) as usize;
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err("truncated (its length does not match its header)");
    }
    if fnv128(payload).as_bytes() != &bytes[16..HEADER] {
        return Err("corrupt (its checksum does not match)");
    }
    Ok(payload)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| std::io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(name: &str, cap: u64) -> DiskCache {
        let root = std::env::temp_dir().join(format!("jit-disk-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        DiskCache::new(&root, cap).unwrap()
    }

    #[test]
    fn stores_and_loads_with_the_source_beside() {
        let c = fresh("roundtrip", 1 << 20);
        assert_eq!(c.load("k1"), None);
        c.store("k1", b"\x7fELF binary", "extern \"C\" __global__ void k() {}").unwrap();
        assert_eq!(c.load("k1").as_deref(), Some(&b"\x7fELF binary"[..]));
        assert!(std::fs::read_to_string(c.source_path("k1")).unwrap().contains("__global__"));
        assert!(c.dir().ends_with(LAYOUT));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.writes, s.corrupt), (1, 1, 1, 0));
        // no temporary files are left behind
        let names: Vec<String> = std::fs::read_dir(c.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn corrupt_and_truncated_entries_are_dropped() {
        let c = fresh("corrupt", 1 << 20);
        c.store("a", &[1, 2, 3, 4, 5, 6, 7, 8], "src").unwrap();
        c.store("b", &[9; 100], "src").unwrap();
        // flip one payload byte of a, cut b short
        let pa = c.binary_path("a");
        let mut bytes = std::fs::read(&pa).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&pa, bytes).unwrap();
        let pb = c.binary_path("b");
        let bytes = std::fs::read(&pb).unwrap();
        std::fs::write(&pb, &bytes[..bytes.len() - 10]).unwrap();
        assert_eq!(c.load("a"), None);
        assert_eq!(c.load("b"), None);
        assert_eq!(c.stats().corrupt, 2);
        assert!(!pa.exists() && !pb.exists(), "corrupt entries are deleted");
        // a rewrite recovers
        c.store("a", &[1, 2, 3], "src").unwrap();
        assert_eq!(c.load("a"), Some(vec![1, 2, 3]));
    }

    #[test]
    fn eviction_keeps_the_directory_under_its_cap() {
        let cap = 10_000;
        let c = fresh("evict", cap);
        for i in 0..20 {
            c.store(&format!("k{i:02}"), &vec![i as u8; 1500], "s").unwrap();
            // a recently read entry survives
            assert!(c.load("k00").is_some(), "k00 was evicted at {i}");
            assert!(c.size_bytes() <= cap, "{} bytes after {i} stores", c.size_bytes());
        }
        assert!(c.stats().evicted >= 10);
        assert!(c.load("k01").is_none(), "the least recently used entries go first");
        assert!(c.load("k19").is_some());
    }
}
