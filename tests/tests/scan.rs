//! Cumulative operators (`cumsum`, `cumprod`, `cummax`, `cummin`) and the `roll`,
//! `tril` and `triu` views against plain sequential loops, on random awkward shapes
//! (scan lengths around the powers of 4 where the passes change), every backend
//! fused and unfused; gradients against finite differences; and the plan: a scan
//! of `n` elements takes `ceil(log4 n)` kernels.

use integration_tests::gradcheck::check;
use integration_tests::{assert_values_close, every_backend, Nd, Rng};
use jit_ops::prelude::*;

/// Applies `f` to each line of `x` along `dim` (the line's values, in order) and
/// writes what it returns back at the same positions.
fn along(x: &Nd, dim: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Nd {
    let shape = &x.shape;
    let n = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let mut out = x.data.clone();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * n + k) * inner + i;
            let line: Vec<f64> = (0..n).map(|k| x.data[at(k)]).collect();
            for (k, v) in f(&line).into_iter().enumerate() {
                out[at(k)] = v;
            }
        }
    }
    Nd { shape: shape.clone(), data: out }
}

fn running(line: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    let mut acc: Option<f64> = None;
    line.iter()
        .map(|&v| {
            let a = acc.map_or(v, |a| f(a, v));
            acc = Some(a);
            a
        })
        .collect()
}

/// PyTorch's cummax / cummin loop (`cummax_cummin_helper`): the running extreme
/// and its latest position; NaN, once met, stays (with the latest NaN's position).
fn running_extreme(line: &[f64], max: bool) -> (Vec<f64>, Vec<f64>) {
    let (mut out, mut at) = (line.first().copied().unwrap_or(0.0), 0usize);
    let mut vals = vec![];
    let mut idx = vec![];
    for (k, &c) in line.iter().enumerate() {
        let better = if max { c >= out } else { c <= out };
        if c.is_nan() || (!out.is_nan() && better) {
            out = c;
            at = k;
        }
        vals.push(out);
        idx.push(at as f64);
    }
    (vals, idx)
}

/// A shape whose dim `d` is a scan length near a power of 4 (or small).
fn scan_shape(rng: &mut Rng) -> (Vec<usize>, usize) {
    let rank = 1 + rng.below(3);
    let d = rng.below(rank);
    let n = [1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 200][rng.below(12)];
    let shape = (0..rank).map(|k| if k == d { n } else { 1 + rng.below(4) }).collect();
    (shape, d)
}

#[test]
fn cumsum_and_cumprod_match_sequential_loops() {
    let mut rng = Rng::fresh("cumsum_and_cumprod_match_sequential_loops");
    for round in 0..16 {
        let (shape, d) = scan_shape(&mut rng);
        let dtype = [DType::F32, DType::F64, DType::I32, DType::Bool][round % 4];
        let x = match dtype {
            DType::Bool => Nd::from_fn(&shape, |_| f64::from(u8::from(rng.chance(0.5)))),
            DType::I32 => Nd::from_fn(&shape, |_| rng.int(-3, 3) as f64),
            // products near 1, so that long ones neither vanish nor overflow
            _ => rng.nd(&shape, 0.9, 1.1).rounded(dtype),
        };
        let sums = along(&x, d, |l| running(l, |a, b| a + b));
        let prods = along(&x, d, |l| running(l, |a, b| a * b));
        let want_dtype = if dtype.is_float() { dtype } else { DType::I64 };
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx = format!("{shape:?} dim {d} {dtype} {flags:?} (seed {})", rng.seed);
                let v = x.var(dtype);
                let s = v.cumsum(d as isize - shape.len() as isize).unwrap();
                assert_eq!(s.dtype(), want_dtype, "{ctx}");
                let tol = if dtype == DType::F32 { 1e-5 } else { 1e-12 };
                assert_values_close(&s.to_vec_f64().unwrap(), &sums.data, tol, 0.0, &format!("cumsum {ctx}"));
                let p = v.cumprod(d as isize).unwrap();
                assert_values_close(&p.to_vec_f64().unwrap(), &prods.data, tol, 0.0, &format!("cumprod {ctx}"));
            });
        }
    }
}

#[test]
fn cummax_and_cummin_match_pytorch_ties_and_nan_rules() {
    let mut rng = Rng::fresh("cummax_and_cummin_match_pytorch_ties_and_nan_rules");
    for round in 0..12 {
        let (shape, d) = scan_shape(&mut rng);
        let int = round % 3 == 2;
        // few distinct values: many ties; and a few NaNs in float rounds
        let x = Nd::from_fn(&shape, |_| if !int && rng.chance(0.05) { f64::NAN } else { rng.int(-3, 3) as f64 });
        let dtype = if int { DType::I64 } else { DType::F32 };
        for max in [true, false] {
            let vals = along(&x, d, |l| running_extreme(l, max).0);
            let idx = along(&x, d, |l| running_extreme(l, max).1);
            for flags in every_backend() {
                jit_core::with_flags(flags, || {
                    let ctx = format!("max {max} {shape:?} dim {d} {dtype} {flags:?} (seed {})", rng.seed);
                    let v = x.var(dtype);
                    let (got, at) = if max { v.cummax(d as isize).unwrap() } else { v.cummin(d as isize).unwrap() };
                    assert_eq!(at.dtype(), DType::I64);
                    assert_values_close(&got.to_vec_f64().unwrap(), &vals.data, 0.0, 0.0, &format!("values {ctx}"));
                    assert_values_close(&at.to_vec_f64().unwrap(), &idx.data, 0.0, 0.0, &format!("indices {ctx}"));
                });
            }
        }
    }
}

