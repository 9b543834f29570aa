//! Finite-difference gradient checks (f64, reference backend) for every operator of
//! the foundation, on random awkward shapes with broadcasting and reindex
//! compositions. Seeds are printed; rerun with `JIT_TEST_SEED=<seed>`.

#![allow(clippy::cloned_ref_to_slice_refs)] // `&[x.clone()]` reads best for one-input checks

use integration_tests::gradcheck::check;
use integration_tests::{Nd, Rng};
use jit_core::{IndexExpr as E, ReduceOp};
use jit_ops::prelude::*;

/// A shape of `rank` with small awkward sizes (the checks perturb every element).
fn shape(rng: &mut Rng, rank: usize) -> Vec<usize> {
    (0..rank).map(|_| [1, 2, 3, 4, 5][rng.below(5)]).collect()
}

fn input(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> Nd {
    rng.nd(shape, lo, hi)
}

/// Values away from zero (both signs), for ops with a kink or pole at 0.
fn nonzero(rng: &mut Rng, shape: &[usize]) -> Nd {
    let mut x = rng.nd(shape, 0.3, 2.0);
    for v in &mut x.data {
        if rng.chance(0.5) {
            *v = -*v;
        }
    }
    x
}

/// A broadcast partner of `s`: some dims set to 1, sometimes a lower rank.
fn broadcastable(rng: &mut Rng, s: &[usize]) -> Vec<usize> {
    let mut b: Vec<usize> = s.iter().map(|&d| if rng.chance(0.4) { 1 } else { d }).collect();
    if !b.is_empty() && rng.chance(0.3) {
        b.remove(0);
    }
    b
}

#[test]
fn unary_ops() {
    let mut rng = Rng::fresh("unary_ops");
    type F = fn(&Var) -> Var;
    let ops: [(&str, F, f64, f64); 11] = [
        ("exp", |x| x.exp(), -2.0, 2.0),
        ("log", |x| x.log(), 0.2, 3.0),
        ("sqrt", |x| x.sqrt(), 0.2, 3.0),
        ("rsqrt", |x| x.rsqrt(), 0.2, 3.0),
        ("recip", |x| x.recip(), 0.3, 3.0),
        ("sin", |x| x.sin(), -3.0, 3.0),
        ("cos", |x| x.cos(), -3.0, 3.0),
        ("tanh", |x| x.tanh(), -2.0, 2.0),
        ("sigmoid", |x| x.sigmoid(), -4.0, 4.0),
        ("erf", |x| x.erf(), -2.0, 2.0),
        ("neg", |x| -x, -2.0, 2.0),
    ];
    for (name, f, lo, hi) in ops {
        let rank = 1 + rng.below(3);
        let s = shape(&mut rng, rank);
        let x = input(&mut rng, &s, lo, hi);
        check(name, &mut rng, &[x], |v| Ok(f(&v[0])));
    }
    let s = shape(&mut rng, 2);
    let x = nonzero(&mut rng, &s);
    check("abs", &mut rng, &[x.clone()], |v| Ok(v[0].abs()));
    check("recip of negatives", &mut rng, &[x], |v| Ok(v[0].recip()));
    // floor and round are flat between their jumps: zero gradient
    let x = input(&mut rng, &s, 0.1, 0.4);
    check("floor", &mut rng, &[x.clone()], |v| Ok(&v[0].floor() * &v[0]));
    check("round", &mut rng, &[x], |v| Ok(&v[0].round() + &v[0]));
}

#[test]
fn binary_ops_with_broadcasting() {
    let mut rng = Rng::fresh("binary_ops_with_broadcasting");
    for round in 0..3 {
        let rank = 1 + rng.below(3);
        let s = shape(&mut rng, rank);
        let t = broadcastable(&mut rng, &s);
        let (a, b) = if round % 2 == 0 { (s.clone(), t) } else { (t, s.clone()) };
        let x = input(&mut rng, &a, -2.0, 2.0);
        let y = input(&mut rng, &b, -2.0, 2.0);
        check("add", &mut rng, &[x.clone(), y.clone()], |v| v[0].try_add(&v[1]));
        check("sub", &mut rng, &[x.clone(), y.clone()], |v| v[0].try_sub(&v[1]));
        check("mul", &mut rng, &[x.clone(), y.clone()], |v| v[0].try_mul(&v[1]));
        check("maximum", &mut rng, &[x.clone(), y.clone()], |v| v[0].maximum(&v[1]));
        check("minimum", &mut rng, &[x.clone(), y.clone()], |v| v[0].minimum(&v[1]));
        let yn = nonzero(&mut rng, &b);
        check("div", &mut rng, &[x.clone(), yn.clone()], |v| v[0].try_div(&v[1]));
        check("remainder", &mut rng, &[x.clone(), yn], |v| v[0].remainder(&v[1]));
        let xp = input(&mut rng, &a, 0.3, 2.0);
        check("pow", &mut rng, &[xp, y.clone()], |v| v[0].pow(&v[1]));
        check("scalar ops", &mut rng, &[x.clone()], |v| v[0].try_mul(3.0)?.try_sub(1.5)?.try_div(0.7)?.pow(2.0));
        check("same input twice", &mut rng, &[x], |v| v[0].try_mul(&v[0])?.try_add(&v[0]));
    }
}

#[test]
fn where_and_cast() {
    let mut rng = Rng::fresh("where_and_cast");
    let s = shape(&mut rng, 3);
    let x = input(&mut rng, &s, -2.0, 2.0);
    let bs = broadcastable(&mut rng, &s);
    let y = input(&mut rng, &bs, -2.0, 2.0);
    let c = input(&mut rng, &s, -1.0, 1.0);
    check("where", &mut rng, &[x.clone(), y], |v| {
        let cond = c.var(DType::F64).gt(0.0)?;
        Var::where_(&cond, &v[0], v[1].exp())
    });
    check("cast to f64 and back", &mut rng, &[x], |v| Ok(v[0].cast(DType::F64).try_mul(2.0)?.cast(DType::F64)));
}

#[test]
fn reductions() {
    let mut rng = Rng::fresh("reductions");
    for _ in 0..3 {
        let rank = 1 + rng.below(3);
        let s = shape(&mut rng, rank);
        let dims: Vec<isize> = (0..s.len() as isize).filter(|_| rng.chance(0.5)).collect();
        let keep = rng.chance(0.5);
        let x = input(&mut rng, &s, -2.0, 2.0);
        let d = dims.clone();
        check("sum", &mut rng, &[x.clone()], |v| v[0].sum(&d, keep));
        check("mean", &mut rng, &[x.clone()], |v| v[0].mean(&d, keep));
        check("max", &mut rng, &[x.clone()], |v| v[0].max(&d, keep));
        check("min", &mut rng, &[x.clone()], |v| v[0].min(&d, keep));
        check("sum_all", &mut rng, &[x.clone()], |v| v[0].sum_all());
        check("mean_all", &mut rng, &[x.clone()], |v| v[0].mean_all());
        let xp = nonzero(&mut rng, &s);
        check("prod", &mut rng, &[xp], |v| v[0].prod(&d, keep));
        let n: usize = if dims.is_empty() { s.iter().product() } else { dims.iter().map(|&k| s[k as usize]).product() };
        if n > 1 {
            check("var", &mut rng, &[x.clone()], |v| v[0].var(&d, true, keep));
            check("std", &mut rng, &[x.clone()], |v| v[0].std(&d, false, keep));
        }
    }
}

#[test]
fn reindex_compositions() {
    let mut rng = Rng::fresh("reindex_compositions");
    let s = {
        let mut s = shape(&mut rng, 3);
        s[2] = 3 + rng.below(3); // reflect padding needs room
        s
    };
    let x = input(&mut rng, &s, -2.0, 2.0);
    check("transpose", &mut rng, &[x.clone()], |v| Ok(v[0].transpose(0, 2)?.exp()));
    check("permute", &mut rng, &[x.clone()], |v| v[0].permute(&[1, 2, 0])?.try_mul(&v[0].permute(&[1, 2, 0])?));
    check("narrow", &mut rng, &[x.clone()], |v| v[0].narrow(2, 1, s[2] - 1));
    check("slice step 2", &mut rng, &[x.clone()], |v| v[0].slice(2, 0, None, 2));
    check("pad constant", &mut rng, &[x.clone()], |v| v[0].pad(&[1, 2], PadMode::Constant(0.5)));
    check("pad reflect", &mut rng, &[x.clone()], |v| v[0].pad(&[2, 1], PadMode::Reflect));
    check("pad replicate", &mut rng, &[x.clone()], |v| v[0].pad(&[1, 2, 2, 1], PadMode::Replicate));
    check("flip", &mut rng, &[x.clone()], |v| v[0].flip(&[0, 2]));
    let e = input(&mut rng, &[s[0], 1, s[2]], -1.0, 1.0);
    check("expand", &mut rng, &[e], |v| v[0].expand(&[2, s[0] as isize, 3, s[2] as isize]));
    check("repeat", &mut rng, &[x.clone()], |v| v[0].repeat(&[1, 2, 1, 2]));
    check("reshape view flatten", &mut rng, &[x.clone()], |v| {
        v[0].flatten(0, 1)?.unsqueeze(0)?.squeeze(0)?.view(&[-1])
    });
    let y = input(&mut rng, &[s[0], 2, s[2]], -1.0, 1.0);
    check("cat", &mut rng, &[x.clone(), y], |v| cat(&[v[0].clone(), v[1].clone(), v[0].clone()], 1));
    check("stack", &mut rng, &[x.clone()], |v| stack(&[v[0].clone(), v[0].exp()], 2));
    check("split and chunk", &mut rng, &[x.clone()], |v| {
        let parts = v[0].split(2, 2)?;
        let c = v[0].chunk(2, 0)?;
        parts[0].sum_all()?.try_mul(&c[0].sum_all()?)
    });
    let idx: Vec<i64> = (0..4).map(|_| rng.below(s[2]) as i64).collect();
    check("index_select with repeats", &mut rng, &[x.clone()], |v| {
        v[0].index_select(2, &Var::from_vec(idx.clone(), &[4]).unwrap())
    });
    let gidx: Vec<i64> = (0..s[0] * s[1] * 2).map(|_| rng.below(s[2]) as i64).collect();
    check("gather", &mut rng, &[x.clone()], |v| {
        v[0].gather(2, &Var::from_vec(gidx.clone(), &[s[0], s[1], 2]).unwrap())
    });
    let u = input(&mut rng, &[1, 2, 3, 2], -1.0, 1.0);
    check("nearest upsample", &mut rng, &[u], |v| v[0].upsample_nearest2d(2));
    let u = input(&mut rng, &[1, 1, 3, 5], -1.0, 1.0);
    check("nearest interpolate", &mut rng, &[u], |v| v[0].interpolate_nearest(&[5, 3]));
}

#[test]
fn raw_reindex_and_scatter_meta_ops() {
    let mut rng = Rng::fresh("raw_reindex_and_scatter_meta_ops");
    let x = input(&mut rng, &[4, 5], -2.0, 2.0);
    // a window gather with an overflow value and a condition: im2col-like
    check("reindex window", &mut rng, &[x.clone()], |v| {
        v[0].reindex(
            &[3, 4, 3],
            vec![E::idx(0) + E::idx(2) - E::c(1), E::idx(1)],
            0.25,
            vec![(E::idx(1) - E::idx(2)).ne_(2)],
        )
    });
    // scatter-add with collisions: rows folded onto 2 outputs
    check("reindex_reduce sum", &mut rng, &[x.clone()], |v| {
        v[0].reindex_reduce(ReduceOp::Sum, &[2, 5], vec![E::idx(0).modulo(2), E::idx(1)], vec![])
    });
    check("reindex_reduce max", &mut rng, &[x.clone()], |v| {
        v[0].reindex_reduce(ReduceOp::Max, &[2, 5], vec![E::idx(0).modulo(2), E::idx(1)], vec![])
    });
    let xp = nonzero(&mut rng, &[4, 5]);
    check("reindex_reduce prod", &mut rng, &[xp], |v| {
        v[0].reindex_reduce(ReduceOp::Prod, &[5], vec![E::idx(1)], vec![])
    });
}

#[test]
fn activations_and_linear_algebra() {
    let mut rng = Rng::fresh("activations_and_linear_algebra");
    let s = shape(&mut rng, 2);
    let x = nonzero(&mut rng, &s);
    check("relu", &mut rng, &[x.clone()], |v| v[0].relu());
    check("leaky_relu", &mut rng, &[x.clone()], |v| v[0].leaky_relu(0.2));
    check("clamp", &mut rng, &[x.clone()], |v| v[0].clamp(Some(-1.0), Some(1.0)));
    check("gelu", &mut rng, &[x.clone()], |v| v[0].gelu());
    check("gelu_tanh", &mut rng, &[x.clone()], |v| v[0].gelu_tanh());
    check("silu", &mut rng, &[x.clone()], |v| v[0].silu());
    check("softmax", &mut rng, &[x.clone()], |v| v[0].softmax(-1));
    check("log_softmax", &mut rng, &[x.clone()], |v| v[0].log_softmax(0));
    let (m, k, n) = (1 + rng.below(4), 1 + rng.below(5), 1 + rng.below(4));
    let a = input(&mut rng, &[2, m, k], -1.0, 1.0);
    let b = input(&mut rng, &[k, n], -1.0, 1.0);
    check("batched matmul with broadcast", &mut rng, &[a.clone(), b], |v| matmul(&v[0], &v[1]));
    let w = input(&mut rng, &[3, k], -1.0, 1.0);
    let bias = input(&mut rng, &[3], -1.0, 1.0);
    check("linear", &mut rng, &[a, w, bias], |v| linear(&v[0], &v[1], Some(&v[2])));
}

/// Hand values where finite differences cannot look: ties and kinks follow
/// PyTorch's conventions.
#[test]
fn ties_and_kinks_follow_pytorch() {
    let x = Var::from_vec(vec![1.0f64, 3.0, 3.0, -2.0], &[4]).unwrap().requires_grad_(true).unwrap();
    // amax shares the gradient evenly among tied maxima
    let g = jit_core::grad(&x.max(&[0], false).unwrap(), std::slice::from_ref(&x)).unwrap();
    assert_eq!(g[0].to_vec::<f64>().unwrap(), vec![0.0, 0.5, 0.5, 0.0]);
    // maximum(a, b) splits ties; relu'(0) = 0; abs'(0) = 0
    let z = Var::from_vec(vec![0.0f64, 1.0, -1.0], &[3]).unwrap().requires_grad_(true).unwrap();
    let y = z.maximum(0.0).unwrap().sum_all().unwrap();
    let g = jit_core::grad(&y, std::slice::from_ref(&z)).unwrap();
    assert_eq!(g[0].to_vec::<f64>().unwrap(), vec![0.5, 1.0, 0.0]);
    let g = jit_core::grad(&z.abs().sum_all().unwrap(), std::slice::from_ref(&z)).unwrap();
    assert_eq!(g[0].to_vec::<f64>().unwrap(), vec![0.0, 1.0, -1.0]);
    // pow at a zero base with a positive exponent: the exponent's gradient is 0, not NaN
    let b = Var::from_vec(vec![0.0f64, 2.0], &[2]).unwrap();
    let e = Var::from_vec(vec![2.0f64, 3.0], &[2]).unwrap().requires_grad_(true).unwrap();
    let g = jit_core::grad(&b.pow(&e).unwrap().sum_all().unwrap(), std::slice::from_ref(&e)).unwrap();
    let gv = g[0].to_vec::<f64>().unwrap();
    assert_eq!(gv[0], 0.0);
    assert!((gv[1] - 8.0 * 2f64.ln()).abs() < 1e-12);
}

/// The heavy operators on random awkward sizes: odd spatial sizes, groups, stride 2,
/// dilation, reflect padding, ceil mode.
#[test]
fn convolutions_pooling_resizing_norms_and_losses() {
    let mut rng = Rng::fresh("convolutions_pooling_resizing_norms_and_losses");
    let n = 1 + rng.below(2);
    let (h, w) = (5 + rng.below(3), 4 + rng.below(4));
    let groups = 1 + rng.below(2);
    let (c, o) = (2 * groups, 3 * groups);
    let x = input(&mut rng, &[n, c, h, w], -1.0, 1.0);
    let wt = input(&mut rng, &[o, c / groups, 3, 2], -1.0, 1.0);
    let b = input(&mut rng, &[o], -1.0, 1.0);
    let opts = Conv2dOptions { stride: [2, 1], padding: [1, 1], dilation: [1, 2], groups, ..Default::default() };
    check("conv2d", &mut rng, &[x.clone(), wt.clone(), b.clone()], |v| conv2d(&v[0], &v[1], Some(&v[2]), &opts));
    // 16 channels: the shifted-gemm path (fewer channels take the im2col path)
    let hw = 4 + rng.below(2);
    let xw = input(&mut rng, &[1, 16, hw, 3], -1.0, 1.0);
    let ww = input(&mut rng, &[3, 16, 3, 2], -1.0, 1.0);
    let wide = Conv2dOptions { padding: [1, 2], dilation: [1, 2], ..Default::default() };
    check("conv2d 16 channels", &mut rng, &[xw, ww], |v| conv2d(&v[0], &v[1], None, &wide));
    let reflect = Conv2dOptions { padding_mode: ConvPadding::Reflect, groups, ..Conv2dOptions::new(1, 1) };
    check("conv2d reflect", &mut rng, &[x.clone(), wt.clone()], |v| conv2d(&v[0], &v[1], None, &reflect));
    let wt_t = input(&mut rng, &[c, 2, 3, 3], -1.0, 1.0);
    let topts = ConvTranspose2dOptions {
        stride: [2, 2],
        padding: [1, 0],
        output_padding: [1, 0],
        groups,
        ..Default::default()
    };
    check("conv_transpose2d", &mut rng, &[x.clone(), wt_t], |v| conv_transpose2d(&v[0], &v[1], None, &topts));
    let pool = Pool2dOptions::new(3).stride(2).padding(1).ceil_mode(true);
    check("max_pool2d ceil", &mut rng, &[x.clone()], |v| max_pool2d(&v[0], &pool));
    // non-overlapping windows (their own element-wise gradient), partial last window
    let pool2 = Pool2dOptions::new(2).ceil_mode(true);
    check("max_pool2d 2x2 ceil", &mut rng, &[x.clone()], |v| max_pool2d(&v[0], &pool2));
    let pool3 = Pool2dOptions { kernel: [2, 3], stride: [2, 3], ..Pool2dOptions::new(2) };
    check("max_pool2d 2x3 floor", &mut rng, &[x.clone()], |v| max_pool2d(&v[0], &pool3));
    check("avg_pool2d", &mut rng, &[x.clone()], |v| avg_pool2d(&v[0], &pool, false, None));
    check("adaptive_avg_pool2d", &mut rng, &[x.clone()], |v| adaptive_avg_pool2d(&v[0], [2, 3]));
    check("bilinear", &mut rng, &[x.clone()], |v| upsample_bilinear2d(&v[0], Resize::Size([h + 2, w - 1]), false));
    check("bilinear aligned", &mut rng, &[x.clone()], |v| upsample_bilinear2d(&v[0], Resize::Size([h * 2, 3]), true));
    let gamma = input(&mut rng, &[c], 0.5, 1.5);
    let beta = input(&mut rng, &[c], -0.5, 0.5);
    check("batch_norm", &mut rng, &[x.clone(), gamma.clone(), beta.clone()], |v| {
        batch_norm(&v[0], None, Some(&v[1]), Some(&v[2]), true, 1e-5)
    });
    check("instance_norm", &mut rng, &[x.clone(), gamma.clone(), beta.clone()], |v| {
        instance_norm(&v[0], None, Some(&v[1]), Some(&v[2]), true, 1e-5)
    });
    check("group_norm", &mut rng, &[x.clone(), gamma, beta], |v| {
        group_norm(&v[0], groups, Some(&v[1]), Some(&v[2]), 1e-5)
    });
    let lw = input(&mut rng, &[h, w], 0.5, 1.5);
    check("layer_norm", &mut rng, &[x.clone(), lw], |v| layer_norm(&v[0], &[h, w], Some(&v[1]), None, 1e-5));
    let t = input(&mut rng, &[n, c, h, w], -1.0, 1.0);
    check("mse", &mut rng, &[x.clone(), t.clone()], |v| mse_loss(&v[0], &v[1], Reduction::Mean));
    check("smooth_l1", &mut rng, &[x.clone(), t], |v| smooth_l1_loss(&v[0], &v[1], 0.3, Reduction::Sum));
    check("tv", &mut rng, &[x.clone()], |v| tv_loss(&v[0], true));
    let classes: Vec<i64> = (0..n * h * w).map(|_| rng.below(c) as i64).collect();
    check("cross_entropy", &mut rng, &[x], |v| {
        let t = Var::from_vec(classes.clone(), &[n, h, w]).unwrap();
        cross_entropy(&v[0], &t, 0.2, -100, Reduction::Mean)
    });
}

#[test]
fn binary_and_divergence_losses_huber_and_lerp() {
    let mut rng = Rng::fresh("binary_and_divergence_losses_huber_and_lerp");
    let rank = 1 + rng.below(3);
    let s = shape(&mut rng, rank);
    let t = input(&mut rng, &s, 0.0, 1.0);
    let ws = broadcastable(&mut rng, &s);
    let w = input(&mut rng, &ws, 0.5, 1.5);
    let p = input(&mut rng, &s, 0.05, 0.95);
    check("binary_cross_entropy", &mut rng, &[p, t.clone(), w.clone()], |v| {
        binary_cross_entropy(&v[0], &v[1], Some(&v[2]), Reduction::Mean)
    });
    let x = input(&mut rng, &s, -4.0, 4.0);
    let pw = input(&mut rng, &s[s.len() - 1..], 0.5, 2.0);
    check("binary_cross_entropy_with_logits", &mut rng, &[x.clone(), t, w, pw], |v| {
        binary_cross_entropy_with_logits(&v[0], &v[1], Some(&v[2]), Some(&v[3]), Reduction::Sum)
    });
    let logp = input(&mut rng, &s, -3.0, -0.1);
    let q = input(&mut rng, &s, 0.05, 1.0);
    check("kl_div", &mut rng, &[logp.clone(), q], |v| kl_div(&v[0], &v[1], KlReduction::BatchMean, false));
    let logq = input(&mut rng, &s, -3.0, -0.1);
    check("kl_div log_target", &mut rng, &[logp, logq], |v| kl_div(&v[0], &v[1], KlReduction::Mean, true));
    let y = input(&mut rng, &s, -4.0, 4.0);
    check("huber_loss", &mut rng, &[x.clone(), y.clone()], |v| huber_loss(&v[0], &v[1], 0.8, Reduction::Sum));
    // weights on both sides of 0.5, where lerp switches between its two forms
    let lw = input(&mut rng, &ws, -1.0, 2.0);
    check("lerp", &mut rng, &[x.clone(), y.clone(), lw], |v| lerp(&v[0], &v[1], v[2].clone()));
    check("lerp scalar", &mut rng, &[x, y], |v| lerp(&v[0], &v[1], 0.3));
}

/// A `[n, ho, wo, 2]` grid whose pixel coordinates (along an axis of `w` or `h`
/// pixels) lie between the kinks of `grid_sample`: whole numbers (bilinear corners,
/// clip bounds, reflections with `align_corners`) and halves (reflections without),
/// up to two pixels outside the input.
fn sample_grid(rng: &mut Rng, n: usize, ho: usize, wo: usize, [h, w]: [usize; 2], align_corners: bool) -> Nd {
    let mut g = Nd::from_fn(&[n, ho, wo, 2], |_| 0.0);
    for (k, v) in g.data.iter_mut().enumerate() {
        let size = if k % 2 == 0 { w } else { h } as f64;
        let whole = rng.int(-2, size as i64 + 1) as f64;
        let frac = if rng.chance(0.5) { rng.uniform(0.05, 0.45) } else { rng.uniform(0.55, 0.95) };
        let x = whole + frac;
        *v = if align_corners { x * 2.0 / (size - 1.0).max(1.0) - 1.0 } else { (x + 0.5) * 2.0 / size - 1.0 };
    }
    g
}

#[test]
fn grid_sample_and_affine_grid() {
    let mut rng = Rng::fresh("grid_sample_and_affine_grid");
    let (n, c) = (1 + rng.below(2), 1 + rng.below(3));
    let (h, w) = (2 + rng.below(4), 2 + rng.below(4));
    let (ho, wo) = (1 + rng.below(3), 1 + rng.below(4));
    let x = input(&mut rng, &[n, c, h, w], -1.0, 1.0);
    for padding in [GridPadding::Zeros, GridPadding::Border, GridPadding::Reflection] {
        for align_corners in [false, true] {
            let g = sample_grid(&mut rng, n, ho, wo, [h, w], align_corners);
            let name = format!("grid_sample bilinear {padding:?} align_corners={align_corners}");
            check(&name, &mut rng, &[x.clone(), g.clone()], |v| {
                grid_sample(&v[0], &v[1], GridMode::Bilinear, padding, align_corners)
            });
            let name = format!("grid_sample nearest {padding:?} align_corners={align_corners}");
            check(&name, &mut rng, &[x.clone(), g], |v| {
                grid_sample(&v[0], &v[1], GridMode::Nearest, padding, align_corners)
            });
        }
    }
    let theta = input(&mut rng, &[n, 2, 3], -1.0, 1.0);
    for align_corners in [false, true] {
        check("affine_grid", &mut rng, &[theta.clone()], |v| affine_grid(&v[0], [n, c, h, w], align_corners));
    }
}

#[test]
fn smooth_activations_norms_and_similarities() {
    let mut rng = Rng::fresh("smooth_activations_norms_and_similarities");
    let s = shape(&mut rng, 3);
    let x = nonzero(&mut rng, &s);
    check("elu", &mut rng, &[x.clone()], |v| v[0].elu(0.7));
    check("softplus", &mut rng, &[x.clone()], |v| v[0].softplus(2.0, 3.0));
    check("mish", &mut rng, &[x.clone()], |v| v[0].mish());
    // hardswish away from its kinks at -3 and 3
    let h = input(&mut rng, &s, -2.5, 2.5);
    check("hardswish", &mut rng, &[h], |v| v[0].hardswish());
    let m = [2 + rng.below(3), 1 + rng.below(3), 1 + rng.below(4)];
    let y = nonzero(&mut rng, &m);
    check("logsumexp", &mut rng, &[y.clone()], |v| v[0].logsumexp(&[0, 2], false));
    for p in [1.0, 2.0, 3.0] {
        check(&format!("norm p={p}"), &mut rng, &[y.clone()], |v| v[0].norm(p, &[1], true));
    }
    check("normalize", &mut rng, &[y.clone()], |v| normalize(&v[0], 2.0, 0, 1e-12));
    let b = nonzero(&mut rng, &[1, m[1], m[2]]);
    check("cosine_similarity", &mut rng, &[y, b], |v| cosine_similarity(&v[0], &v[1], 1, 1e-8));
}
