//! The named workloads of `jit-bench`: each builds its inputs once and returns a
//! step that builds the lazy graph and computes it, with the bytes it must move at
//! least (inputs read once, outputs written once) or the floating-point operations
//! it does, for the achieved-rate columns.

use jit_core::IndexExpr as E;
use jit_nn::optim::{Adam, Optimizer};
use jit_ops::prelude::*;
use style_models::adain::AdaIn;

/// What a workload's step does.
pub type Step = Box<dyn FnMut() -> Result<()>>;

/// A workload ready to run.
pub struct Prepared {
    /// Sizes in words (`[8, 512, 32, 32]`).
    pub size: String,
    /// Minimum bytes moved per step (bandwidth-bound workloads).
    pub bytes: Option<u64>,
    /// Floating-point operations per step (compute-bound workloads).
    pub flops: Option<u64>,
    /// The step.
    pub step: Step,
}

/// A named workload.
pub struct Workload {
    /// Name used on the command line and in the tables.
    pub name: &'static str,
    /// What it measures.
    pub about: &'static str,
    /// In the `--quick` subset.
    pub quick: bool,
    /// Builds the inputs (small sizes when `quick`).
    pub prepare: fn(quick: bool) -> Result<Prepared>,
}

/// A row-wise op on [4096, 1024] ([256, 256] quick) of an f32 input, reading it once
/// and writing `out_bytes` per element once.
fn rows_workload(q: bool, out_bytes: u64, op: impl Fn(&Var) -> Result<Var> + 'static) -> Result<Prepared> {
    let shape = if q { [256, 256] } else { [4096, 1024] };
    let x = leaf(&shape)?;
    Ok(Prepared {
        size: format!("{shape:?}"),
        bytes: Some((4 + out_bytes) * elems(&shape)),
        flops: None,
        step: Box::new(move || op(&x)?.sync()),
    })
}

fn leaf(shape: &[usize]) -> Result<Var> {
    let x = Var::randn(shape, DType::F32)?;
    x.sync()?;
    Ok(x)
}

/// `n` row numbers below `rows`, uniformly at random (a fixed sequence), stored.
fn random_rows(n: usize, rows: usize) -> Result<Var> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let idx: Vec<i64> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % rows as u64) as i64
        })
        .collect();
    Var::from_vec(idx, &[n])
}

fn elems(shape: &[usize]) -> u64 {
    shape.iter().product::<usize>() as u64
}

fn chain_n(x: &Var, n: usize) -> Result<Var> {
    // a repeating pattern of cheap element-wise ops, n in total
    let mut h = x.clone();
    for i in 0..n {
        h = match i % 5 {
            0 => h.try_mul(1.0001)?,
            1 => h.try_add(0.25)?,
            2 => h.maximum(-3.0)?,
            3 => h.try_sub(0.125)?,
            _ => h.minimum(5.0)?,
        };
    }
    Ok(h)
}

fn chain_workload(quick: bool, n: usize) -> Result<Prepared> {
    let len = if quick { 1 << 18 } else { 16 << 20 };
    let x = leaf(&[len])?;
    Ok(Prepared {
        size: format!("[{len}] f32, {n} ops"),
        bytes: Some(8 * len as u64),
        flops: Some((n * len) as u64),
        step: Box::new(move || chain_n(&x, n)?.sync()),
    })
}

fn conv_flops(n: usize, cin: usize, cout: usize, k: usize, h: usize, w: usize) -> u64 {
    2 * (n * cin * cout * k * k * h * w) as u64
}

/// FLOPs of the normalised VGG19 to relu4_1 on an `s x s` image (batch 1).
fn vgg_flops(s: usize) -> u64 {
    let convs = [(3, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 2), (128, 256, 4), (256, 256, 4)];
    let mut f = conv_flops(1, 3, 3, 1, s, s);
    for (i, o, d) in convs {
        let side = s.div_ceil(d);
        f += conv_flops(1, i, o, 3, side, side);
    }
    f += 2 * conv_flops(1, 256, 256, 3, s.div_ceil(4), s.div_ceil(4)); // conv3_3, conv3_4
    f + conv_flops(1, 256, 512, 3, s.div_ceil(8), s.div_ceil(8))
}

/// FLOPs of the AdaIN decoder from relu4_1 of an `s x s` image.
fn decoder_flops(s: usize) -> u64 {
    let q = s / 8;
    conv_flops(1, 512, 256, 3, q, q)
        + 3 * conv_flops(1, 256, 256, 3, 2 * q, 2 * q)
        + conv_flops(1, 256, 128, 3, 2 * q, 2 * q)
        + conv_flops(1, 128, 128, 3, 4 * q, 4 * q)
        + conv_flops(1, 128, 64, 3, 4 * q, 4 * q)
        + conv_flops(1, 64, 64, 3, s, s)
        + conv_flops(1, 64, 3, 3, s, s)
}

