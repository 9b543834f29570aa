//! `jit-bench`: fused against unfused kernels (and against PyTorch when its results
//! are merged) on a suite of named workloads.
//!
//! ```text
//! jit_bench [--device cpu|cuda] [--quick] [--only a,b] [--reps N] [--out DIR]
//!           [--merge torch.json] [--list]
//! ```
//!
//! For each workload and each of fused / unfused: one warm-up step (compiles),
//! then `reps` timed steps; median and range, kernels launched per step, achieved
//! GB/s against the copy bandwidth it measures itself (a parallel host copy on the
//! CPU, a device-to-device copy on CUDA), GFLOP/s, compile time and
//! kernel-cache hits. Writes `results.json`, `results.csv` and `chart.svg` to the
//! output directory (default `target/jit-bench`) and prints the table.
//! `benches/jit_bench.py` runs the same workloads in PyTorch (eager and
//! torch.compile) and merges them with `--merge`.

use benches::report::{Report, Row};
use benches::suite;
use jit_core::{with_flags, Backend, Flags};
use jit_ops::prelude::*;
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    device: String,
    quick: bool,
    only: Vec<String>,
    reps: usize,
    out: PathBuf,
    merge: Option<PathBuf>,
    list: bool,
}

fn parse() -> std::result::Result<Args, String> {
    let mut a = Args {
        device: "cpu".into(),
        quick: false,
        only: vec![],
        reps: 0,
        out: PathBuf::from("target/jit-bench"),
        merge: None,
        list: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match k.as_str() {
            "--device" => a.device = val("--device")?,
            "--quick" => a.quick = true,
            "--only" => a.only = val("--only")?.split(',').map(str::to_string).collect(),
            "--reps" => a.reps = val("--reps")?.parse().map_err(|_| "--reps needs a positive integer".to_string())?,
            "--out" => a.out = PathBuf::from(val("--out")?),
            "--merge" => a.merge = Some(PathBuf::from(val("--merge")?)),
            "--list" => a.list = true,
            "-h" | "--help" => {
                println!(
                    "jit_bench [--device cpu|cuda] [--quick] [--only a,b] [--reps N] [--out DIR] [--merge torch.json] [--list]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if !["cpu", "cuda"].contains(&a.device.as_str()) {
        return Err(format!("--device must be cpu or cuda, got {:?}", a.device));
    }
    if a.reps == 0 {
        a.reps = if a.quick { 3 } else { 7 };
    }
    Ok(a)
}

fn main() {
    match parse().and_then(|a| run(&a).map_err(|e| e.to_string())) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("jit_bench: error: {e}");
            std::process::exit(1);
        }
    }
}

/// Bytes read + written per second of a parallel memory copy, best of five.
fn copy_bandwidth(quick: bool) -> f64 {
    let n = if quick { 4 << 20 } else { 64 << 20 };
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let chunk = (n / rayon::current_num_threads().max(1)).max(1 << 16);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    (8 * n) as f64 / best / 1e9
}

/// f32 matrix-product rate of this framework, best of three.
fn matmul_rate(quick: bool) -> Result<f64> {
    let n = if quick { 256 } else { 1024 };
    let a = Var::randn(&[n, n], DType::F32)?;
    let b = Var::randn(&[n, n], DType::F32)?;
    realize(&[a.clone(), b.clone()])?;
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        matmul(&a, &b)?.sync()?;
        jit_core::sync_all()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(a: &Args) -> Result<()> {
    let workloads = suite::all();
    if a.list {
        for w in &workloads {
            println!("{:<16} {}{}", w.name, w.about, if w.quick { " (quick)" } else { "" });
        }
        return Ok(());
    }
    if let Some(bad) = a.only.iter().find(|n| !workloads.iter().any(|w| w.name == n.as_str())) {
        return Err(Error::argument("jit_bench", format!("unknown workload {bad:?} (see --list)")));
    }
    // read the rows to merge first, so that a bad file fails before the timing
    let merged: Option<Vec<Row>> = match &a.merge {
        None => None,
        Some(m) => {
            let text = std::fs::read_to_string(m).map_err(|e| Error::file(m, format!("cannot read: {e}")))?;
            Some(serde_json::from_str(&text).map_err(|e| Error::file(m, format!("not a list of result rows: {e}")))?)
        }
    };
    let backend = if a.device == "cuda" {
        jit_core::cuda_probe().map_err(|e| Error::argument("jit_bench", format!("--device cuda: {e}")))?;
        Backend::Cuda
    } else {
        Backend::Cpu
    };
    let copy_gbps = if backend == Backend::Cuda {
        let bytes = if a.quick { 64 << 20 } else { 512 << 20 };
        kernels::cuda::memory::copy_bandwidth_gbps(bytes, 10)
            .map_err(|e| Error::argument("jit_bench", e.to_string()))?
    } else {
        copy_bandwidth(a.quick)
    };
    let matmul_gflops = with_flags(Flags { backend, fusion: true, dump: false }, || matmul_rate(a.quick))?;
    let mut rows = Vec::new();
    for w in workloads.iter().filter(|w| {
        if a.only.is_empty() {
            !a.quick || w.quick
        } else {
            a.only.iter().any(|n| n == w.name)
        }
    }) {
        let mut p = (w.prepare)(a.quick)?;
        for (imp, fusion) in [("jit-fused", true), ("jit-unfused", false)] {
            // JIT_DUMP=1 in the environment still prints every kernel
            let flags = Flags { backend, fusion, dump: jit_core::flags().dump };
            let s0 = jit_core::cpu_cache_stats();
            let k0 = jit_core::kernel_launches();
            with_flags(flags, &mut p.step)?; // warm-up: compiles
            jit_core::sync_all()?;
            let s1 = jit_core::cpu_cache_stats();
            let k1 = jit_core::kernel_launches();
            let mut times = Vec::with_capacity(a.reps);
            for _ in 0..a.reps {
                let t = Instant::now();
                with_flags(flags, &mut p.step)?;
                jit_core::sync_all()?; // the GPU's queued work is part of the time
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            let s2 = jit_core::cpu_cache_stats();
            let kernels = (jit_core::kernel_launches() - k1) as f64 / a.reps as f64;
            let _ = k0;
            let med = median(&mut times);
            let secs = med / 1e3;
            let gbps = p.bytes.map(|b| b as f64 / secs / 1e9);
            let cpu = backend == Backend::Cpu;
            rows.push(Row {
                workload: w.name.to_string(),
                implementation: imp.to_string(),
                device: a.device.clone(),
                size: p.size.clone(),
                reps: a.reps,
                median_ms: med,
                min_ms: times[0],
                max_ms: times[times.len() - 1],
                kernels: Some(kernels),
                bytes: p.bytes,
                flops: p.flops,
                gbps,
                pct_copy: gbps.map(|g| 100.0 * g / copy_gbps),
                gflops: p.flops.map(|f| f as f64 / secs / 1e9),
                compile_ms: cpu.then(|| (s1.compile_time - s0.compile_time).as_secs_f64() * 1e3),
                cache_hits: cpu.then(|| s2.hits - s1.hits),
                cache_misses: cpu.then(|| s1.misses - s0.misses),
            });
            eprintln!("jit_bench: {} {imp}: {med:.3} ms", w.name);
        }
    }
    if let (Some(m), Some(theirs)) = (&a.merge, merged) {
        for mut r in theirs {
            if !r.median_ms.is_finite() || r.median_ms <= 0.0 {
                return Err(Error::file(m, format!("{} {}: bad median {}", r.workload, r.implementation, r.median_ms)));
            }
            // the same work as ours: take the sizes and the byte and FLOP counts from
            // our row, and derive the rates
            if let Some(ours) = rows.iter().find(|x| x.workload == r.workload) {
                let secs = r.median_ms / 1e3;
                r.size = ours.size.clone();
                r.bytes = ours.bytes;
                r.flops = ours.flops;
                r.gbps = r.bytes.map(|b| b as f64 / secs / 1e9);
                r.pct_copy = r.gbps.map(|g| 100.0 * g / copy_gbps);
                r.gflops = r.flops.map(|f| f as f64 / secs / 1e9);
            }
            let at = rows.iter().rposition(|x| x.workload == r.workload).map_or(rows.len(), |i| i + 1);
            rows.insert(at, r);
        }
    }
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        device: a.device.clone(),
        threads: rayon::current_num_threads(),
        copy_gbps,
        matmul_gflops,
        rows,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| Error::file(&a.out, format!("cannot create: {e}")))?;
    let write = |name: &str, text: String| -> Result<()> {
        let p = a.out.join(name);
        std::fs::write(&p, text).map_err(|e| Error::file(&p, format!("cannot write: {e}")))
    };
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::argument("jit_bench", e.to_string()))?;
    write("results.json", json)?;
    write("results.csv", report.csv())?;
    write("chart.svg", report.svg())?;
    println!("{}", report.table());
    println!("wrote {}/results.json, results.csv, chart.svg", a.out.display());
    Ok(())
}
