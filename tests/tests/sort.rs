//! `sort`, `argsort`, `topk` and `median` against Rust's stable sort with PyTorch's
//! order (NaN larger than every number, ties in original order), on random shapes
//! with many ties and some NaNs, lengths around powers of two (the network pads to
//! one), every dtype and every backend fused and unfused, by the host library's
//! sort and by the sorting network the CUDA backend builds; gradients against
//! finite differences.

use integration_tests::gradcheck::check;
use integration_tests::{assert_values_close, every_backend, Nd, Rng};
use jit_ops::prelude::*;
use jit_ops::set_sort_network;
use std::cmp::Ordering;

/// PyTorch's order of values: NaN after every number, equal to NaN.
fn order(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// The positions of `line` in stable sorted order.
fn stable_order(line: &[f64], descending: bool) -> Vec<usize> {
    let mut p: Vec<usize> = (0..line.len()).collect();
    p.sort_by(|&a, &b| {
        let o = order(line[a], line[b]);
        if descending {
            o.reverse()
        } else {
            o
        }
    });
    p
}

/// Lines of `x` along `dim`: (flat positions of each line).
fn lines(shape: &[usize], dim: usize) -> Vec<Vec<usize>> {
    let n = shape[dim];
    let inner: usize = shape[dim + 1..].iter().product();
    let outer: usize = shape[..dim].iter().product();
    let mut out = vec![];
    for o in 0..outer {
        for i in 0..inner {
            out.push((0..n).map(|k| (o * n + k) * inner + i).collect());
        }
    }
    out
}

fn sample(rng: &mut Rng, shape: &[usize], dtype: DType) -> Nd {
    Nd::from_fn(shape, |_| match dtype {
        DType::Bool => f64::from(u8::from(rng.chance(0.5))),
        d if d.is_float() && rng.chance(0.08) => f64::NAN,
        // few distinct values: many ties
        _ => rng.int(-4, 4) as f64,
    })
}

#[test]
fn sort_argsort_and_topk_match_a_stable_sort() {
    let mut rng = Rng::fresh("sort_argsort_and_topk_match_a_stable_sort");
    for round in 0..14 {
        let rank = 1 + rng.below(3);
        let dim = rng.below(rank);
        let n = [1, 2, 3, 5, 8, 9, 16, 31, 33, 100][rng.below(10)];
        let shape: Vec<usize> = (0..rank).map(|k| if k == dim { n } else { 1 + rng.below(3) }).collect();
        let dtype = [DType::F32, DType::F64, DType::I64, DType::I32, DType::Bool, DType::F16][round % 6];
        let x = sample(&mut rng, &shape, dtype);
        let descending = rng.chance(0.5);
        let k = rng.below(n + 1);
        let (mut want_v, mut want_i) = (vec![0.0; x.data.len()], vec![0.0; x.data.len()]);
        let mut top_shape = shape.clone();
        top_shape[dim] = k;
        let mut top_v = vec![0.0; top_shape.iter().product()];
        let mut top_i = top_v.clone();
        let top_lines = lines(&top_shape, dim);
        for (line, tline) in lines(&shape, dim).iter().zip(&top_lines) {
            let vals: Vec<f64> = line.iter().map(|&p| x.data[p]).collect();
            let order = stable_order(&vals, descending);
            for (slot, &src) in order.iter().enumerate() {
                want_v[line[slot]] = vals[src];
                want_i[line[slot]] = src as f64;
            }
            let largest = stable_order(&vals, descending);
            for (slot, &src) in largest.iter().take(k).enumerate() {
                top_v[tline[slot]] = vals[src];
                top_i[tline[slot]] = src as f64;
            }
        }
        // the host library's sort and the sorting network (the CUDA backend's)
        for (network, flags) in [false, true].into_iter().flat_map(|n| every_backend().into_iter().map(move |f| (n, f)))
        {
            set_sort_network(network);
            jit_core::with_flags(flags, || {
                let ctx = format!(
                    "{shape:?} dim {dim} {dtype} descending {descending} {flags:?} network {network} (seed {})",
                    rng.seed
                );
                let v = x.var(dtype);
                let (sv, si) = v.sort(dim as isize, descending).unwrap();
                assert_eq!((sv.dtype(), si.dtype()), (dtype, DType::I64), "{ctx}");
                assert_values_close(&sv.to_vec_f64().unwrap(), &want_v, 0.0, 0.0, &format!("values {ctx}"));
                assert_values_close(&si.to_vec_f64().unwrap(), &want_i, 0.0, 0.0, &format!("indices {ctx}"));
                let ai = v.argsort(dim as isize - rank as isize, descending).unwrap();
                assert_values_close(&ai.to_vec_f64().unwrap(), &want_i, 0.0, 0.0, &format!("argsort {ctx}"));
                let (tv, ti) = v.topk(k, dim as isize, descending).unwrap();
                assert_eq!(tv.shape(), &top_shape[..], "{ctx}");
                assert_values_close(&tv.to_vec_f64().unwrap(), &top_v, 0.0, 0.0, &format!("topk values {ctx}"));
                assert_values_close(&ti.to_vec_f64().unwrap(), &top_i, 0.0, 0.0, &format!("topk indices {ctx}"));
            });
        }
        set_sort_network(false);
    }
}

#[test]
fn median_is_the_lower_median_and_nan_where_a_line_holds_nan() {
    let mut rng = Rng::fresh("median_is_the_lower_median_and_nan_where_a_line_holds_nan");
    for round in 0..8 {
        let shape = vec![1 + rng.below(4), [1, 2, 5, 6, 17][rng.below(5)]];
        let dtype = if round % 2 == 0 { DType::F32 } else { DType::I64 };
        let x = sample(&mut rng, &shape, dtype);
        let mut want_v = vec![];
        let mut want_i = vec![];
        for line in lines(&shape, 1) {
            let vals: Vec<f64> = line.iter().map(|&p| x.data[p]).collect();
            if let Some(first) = vals.iter().position(|v| v.is_nan()) {
                want_v.push(f64::NAN);
                want_i.push(first as f64);
                continue;
            }
            let order = stable_order(&vals, false);
            let m = order[(vals.len() - 1) / 2];
            want_v.push(vals[m]);
            want_i.push(m as f64);
        }
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx = format!("{shape:?} {dtype} {flags:?} (seed {})", rng.seed);
                let (v, i) = x.var(dtype).median(1).unwrap();
                assert_eq!(v.shape(), &shape[..1]);
                assert_values_close(&v.to_vec_f64().unwrap(), &want_v, 0.0, 0.0, &format!("values {ctx}"));
                assert_values_close(&i.to_vec_f64().unwrap(), &want_i, 0.0, 0.0, &format!("indices {ctx}"));
            });
        }
    }
}

