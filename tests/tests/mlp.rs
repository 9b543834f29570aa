//! A two-layer MLP built from meta-ops only, against a plain-Rust computation.

use integration_tests::{assert_values_close, Rng};
use jit_ops::prelude::*;

/// `dims` = (batch, inputs, hidden, outputs).
fn plain_mlp(
    x: &[f64],
    w1: &[f64],
    b1: &[f64],
    w2: &[f64],
    b2: &[f64],
    dims: (usize, usize, usize, usize),
) -> Vec<f64> {
    let (n, i, h, o) = dims;
    let mut out = vec![0.0; n * o];
    for r in 0..n {
        let mut hid = vec![0.0; h];
        for j in 0..h {
            let mut acc = b1[j];
            for k in 0..i {
                acc += x[r * i + k] * w1[j * i + k];
            }
            hid[j] = acc.max(0.0);
        }
        for j in 0..o {
            let mut acc = b2[j];
            for k in 0..h {
                acc += hid[k] * w2[j * h + k];
            }
            out[r * o + j] = acc;
        }
        // softmax over the outputs of the row
        let row = &mut out[r * o..(r + 1) * o];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        for v in row.iter_mut() {
            *v = (*v - m).exp() / s;
        }
    }
    out
}

#[test]
fn two_layer_mlp_matches_plain_rust() {
    let mut rng = Rng::fresh("two_layer_mlp_matches_plain_rust");
    for _ in 0..5 {
        let (n, i, h, o) = (1 + rng.below(9), 1 + rng.below(13), 1 + rng.below(17), 1 + rng.below(7));
        let mut vals =
            |len: usize, s: f64| -> Vec<f64> { (0..len).map(|_| (rng.uniform(-s, s) as f32) as f64).collect() };
        let (x, w1, b1, w2, b2) = (vals(n * i, 2.0), vals(h * i, 0.5), vals(h, 0.1), vals(o * h, 0.5), vals(o, 0.1));
        let v = |d: &[f64], s: &[usize]| Var::from_vec(d.iter().map(|&z| z as f32).collect(), s).unwrap();
        let hid = linear(&v(&x, &[n, i]), &v(&w1, &[h, i]), Some(&v(&b1, &[h]))).unwrap().relu().unwrap();
        let y = linear(&hid, &v(&w2, &[o, h]), Some(&v(&b2, &[o]))).unwrap().softmax(-1).unwrap();
        assert_eq!(y.shape(), &[n, o]);
        let want = plain_mlp(&x, &w1, &b1, &w2, &b2, (n, i, h, o));
        assert_values_close(&y.to_vec_f64().unwrap(), &want, 1e-5, 1e-6, &format!("mlp n={n} i={i} h={h} o={o}"));
    }
}

#[test]
fn matmul_shapes_follow_torch() {
    let a = Var::ones(&[2, 1, 3, 4], DType::F32);
    let b = Var::ones(&[5, 4, 6], DType::F32);
    assert_eq!(matmul(&a, &b).unwrap().shape(), &[2, 5, 3, 6]);
    let v = Var::ones(&[4], DType::F32);
    assert_eq!(matmul(&a, &v).unwrap().shape(), &[2, 1, 3]);
    assert_eq!(matmul(&v, &b).unwrap().shape(), &[5, 6]);
    assert_eq!(matmul(&v, &v).unwrap().shape(), &[] as &[usize]);
    assert_eq!(matmul(&v, &v).unwrap().item::<f32>().unwrap(), 4.0);
    let i = Var::from_vec(vec![1i64, 2, 3, 4], &[2, 2]).unwrap();
    assert_eq!(matmul(&i, &i).unwrap().to_vec::<i64>().unwrap(), vec![7, 10, 15, 22]);
}
