//! Finite-difference gradient checks in f64 on the reference backend.
//!
//! `loss = sum(f(x...) * w)` with fixed random weights `w`; the analytic gradient of
//! every input element is compared with the central difference
//! `(loss(x + h) - loss(x - h)) / 2h`, element by element.

use crate::{Nd, Rng};
use jit_core::{grad, no_grad, with_flags, Backend, DType, Flags, Result, Var};

/// Step of the central differences (f64: truncation ~h^2, cancellation ~1e-16/h).
const H: f64 = 1e-6;

fn reference() -> Flags {
    Flags { backend: Backend::Reference, fusion: false, dump: false }
}

fn weighted_loss(out: &Var, w: &Var) -> Result<Var> {
    let prod = out.try_mul(w)?;
    let axes: Vec<usize> = (0..prod.ndim()).collect();
    prod.reduce(jit_core::ReduceOp::Sum, &axes, false)
}

/// Checks the gradient of `f` at `inputs` against central differences; panics with
/// the op name, the input, the element and both values on a mismatch.
pub fn check(name: &str, rng: &mut Rng, inputs: &[Nd], f: impl Fn(&[Var]) -> Result<Var>) {
    with_flags(reference(), || {
        let vars: Vec<Var> = inputs.iter().map(|x| x.var(DType::F64).requires_grad_(true).unwrap()).collect();
        let out = f(&vars).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
        assert_eq!(out.dtype(), DType::F64, "{name}: the output should stay f64");
        let w = rng.nd(out.shape(), -1.0, 1.0).var(DType::F64);
        let loss = weighted_loss(&out, &w).unwrap();
        let grads = grad(&loss, &vars).unwrap_or_else(|e| panic!("{name}: grad failed: {e}"));
        jit_core::realize(&grads).unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
        let eval = |xs: &[Nd]| -> f64 {
            no_grad(|| {
                let vs: Vec<Var> = xs.iter().map(|x| x.var(DType::F64)).collect();
                weighted_loss(&f(&vs).unwrap(), &w).unwrap().item::<f64>().unwrap()
            })
        };
        for (i, x) in inputs.iter().enumerate() {
            let an = grads[i].to_vec_f64().unwrap();
            assert_eq!(grads[i].shape(), x.shape.as_slice(), "{name}: gradient {i} has the wrong shape");
            let mut xs = inputs.to_vec();
            for (j, &an_j) in an.iter().enumerate() {
                let v = x.data[j];
                xs[i].data[j] = v + H;
                let lp = eval(&xs);
                xs[i].data[j] = v - H;
                let lm = eval(&xs);
                xs[i].data[j] = v;
                let fd = (lp - lm) / (2.0 * H);
                let tol = 1e-6 + 1e-5 * fd.abs().max(an_j.abs());
                assert!(
                    (fd - an_j).abs() <= tol,
                    "{name}: d loss / d input{i}[{j}] (shape {:?}): analytic {} vs finite difference {fd} (seed {})",
                    x.shape,
                    an_j,
                    rng.seed
                );
            }
        }
    });
}
