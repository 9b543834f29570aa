//! CUDA code generation, checked without a GPU: every kernel that the planner makes
//! for the random differential graphs (fused and unfused; forward and backward) and for graphs over every
//! dtype is emitted as CUDA C and compiled by NVRTC for sm_90. Any compile error
//! fails. Without libnvrtc the test reports itself skipped, unless
//! `JIT_REQUIRE_NVRTC=1` (set by `.ci/run`, which installs NVRTC) makes that an error.

use integration_tests::graphgen::{dtype_graphs, grad_graph, random_graph};
use integration_tests::Rng;
use jit_core::{planned_kernel_ir, with_flags, Backend, Flags};
use kernels::cuda::emit::{IndexWidth, Variant};
use kernels::cuda::{emit, nvrtc};
use kernels::ir::Kernel;
use std::collections::BTreeMap;

#[test]
fn every_planned_kernel_compiles_with_nvrtc() {
    if !kernels::cuda::nvrtc_present() {
        assert!(
            std::env::var("JIT_REQUIRE_NVRTC").is_err(),
            "JIT_REQUIRE_NVRTC is set but libnvrtc was not found on the loader path"
        );
        println!("SKIPPED: libnvrtc not found (install nvidia-cuda-nvrtc==13.0.88 and set LD_LIBRARY_PATH)");
        return;
    }
    let mut rng = Rng::fresh("every_planned_kernel_compiles_with_nvrtc");
    let base = rng.next_u64();
    let mut kernels: BTreeMap<String, Kernel> = BTreeMap::new();
    let graphs: u64 = std::env::var("JIT_NVRTC_GRAPHS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    for fusion in [true, false] {
        let f = Flags { backend: Backend::Cpu, fusion, dump: false };
        with_flags(f, || {
            for i in 0..graphs {
                let g = random_graph(base.wrapping_add(i)).expect("graph");
                for k in planned_kernel_ir(&g.outputs).expect("plan") {
                    kernels.entry(k.structural_hash()).or_insert(k);
                }
                if i >= graphs / 2 {
                    continue;
                }
                // and, for half of them, the backward graph
                let grads = grad_graph(base.wrapping_add(i)).expect("backward graph");
                for k in planned_kernel_ir(&grads).expect("plan") {
                    kernels.entry(k.structural_hash()).or_insert(k);
                }
            }
            for v in dtype_graphs() {
                for k in planned_kernel_ir(&[v]).expect("plan") {
                    kernels.entry(k.structural_hash()).or_insert(k);
                }
            }
        });
    }
    let all: Vec<&Kernel> = kernels.values().collect();
    println!("compiling {} distinct kernels with NVRTC {:?}", all.len(), nvrtc::version().expect("nvrtc version"));
    // batches of 150 per translation unit, compiled on every core (NVRTC programs
    // are independent; the test binary has this one test)
    let batches: Vec<&[&Kernel]> = all.chunks(150).collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(batches.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(batch) = batches.get(b) else { break };
                compile_batch(batch);
            });
        }
    });
}

/// Compiles a batch of kernels as one translation unit; on an error, finds the
/// kernel that fails and reports it with its IR and source.
fn compile_batch(batch: &[&Kernel]) {
    let mut tu = String::from(emit::PRELUDE);
    for (i, k) in batch.iter().enumerate() {
        // every variant the kernel has, with 64-bit and 32-bit indices
        for (v, has) in [
            (Variant::Grid, true),
            (Variant::Block, emit::has_block_variant(k)),
            (Variant::Vector, emit::has_vector_variant(k)),
        ] {
            for (w, width) in [IndexWidth::Wide, IndexWidth::Narrow].into_iter().enumerate() {
                if has {
                    tu.push_str(&emit::variant_source(k, &format!("k{i}_{v:?}_{w}"), v, width));
                }
            }
        }
    }
    if nvrtc::compile_cubin(&tu, "sm_90").is_err() {
        for k in batch {
            if let Err(e) = nvrtc::compile_cubin(&emit::translation_unit(k, "kernel"), "sm_90") {
                panic!("NVRTC rejected the kernel\n{k}\n{e}");
            }
        }
    }
}
