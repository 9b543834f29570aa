//! The CUDA backend end to end without a GPU: a child process runs its work with
//! `JIT_BACKEND=cuda` on the emulated device of `integration_tests::fake_device`
//! (the driver, NVRTC, cuBLAS and cuDNN answered on the host; kernels are the
//! emitted CUDA C compiled by g++). What runs is the real runtime: device-resident values, the
//! caching allocator, host/device copies, module loading from NVRTC's output and
//! from the disk cache, the launch parameter packing, the choice of grid, block,
//! 16-byte and 32-bit variants, and the cuBLAS and cuDNN argument marshalling
//! (every transpose flag and dtype; convolutions with cuDNN and without). Device memory is guarded (an access past a block faults, a copy
//! outside a live block is an error) and starts as NaN bytes, so an unwritten
//! output shows.
//!
//! Three child processes share one disk cache: `cold` compiles and compares every
//! result with the reference or CPU backend, `warm` does the same work with no
//! compile at all (every module from disk), `oom` runs with 64 MiB of device memory
//! and expects a clear out-of-memory error, then carries on.

use integration_tests::fake_device::FakeDevice;
use integration_tests::graphgen::{evaluate, evaluate_grads};
use integration_tests::{assert_values_close, Rng};
use jit_core::{realize, with_flags, Backend, DType, ExternOp, Flags, Var};
use std::path::Path;
use std::process::Command;

const PHASE: &str = "JIT_EMULATED_DEVICE_PHASE";
const CHILD: &str = "emulated_device_child";

fn cuda(fusion: bool) -> Flags {
    Flags { backend: Backend::Cuda, fusion, dump: false }
}

fn cpu() -> Flags {
    Flags { backend: Backend::Cpu, fusion: true, dump: false }
}

fn child(fake: &FakeDevice, cache: &Path, phase: &str, extra: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd: Command = fake.command(&exe, cache);
    cmd.args(["--exact", CHILD, "--include-ignored", "--nocapture", "--test-threads=1"]).env(PHASE, phase);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("start the child test process");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("--- phase {phase} ---\n{text}");
    assert!(out.status.success(), "phase {phase} failed on the emulated device:\n{text}");
    assert!(text.contains("1 passed"), "phase {phase} did not run:\n{text}");
}

#[test]
fn the_cuda_backend_runs_on_an_emulated_device() {
    let root = std::env::temp_dir().join(format!("jit-emulated-device-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let fake = match FakeDevice::build(&root.join("lib")) {
        Ok(f) => f,
        Err(integration_tests::cuda_emu::BuildError::NoCompiler(why))
            if std::env::var("JIT_REQUIRE_CXX").as_deref() != Ok("1") =>
        {
            println!("skipped: no C++ compiler to build the emulated device ({why})");
            return;
        }
        Err(e) => panic!("building the emulated device: {e:?}"),
    };
    let cache = root.join("cache");
    child(&fake, &cache, "cold", &[]);
    child(&fake, &cache, "warm", &[]);
    child(&fake, &cache, "oom", &[("JEMU_MEMORY_BYTES", &(64u64 << 20).to_string())]);
    let _ = std::fs::remove_dir_all(&root);
}

/// Each output's shape equal and values close (the graph tests' tolerance).
fn assert_outputs_close(got: &[(Vec<usize>, Vec<f64>)], want: &[(Vec<usize>, Vec<f64>)], what: &str) {
    for (k, ((gs, g), (ws, w))) in got.iter().zip(want).enumerate() {
        let ctx = format!("{what}, output {k}");
        assert_eq!(gs, ws, "{ctx}");
        assert_values_close(g, w, 2e-4, 2e-5, &ctx);
    }
}

/// Random meta-op graphs (fixed seeds, so that the warm phase needs the same
/// kernels): values and gradients on CUDA, fused and unfused, against the reference.
fn graphs() {
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    for seed in 0..24u64 {
        let want = evaluate(seed, reference).unwrap_or_else(|e| panic!("graph {seed} on the reference: {e}"));
        for fusion in [true, false] {
            let got = evaluate(seed, cuda(fusion)).unwrap_or_else(|e| panic!("graph {seed} on cuda: {e}"));
            assert_outputs_close(&got, &want, &format!("graph seed {seed} cuda (fusion {fusion}) vs reference"));
        }
    }
    for seed in 100..108u64 {
        let want = evaluate_grads(seed, reference).unwrap_or_else(|e| panic!("gradients {seed} on the reference: {e}"));
        let got = evaluate_grads(seed, cuda(true)).unwrap_or_else(|e| panic!("gradients {seed} on cuda: {e}"));
        assert_outputs_close(&got, &want, &format!("gradient graph seed {seed} cuda vs reference"));
    }
}

/// Casts from f64 to f16 and bf16 round once: values just past a half-way point of
/// the half type that an f64 -> f32 rounding would move onto it (a second rounding
/// would then go to even), against the CPU backend bit for bit, plus random values.
fn half_casts() {
    let mut rng = Rng::new(0x4A1F_CA57);
    let mut vals: Vec<f64> = vec![];
    for (base, half_ulp) in [(1.0f64, 2f64.powi(-11)), (1.0, 2f64.powi(-8)), (1.5, 2f64.powi(-11))] {
        for sign in [1.0, -1.0] {
            vals.push(sign * (base + half_ulp + 2f64.powi(-40)));
            vals.push(sign * (base + half_ulp - 2f64.powi(-40)));
        }
    }
    vals.extend((0..200).map(|_| rng.uniform(-70000.0, 70000.0)));
    vals.extend([1e-9, -3e-8, 1e300, f64::NAN, f64::INFINITY]);
    let x = Var::from_vec(vals.clone(), &[vals.len()]).unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let run = |flags| {
            with_flags(flags, || {
                // cast inside a kernel (times one keeps it from being a plain copy)
                x.try_mul(1.0).unwrap().cast(dtype).cast(DType::F32).to_vec::<f32>().unwrap()
            })
        };
        let (got, want) = (run(cuda(true)), run(cpu()));
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{dtype} of {:e}: {g:e} vs {w:e}",
                vals[k]
            );
        }
    }
}

