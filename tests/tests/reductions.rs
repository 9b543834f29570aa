//! Reductions over random axis sets, keepdim both ways, against plain loops; argmax /
//! argmin ties and NaN; integer and empty cases.

use integration_tests::{assert_close, tol, Nd, Rng};
use jit_ops::prelude::*;

/// Plain reduction of `x` over `axes` with `f(acc, v)` from `init`, then `fin(acc, n)`.
fn reduce_ref(x: &Nd, axes: &[usize], keepdim: bool, init: f64, f: impl Fn(f64, f64) -> f64) -> Nd {
    let out_shape: Vec<usize> =
        x.shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { 1 } else { n }).collect();
    let out = Nd::from_fn(&out_shape, |o| {
        let inner_shape: Vec<usize> =
            x.shape.iter().enumerate().map(|(d, &n)| if axes.contains(&d) { n } else { 1 }).collect();
        let mut acc = init;
        let _ = Nd::from_fn(&inner_shape, |r| {
            let idx: Vec<usize> = (0..x.shape.len()).map(|d| if axes.contains(&d) { r[d] } else { o[d] }).collect();
            acc = f(acc, x.at(&idx));
            0.0
        });
        acc
    });
    if keepdim {
        out
    } else {
        let shape: Vec<usize> =
            x.shape.iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, &n)| n).collect();
        Nd { shape, data: out.data }
    }
}

fn random_axes(rng: &mut Rng, ndim: usize) -> Vec<usize> {
    (0..ndim).filter(|_| rng.chance(0.5)).collect()
}

#[test]
fn sums_means_extrema_over_random_axes() {
    let mut rng = Rng::fresh("sums_means_extrema_over_random_axes");
    for _ in 0..80 {
        let shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.dim_size(false)).collect();
        let mut axes = random_axes(&mut rng, shape.len());
        if axes.is_empty() {
            axes.push(rng.below(shape.len()));
        }
        let keep = rng.chance(0.5);
        // negative dims half of the time
        let dims: Vec<isize> = axes
            .iter()
            .map(|&a| if rng.chance(0.5) { a as isize - shape.len() as isize } else { a as isize })
            .collect();
        let dtype = [DType::F32, DType::F64][rng.below(2)];
        let x = rng.nd(&shape, -2.0, 2.0).rounded(dtype);
        let v = x.var(dtype);
        let n: usize = axes.iter().map(|&a| shape[a]).product();
        let ctx = format!("{shape:?} axes {dims:?} keepdim {keep} {dtype}");
        let t = tol(dtype) * 4.0;
        // Accumulating n terms of magnitude <= 2 in the value's dtype (f32 sums are
        // accumulated in f32, as in PyTorch) errs by at most about n * eps * 2.
        let acc = n as f64 * tol(dtype) * 2.0;
        assert_close(
            &v.sum(&dims, keep).unwrap(),
            &reduce_ref(&x, &axes, keep, 0.0, |a, b| a + b).rounded(dtype),
            t,
            acc,
            &format!("sum {ctx}"),
        );
        let mean = reduce_ref(&x, &axes, keep, 0.0, |a, b| a + b).map(|s| s / n as f64);
        assert_close(&v.mean(&dims, keep).unwrap(), &mean, t, acc / n as f64 + 1e-7, &format!("mean {ctx}"));
        assert_close(
            &v.max(&dims, keep).unwrap(),
            &reduce_ref(&x, &axes, keep, f64::NEG_INFINITY, f64::max),
            0.0,
            0.0,
            &format!("max {ctx}"),
        );
        assert_close(
            &v.min(&dims, keep).unwrap(),
            &reduce_ref(&x, &axes, keep, f64::INFINITY, f64::min),
            0.0,
            0.0,
            &format!("min {ctx}"),
        );
        let p = rng.nd(&shape, 0.8, 1.25).rounded(dtype);
        assert_close(
            &p.var(dtype).prod(&dims, keep).unwrap(),
            &reduce_ref(&p, &axes, keep, 1.0, |a, b| a * b).rounded(dtype),
            t * 8.0 + n as f64 * tol(dtype),
            0.0,
            &format!("prod {ctx}"),
        );
        for unbiased in [false, true] {
            let m = reduce_ref(&x, &axes, true, 0.0, |a, b| a + b).map(|s| s / n as f64);
            let sq = Nd::from_fn(&shape, |i| {
                let mi: Vec<usize> =
                    i.iter().enumerate().map(|(d, &k)| if axes.contains(&d) { 0 } else { k }).collect();
                (x.at(i) - m.at(&mi)).powi(2)
            });
            let denom = if unbiased { n as f64 - 1.0 } else { n as f64 };
            let var = reduce_ref(&sq, &axes, keep, 0.0, |a, b| a + b).map(|s| s / denom);
            // squares of terms <= 4 summed n times, then divided
            let vt = acc * 8.0 / denom.max(1.0) + 1e-6;
            assert_close(&v.var(&dims, unbiased, keep).unwrap(), &var, t * 4.0, vt, &format!("var({unbiased}) {ctx}"));
            assert_close(
                &v.std(&dims, unbiased, keep).unwrap(),
                &var.map(f64::sqrt),
                t * 4.0,
                vt.sqrt(),
                &format!("std({unbiased}) {ctx}"),
            );
        }
    }
}

