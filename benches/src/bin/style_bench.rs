//! Times the style networks of `style-models` on the current backend and prints one
//! JSON object per workload; `benches/style_bench.py` runs the same work in PyTorch
//! in the same run and prints the side-by-side table.
//!
//! Workloads (random default-initialised weights; the timing does not depend on
//! their values):
//! * `adain`: the AdaIN network, content and style `[1, 3, S, S]` -> stylised image
//!   (two encoder passes to relu4_1, AdaIN, decoder).
//! * `adain-train`: one AdaIN training step on batch B of `S x S` crops (losses,
//!   decoder gradients, Adam update).
//! * `gatys`: one Gatys iteration at `S x S` (five feature levels and relu4_2, Gram
//!   losses, image gradient, Adam update).
//! * `sanet`: the SANet network, content and style `[1, 3, S, S]` -> stylised image
//!   (two encoder passes to relu5_1, style attention at relu4_1 and relu5_1, merge,
//!   decoder); the attention at relu4_1 is a `[S²/64, S²/64]` softmax.
//! * `mccnet`: the MCCNet network (two encoder passes to relu4_1, the multi-channel
//!   correlation module, decoder).
//!
//! `--precision f16` (or `bf16`) runs each workload under `autocast` (products and
//! convolutions in half precision, f32 parameters), the f16 training steps with a
//! `GradScaler`, as PyTorch's `torch.autocast` + `GradScaler` recipe does; `f32` (the
//! default) is plain f32 (set `JIT_ALLOW_TF32=1` for TF32 on a GPU).
//!
//! `style_bench [--workload adain|adain-train|gatys|sanet|mccnet|all] [--size 512] [--batch 8] [--reps 5] [--precision f32|f16|bf16]`

use jit_nn::amp::{autocast, GradScaler};
use jit_nn::optim::Adam;
use jit_ops::prelude::*;
use std::time::Instant;
use style_models::adain::AdaIn;
use style_models::gatys::{Gatys, GatysOptions};
use style_models::mccnet::MccNet;
use style_models::sanet::SaNet;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn num(name: &str, default: usize) -> Result<usize> {
    match arg(name) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| Error::argument("style_bench", format!("{name} needs a positive integer"))),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if let Err(e) = run() {
        eprintln!("style_bench: {e}");
        std::process::exit(1);
    }
}