/// Gathers and scatters (the data-dependent meta-ops) on the device: split and
/// unsplit scatter rows, out-of-range indices, gradients, against the CPU backend.
fn indexing() {
    use jit_ops::prelude::*;
    let mut rng = Rng::new(0x6A7E_5CA7);
    let x = rng.nd(&[5, 37, 9], -1.0, 1.0);
    let index: Vec<i64> = (0..5 * 60 * 9).map(|_| rng.int(-2, 38)).collect();
    let rows: Vec<i64> = (0..50).map(|_| rng.int(0, 36)).collect();
    let run = |flags| {
        with_flags(flags, || {
            let xv = x.var(DType::F32).requires_grad_(true).unwrap();
            let iv = Var::from_vec(index.clone(), &[5, 60, 9]).unwrap();
            let g = xv.gather(1, &iv).unwrap();
            let s = Var::zeros(&[5, 37, 9], DType::F32).scatter_add(1, &iv, &g).unwrap();
            let r = xv.index_select(1, &Var::from_vec(rows.clone(), &[50]).unwrap()).unwrap();
            let loss = (&s * &s).sum_all().unwrap() + r.sum_all().unwrap();
            let grads = jit_core::grad(&loss, std::slice::from_ref(&xv)).unwrap();
            let mut out = vec![];
            for v in [g, s, r, grads[0].clone()] {
                out.extend(v.to_vec_f64().unwrap());
            }
            out
        })
    };
    assert_values_close(&run(cuda(true)), &run(cpu()), 1e-5, 1e-6, "gather / scatter_add / index_select on cuda");
}

/// Every transpose flag, broadcast batches and each dtype cuBLAS takes, against the
/// CPU backend.
fn matrix_products() {
    let mut rng = Rng::new(0x5EED_CAFE);
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for (ba, bb) in [(1, 1), (3, 1), (1, 3), (3, 3)] {
                let (m, k, n) = (1 + rng.below(13), 1 + rng.below(13), 1 + rng.below(13));
                let sa = if ta { [ba, k, m] } else { [ba, m, k] };
                let sb = if tb { [bb, n, k] } else { [bb, k, n] };
                let (a, b) = (rng.nd(&sa, -1.0, 1.0), rng.nd(&sb, -1.0, 1.0));
                let op = ExternOp::Matmul { trans_a: ta, trans_b: tb };
                let run = |flags| {
                    with_flags(flags, || {
                        Var::extern_op(op, &[a.var(dtype), b.var(dtype)])
                            .and_then(|y| y.to_vec_f64())
                            .unwrap_or_else(|e| panic!("{op:?} {sa:?} {sb:?} {dtype}: {e}"))
                    })
                };
                let tol = integration_tests::tol(dtype);
                assert_values_close(&run(cuda(true)), &run(cpu()), tol, tol, &format!("{op:?} {sa:?} {sb:?} {dtype}"));
            }
        }
    }
}