#[test]
fn hand_computed_reductions() {
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    assert_eq!(x.sum(&[0], false).unwrap().to_vec::<f32>().unwrap(), vec![5.0, 7.0, 9.0]);
    assert_eq!(x.sum(&[1], true).unwrap().shape(), &[2, 1]);
    assert_eq!(x.sum_all().unwrap().item::<f32>().unwrap(), 21.0);
    assert_eq!(x.mean(&[-1], false).unwrap().to_vec::<f32>().unwrap(), vec![2.0, 5.0]);
    assert_eq!(x.var(&[1], true, false).unwrap().to_vec::<f32>().unwrap(), vec![1.0, 1.0]);
    assert_eq!(x.var(&[1], false, false).unwrap().to_vec::<f32>().unwrap(), vec![2.0 / 3.0, 2.0 / 3.0]);
    assert_eq!(x.prod(&[], false).unwrap().item::<f32>().unwrap(), 720.0);
    assert_eq!(x.argmax(1, false).unwrap().to_vec::<i64>().unwrap(), vec![2, 2]);
    assert_eq!(x.argmin(0, true).unwrap().to_vec::<i64>().unwrap(), vec![0, 0, 0]);
    assert_eq!(x.argmin(0, true).unwrap().shape(), &[1, 3]);
    // integer and bool sums are i64 like torch
    let i = Var::from_vec(vec![i32::MAX, 1], &[2]).unwrap();
    let s = i.sum_all().unwrap();
    assert_eq!(s.dtype(), DType::I64);
    assert_eq!(s.item::<i64>().unwrap(), i64::from(i32::MAX) + 1);
    let b = Var::from_vec(vec![true, true, false], &[3]).unwrap();
    assert_eq!(b.sum_all().unwrap().item::<i64>().unwrap(), 2);
    assert!(b.max(&[0], false).unwrap().item::<bool>().unwrap());
    // unbiased variance of one element is NaN, as in torch
    let one = Var::from_vec(vec![3.0f32], &[1]).unwrap();
    assert!(one.var(&[0], true, false).unwrap().item::<f32>().unwrap().is_nan());
}

#[test]
fn argmax_picks_first_of_ties_and_nan() {
    let x = Var::from_vec(vec![1.0f32, 3.0, 3.0, 0.0, 2.0, 0.0], &[6]).unwrap();
    assert_eq!(x.argmax(0, false).unwrap().item::<i64>().unwrap(), 1);
    assert_eq!(x.argmin(0, false).unwrap().item::<i64>().unwrap(), 3);
    let y = Var::from_vec(vec![1.0f32, f32::NAN, 5.0, f32::NAN], &[4]).unwrap();
    assert_eq!(y.argmax(0, false).unwrap().item::<i64>().unwrap(), 1, "NaN is the maximum");
    assert_eq!(y.argmin(0, false).unwrap().item::<i64>().unwrap(), 1, "NaN is the minimum");
    let mut rng = Rng::fresh("argmax_picks_first_of_ties_and_nan");
    for _ in 0..20 {
        let shape: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.dim_size(false)).collect();
        let d = rng.below(shape.len());
        // few distinct values so that ties are common
        let x = Nd::from_fn(&shape, |_| rng.int(0, 3) as f64);
        let got = x.var(DType::F32).argmax(d as isize, false).unwrap().to_vec::<i64>().unwrap();
        let out_shape: Vec<usize> = shape.iter().enumerate().filter(|&(k, _)| k != d).map(|(_, &n)| n).collect();
        let want = Nd::from_fn(&out_shape, |o| {
            let mut best = (f64::NEG_INFINITY, 0);
            for k in 0..shape[d] {
                let mut idx = o.to_vec();
                idx.insert(d, k);
                if x.at(&idx) > best.0 {
                    best = (x.at(&idx), k);
                }
            }
            best.1 as f64
        });
        assert_eq!(got.iter().map(|&v| v as f64).collect::<Vec<_>>(), want.data, "argmax {shape:?} dim {d}");
    }
}