/// Runs `step` `reps + 1` times (the first compiles and is dropped); prints JSON.
fn time(name: &str, size: usize, batch: usize, reps: usize, mut step: impl FnMut() -> Result<()>) -> Result<()> {
    let mut times = Vec::new();
    let k0 = jit_core::kernel_launches();
    for rep in 0..=reps {
        let t = Instant::now();
        step()?;
        jit_core::sync_all()?; // the GPU's queued work is part of the time
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let kernels = (jit_core::kernel_launches() - k0) / (reps as u64 + 1);
    let precision = arg("--precision").unwrap_or_else(|| "f32".into());
    let (lo, hi) = (times.iter().cloned().fold(f64::INFINITY, f64::min), times.iter().cloned().fold(0.0, f64::max));
    // the device allocator's peak over the process (one workload per process when
    // run by style_bench.py), in MiB; null on the host
    let peak = kernels::cuda::memory::stats()
        .map_or("null".to_string(), |s| format!("{:.1}", s.peak_in_use as f64 / 1048576.0));
    println!(
        "{{\"impl\":\"jit\",\"workload\":\"{name}\",\"precision\":\"{precision}\",\"size\":{size},\"batch\":{batch},\"reps\":{reps},\"median_ms\":{:.2},\"min_ms\":{lo:.2},\"max_ms\":{hi:.2},\"kernels_per_step\":{kernels},\"threads\":{},\"peak_gpu_mib\":{peak}}}",
        median(times),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Runs `body` under autocast in `half`, or as it is when `half` is `None`.
fn maybe_autocast<R>(half: Option<DType>, body: impl FnOnce() -> Result<R>) -> Result<R> {
    match half {
        Some(dt) => autocast(dt, body)?,
        None => body(),
    }
}

/// The workload names `--workload` accepts (besides `all`).
const WORKLOADS: [&str; 5] = ["adain", "adain-train", "gatys", "sanet", "mccnet"];

fn run() -> Result<()> {
    let workload = arg("--workload").unwrap_or_else(|| "all".into());
    let half = match arg("--precision").as_deref() {
        None | Some("f32") => None,
        Some("f16") => Some(DType::F16),
        Some("bf16") => Some(DType::BF16),
        Some(p) => return Err(Error::argument("style_bench", format!("--precision {p:?}: use f32, f16 or bf16"))),
    };
    // f16 steps go through a gradient scaler; bf16 has f32's range and needs none
    // (a disabled scaler steps exactly as the optimizer alone)
    let scaler = || GradScaler::new().enabled(half == Some(DType::F16));
    let (size, batch, reps) = (num("--size", 512)?, num("--batch", 8)?, num("--reps", 5)?.max(1));
    let all = workload == "all";
    if !all && !WORKLOADS.contains(&workload.as_str()) {
        return Err(Error::argument("style_bench", format!("unknown workload {workload:?}")));
    }
    manual_seed(0);
    let net = AdaIn::new()?;
    if all || workload == "adain" {
        let c = Var::rand(&[1, 3, size, size], DType::F32)?;
        let s = Var::rand(&[1, 3, size, size], DType::F32)?;
        realize(&[c.clone(), s.clone()])?;
        time("adain", size, 1, reps, || {
            maybe_autocast(half, || jit_core::no_grad(|| net.stylize(&c, std::slice::from_ref(&s), None, 1.0)))?.sync()
        })?;
    }
    if all || workload == "adain-train" {
        let c = Var::rand(&[batch, 3, size, size], DType::F32)?;
        let s = Var::rand(&[batch, 3, size, size], DType::F32)?;
        realize(&[c.clone(), s.clone()])?;
        let mut opt = Adam::new(net.trainable(), 1e-4)?;
        let mut scaler = scaler();
        time("adain-train", size, batch, reps, || {
            let loss = maybe_autocast(half, || {
                let (lc, ls) = net.losses(&c, &s, 1.0)?;
                lc.try_add(&ls.try_mul(10.0)?)
            })?;
            scaler.step(&mut opt, &loss).map(|_| ())
        })?;
    }
    if all || workload == "gatys" {
        let c = Var::rand(&[1, 3, size, size], DType::F32)?;
        let s = Var::rand(&[1, 3, size, size], DType::F32)?;
        realize(&[c.clone(), s.clone()])?;
        let g = Gatys::new(&net.vgg, &c, &s, GatysOptions::default())?;
        let img = c.detach().try_add(0.0)?;
        img.sync()?;
        let img = img.requires_grad_(true)?;
        let mut opt = Adam::new(vec![img.clone()], 0.02)?;
        let mut scaler = scaler();
        time("gatys", size, 1, reps, || {
            let (loss, _) = maybe_autocast(half, || g.loss(&img))?;
            scaler.step(&mut opt, &loss).map(|_| ())
        })?;
    }
    for (name, is_sanet) in [("sanet", true), ("mccnet", false)] {
        if !(all || workload == name) {
            continue;
        }
        let c = Var::rand(&[1, 3, size, size], DType::F32)?;
        let s = Var::rand(&[1, 3, size, size], DType::F32)?;
        realize(&[c.clone(), s.clone()])?;
        if is_sanet {
            let net = SaNet::new()?;
            time(name, size, 1, reps, || maybe_autocast(half, || jit_core::no_grad(|| net.stylize(&c, &s)))?.sync())?;
        } else {
            let net = MccNet::new()?;
            time(name, size, 1, reps, || {
                maybe_autocast(half, || jit_core::no_grad(|| net.stylize(&c, &s, 1.0)))?.sync()
            })?;
        }
    }
    Ok(())
}
