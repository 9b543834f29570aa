//! CUDA code generation, checked without a GPU: every kernel that the planner makes
//! for the random differential graphs (fused and unfused; forward and backward) and for
//! graphs over every dtype is emitted as CUDA C, in every variant and index width, and
//! NVRTC's C++ front end checks all of it (`nvrtc::check_syntax`): any language error
//! fails. A random quarter of the kernels (a fresh choice each run, printed with the
//! seed) goes on through PTX generation and the assembler to an sm_90 cubin, as the
//! CUDA backend compiles them; `JIT_NVRTC_FULL=1` sends every kernel that way (four
//! times as long: the assembler is two thirds of NVRTC's time, and the front end
//! alone is about 1/100 of it). Without libnvrtc the test reports itself skipped,
//! unless `JIT_REQUIRE_NVRTC=1` (set by `.ci/run`, which installs NVRTC) makes that an
//! error.

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
    let full = std::env::var("JIT_NVRTC_FULL").is_ok_and(|v| v == "1");
    let (cubin, syntax_only): (Vec<&Kernel>, Vec<&Kernel>) = all.iter().partition(|_| full || rng.chance(0.25));
    println!(
        "NVRTC {:?}: {} distinct kernels; front end for all, sm_90 cubin for {} (seed {})",
        nvrtc::version().expect("nvrtc version"),
        all.len(),
        cubin.len(),
        rng.seed
    );
    // Translation units of 150 kernels, compiled on every core (NVRTC programs are
    // independent). The front end sees every
    // kernel, the cubin path the chosen quarter.
    let mut jobs: Vec<(&[&Kernel], Stage)> = cubin.chunks(150).map(|b| (b, Stage::Cubin)).collect();
    jobs.extend(syntax_only.chunks(150).map(|b| (b, Stage::Syntax)));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(batch, stage)) = jobs.get(j) else { break };
                compile_batch(batch, stage);
            });
        }
    });
}

/// The front-end check reports what the full compile reports for language errors,
/// and accepts what it accepts.
#[test]
fn the_front_end_check_reports_language_errors() {
    if !kernels::cuda::nvrtc_present() {
        println!("SKIPPED: libnvrtc not found");
        return;
    }
    let good = "extern \"C\" __global__ void k(float* p) { p[threadIdx.x] *= 2.0f; }";
    nvrtc::check_syntax(good, "sm_90").expect("a correct kernel passes the front end");
    for (bad, says) in [
        ("extern \"C\" __global__ void k(float* p) { p[0] = q; }", "identifier \"q\" is undefined"),
        ("extern \"C\" __global__ void k(float* p) { float* z = 1.0f; p[0] = *z; }", "cannot be used to initialize"),
    ] {
        let syntax = nvrtc::check_syntax(bad, "sm_90").expect_err("the front end rejects it").to_string();
        let cubin = nvrtc::compile_cubin(bad, "sm_90").expect_err("the full compile rejects it").to_string();
        assert!(syntax.contains(says) && cubin.contains(says), "{syntax}\n{cubin}");
    }
}

/// How far NVRTC takes a batch.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// The C++ front end only.
    Syntax,
    /// Front end, PTX generation and the assembler, to an sm_90 cubin.
    Cubin,
}

impl Stage {
    fn run(self, source: &str) -> Result<(), kernels::KernelError> {
        match self {
            Stage::Syntax => nvrtc::check_syntax(source, "sm_90"),
            Stage::Cubin => nvrtc::compile_cubin(source, "sm_90").map(|_| ()),
        }
    }
}

/// Compiles a batch of kernels as one translation unit (a cubin batch is checked by
/// the front end on the way); on an error, finds the kernel that fails and reports
/// it with its IR and NVRTC's log.
fn compile_batch(batch: &[&Kernel], stage: Stage) {
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
    if stage.run(&tu).is_err() {
        for k in batch {
            if let Err(e) = stage.run(&emit::translation_unit(k, "kernel")) {
                panic!("NVRTC ({stage:?}) rejected the kernel\n{k}\n{e}");
            }
        }
        panic!("NVRTC ({stage:?}) rejected a translation unit of {} kernels that it accepts one by one", batch.len());
    }
}