/// Convolutions and transposed convolutions forward and backward, through cuDNN
/// and through the fallback (im2col and cuBLAS, cuDNN switched off), against the
/// CPU backend.
fn convolutions() {
    use jit_ops::prelude::*;
    let mut rng = Rng::new(0xC0FF_EE00);
    let x = rng.nd(&[2, 6, 9, 11], -1.0, 1.0);
    let w = rng.nd(&[8, 3, 3, 3], -0.5, 0.5);
    let wt = rng.nd(&[6, 4, 3, 2], -0.5, 0.5);
    let bias = rng.nd(&[8], -0.5, 0.5);
    let opts = Conv2dOptions { stride: [2, 1], padding: [1, 2], dilation: [1, 2], groups: 2, ..Default::default() };
    let topts =
        ConvTranspose2dOptions { stride: [2, 1], padding: [1, 0], output_padding: [1, 0], dilation: [1, 1], groups: 2 };
    let run = |flags, dtype| {
        with_flags(flags, || -> jit_core::Result<Vec<Vec<f64>>> {
            let (xv, wv) = (x.var(dtype).requires_grad_(true)?, w.var(dtype).requires_grad_(true)?);
            let y = conv2d(&xv, &wv, Some(&bias.var(dtype)), &opts)?.relu()?;
            let wtv = wt.var(dtype).requires_grad_(true)?;
            let t = conv_transpose2d(&xv, &wtv, None, &topts)?;
            let loss = y.try_mul(&y)?.sum_all()?.try_add(&t.try_mul(&t)?.sum_all()?)?;
            let g = jit_core::grad(&loss, &[xv, wv, wtv])?;
            let outs = [vec![y, t], g].concat();
            realize(&outs)?;
            outs.iter().map(Var::to_vec_f64).collect()
        })
        .unwrap_or_else(|e| panic!("convolution ({dtype}): {e}"))
    };
    let exact = run(cpu(), DType::F64);
    for dtype in [DType::F32, DType::F64, DType::F16] {
        // f32 and f64 against the CPU backend in the same dtype; f16 against the f64
        // results: its passes round differently from the CPU's (cuDNN sums a whole
        // window before rounding, the CPU rounds its im2col and gemm results), and
        // both stay within 4e-3 of the exact values on these inputs
        let (want, tol) = match dtype {
            DType::F16 => (exact.clone(), 1e-2),
            _ => (run(cpu(), dtype), integration_tests::tol(dtype).max(1e-4)),
        };
        for cudnn in [true, false] {
            kernels::cuda::dnn::set_enabled(cudnn);
            for (k, (got, want)) in run(cuda(true), dtype).iter().zip(&want).enumerate() {
                assert_values_close(got, want, tol, tol, &format!("convolution result {k} {dtype} cudnn {cudnn}"));
            }
        }
    }
    kernels::cuda::dnn::set_enabled(true);
}

/// The main job's network (multistyle26 from ONNX) at an odd size, against the CPU.
fn stylize_network() {
    use style_models::pretrained::{self, MultiStyle};
    let dir = pretrained::models_dir();
    if pretrained::ensure_models(&dir, false).is_err() {
        println!("stylize network: skipped (the pretrained models are not in {})", dir.display());
        return;
    }
    let m = MultiStyle::load(&dir).expect("multistyle26");
    let x = Rng::new(0x57_11_2E).nd(&[1, 3, 36, 44], 0.0, 1.0).var(DType::F32);
    let w = pretrained::parse_style("3:0.5,12:0.5").expect("blend");
    let run = |flags| with_flags(flags, || m.stylize(&x, &w).and_then(|y| y.to_vec_f64())).expect("stylize");
    assert_values_close(&run(cuda(true)), &run(cpu()), 1e-3, 1e-4, "multistyle26 36x44 cuda vs cpu");
}

#[test]
#[ignore = "runs in the child processes of the_cuda_backend_runs_on_an_emulated_device"]
fn emulated_device_child() {
    let Ok(phase) = std::env::var(PHASE) else {
        println!("not started by the_cuda_backend_runs_on_an_emulated_device: nothing to do");
        return;
    };
    let rt = kernels::cuda::runtime::runtime().expect("the emulated device should be usable");
    assert_eq!(rt.arch, "sm_90");
    match phase.as_str() {
        "cold" | "warm" => {
            graphs();
            half_casts();
            indexing();
            matrix_products();
            convolutions();
            stylize_network();
            let compiles = kernels::cuda::nvrtc::compiles();
            let stats = kernels::cuda::memory::stats().expect("device memory was used");
            println!("phase {phase}: {compiles} compiles; {stats}");
            if phase == "cold" {
                assert!(compiles > 50, "only {compiles} kernels compiled");
            } else {
                assert_eq!(compiles, 0, "the warm phase should load every module from the disk cache");
            }
            assert!(stats.reused > 0 && stats.reused < stats.requests, "{stats}");
            assert_eq!(stats.oom_flushes, 0, "{stats}");
        }
        "oom" => {
            // 100 M f32 values (400 MB) do not fit in 64 MiB
            let big = with_flags(cuda(true), || Var::ones(&[100, 1000, 1000], DType::F32).try_mul(2.0));
            let err = big.and_then(|v| realize(&[v]).map(|_| ())).expect_err("400 MB on a 64 MiB device");
            let msg = err.to_string();
            assert!(msg.contains("out of memory on cuda:0") && msg.contains("400000000 bytes"), "{msg}");
            assert!(msg.contains("JIT_DEVICE=cpu"), "{msg}");
            // the device is still usable afterwards
            let small = with_flags(cuda(true), || Var::ones(&[1000], DType::F32).try_mul(3.0))
                .and_then(|v| v.to_vec_f64())
                .expect("a small computation after the error");
            assert!(small.iter().all(|&v| v == 3.0));
            let stats = kernels::cuda::memory::stats().expect("device memory was used");
            assert!(stats.oom_flushes >= 1, "{stats}");
        }
        other => panic!("unknown phase {other}"),
    }
}
