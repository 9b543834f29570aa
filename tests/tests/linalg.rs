//! Matrix products: the gemm extern op (all transpose flags, batch broadcasting,
//! awkward and empty sizes, f32/f64/f16) and the meta-op fallback against a
//! plain-Rust oracle; gradients by finite differences and across backends.

use integration_tests::gradcheck::check;
use integration_tests::{assert_close, assert_values_close, Nd, Rng};
use jit_core::{with_flags, Backend, ExternOp, Flags};
use jit_ops::linalg::set_matmul_library;
use jit_ops::prelude::*;

/// `torch.matmul` semantics for rank >= 2 operands, in f64.
fn matmul_ref(a: &Nd, b: &Nd) -> Nd {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    let batch = jit_core::broadcast_shapes("t", &a.shape[..ra - 2], &b.shape[..rb - 2]).unwrap();
    let mut shape = batch.clone();
    shape.extend([m, n]);
    Nd::from_fn(&shape, |idx| {
        let r = batch.len();
        let (i, j) = (idx[r], idx[r + 1]);
        let pick = |x: &Nd, row: usize, col: usize| {
            let xr = x.shape.len() - 2;
            let mut full: Vec<usize> = idx[r - xr..r].to_vec();
            for (d, v) in full.iter_mut().enumerate() {
                if x.shape[d] == 1 {
                    *v = 0;
                }
            }
            full.extend([row, col]);
            x.at(&full)
        };
        (0..k).map(|p| pick(a, i, p) * pick(b, p, j)).sum()
    })
}

fn transpose_last(x: &Nd) -> Nd {
    let r = x.shape.len();
    let mut shape = x.shape.clone();
    shape.swap(r - 1, r - 2);
    Nd::from_fn(&shape, |idx| {
        let mut i = idx.to_vec();
        i.swap(r - 1, r - 2);
        x.at(&i)
    })
}

#[test]
fn library_and_fallback_match_the_oracle() {
    let mut rng = Rng::fresh("library_and_fallback_match_the_oracle");
    let sizes = [1, 2, 3, 5, 7, 17, 33];
    for round in 0..12 {
        let (m, k, n) = (sizes[rng.below(7)], sizes[rng.below(7)], sizes[rng.below(7)]);
        let (ba, bb): (Vec<usize>, Vec<usize>) = match round % 4 {
            0 => (vec![], vec![]),
            1 => (vec![3], vec![]),
            2 => (vec![2, 1], vec![4]),
            _ => (vec![1, 3], vec![2, 1]),
        };
        let a = rng.nd(&[ba.clone(), vec![m, k]].concat(), -1.0, 1.0);
        let b = rng.nd(&[bb.clone(), vec![k, n]].concat(), -1.0, 1.0);
        let want = matmul_ref(&a, &b);
        for dt in [DType::F32, DType::F64, DType::F16] {
            for library in [true, false] {
                set_matmul_library(library);
                let got = matmul(&a.var(dt), &b.var(dt)).unwrap();
                set_matmul_library(true);
                let tol = if dt == DType::F16 {
                    2e-2
                } else if dt == DType::F32 {
                    1e-5
                } else {
                    1e-12
                };
                let ctx = format!("{:?} x {:?} {dt} library={library}", a.shape, b.shape);
                assert_close(&got, &want, tol, tol, &ctx);
            }
        }
    }
}

