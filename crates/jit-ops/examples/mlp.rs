//! Builds a two-layer MLP from meta-ops, evaluates it lazily (fused kernels on the
//! Cranelift CPU backend by default; `JIT_BACKEND=reference` for the oracle) and
//! checks the result against a plain-Rust computation.
//!
//! Run with `cargo run --release -p jit-ops --example mlp [batch] [hidden]`.

use jit_ops::prelude::*;
use std::process::ExitCode;

fn plain(x: &[f32], w1: &[f32], b1: &[f32], w2: &[f32], b2: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f64> {
    let (n, i, h, o) = dims;
    let mut out = Vec::with_capacity(n * o);
    for r in 0..n {
        let hid: Vec<f64> = (0..h)
            .map(|j| {
                let acc: f64 = (0..i).map(|k| f64::from(x[r * i + k]) * f64::from(w1[j * i + k])).sum();
                (acc + f64::from(b1[j])).max(0.0)
            })
            .collect();
        let logits: Vec<f64> =
            (0..o).map(|j| (0..h).map(|k| hid[k] * f64::from(w2[j * h + k])).sum::<f64>() + f64::from(b2[j])).collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = logits.iter().map(|v| (v - m).exp()).sum();
        out.extend(logits.iter().map(|v| (v - m).exp() / s));
    }
    out
}

fn parse_arg(args: &[String], k: usize, default: usize) -> Result<usize> {
    match args.get(k) {
        None => Ok(default),
        Some(s) => s.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(|| {
            Error::argument("mlp example", format!("argument {k} must be a positive integer, got {s:?}"))
        }),
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (n, i, h, o) = (parse_arg(&args, 1, 8)?, 16, parse_arg(&args, 2, 32)?, 10);
    manual_seed(2026);
    let x = Var::randn(&[n, i], DType::F32)?;
    let w1 = Var::randn(&[h, i], DType::F32)? * (1.0 / (i as f64).sqrt());
    let b1 = Var::rand(&[h], DType::F32)? * 0.1;
    let w2 = Var::randn(&[o, h], DType::F32)? * (1.0 / (h as f64).sqrt());
    let b2 = Var::zeros(&[o], DType::F32);

    // Building the graph computes nothing.
    let hidden = linear(&x, &w1, Some(&b1))?.relu()?;
    let probs = linear(&hidden, &w2, Some(&b2))?.softmax(-1)?;
    println!("graph built lazily: {probs:?}");

    let kernels_planned = jit_core::planned_kernels(std::slice::from_ref(&probs))?.len();
    let start = std::time::Instant::now();
    let got = probs.to_vec::<f32>()?;
    let elapsed = start.elapsed();
    let want = plain(&x.to_vec()?, &w1.to_vec()?, &b1.to_vec()?, &w2.to_vec()?, &b2.to_vec()?, (n, i, h, o));
    let max_err = got.iter().zip(&want).map(|(g, w)| (f64::from(*g) - w).abs()).fold(0.0, f64::max);
    println!("first rows of softmax(linear(relu(linear(x)))):");
    println!("{}", probs.narrow(0, 0, n.min(2))?);
    println!("class per row: {:?}", probs.argmax(-1, false)?.to_vec::<i64>()?);
    let f = jit_core::flags();
    println!(
        "evaluated {n}x{i} -> {h} -> {o} on the {:?} backend (fusion {}) in {:.2} ms, {} kernels planned",
        f.backend,
        if f.fusion { "on" } else { "off" },
        elapsed.as_secs_f64() * 1e3,
        kernels_planned
    );
    println!("{}", jit_core::cpu_cache_stats());
    println!("max |ours - plain Rust| = {max_err:.3e}");
    if max_err > 1e-5 {
        return Err(Error::argument(
            "mlp example",
            format!("result differs from the plain-Rust computation by {max_err:e}"),
        ));
    }
    println!("OK: matches the plain-Rust computation");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
