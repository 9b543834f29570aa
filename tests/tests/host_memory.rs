//! Host memory: a value larger than the memory the system has available, or one that
//! would take the framework past its host memory limit, is an out-of-memory error
//! naming the allocation, not a process the operating system kills.
//!
//! One test per binary: the limit is process-wide.

use jit_ops::prelude::*;

fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn allocations_past_the_memory_there_is_are_errors() {
    if jit_core::flags().backend == jit_core::Backend::Cuda {
        eprintln!("skipped: checks host allocations, and the default backend is CUDA");
        return;
    }
    let Some(avail) = kernels::host_pool::system_available_bytes() else {
        eprintln!("skipped: /proc/meminfo is not readable here");
        return;
    };
    // more than the system has available, though less than Linux's overcommit
    // would grant (it refuses only requests past all RAM and swap): refused before
    // anything is allocated, so nothing is written to pages that are not there
    let n = (avail + (1 << 30)) / 4;
    let e = msg((Var::ones(&[n], DType::F32) * 2.0).sync());
    let want = format!(
        "out of memory on cpu: could not allocate {} bytes (a kernel output: {n} elements of f32; the system has ",
        n * 4
    );
    assert!(e.starts_with(&want), "{e}");
    assert!(e.contains("bytes available (MemAvailable plus SwapFree in /proc/meminfo)"), "{e}");

    // the limit counts the bytes of live values
    let live = jit_core::live_bytes();
    assert_eq!(jit_core::set_host_memory_limit(Some(live + (10 << 20))), None);
    assert_eq!(jit_core::host_memory_limit(), Some(live + (10 << 20)));
    let a = Var::ones(&[1 << 20], DType::F32) * 3.0; // 4 MiB
    a.sync().unwrap();
    let b = Var::ones(&[2 << 20], DType::F32) * 3.0; // 8 MiB: past the limit while `a` lives
    let e = msg(b.sync());
    assert!(
        e.starts_with("out of memory on cpu: could not allocate 8388608 bytes (a kernel output: 2097152 elements of f32; the framework's live buffers hold "),
        "{e}"
    );
    assert!(
        e.contains(&format!("bytes and the host memory limit is {} bytes (JIT_HOST_MEMORY_MB", live + (10 << 20))),
        "{e}"
    );
    // an error leaves the graph usable: free `a` and the same value realises
    drop(a);
    b.sync().unwrap();
    assert_eq!(b.to_vec::<f32>().unwrap()[(2 << 20) - 1], 3.0);
    // a network stops at its first allocation past the limit, and runs again once the
    // limit is lifted
    drop(b);
    jit_core::set_host_memory_limit(Some(jit_core::live_bytes() + (64 << 10)));
    let x = Var::rand(&[1, 8, 64, 64], DType::F32).unwrap();
    let w = Var::rand(&[16, 8, 3, 3], DType::F32).unwrap();
    let y = conv2d(&x, &w, None, &Conv2dOptions::default()).unwrap().relu().unwrap();
    let e = msg(y.sync());
    assert!(e.contains("out of memory on cpu") && e.contains("host memory limit"), "{e}");
    assert!(jit_core::set_host_memory_limit(None).is_some());
    assert_eq!(jit_core::host_memory_limit(), None);
    y.sync().unwrap();
    assert_eq!(y.shape(), &[1, 16, 62, 62]);
}