#[test]
fn extern_matmul_transposes_and_broadcasts_in_place() {
    let mut rng = Rng::fresh("extern_matmul_transposes_and_broadcasts_in_place");
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for (ba, bb) in [(1, 1), (4, 1), (1, 4), (4, 4)] {
            let (m, k, n) = (1 + rng.below(9), 1 + rng.below(9), 1 + rng.below(9));
            let sa = if ta { [ba, k, m] } else { [ba, m, k] };
            let sb = if tb { [bb, n, k] } else { [bb, k, n] };
            let (a, b) = (rng.nd(&sa, -1.0, 1.0), rng.nd(&sb, -1.0, 1.0));
            let la = if ta { transpose_last(&a) } else { a.clone() };
            let lb = if tb { transpose_last(&b) } else { b.clone() };
            let want = matmul_ref(&la, &lb);
            let op = ExternOp::Matmul { trans_a: ta, trans_b: tb };
            for backend in [Backend::Cpu, Backend::Reference] {
                let got = with_flags(Flags { backend, fusion: true, dump: false }, || {
                    Var::extern_op(op, &[a.var(DType::F32), b.var(DType::F32)]).unwrap().to_vec_f64().unwrap()
                });
                assert_values_close(&got, &want.data, 1e-5, 1e-6, &format!("{op:?} {sa:?} {sb:?} {backend:?}"));
            }
            // gradients of every flag combination, by finite differences
            check(&format!("{op:?} {sa:?} {sb:?}"), &mut rng, &[a, b], |v| Var::extern_op(op, v));
        }
    }
}

#[test]
fn empty_products_and_errors() {
    let z = Var::zeros(&[3, 0], DType::F32);
    let w = Var::zeros(&[0, 4], DType::F32);
    assert_eq!(matmul(&z, &w).unwrap().to_vec::<f32>().unwrap(), vec![0.0; 12], "k = 0 sums nothing");
    let e = Var::zeros(&[0, 5], DType::F32);
    assert_eq!(matmul(&e, &Var::ones(&[5, 2], DType::F32)).unwrap().shape(), &[0, 2]);
    let a = Var::ones(&[1, 2, 3], DType::F32);
    let err = Var::extern_op(ExternOp::Matmul { trans_a: false, trans_b: false }, &[a.clone(), a.clone()]);
    assert_eq!(err.unwrap_err().to_string(), "matmul: inner dims differ: [1, 2, 3] times [1, 2, 3] (3 vs 2)");
    let i = Var::ones(&[1, 2, 2], DType::I64);
    let err = Var::extern_op(ExternOp::Matmul { trans_a: false, trans_b: false }, &[i.clone(), i]);
    assert_eq!(err.unwrap_err().to_string(), "matmul: inputs must share a floating-point dtype, got i64 and i64");
    let x = Var::ones(&[4, 3], DType::F32);
    let err = linear(&x, &Var::ones(&[2, 5], DType::F32), None).unwrap_err().to_string();
    assert_eq!(err, "linear: input [4, 3] has 3 features but the weight [2, 5] expects 5");
}

/// `linear` is one library call (the weight read transposed, no copy) and its
/// gradients agree between the compiled backend and the reference.
#[test]
fn linear_is_one_library_call_with_gradients() {
    let mut rng = Rng::fresh("linear_is_one_library_call_with_gradients");
    let x = rng.nd(&[2, 5, 7], -1.0, 1.0).var(DType::F32);
    let w = rng.nd(&[3, 7], -1.0, 1.0).var(DType::F32).requires_grad_(true).unwrap();
    let b = rng.nd(&[3], -1.0, 1.0).var(DType::F32).requires_grad_(true).unwrap();
    let y = linear(&x, &w, None).unwrap();
    let call = &y.inputs()[0];
    assert_eq!(call.op(), Some(jit_core::MetaOp::Extern(ExternOp::Matmul { trans_a: false, trans_b: true })));
    assert!(call.inputs().iter().all(|i| i.op() == Some(jit_core::MetaOp::Reshape)), "no transpose copy");
    assert!(jit_core::planned_kernels(&[y]).unwrap().is_empty(), "nothing but the library call");
    let grads = |backend| {
        with_flags(Flags { backend, fusion: true, dump: false }, || {
            let loss = linear(&x, &w, Some(&b)).unwrap().tanh().sum_all().unwrap();
            let g = jit_core::grad(&loss, &[w.clone(), b.clone()]).unwrap();
            g.iter().map(|v| v.to_vec_f64().unwrap()).collect::<Vec<_>>()
        })
    };
    let (c, r) = (grads(Backend::Cpu), grads(Backend::Reference));
    for (k, (c, r)) in c.iter().zip(&r).enumerate() {
        assert_values_close(c, r, 1e-4, 1e-5, &format!("linear gradient {k}"));
    }
}

