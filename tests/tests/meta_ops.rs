//! The meta-ops used directly: leaves, broadcast_to with new dims anywhere, reindex
//! with overflow values and conditions, reindex_reduce as scatter, reshape sharing.

use integration_tests::{assert_close, Nd, Rng};
use jit_core::{Distribution, IndexExpr as E, ReduceOp};
use jit_ops::prelude::*;

#[test]
fn leaves() {
    assert_eq!(Var::full(&[2], 2.5, DType::F32).to_vec::<f32>().unwrap(), vec![2.5, 2.5]);
    assert_eq!(Var::full(&[2], 2.7, DType::I32).to_vec::<i32>().unwrap(), vec![2, 2]);
    let i = Var::index(&[2, 3], 1, DType::I32).unwrap();
    assert_eq!(i.to_vec::<i32>().unwrap(), vec![0, 1, 2, 0, 1, 2]);
    let i = Var::index(&[2, 3], 0, DType::F32).unwrap();
    assert_eq!(i.to_vec::<f32>().unwrap(), vec![0., 0., 0., 1., 1., 1.]);
    assert_eq!(Var::arange(4).to_vec::<i64>().unwrap(), vec![0, 1, 2, 3]);
    assert_eq!(Var::ones(&[0], DType::F32).to_vec::<f32>().unwrap(), Vec::<f32>::new());
}

#[test]
fn broadcast_to_with_new_dims_anywhere() {
    let mut rng = Rng::fresh("broadcast_to_with_new_dims_anywhere");
    for _ in 0..20 {
        let out: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.dim_size(true)).collect();
        let new_dims: Vec<usize> = (0..out.len()).filter(|_| rng.chance(0.4)).collect();
        let kept: Vec<usize> = (0..out.len()).filter(|d| !new_dims.contains(d)).collect();
        let in_shape: Vec<usize> = kept.iter().map(|&d| if rng.chance(0.3) { 1 } else { out[d] }).collect();
        let x = rng.nd(&in_shape, -1.0, 1.0).rounded(DType::F32);
        let got = x.var(DType::F32).broadcast_to_dims(&out, &new_dims).unwrap();
        let want = Nd::from_fn(&out, |o| {
            let src: Vec<usize> =
                kept.iter().enumerate().map(|(k, &d)| if in_shape[k] == 1 { 0 } else { o[d] }).collect();
            x.at(&src)
        });
        assert_close(&got, &want, 0.0, 0.0, &format!("broadcast {in_shape:?} -> {out:?} new {new_dims:?}"));
    }
}

#[test]
fn reindex_with_overflow_and_conditions() {
    // a 2-D "im2col" of a 1-D signal: out[i, k] = x[i + k - 1] for a window of 3,
    // zero outside, and only where (i + k) is even.
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[4]).unwrap();
    let e = E::idx(0) + E::idx(1) - 1;
    let cond = (E::idx(0) + E::idx(1)).modulo(2).eq_(0);
    let y = x.reindex(&[4, 3], vec![e], -9.0, vec![cond]).unwrap();
    // row i: k where i + k is even and 0 <= i + k - 1 < 4
    let want: Vec<f32> = vec![-9.0, -9.0, 2.0, -9.0, 2.0, -9.0, 2.0, -9.0, 4.0, -9.0, 4.0, -9.0];
    assert_eq!(y.to_vec::<f32>().unwrap(), want);
    // reflect padding written directly as a select
    let n = 4i64;
    let j = E::idx(0) - 2;
    let refl = j.clone().lt(0).select(-j.clone(), j.clone().ge(n).select(E::c(2 * (n - 1)) - j.clone(), j));
    let y = x.reindex(&[8], vec![refl], 0.0, vec![]).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 2.0]);
}

#[test]
fn reindex_reduce_scatters() {
    // histogram: scatter-add ones into the bucket given by i % 3
    let ones = Var::ones(&[10], DType::F32);
    let h = ones.reindex_reduce(ReduceOp::Sum, &[3], vec![E::idx(0).modulo(3)], vec![]).unwrap();
    assert_eq!(h.to_vec::<f32>().unwrap(), vec![4.0, 3.0, 3.0]);
    // scatter-max of a row into every other slot; untouched slots hold -inf
    let x = Var::from_vec(vec![1.0f32, 5.0, 2.0], &[3]).unwrap();
    let m = x.reindex_reduce(ReduceOp::Max, &[6], vec![E::idx(0) * 2], vec![]).unwrap();
    let v = m.to_vec::<f32>().unwrap();
    assert_eq!((v[0], v[2], v[4]), (1.0, 5.0, 2.0));
    assert!(v[1] == f32::NEG_INFINITY && v[5] == f32::NEG_INFINITY);
    // the adjoint of a reindex: summing a padded window back
    let mut rng = Rng::fresh("reindex_reduce_scatters");
    let n = 3 + rng.below(8);
    let g = rng.nd(&[n + 2], -1.0, 1.0).rounded(DType::F64);
    let back = g.var(DType::F64).reindex_reduce(ReduceOp::Sum, &[n], vec![E::idx(0) - 1], vec![]).unwrap();
    let want = Nd::from_fn(&[n], |i| g.at(&[i[0] + 1]));
    assert_close(&back, &want, 0.0, 0.0, "unpad by scatter");
}

