//! Times the pretrained multistyle26 network (imported from ONNX) on one image:
//! `stylize_bench SIZE RUNS` prints the median and spread of the forward pass
//! (input already in memory, output realised), after one warm-up run that compiles
//! the kernels, the median time of building the graph (part of each run), and every
//! run's time in order. `benches/stylize_cpu.py` runs it beside onnxruntime.

use jit_core::realize;
use jit_nn::image_io::from_rgb8;
use std::time::Instant;
use style_models::pretrained::{self, MultiStyle};

fn main() {
    let mut a = std::env::args().skip(1);
    let size: u32 = a.next().and_then(|s| s.parse().ok()).unwrap_or(512);
    let runs: usize = a.next().and_then(|s| s.parse().ok()).unwrap_or(10).max(1);
    let dir = pretrained::models_dir();
    if let Err(e) = pretrained::ensure_models(&dir, true) {
        eprintln!("stylize_bench: {e}");
        std::process::exit(1);
    }
    let m = MultiStyle::load(&dir).unwrap_or_else(|e| fail(&e));
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 256) as u8])
    });
    let x = from_rgb8(&img).unwrap_or_else(|e| fail(&e));
    let w = pretrained::parse_style("7").unwrap_or_else(|e| fail(&e));
    let t = Instant::now();
    let y = m.stylize(&x, &w).unwrap_or_else(|e| fail(&e));
    realize(&[y]).unwrap_or_else(|e| fail(&e));
    jit_core::sync_all().unwrap_or_else(|e| fail(&e));
    let cold = t.elapsed().as_secs_f64() * 1e3;
    let mut times = vec![];
    let mut graph_ms = vec![];
    for _ in 0..runs {
        let t = Instant::now();
        let y = m.stylize(&x, &w).unwrap_or_else(|e| fail(&e));
        graph_ms.push(t.elapsed().as_secs_f64() * 1e3);
        realize(&[y]).unwrap_or_else(|e| fail(&e));
        jit_core::sync_all().unwrap_or_else(|e| fail(&e)); // the GPU's queued work counts
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let all: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    times.sort_by(f64::total_cmp);
    graph_ms.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let graph = graph_ms[graph_ms.len() / 2];
    println!(
        "{{\"size\": {size}, \"runs\": {runs}, \"median_ms\": {med:.2}, \"min_ms\": {:.2}, \"max_ms\": {:.2}, \"first_run_ms\": {cold:.1}, \"graph_ms\": {graph:.2}, \"times_ms\": [{}]}}",
        times[0],
        times[times.len() - 1],
        all.join(", ")
    );
}

/// Prints the error on one line and exits with status 1.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("stylize_bench: {e}");
    std::process::exit(1)
}
