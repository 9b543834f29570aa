//! The CUDA C that `kernels::cuda::emit` writes, run on the CPU: the emitted
//! translation units are compiled by the host C++ compiler with a small header that
//! stands in for the CUDA built-ins (`threadIdx`, `blockIdx`, `__syncthreads`,
//! `__shfl_down_sync`, `__shared__`, the bit casts and the saturating float to
//! integer conversions), and launched on an emulated grid: the grid-stride and
//! scatter kernels one thread after another, the block-reduction variant with one
//! fiber per CUDA thread (switching at `__syncthreads` and at each warp's
//! shuffles; `the_emulated_block_scheduler_keeps_barrier_semantics` checks it). Without a GPU this checks what the generated code computes, not only
//! that it compiles; it cannot see what only hardware shows (races between threads,
//! memory coalescing, the device's own `expf`).
//!
//! The transcendental functions are the CPU backend's, bit for bit (its f32 `exp`
//! and `sigmoid` polynomial, and its helpers that compute in f64 and round once,
//! called back through function pointers): the captured inputs were computed by the
//! CPU, and a gradient rule that compares a recomputed value with a stored one (the
//! maximum's) must see the same bits, as it does on a real device where both come
//! from the device.

use jit_core::{CapturedKernel, HostBuffer};
use kernels::cuda::emit;
use kernels::cuda::emit::{IndexWidth, Variant};
use kernels::ir::{Kernel, Store};
use kernels::{BinaryOp, UnaryOp};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// What the emulation header defines before the kernels' own prelude (shared
/// with the emulated device, `tests/emu/fake_cuda.cpp`).
const HEADER: &str = include_str!("../emu/cuda_builtins.h");

/// After the kernels' prelude: the CPU backend's transcendental functions.
const CPU_MATH: &str = r#"
typedef double (*j_unary_fn)(int, double);
typedef double (*j_binary_fn)(int, double, double);
static j_unary_fn j_cpu_u;
static j_binary_fn j_cpu_b;
extern "C" void emu_init(j_unary_fn u, j_binary_fn b) { j_cpu_u = u; j_cpu_b = b; }
/* the CPU backend's inline f32 exp (Cephes expf, as cpu.rs emits it) */
static inline float j_cpu_expf(float x) {
  x = j_maxf(x, -104.0f);
  x = j_minf(x, 89.0f);
  float n = rintf(x * 1.44269504088896341f);
  float r = x - n * 0.6933594f;
  r = r - n * -2.1219444e-4f;
  float p = 1.9875691e-4f;
  p = p * r + 1.3981999e-3f;
  p = p * r + 8.333452e-3f;
  p = p * r + 4.1665796e-2f;
  p = p * r + 1.6666665e-1f;
  p = p * r + 0.5f;
  p = p * (r * r) + r + 1.0f;
  int ni = (int)n, n1 = ni >> 1, n2 = ni - n1;
  float s1 = __uint_as_float((unsigned)(n1 + 127) << 23), s2 = __uint_as_float((unsigned)(n2 + 127) << 23);
  return p * s1 * s2;
}
static inline float j_sigmoidf(float x) { return 1.0f / (1.0f + j_cpu_expf(-x)); }
"#;

/// The distinct kernels of a set of captured runs, compiled by the host C++
/// compiler into shared libraries (several, compiled in parallel).
pub struct Emulator {
    libs: Vec<libloading::Library>,
    /// Kernel structure -> (library, entry number).
    index: HashMap<String, (usize, usize)>,
}

type Entry = unsafe extern "C" fn(*const i64, *const *const u8, *const *mut u8, *const u64, u32, u32, i32);

/// Why the emulator could not be built: no C++ compiler (the test then says it is
/// skipped), or a compile error in the generated code (a failure).
#[derive(Debug)]
pub enum BuildError {
    /// `c++` / `g++` is not on the PATH.
    NoCompiler(String),
    /// The compiler rejected the translation unit.
    Compile(String),
}