#[test]
fn sorted_values_carry_gradients_to_their_positions() {
    let mut rng = Rng::fresh("sorted_values_carry_gradients_to_their_positions");
    // distinct values (finite differences cannot cross a swap)
    let x = Nd { shape: vec![3, 7], data: (0..21).map(|k| ((k * 8) % 21) as f64 * 0.1 - 1.0).collect() };
    check("sort", &mut rng, std::slice::from_ref(&x), |v| Ok(v[0].sort(1, false)?.0));
    check("topk", &mut rng, std::slice::from_ref(&x), |v| Ok(v[0].topk(3, 0, true)?.0));
    check("median", &mut rng, std::slice::from_ref(&x), |v| Ok(v[0].median(-1)?.0));
}

#[test]
fn bad_sort_arguments_are_clear_errors() {
    let x = Var::zeros(&[3, 4], DType::F32);
    assert_eq!(
        x.topk(5, 1, true).unwrap_err().to_string(),
        "topk: k = 5 is larger than the 4 elements of dim 1 (shape [3, 4])"
    );
    assert_eq!(
        Var::zeros(&[0, 2], DType::F32).median(0).unwrap_err().to_string(),
        "median: dim 0 of shape [0, 2] is empty"
    );
    assert!(x.sort(2, false).unwrap_err().to_string().starts_with("sort: dimension 2 is out of range"));
}
