//! Times the VGG19 convolution stack (conv1_1 to relu5_1) forward, and forward with
//! backward (gradients of the input and every weight and bias), on the current
//! backend (`JIT_BACKEND=cuda` for the GPU; `JIT_ALLOW_TF32=1` for TF32); prints one
//! JSON object per measurement. `benches/vgg_bench.py` runs it next to PyTorch and
//! prints the side-by-side table.
//!
//! `vgg_bench [--size 256] [--batch 1] [--reps 5]`

use benches::{vgg19_forward, vgg19_params};
use jit_ops::prelude::*;
use std::time::Instant;

fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::argument("vgg_bench", format!("{name} needs a positive integer"))),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("vgg_bench: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let (size, batch, reps) = (arg("--size", 256)?, arg("--batch", 1)?, arg("--reps", 5)?.max(1));
    let params = vgg19_params(0)?;
    let x = Var::randn(&[batch, 3, size, size], DType::F32)?.requires_grad_(true)?;
    x.sync()?;
    let flat: Vec<Var> = params.iter().flat_map(|(w, b)| [w.clone(), b.clone()]).chain([x.clone()]).collect();
    for pass in ["forward", "forward+backward"] {
        let mut times = Vec::new();
        for rep in 0..=reps {
            let t = Instant::now();
            let y = vgg19_forward(&x, &params)?;
            if pass == "forward" {
                y.sync()?;
            } else {
                let loss = y.mean_all()?;
                let mut all = jit_core::grad(&loss, &flat)?;
                all.push(loss);
                realize(&all)?;
            }
            jit_core::sync_all()?; // the GPU's queued work is part of the time
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if rep > 0 {
                times.push(ms); // rep 0 warms up (compiles the kernels)
            }
        }
        let (lo, hi) = (times.iter().cloned().fold(f64::INFINITY, f64::min), times.iter().cloned().fold(0.0, f64::max));
        println!(
            "{{\"impl\":\"jit\",\"pass\":\"{pass}\",\"size\":{size},\"batch\":{batch},\"reps\":{reps},\"median_ms\":{:.2},\"min_ms\":{lo:.2},\"max_ms\":{hi:.2},\"threads\":{}}}",
            median(times),
            rayon::current_num_threads()
        );
    }
    Ok(())
}