#[test]
fn roll_tril_and_triu_match_plain_indexing() {
    let mut rng = Rng::fresh("roll_tril_and_triu_match_plain_indexing");
    for _ in 0..10 {
        let shape: Vec<usize> = (0..2 + rng.below(2)).map(|_| rng.dim_size(false)).collect();
        let r = shape.len();
        let x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F32);
        let (d0, d1) = (rng.below(r), rng.below(r));
        let (s0, s1) = (rng.int(-9, 9) as isize, rng.int(-9, 9) as isize);
        let rolled = Nd::from_fn(&shape, |i| {
            let mut src = i.to_vec();
            for (d, s) in [(d0, s0), (d1, s1)] {
                let n = shape[d] as isize;
                src[d] = (src[d] as isize - s).rem_euclid(n) as usize;
            }
            x.at(&src)
        });
        let flat_shift = rng.int(-20, 20) as isize;
        let total = x.data.len() as isize;
        let flat_rolled: Vec<f64> = (0..total).map(|k| x.data[(k - flat_shift).rem_euclid(total) as usize]).collect();
        let k = rng.int(-3, 3);
        let lower = Nd::from_fn(&shape, |i| if i[r - 1] as i64 - i[r - 2] as i64 <= k { x.at(i) } else { 0.0 });
        let upper = Nd::from_fn(&shape, |i| if i[r - 1] as i64 - i[r - 2] as i64 >= k { x.at(i) } else { 0.0 });
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx =
                    format!("{shape:?} roll ({s0} on {d0}, {s1} on {d1}) diagonal {k} {flags:?} (seed {})", rng.seed);
                let v = x.var(DType::F32);
                let got = v.roll(&[s0, s1], &[d0 as isize, d1 as isize - r as isize]).unwrap();
                assert_values_close(&got.to_vec_f64().unwrap(), &rolled.data, 0.0, 0.0, &format!("roll {ctx}"));
                let got = v.roll(&[flat_shift], &[]).unwrap();
                assert_eq!(got.shape(), &shape[..]);
                assert_values_close(&got.to_vec_f64().unwrap(), &flat_rolled, 0.0, 0.0, &format!("flat roll {ctx}"));
                let got = v.tril(k).unwrap().to_vec_f64().unwrap();
                assert_values_close(&got, &lower.data, 0.0, 0.0, &format!("tril {ctx}"));
                let got = v.triu(k).unwrap().to_vec_f64().unwrap();
                assert_values_close(&got, &upper.data, 0.0, 0.0, &format!("triu {ctx}"));
            });
        }
    }
    let x = Var::zeros(&[3, 4], DType::F32);
    let msg = |r: Result<Var>| r.unwrap_err().to_string();
    assert_eq!(msg(x.roll(&[1, 2], &[])), "roll: without dims, give exactly one shift (got 2)");
    assert_eq!(msg(x.roll(&[1], &[0, 1])), "roll: got 1 shifts for 2 dims; give one per dim");
    assert_eq!(
        msg(Var::zeros(&[4], DType::F32).tril(0)),
        "tril: needs at least 2 dims (a matrix or a batch of them), got shape [4]"
    );
    assert_eq!(
        Var::zeros(&[], DType::F32).cumsum(1).unwrap_err().to_string(),
        "cumsum: dimension 1 is out of range for a tensor of rank 0 with shape [] (expected a dim in [-1, 0])"
    );
    assert!(Var::zeros(&[3], DType::Bool).cummax(0).unwrap_err().to_string().contains("cummax: not defined for bool"));
}

#[test]
fn scan_gradients_match_finite_differences() {
    let mut rng = Rng::fresh("scan_gradients_match_finite_differences");
    let x = rng.nd(&[3, 17, 2], -1.0, 1.0);
    check("cumsum", &mut rng, std::slice::from_ref(&x), |v| v[0].cumsum(1));
    let pos = rng.nd(&[2, 18], 0.5, 1.5);
    check("cumprod", &mut rng, std::slice::from_ref(&pos), |v| v[0].cumprod(-1));
    // distinct values: the running maximum's kink is away from the sample points
    let distinct = Nd { shape: vec![2, 20], data: (0..40).map(|k| ((k * 23) % 40) as f64 / 10.0).collect() };
    check("cummax", &mut rng, std::slice::from_ref(&distinct), |v| Ok(v[0].cummax(1)?.0));
    check("cummin", &mut rng, std::slice::from_ref(&distinct), |v| Ok(v[0].cummin(0)?.0));
    check("roll", &mut rng, std::slice::from_ref(&x), |v| v[0].roll(&[5, -1], &[1, 2]));
    check("tril", &mut rng, std::slice::from_ref(&x), |v| v[0].tril(-1));
}

/// `n` = 1000 takes ceil(log4 1000) = 5 passes, one kernel each.
#[test]
fn a_scan_is_a_few_log_step_kernels() {
    let x = Var::randn(&[8, 1000], DType::F32).unwrap();
    x.sync().unwrap();
    let y = x.cumsum(1).unwrap();
    let kernels = jit_core::planned_kernel_ir(std::slice::from_ref(&y)).unwrap();
    assert_eq!(kernels.len(), 5, "{kernels:?}");
    assert!(kernels.iter().all(|k| k.red_rank == 0 && !k.has_scatter()));
    let got = y.to_vec::<f32>().unwrap();
    let xs = x.to_vec::<f32>().unwrap();
    let mut acc = 0.0f64;
    for (k, v) in xs[..1000].iter().enumerate() {
        acc += f64::from(*v);
        assert!((f64::from(got[k]) - acc).abs() < 1e-4 * (1.0 + acc.abs()), "position {k}");
    }
}