#[test]
fn random_leaves_are_counter_based() {
    let u = Distribution::Uniform { low: -1.0, high: 1.0 };
    let a = Var::random(&[1000], u, DType::F32, 42).unwrap().to_vec::<f32>().unwrap();
    let b = Var::random(&[1000], u, DType::F32, 42).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, b, "same seed, same numbers");
    let c = Var::random(&[10, 100], u, DType::F32, 42).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(a, c, "element k depends only on (seed, k), not on the shape");
    let d = Var::random(&[1000], u, DType::F32, 43).unwrap().to_vec::<f32>().unwrap();
    assert_ne!(a, d);
    assert!(a.iter().all(|&v| (-1.0..1.0).contains(&v)));
    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 1000.0;
    assert!(mean.abs() < 0.1, "{mean}");
    manual_seed(7);
    let r1 = Var::randn(&[500], DType::F64).unwrap().to_vec::<f64>().unwrap();
    let r2 = Var::randn(&[500], DType::F64).unwrap().to_vec::<f64>().unwrap();
    assert_ne!(r1, r2, "consecutive draws differ");
    let var = r1.iter().map(|v| v * v).sum::<f64>() / 500.0;
    assert!((var - 1.0).abs() < 0.2, "{var}");
    assert!(Var::rand(&[2], DType::I32).is_err(), "random needs a float dtype");
}

#[test]
fn random_numbers_are_identical_on_every_backend() {
    use jit_core::{with_flags, Backend, Flags};
    let make = || {
        let u = Var::random(&[7, 13], Distribution::Uniform { low: 0.0, high: 1.0 }, DType::F64, 99).unwrap();
        let n = Var::random(&[7, 13], Distribution::Normal { mean: 0.0, std: 1.0 }, DType::F64, 99).unwrap();
        // consumed through a transpose so that the counter is computed from indices
        (u.transpose(0, 1).unwrap().to_vec::<f64>().unwrap(), n.to_vec::<f64>().unwrap())
    };
    let reference = with_flags(Flags { backend: Backend::Reference, fusion: false, dump: false }, make);
    let fused = with_flags(Flags { backend: Backend::Cpu, fusion: true, dump: false }, make);
    assert_eq!(reference, fused);
    // element (row 0, col 1) of u is stream element 1
    assert_eq!(reference.0[7], kernels_uniform(99, 1));
}

fn kernels_uniform(seed: u64, k: u64) -> f64 {
    // the documented mapping: top 24 bits of the first Philox word, scaled to [0, 1)
    let w = philox(k, seed)[0];
    f64::from(w >> 8) / 16_777_216.0
}

/// Philox-4x32-10 written out independently of the framework.
fn philox(counter: u64, key: u64) -> [u32; 4] {
    let (mut c, mut k) = ([counter as u32, (counter >> 32) as u32, 0, 0], [key as u32, (key >> 32) as u32]);
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(0x9E37_79B9);
            k[1] = k[1].wrapping_add(0xBB67_AE85);
        }
        let p0 = u64::from(0xD251_1F53u32) * u64::from(c[0]);
        let p1 = u64::from(0xCD9E_8D57u32) * u64::from(c[2]);
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

#[test]
fn reshape_shares_data_and_realize_computes_several() {
    let x = Var::arange(6).cast(DType::F32);
    let a = x.reshape(&[2, 3]).unwrap();
    let b = &a * 2.0;
    let c = a.sum(&[1], false).unwrap();
    realize(&[b.clone(), c.clone()]).unwrap();
    assert!(b.is_realized() && c.is_realized());
    assert_eq!(b.to_vec::<f32>().unwrap(), vec![0., 2., 4., 6., 8., 10.]);
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![3., 12.]);
    assert!(b.inputs().is_empty(), "a realised node drops its inputs");
}