/// Every workload, in table order.
pub fn all() -> Vec<Workload> {
    vec![
        Workload { name: "chain4", about: "4 element-wise ops", quick: false, prepare: |q| chain_workload(q, 4) },
        Workload { name: "chain10", about: "10 element-wise ops", quick: true, prepare: |q| chain_workload(q, 10) },
        Workload { name: "chain20", about: "20 element-wise ops", quick: false, prepare: |q| chain_workload(q, 20) },
        Workload {
            name: "broadcast",
            about: "relu(x * w[c] + b[c]) over NCHW",
            quick: false,
            prepare: |q| {
                let shape = if q { [2, 16, 32, 32] } else { [8, 64, 128, 128] };
                let x = leaf(&shape)?;
                let w = leaf(&[1, shape[1], 1, 1])?;
                let b = leaf(&[1, shape[1], 1, 1])?;
                Ok(Prepared {
                    size: format!("{shape:?}"),
                    bytes: Some(8 * elems(&shape)),
                    flops: Some(3 * elems(&shape)),
                    step: Box::new(move || x.try_mul(&w)?.try_add(&b)?.relu()?.sync()),
                })
            },
        },
        Workload {
            name: "softmax",
            about: "softmax over the last dim",
            quick: true,
            prepare: |q| rows_workload(q, 4, |x| x.softmax(-1)),
        },
        Workload {
            name: "log_softmax",
            about: "log-softmax over the last dim (exp in the sum, log per row)",
            quick: false,
            prepare: |q| rows_workload(q, 4, |x| x.log_softmax(-1)),
        },
        Workload {
            name: "gelu",
            about: "exact GELU, x * (1 + erf(x / sqrt 2)) / 2",
            quick: false,
            prepare: |q| rows_workload(q, 4, |x| x.gelu()),
        },
        Workload {
            name: "tanh",
            about: "tanh, element-wise",
            quick: false,
            prepare: |q| rows_workload(q, 4, |x| Ok(x.tanh())),
        },
        Workload {
            name: "sin",
            about: "sin, element-wise (standard normal arguments)",
            quick: false,
            prepare: |q| rows_workload(q, 4, |x| Ok(x.sin())),
        },
        Workload {
            name: "pow",
            about: "|x| ^ 2.5, element-wise (a power without a special path)",
            quick: false,
            prepare: |q| {
                let shape = if q { [256, 256] } else { [4096, 1024] };
                let x = leaf(&shape)?.abs();
                x.sync()?;
                Ok(Prepared {
                    size: format!("{shape:?}"),
                    bytes: Some(8 * elems(&shape)),
                    flops: None,
                    step: Box::new(move || x.pow(2.5)?.sync()),
                })
            },
        },
        Workload {
            name: "to_f16",
            about: "f32 to f16, rounded to nearest even",
            quick: false,
            prepare: |q| rows_workload(q, 2, |x| Ok(x.cast(DType::F16))),
        },
        Workload {
            name: "to_bf16",
            about: "f32 to bf16, rounded to nearest even",
            quick: false,
            prepare: |q| rows_workload(q, 2, |x| Ok(x.cast(DType::BF16))),
        },
        Workload {
            name: "layer_norm",
            about: "layer norm with weight and bias",
            quick: false,
            prepare: |q| {
                let shape = if q { [256, 256] } else { [4096, 1024] };
                let x = leaf(&shape)?;
                let w = leaf(&shape[1..])?;
                let b = leaf(&shape[1..])?;
                Ok(Prepared {
                    size: format!("{shape:?}"),
                    bytes: Some(8 * elems(&shape)),
                    flops: None,
                    step: Box::new(move || layer_norm(&x, &shape[1..], Some(&w), Some(&b), 1e-5)?.sync()),
                })
            },
        },
        Workload {
            name: "instance_norm",
            about: "instance norm with weight and bias",
            quick: false,
            prepare: |q| {
                let shape = if q { [2, 16, 32, 32] } else { [8, 64, 128, 128] };
                let x = leaf(&shape)?;
                let w = leaf(&[shape[1]])?;
                let b = leaf(&[shape[1]])?;
                Ok(Prepared {
                    size: format!("{shape:?}"),
                    bytes: Some(8 * elems(&shape)),
                    flops: None,
                    step: Box::new(move || instance_norm(&x, None, Some(&w), Some(&b), true, 1e-5)?.sync()),
                })
            },
        },
        Workload {
            name: "adain_op",
            about: "the AdaIN operation on two feature maps",
            quick: true,
            prepare: |q| {
                let shape = if q { [2, 32, 16, 16] } else { [8, 512, 32, 32] };
                let c = leaf(&shape)?;
                let s = leaf(&shape)?;
                Ok(Prepared {
                    size: format!("{shape:?}"),
                    bytes: Some(12 * elems(&shape)),
                    flops: None,
                    step: Box::new(move || style_models::adain::adain(&c, &s)?.sync()),
                })
            },
        },
        reduce_workload("reduce_axis0", 0, false),
        reduce_workload("reduce_axis1", 1, true),
        reduce_workload("reduce_axis2", 2, false),
        Workload {
            name: "im2col",
            about: "3x3 patches with zero padding (a reindex)",
            quick: false,
            prepare: |q| {
                let (c, h, w) = if q { (8, 32, 32) } else { (64, 128, 128) };
                let x = leaf(&[c, h, w])?;
                let out = [c, 3, 3, h, w];
                Ok(Prepared {
                    size: format!("[{c}, {h}, {w}] -> {out:?}"),
                    bytes: Some(4 * (elems(&[c, h, w]) + elems(&out))),
                    flops: None,
                    step: Box::new(move || {
                        let exprs = vec![E::idx(0), E::idx(3) + E::idx(1) - 1, E::idx(4) + E::idx(2) - 1];
                        x.reindex(&out, exprs, 0.0, vec![])?.sync()
                    }),
                })
            },
        },
        Workload {
            name: "upsample_reflect",
            about: "bias, ReLU, nearest x2, reflection pad 1 (the decoder's reindex chain)",
            quick: false,
            prepare: |q| {
                let (c, s) = if q { (8, 32) } else { (64, 128) };
                let x = leaf(&[1, c, s, s])?;
                let b = leaf(&[1, c, 1, 1])?;
                let out = [1, c, 2 * s + 2, 2 * s + 2];
                Ok(Prepared {
                    size: format!("[1, {c}, {s}, {s}] -> {out:?}"),
                    bytes: Some(4 * (elems(&[1, c, s, s]) + elems(&out))),
                    flops: None,
                    step: Box::new(move || {
                        x.try_add(&b)?.relu()?.upsample_nearest2d(2)?.pad(&[1, 1, 1, 1], PadMode::Reflect)?.sync()
                    }),
                })
            },
        },
        Workload {
            name: "reflect_pad",
            about: "bias, ReLU, reflection pad 1 (before every 3x3 convolution)",
            quick: false,
            prepare: |q| {
                let (c, s) = if q { (8, 64) } else { (64, 256) };
                let x = leaf(&[1, c, s, s])?;
                let b = leaf(&[1, c, 1, 1])?;
                let out = [1, c, s + 2, s + 2];
                Ok(Prepared {
                    size: format!("[1, {c}, {s}, {s}] -> {out:?}"),
                    bytes: Some(4 * (elems(&[1, c, s, s]) + elems(&out))),
                    flops: None,
                    step: Box::new(move || x.try_add(&b)?.relu()?.pad(&[1, 1, 1, 1], PadMode::Reflect)?.sync()),
                })
            },
        },
        Workload {
            name: "gather_rows",
            about: "embedding lookup: rows of a table picked by random indices (index_select)",
            quick: true,
            prepare: |q| {
                let (v, d, n) = if q { (5000, 64, 512) } else { (50_000, 256, 8192) };
                let table = leaf(&[v, d])?;
                let idx = random_rows(n, v)?;
                Ok(Prepared {
                    size: format!("{n} of [{v}, {d}]"),
                    bytes: Some(8 * elems(&[n, d]) + 8 * n as u64),
                    flops: None,
                    step: Box::new(move || table.index_select(0, &idx)?.sync()),
                })
            },
        },
        Workload {
            name: "scatter_rows",
            about: "embedding gradient: rows added into a zero table at random indices (index_add)",
            quick: false,
            prepare: |q| {
                let (v, d, n) = if q { (5000, 64, 512) } else { (50_000, 256, 8192) };
                let src = leaf(&[n, d])?;
                let idx = random_rows(n, v)?;
                Ok(Prepared {
                    size: format!("{n} rows into [{v}, {d}]"),
                    bytes: Some(4 * elems(&[v, d]) + 4 * elems(&[n, d]) + 8 * n as u64),
                    flops: None,
                    step: Box::new(move || Var::zeros(&[v, d], DType::F32).index_add(0, &idx, &src, 1.0)?.sync()),
                })
            },
        },
        Workload {
            name: "sort_rows",
            about: "stable sort of every row (values and positions), a bitonic network",
            quick: false,
            prepare: |q| {
                let shape = if q { [16, 256] } else { [256, 1024] };
                let x = leaf(&shape)?;
                Ok(Prepared {
                    size: format!("{shape:?}"),
                    bytes: Some(16 * elems(&shape)),
                    flops: None,
                    step: Box::new(move || {
                        let (v, i) = x.sort(-1, false)?;
                        jit_core::realize(&[v, i])
                    }),
                })
            },
        },
        Workload {
            name: "conv_bias_relu",
            about: "3x3 convolution, bias, ReLU",
            quick: true,
            prepare: |q| {
                let (c, s) = if q { (16, 32) } else { (64, 128) };
                let x = leaf(&[1, c, s, s])?;
                let w = leaf(&[c, c, 3, 3])?;
                let b = leaf(&[c])?;
                Ok(Prepared {
                    size: format!("[1, {c}, {s}, {s}] * [{c}, {c}, 3, 3]"),
                    bytes: None,
                    flops: Some(conv_flops(1, c, c, 3, s, s)),
                    step: Box::new(move || conv2d(&x, &w, Some(&b), &Conv2dOptions::new(1, 1))?.relu()?.sync()),
                })
            },
        },
        Workload {
            name: "vgg19_encoder",
            about: "normalised VGG19 to relu4_1",
            quick: false,
            prepare: |q| {
                let s = if q { 64 } else { 256 };
                let net = AdaIn::new()?;
                let x = Var::rand(&[1, 3, s, s], DType::F32)?;
                x.sync()?;
                Ok(Prepared {
                    size: format!("[1, 3, {s}, {s}]"),
                    bytes: None,
                    flops: Some(vgg_flops(s)),
                    step: Box::new(move || jit_core::no_grad(|| net.vgg.encode(&x))?.sync()),
                })
            },
        },
        Workload {
            name: "adain_net",
            about: "AdaIN network: two encodes, AdaIN, decoder",
            quick: true,
            prepare: |q| {
                let s = if q { 32 } else { 256 };
                let net = AdaIn::new()?;
                let c = Var::rand(&[1, 3, s, s], DType::F32)?;
                let st = Var::rand(&[1, 3, s, s], DType::F32)?;
                realize(&[c.clone(), st.clone()])?;
                Ok(Prepared {
                    size: format!("[1, 3, {s}, {s}] x2"),
                    bytes: None,
                    flops: Some(2 * vgg_flops(s) + decoder_flops(s)),
                    step: Box::new(move || {
                        jit_core::no_grad(|| net.stylize(&c, std::slice::from_ref(&st), None, 1.0))?.sync()
                    }),
                })
            },
        },
        Workload {
            name: "train_step",
            about: "AdaIN training step: losses, decoder gradients, Adam",
            quick: false,
            prepare: |q| {
                let (b, s) = if q { (1, 32) } else { (2, 128) };
                let net = AdaIn::new()?;
                let c = Var::rand(&[b, 3, s, s], DType::F32)?;
                let st = Var::rand(&[b, 3, s, s], DType::F32)?;
                realize(&[c.clone(), st.clone()])?;
                let mut opt = Adam::new(net.trainable(), 1e-4)?;
                // forward: 3 encodes (content, style, output) + decoder; backward
                // through the output's encode and the decoder costs about twice that
                let fwd = b as u64 * (3 * vgg_flops(s) + decoder_flops(s));
                let bwd = 2 * b as u64 * (vgg_flops(s) + decoder_flops(s));
                Ok(Prepared {
                    size: format!("batch {b} of [3, {s}, {s}]"),
                    bytes: None,
                    flops: Some(fwd + bwd),
                    step: Box::new(move || {
                        let (lc, ls) = net.losses(&c, &st, 1.0)?;
                        opt.step(&lc.try_add(&ls.try_mul(10.0)?)?)
                    }),
                })
            },
        },
    ]
}

fn reduce_workload(name: &'static str, axis: usize, quick: bool) -> Workload {
    let prepare: fn(bool) -> Result<Prepared> = match axis {
        0 => |q| reduce_prepare(q, 0),
        1 => |q| reduce_prepare(q, 1),
        _ => |q| reduce_prepare(q, 2),
    };
    let about = match axis {
        0 => "sum over the outer axis of [n, n, n]",
        1 => "sum over the middle axis of [n, n, n]",
        _ => "sum over the inner (contiguous) axis of [n, n, n]",
    };
    Workload { name, about, quick, prepare }
}

fn reduce_prepare(quick: bool, axis: usize) -> Result<Prepared> {
    let n = if quick { 64 } else { 256 };
    let x = leaf(&[n, n, n])?;
    Ok(Prepared {
        size: format!("[{n}, {n}, {n}] axis {axis}"),
        bytes: Some(4 * (elems(&[n, n, n]) + elems(&[n, n]))),
        flops: Some(elems(&[n, n, n])),
        step: Box::new(move || x.sum(&[axis as isize], false)?.sync()),
    })
}