/// A transposed operand (`F Fᵀ`, a Gram matrix, and `Fᵀ F`) is read transposed by
/// the library call instead of copied: no kernel besides the product, the values
/// against the oracle, and gradients through the transpose flags against finite
/// differences.
#[test]
fn transposed_operands_are_read_in_place() {
    let mut rng = Rng::fresh("transposed_operands_are_read_in_place");
    let (b, r, c) = (1 + rng.below(3), 2 + rng.below(6), 3 + rng.below(40));
    let f = rng.nd(&[b, r, c], -1.0, 1.0);
    let fv = f.var(DType::F32);
    // the library call behind a product (a reshape may follow it)
    let call = |y: &Var| if matches!(y.op(), Some(jit_core::MetaOp::Extern(_))) { y.op() } else { y.inputs()[0].op() };
    let gram = matmul(&fv, &fv.transpose(1, 2).unwrap()).unwrap();
    assert_eq!(call(&gram), Some(jit_core::MetaOp::Extern(ExternOp::Matmul { trans_a: false, trans_b: true })));
    assert!(jit_core::planned_kernels(std::slice::from_ref(&gram)).unwrap().is_empty(), "no transpose copy");
    let ft = Nd::from_fn(&[b, c, r], |i| f.at(&[i[0], i[2], i[1]]));
    assert_close(&gram, &matmul_ref(&f, &ft), 1e-5, 1e-5, "F Fᵀ");
    let cov = matmul(&fv.transpose(1, 2).unwrap(), &fv).unwrap();
    assert_eq!(call(&cov), Some(jit_core::MetaOp::Extern(ExternOp::Matmul { trans_a: true, trans_b: false })));
    assert_close(&cov, &matmul_ref(&ft, &f), 1e-5, 1e-5, "Fᵀ F");
    let small = rng.nd(&[2, 3, 4], -1.0, 1.0);
    check("gram", &mut rng, std::slice::from_ref(&small), |v| matmul(&v[0], &v[0].transpose(1, 2)?));
    check("gram of the transpose", &mut rng, std::slice::from_ref(&small), |v| matmul(&v[0].transpose(1, 2)?, &v[0]));
    check("transposed left", &mut rng, &[small], |v| matmul(&v[0].transpose(1, 2)?, &v[0].exp()));
    // the gradient of a Gram matrix is one product (with the symmetrised output
    // gradient), not one per operand
    let x = f.var(DType::F32).requires_grad_(true).unwrap();
    let xt = x.transpose(1, 2).unwrap();
    for gram in [matmul(&x, &xt).unwrap(), matmul(&xt, &x).unwrap()] {
        let w = rng.nd(gram.shape(), -1.0, 1.0).var(DType::F32);
        let loss = gram.try_mul(&w).unwrap().reduce(jit_core::ReduceOp::Sum, &[0, 1, 2], false).unwrap();
        let g = jit_core::grad(&loss, std::slice::from_ref(&x)).unwrap().remove(0);
        assert_eq!(library_products(&g), 1, "products in the gradient of the {:?} Gram matrix", gram.shape());
    }
}

/// The library matrix products in the graph behind `v`.
fn library_products(v: &Var) -> usize {
    let (mut seen, mut todo, mut n) = (std::collections::HashSet::new(), vec![v.clone()], 0);
    while let Some(v) = todo.pop() {
        if seen.insert(v.id()) {
            n += matches!(v.op(), Some(jit_core::MetaOp::Extern(ExternOp::Matmul { .. }))) as usize;
            todo.extend(v.inputs());
        }
    }
    n
}