/// The host C++ compiler: `$CXX`, else `g++`, else `c++`.
pub fn compiler() -> Option<String> {
    let candidates = std::env::var("CXX").into_iter().chain(["g++".to_string(), "c++".to_string()]);
    candidates.into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// The C++ entry `emu_{name}` that unpacks the arguments and launches `name` (or
/// its block variant) on the emulated grid.
fn entry(kernel: &Kernel, name: &str) -> String {
    let [a, o, r, p] = emit::meta_lens(kernel);
    let meta = format!("jmeta_{a}_{o}_{r}_{p}");
    let mut args = vec!["sc[0]".to_string()];
    if kernel.has_scatter() {
        args.push("sc[1]".into());
    }
    args.extend((0..kernel.inputs.len()).map(|k| format!("(const void*)ins[{k}]")));
    args.extend(kernel.outputs.iter().enumerate().map(|(k, o)| format!("({}*)outs[{k}]", emit::storage(o.dtype))));
    args.push("m".into());
    let args = args.join(", ");
    let mut variants = String::new();
    if emit::has_block_variant(kernel) {
        variants +=
            &format!("if (variant == 1) {{ j_run_par(blocks, threads, [&] {{ {name}_block({args}); }}); return; }}");
    }
    if emit::has_vector_variant(kernel) {
        variants +=
            &format!("if (variant == 2) {{ j_run_seq(blocks, threads, [&] {{ {name}_v4({args}); }}); return; }}");
    }
    format!(
        "extern \"C\" void emu_{name}(const long long* sc, const unsigned char* const* ins, unsigned char* const* outs, \
         const unsigned long long* words, unsigned blocks, unsigned threads, int variant) {{\n  {meta} m;\n  \
         memcpy(&m, words, sizeof m);\n  (void)ins; (void)outs;\n  {variants}\n  j_run_seq(blocks, threads, [&] {{ {name}({args}); }});\n}}\n"
    )
}

/// Macros that send the kernels' f32 and f64 math calls to the CPU backend's
/// implementations (the f32 ones compute in f64 and round once, as its helpers do).
fn math_macros() -> String {
    let u = |op: UnaryOp| UnaryOp::ALL.iter().position(|o| *o == op).expect("unary op");
    let b = |op: BinaryOp| BinaryOp::ALL.iter().position(|o| *o == op).expect("binary op");
    let mut m = String::from("#define expf(x) j_cpu_expf(x)\n");
    for (op, f32_name, f64_name) in [
        (UnaryOp::Exp, "", "exp"),
        (UnaryOp::Log, "logf", "log"),
        (UnaryOp::Sin, "sinf", "sin"),
        (UnaryOp::Cos, "cosf", "cos"),
        (UnaryOp::Tanh, "tanhf", "tanh"),
        (UnaryOp::Erf, "erff", "erf"),
        (UnaryOp::Sigmoid, "", "j_sigmoidd"),
    ] {
        if !f32_name.is_empty() {
            m += &format!("#define {f32_name}(x) ((float)j_cpu_u({}, (double)(x)))\n", u(op));
        }
        m += &format!("#define {f64_name}(x) j_cpu_u({}, (double)(x))\n", u(op));
    }
    m += &format!("#define powf(a, b) ((float)j_cpu_b({}, (double)(a), (double)(b)))\n", b(BinaryOp::Pow));
    m += &format!("#define pow(a, b) j_cpu_b({}, (double)(a), (double)(b))\n", b(BinaryOp::Pow));
    m
}

extern "C" fn cpu_unary(op: i32, x: f64) -> f64 {
    UnaryOp::ALL[op as usize].eval_f64(x)
}

extern "C" fn cpu_binary(op: i32, a: f64, b: f64) -> f64 {
    BinaryOp::ALL[op as usize].eval_f64(a, b)
}

/// One translation unit of `kernels` (entries `emu_k{i}` and `emu_k{i}_i32`),
/// compiled and loaded, its CPU math hooked up.
fn compile_unit(cxx: &str, kernels: &[&Kernel], base: &Path) -> Result<libloading::Library, BuildError> {
    let prelude = emit::PRELUDE
        .replace("float j_sigmoidf(", "float j_sigmoidf_device(")
        .replace("double j_sigmoidd(", "double j_sigmoidd_device(");
    let mut tu = format!("{HEADER}\n{prelude}\n{CPU_MATH}\n{}\n", math_macros());
    for (i, kernel) in kernels.iter().enumerate() {
        let name = format!("k{i}");
        let narrow = format!("{name}_i32");
        for (base, width) in [(&name, IndexWidth::Wide), (&narrow, IndexWidth::Narrow)] {
            tu.push_str(&emit::variant_source(kernel, base, Variant::Grid, width));
            if emit::has_block_variant(kernel) {
                tu.push_str(&emit::variant_source(kernel, &format!("{base}_block"), Variant::Block, width));
            }
            if emit::has_vector_variant(kernel) {
                tu.push_str(&emit::variant_source(kernel, &format!("{base}_v4"), Variant::Vector, width));
            }
        }
        tu.push_str(&entry(kernel, &name));
        tu.push_str(&entry(kernel, &narrow));
    }
    let (src, lib) = (base.with_extension("cpp"), base.with_extension("so"));
    std::fs::write(&src, &tu).map_err(|e| BuildError::Compile(format!("writing {}: {e}", src.display())))?;
    let out = Command::new(cxx)
        .args(["-std=c++20", "-O1", "-w", "-shared", "-fPIC", "-pthread", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .map_err(|e| BuildError::NoCompiler(format!("{cxx}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let head: String = err.lines().take(40).collect::<Vec<_>>().join("\n");
        return Err(BuildError::Compile(format!("{cxx} rejected {}:\n{head}", src.display())));
    }
    // SAFETY: the library was just built from our own source; loading it runs no
    // initialisers besides the C++ runtime's.
    let lib = unsafe { libloading::Library::new(&lib) }
        .map_err(|e| BuildError::Compile(format!("loading {}: {e}", lib.display())))?;
    type Init = unsafe extern "C" fn(extern "C" fn(i32, f64) -> f64, extern "C" fn(i32, f64, f64) -> f64);
    // SAFETY: `emu_init` is defined by CPU_MATH with this signature.
    unsafe {
        let init: libloading::Symbol<Init> =
            lib.get(b"emu_init\0").map_err(|e| BuildError::Compile(format!("emu_init: {e}")))?;
        init(cpu_unary, cpu_binary);
    }
    Ok(lib)
}

impl Emulator {
    /// Compiles every distinct kernel of `runs` (by structure), both index widths,
    /// into libraries in `dir`, one translation unit per core.
    pub fn build(runs: &[CapturedKernel], dir: &Path) -> Result<Emulator, BuildError> {
        let cxx = compiler().ok_or_else(|| BuildError::NoCompiler("no g++ or c++ on the PATH".into()))?;
        let mut distinct: Vec<&Kernel> = vec![];
        let mut seen = std::collections::HashSet::new();
        for run in runs {
            if seen.insert(run.kernel.structural_hash()) {
                distinct.push(&run.kernel);
            }
        }
        let units = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
        let per_unit = distinct.len().div_ceil(units).max(1);
        let chunks: Vec<&[&Kernel]> = distinct.chunks(per_unit).collect();
        let built: Vec<Result<libloading::Library, BuildError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .enumerate()
                .map(|(u, chunk)| {
                    let cxx = &cxx;
                    scope.spawn(move || compile_unit(cxx, chunk, &dir.join(format!("emulated{u}"))))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("compiler thread")).collect()
        });
        let libs = built.into_iter().collect::<Result<Vec<_>, _>>()?;
        let mut index = HashMap::new();
        for (u, chunk) in chunks.iter().enumerate() {
            for (k, kernel) in chunk.iter().enumerate() {
                index.insert(kernel.structural_hash(), (u, k));
            }
        }
        Ok(Emulator { libs, index })
    }

    /// Runs `run`'s kernel on its inputs on an emulated grid of `blocks` x `threads`
    /// (the `variant` asked for, which the kernel must have; 32-bit indices when
    /// `narrow` is set) and returns its outputs. Dense outputs start filled with a poison byte, so an
    /// element the kernel never writes shows; scatter outputs start at their
    /// combine op's identity, as on the device.
    pub fn run(
        &self,
        run: &CapturedKernel,
        blocks: u32,
        threads: u32,
        variant: Variant,
        narrow: bool,
    ) -> Result<Vec<HostBuffer>, String> {
        let (kernel, launch) = (&run.kernel, &run.launch);
        let &(u, k) = self.index.get(&kernel.structural_hash()).ok_or("kernel not in this emulator")?;
        let n: usize = launch.out_shape.iter().product();
        let row_len = kernels::scatter_split::row_split(kernel, launch, 2).map_or(n, |s| s.row_len).max(1);
        let scalars = [n as i64, row_len as i64];
        let lens = emit::meta_lens(kernel);
        let mut words = Vec::with_capacity(lens.iter().sum());
        let mut push = |part: Vec<u64>, len: usize| {
            let end = words.len() + len;
            words.extend(part);
            words.resize(end, 0);
        };
        push(launch.args.iter().map(|&a| a as u64).collect(), lens[0]);
        push(launch.out_shape.iter().map(|&d| d as u64).collect(), lens[1]);
        push(launch.red_shape.iter().map(|&d| d as u64).collect(), lens[2]);
        push(launch.params.iter().map(|p| p.to_bits()).collect(), lens[3]);
        let mut outs: Vec<Vec<u8>> = kernel
            .outputs
            .iter()
            .zip(&launch.output_lens)
            .map(|(o, &len)| match &o.store {
                Store::Dense => vec![0xA5u8; len * o.dtype.size_in_bytes()],
                Store::Scatter { op, .. } => {
                    let init = if o.dtype.is_float() {
                        HostBuffer::filled(o.dtype, len, op.identity_f64())
                    } else {
                        HostBuffer::from_i64s(o.dtype, std::iter::repeat_n(op.identity_for(o.dtype), len))
                    };
                    init.as_bytes().to_vec()
                }
            })
            .collect();
        let ins: Vec<*const u8> = run.inputs.iter().map(HostBuffer::as_ptr).collect();
        let out_ptrs: Vec<*mut u8> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        // SAFETY: the symbol is the entry generated for this kernel with this
        // signature; the buffers have the lengths the launch describes (the CPU
        // backend ran the same launch on them).
        unsafe {
            let name = format!("emu_k{k}{}\0", if narrow { "_i32" } else { "" });
            let f: libloading::Symbol<Entry> = self.libs[u].get(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            if n > 0 {
                let which = match variant {
                    Variant::Grid => 0,
                    Variant::Block => 1,
                    Variant::Vector => 2,
                };
                f(scalars.as_ptr(), ins.as_ptr(), out_ptrs.as_ptr(), words.as_ptr(), blocks, threads, which);
            }
        }
        kernel
            .outputs
            .iter()
            .zip(outs)
            .map(|(o, bytes)| HostBuffer::from_le_bytes(o.dtype, &bytes).ok_or_else(|| "output length".to_string()))
            .collect()
    }
}