#[test]
fn empty_reductions() {
    let e = Var::zeros(&[3, 0], DType::F32);
    assert_eq!(e.sum(&[1], false).unwrap().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    assert_eq!(e.prod(&[1], false).unwrap().to_vec::<f32>().unwrap(), vec![1.0; 3]);
    assert!(e.mean(&[1], false).unwrap().to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
    assert_eq!(e.sum(&[0], false).unwrap().shape(), &[0]);
    assert!(e.max(&[1], false).is_err());
    assert!(e.argmax(1, false).is_err());
    // reducing a size-1 dim
    let x = Var::from_vec(vec![4.0f32, 5.0], &[2, 1]).unwrap();
    assert_eq!(x.max(&[1], false).unwrap().to_vec::<f32>().unwrap(), vec![4.0, 5.0]);
    // reducing a scalar over dim 0 is the identity
    let s = Var::scalar(2.5f32);
    assert_eq!(s.sum(&[0], false).unwrap().item::<f32>().unwrap(), 2.5);
}

#[test]
fn half_precision_sums_accumulate_wide() {
    // 4096 ones in f16: accumulating in f16 would stall at 2048.
    let x = Var::ones(&[4096], DType::F16);
    assert_eq!(x.sum_all().unwrap().item::<f16>().unwrap().to_f32(), 4096.0);
    let y = Var::full(&[3000], 0.1, DType::BF16);
    let s = y.sum_all().unwrap().cast(DType::F32).item::<f32>().unwrap();
    assert!((s - 3000.0 * bf16::from_f32(0.1).to_f32()).abs() < 8.0, "{s}");
}

#[test]
fn logsumexp_and_norms_over_random_axes() {
    let mut rng = Rng::fresh("logsumexp_and_norms_over_random_axes");
    for _ in 0..40 {
        let shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.dim_size(false)).collect();
        let mut axes = random_axes(&mut rng, shape.len());
        if axes.is_empty() {
            axes.push(rng.below(shape.len()));
        }
        let keep = rng.chance(0.5);
        let dims: Vec<isize> = axes.iter().map(|&a| a as isize).collect();
        let dtype = [DType::F32, DType::F64][rng.below(2)];
        let x = rng.nd(&shape, -3.0, 3.0).rounded(dtype);
        let v = x.var(dtype);
        let n: usize = axes.iter().map(|&a| shape[a]).product();
        let t = tol(dtype) * (8.0 + n as f64);
        let ctx = format!("{shape:?} axes {dims:?} keepdim {keep} {dtype}");
        let lse = reduce_ref(&x, &axes, keep, 0.0, |acc, z| acc + z.exp()).map(f64::ln);
        assert_close(&v.logsumexp(&dims, keep).unwrap(), &lse, t, t, &format!("logsumexp {ctx}"));
        for p in [1.0, 2.0, 3.0, 0.5] {
            let want = reduce_ref(&x, &axes, keep, 0.0, |acc, z| acc + z.abs().powf(p)).map(|s| s.powf(1.0 / p));
            assert_close(&v.norm(p, &dims, keep).unwrap(), &want, t, t, &format!("norm p={p} {ctx}"));
        }
        let want = reduce_ref(&x, &axes, keep, 0.0, |acc, z| acc.max(z.abs()));
        assert_close(&v.norm(f64::INFINITY, &dims, keep).unwrap(), &want, 0.0, 0.0, &format!("norm inf {ctx}"));
    }
}

#[test]
fn logsumexp_and_norm_edge_cases() {
    // no overflow for large inputs, -inf rows stay -inf, NaN propagates
    let x =
        Var::from_vec(vec![1000.0f32, 1000.0, f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0, f32::NAN], &[3, 2]).unwrap();
    let l = x.logsumexp(&[1], false).unwrap().to_vec::<f32>().unwrap();
    assert!((l[0] - (1000.0 + std::f32::consts::LN_2)).abs() < 1e-3, "{l:?}");
    assert_eq!(l[1], f32::NEG_INFINITY);
    assert!(l[2].is_nan());
    let empty = Var::zeros(&[2, 0], DType::F32);
    assert_eq!(empty.logsumexp(&[1], true).unwrap().to_vec::<f32>().unwrap(), vec![f32::NEG_INFINITY; 2]);
    // the gradient of a norm at a zero vector is zero (PyTorch's choice), elsewhere x / |x|
    let z = Var::from_vec(vec![0.0f64, 0.0, 3.0, 4.0], &[2, 2]).unwrap().requires_grad_(true).unwrap();
    let g = jit_core::grad(&z.norm(2.0, &[1], false).unwrap().sum_all().unwrap(), std::slice::from_ref(&z)).unwrap();
    let g = g[0].to_vec::<f64>().unwrap();
    assert!(g[..2] == [0.0, 0.0] && (g[2] - 0.6).abs() < 1e-15 && (g[3] - 0.8).abs() < 1e-15, "{g:?}");
    let g = jit_core::grad(&z.norm(3.0, &[1], false).unwrap().sum_all().unwrap(), std::slice::from_ref(&z)).unwrap();
    assert!(g[0].to_vec::<f64>().unwrap()[..2].iter().all(|&v| v == 0.0));
    // errors
    let msg = |r: Result<Var>| r.unwrap_err().to_string();
    assert_eq!(msg(x.norm(0.0, &[1], false)), "norm: p must be positive (or infinite), got 0");
    assert_eq!(msg(x.norm(f64::NAN, &[1], false)), "norm: p must be positive (or infinite), got NaN");
    assert_eq!(
        msg(x.norm(2.0, &[2], false)),
        "norm: dimension 2 is out of range for a tensor of rank 2 with shape [3, 2] (expected a dim in [-2, 1])"
    );
    let i = Var::from_vec(vec![1i64, 2], &[2]).unwrap();
    assert!(msg(i.logsumexp(&[0], false)).starts_with("logsumexp: needs a floating-point input, got i64"));
}

/// Reductions over axes that are not the innermost (the compiled backend runs four
/// neighbouring outputs per vector there, in chunks of up to 256 vectors, four per
/// step) give the IR executor's results bit for bit: every lane accumulates in the
/// same order as the scalar loop. Rows of 3, 4, 7, 19, 263 and 1031 outputs (steps
/// of four vectors, single vectors, scalar remainders, a full chunk and a partial
/// one), NaN included (any NaN bit pattern).
#[test]
fn reductions_over_outer_axes_match_the_scalar_order_exactly() {
    let mut rng = Rng::fresh("reductions_over_outer_axes_match_the_scalar_order_exactly");
    for last in [3, 4, 7, 19, 263, 1031] {
        let shape = [37, 5, last];
        let mut x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F32);
        x.data[11] = f64::NAN;
        let v = x.var(DType::F32);
        for axes in [vec![0isize], vec![1], vec![0, 1]] {
            let run = |backend| {
                let flags = jit_core::Flags { backend, fusion: true, dump: false };
                jit_core::with_flags(flags, || {
                    let mut out = vec![];
                    for y in [
                        v.sum(&axes, false).unwrap(),
                        v.mean(&axes, true).unwrap(),
                        v.max(&axes, false).unwrap(),
                        v.min(&axes, false).unwrap(),
                        v.try_mul(0.5).unwrap().prod(&axes, false).unwrap(),
                    ] {
                        // NaN's sign and payload are not part of the result
                        let canonical = |v: f32| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() };
                        out.extend(y.to_vec::<f32>().unwrap().into_iter().map(canonical));
                    }
                    out
                })
            };
            let (cpu, exec) = (run(jit_core::Backend::Cpu), run(jit_core::Backend::Interpreter));
            assert_eq!(cpu, exec, "{shape:?} axes {axes:?} (seed {})", rng.seed);
        }
    }
}
