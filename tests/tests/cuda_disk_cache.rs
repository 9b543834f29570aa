//! The CUDA kernel cache's disk level, checked without a GPU (NVRTC only): a cold
//! run compiles and stores; a second process loads every binary from disk and runs
//! NVRTC zero times; a corrupt entry is reported, recompiled and rewritten; eviction
//! keeps the directory under its cap. Without libnvrtc the test reports itself
//! skipped, unless `JIT_REQUIRE_NVRTC=1` (set by `.ci/run`) makes that an error.

use jit_core::{planned_kernel_ir, with_flags, Backend, Flags};
use jit_ops::prelude::*;
use kernels::cuda::nvrtc;
use kernels::disk_cache::DiskCache;
use kernels::ir::Kernel;
use std::path::{Path, PathBuf};
use std::time::Instant;

const CHILD_ENV: &str = "JIT_TEST_DISK_CACHE_CHILD";

/// A few kernels of different kinds: an element-wise chain, a reduction with an
/// epilogue (it has a block variant), a padded view.
fn workload_kernels() -> Vec<Kernel> {
    let f = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    with_flags(f, || {
        let x = Var::ones(&[6, 10], DType::F32);
        x.sync().expect("leaf");
        let y = (&x * 1.5 + 0.25).sigmoid();
        let s = x.softmax(-1).expect("softmax");
        let p = x.pad(&[1, 2], PadMode::Reflect).expect("pad");
        planned_kernel_ir(&[y, s, p]).expect("plan")
    })
}

fn nvrtc_or_skip() -> bool {
    if kernels::cuda::nvrtc_present() {
        return true;
    }
    assert!(
        std::env::var("JIT_REQUIRE_NVRTC").is_err(),
        "JIT_REQUIRE_NVRTC is set but libnvrtc was not found on the loader path"
    );
    println!("SKIPPED: libnvrtc not found (install nvidia-cuda-nvrtc==13.0.88 and set LD_LIBRARY_PATH)");
    false
}

fn fresh_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("jit-cuda-disk-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    root
}

/// The second process of [`second_process_loads_without_compiling`]: does nothing
/// unless that test started it (with the cache directory in `CHILD_ENV`).
#[test]
fn child_process_part() {
    let Ok(root) = std::env::var(CHILD_ENV) else { return };
    let cache = DiskCache::new(Path::new(&root), 1 << 30).expect("cache dir");
    let started = Instant::now();
    for k in workload_kernels() {
        let c = nvrtc::cubin_for(&k, "sm_90", Some(&cache)).expect("cubin");
        assert!(c.from_disk, "kernel {} was compiled, not loaded\n{k}", c.key);
    }
    assert_eq!(nvrtc::compiles(), 0, "the second process ran NVRTC");
    println!("CHILD-OK warm load {:.2} ms", started.elapsed().as_secs_f64() * 1e3);
}

#[test]
fn second_process_loads_without_compiling() {
    if !nvrtc_or_skip() {
        return;
    }
    let root = fresh_root("two-processes");
    let cache = DiskCache::new(&root, 1 << 30).expect("cache dir");
    let kernels = workload_kernels();
    assert!(kernels.len() >= 3, "{} kernels", kernels.len());
    let started = Instant::now();
    for k in &kernels {
        let c = nvrtc::cubin_for(k, "sm_90", Some(&cache)).expect("cold compile");
        assert!(!c.from_disk);
        assert!(cache.binary_path(&c.key).exists() && cache.source_path(&c.key).exists());
        let src = std::fs::read_to_string(cache.source_path(&c.key)).unwrap();
        assert!(src.contains("extern \"C\" __global__ void kernel("), "{src}");
    }
    let cold = started.elapsed();
    assert_eq!(cache.stats().writes, kernels.len() as u64);
    // a new process with the same directory compiles nothing
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_process_part", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &root)
        .output()
        .expect("start the second process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("CHILD-OK"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "cold compile of {} kernels {:.1} ms; second process: {}",
        kernels.len(),
        cold.as_secs_f64() * 1e3,
        stdout.lines().find(|l| l.contains("CHILD-OK")).unwrap_or("")
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn corrupt_entries_recompile_and_eviction_holds_the_cap() {
    if !nvrtc_or_skip() {
        return;
    }
    let root = fresh_root("corrupt");
    let cache = DiskCache::new(&root, 1 << 30).expect("cache dir");
    let kernels = workload_kernels();
    let key = nvrtc::cubin_for(&kernels[0], "sm_90", Some(&cache)).unwrap().key;
    // damage the stored binary: one byte in the middle
    let path = cache.binary_path(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let again = nvrtc::cubin_for(&kernels[0], "sm_90", Some(&cache)).unwrap();
    assert!(!again.from_disk, "a corrupt entry must not be used");
    assert_eq!(cache.stats().corrupt, 1);
    assert!(nvrtc::cubin_for(&kernels[0], "sm_90", Some(&cache)).unwrap().from_disk, "the rewrite is used");
    // truncation is detected too
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    assert!(!nvrtc::cubin_for(&kernels[0], "sm_90", Some(&cache)).unwrap().from_disk);
    assert_eq!(cache.stats().corrupt, 2);

    // a cap that holds about two entries
    let one = cache.size_bytes();
    let small = DiskCache::new(&fresh_root("evict"), one * 2 + one / 2).unwrap();
    for k in &kernels {
        nvrtc::cubin_for(k, "sm_90", Some(&small)).unwrap();
        assert!(small.size_bytes() <= one * 2 + one / 2, "{} bytes over the cap", small.size_bytes());
    }
    assert!(small.stats().evicted >= 1, "{:?}", small.stats());
    let _ = std::fs::remove_dir_all(&root);
}
