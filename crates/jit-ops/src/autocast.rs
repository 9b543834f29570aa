//! Automatic mixed precision: PyTorch's `torch.autocast` for this thread.
//!
//! Inside [`autocast`]`(DType::F16, ..)` (or `BF16`), the operators that gain from
//! half precision take their floating-point inputs in that dtype: `matmul`, `linear`,
//! `conv2d` and `conv_transpose2d` (and their `_library` forms) cast `f32` operands to
//! it and return it. The operators that need the range or the accuracy of `f32` take
//! half-precision inputs in `f32`:
//!
//! * `softmax`, `log_softmax`, `logsumexp`, `norm`, `cosine_similarity`, `layer_norm`,
//!   `group_norm` and the losses (`mse_loss`, `l1_loss`, `smooth_l1_loss`,
//!   `nll_loss`, `cross_entropy`) return `f32`, as in PyTorch;
//! * `batch_norm` and `instance_norm` compute their statistics and the normalisation in
//!   `f32` and return the input's dtype (PyTorch runs them on half inputs with `f32`
//!   statistics and returns the input's dtype too).
//!
//! Everything else runs in the dtype it is given, as outside the scope: element-wise
//! operators on a half value stay half (their arithmetic is `f32` inside the kernel;
//! only stores round), and `f64` values are never cast. Parameters stay `f32`: a cast
//! is differentiable, so their gradients come back in `f32` (the "master weights" of
//! mixed-precision training); scale the loss with `jit_nn::amp::GradScaler` so that
//! small half-precision gradients do not flush to zero. The casts are ordinary graph
//! nodes and fuse into the kernels that produce or consume them.
//!
//! These are PyTorch's CUDA autocast lists, applied on every device. PyTorch's CPU
//! autocast keeps softmax, the norms and the normalisations in the input's dtype; on
//! the CPU it runs the products in the half type too, but its convolution adds the
//! bias before rounding, where ours (like PyTorch's cuDNN path) rounds the product
//! and then the sum.
//!
//! Within a scope each parameter (a leaf that requires a gradient) is cast once per
//! dtype, value and gradient mode: later uses share that cast (a layer applied twice
//! casts its weight once, and a realised cast is not recomputed). The cache is
//! dropped when the outermost scope ends and an `assign` to the parameter (a new
//! version) misses it. As in PyTorch, values that require no gradient (a frozen
//! encoder's weights, inputs) are not cached: the cache would keep every input of
//! a long scope alive.
//!
//! The scope is per thread and nests; [`autocast_off`] turns it off inside (PyTorch's
//! `autocast(enabled=False)`).

use jit_core::{DType, Error, Result, Var};
use std::cell::{Cell, RefCell};

thread_local! {
    static AUTOCAST: Cell<Option<DType>> = const { Cell::new(None) };
    static CASTS: RefCell<Vec<CachedCast>> = const { RefCell::new(Vec::new()) };
}

/// A parameter's cast made inside the current outermost scope.
struct CachedCast {
    param: Var,
    version: u64,
    grad: bool,
    cast: Var,
}

/// The dtype that [`autocast`] has put in force on this thread, if any.
pub fn autocast_dtype() -> Option<DType> {
    AUTOCAST.with(Cell::get)
}

/// Runs `body` with automatic mixed precision in `dtype` (`F16` or `BF16`) on this
/// thread, restoring the previous setting afterwards (also when `body` panics). Any
/// other dtype is an error and `body` does not run.
pub fn autocast<R>(dtype: DType, body: impl FnOnce() -> R) -> Result<R> {
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return Err(Error::dtype(
            "autocast",
            format!("mixed precision runs in f16 or bf16, not {dtype} (use autocast_off to turn it off)"),
        ));
    }
    Ok(with_setting(Some(dtype), body))
}

/// Runs `body` with automatic mixed precision off on this thread (inside an
/// [`autocast`] scope: the parts that must stay in full precision).
pub fn autocast_off<R>(body: impl FnOnce() -> R) -> R {
    with_setting(None, body)
}

fn with_setting<R>(setting: Option<DType>, body: impl FnOnce() -> R) -> R {
    struct Restore(Option<DType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AUTOCAST.with(|a| a.set(self.0));
            if self.0.is_none() {
                // the outermost scope ended (or autocast_off's body did)
                CASTS.with(|c| c.borrow_mut().clear());
            }
        }
    }
    let _restore = Restore(AUTOCAST.with(|a| a.replace(setting)));
    body()
}

/// `x` as an operand of a half-precision operator: cast to the autocast dtype when a
/// scope is in force and `x` is `f32` or the other half type; unchanged otherwise.
pub(crate) fn lower(x: &Var) -> Var {
    match autocast_dtype() {
        Some(dt) if x.dtype() != dt && matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) => {
            if x.is_leaf() && x.requires_grad() {
                cached_cast(x, dt)
            } else {
                x.cast(dt)
            }
        }
        _ => x.clone(),
    }
}

/// The parameter `p` cast to `dt`, shared within the outermost scope while `p` keeps
/// its value and the gradient mode is the same (a cast made under `no_grad` records
/// no gradient).
fn cached_cast(p: &Var, dt: DType) -> Var {
    let (version, grad) = (p.version(), jit_core::is_grad_enabled());
    CASTS.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(hit) =
            c.iter().find(|e| e.param.same_node(p) && e.version == version && e.grad == grad && e.cast.dtype() == dt)
        {
            return hit.cast.clone();
        }
        let cast = p.cast(dt);
        c.push(CachedCast { param: p.clone(), version, grad, cast: cast.clone() });
        cast
    })
}

/// `x` as an operand of a full-precision operator: cast to `f32` when a scope is in
/// force and `x` is half precision; unchanged otherwise.
pub(crate) fn full(x: &Var) -> Var {
    match autocast_dtype() {
        Some(_) if matches!(x.dtype(), DType::F16 | DType::BF16) => x.cast(DType::F32),
        _ => x.clone(),
    }
}

/// The operands through [`full`] when that changes any of them (a scope is in force
/// and one is half precision): the operator then runs again on these.
pub(crate) fn widened(xs: &[&Var]) -> Option<Vec<Var>> {
    autocast_dtype()?;
    let out: Vec<Var> = xs.iter().map(|x| full(x)).collect();
    out.iter().zip(xs).any(|(o, x)| o.dtype() != x.dtype()).then_some(out)
}

/// The operands through [`lower`] when that changes any of them.
pub(crate) fn lowered(xs: &[&Var]) -> Option<Vec<Var>> {
    autocast_dtype()?;
    let out: Vec<Var> = xs.iter().map(|x| lower(x)).collect();
    out.iter().zip(xs).any(|(o, x)| o.dtype() != x.dtype()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_restore_and_refuse_other_dtypes() {
        assert_eq!(autocast_dtype(), None);
        let inner = autocast(DType::F16, || {
            let a = autocast_dtype();
            let b = autocast(DType::BF16, autocast_dtype).unwrap();
            let c = autocast_off(autocast_dtype);
            (a, b, c, autocast_dtype())
        })
        .unwrap();
        assert_eq!(inner, (Some(DType::F16), Some(DType::BF16), None, Some(DType::F16)));
        assert_eq!(autocast_dtype(), None);
        let err = autocast(DType::F64, || unreachable!()).unwrap_err().to_string();
        assert!(err.contains("autocast") && err.contains("f64"), "{err}");
        // restored after a panic inside the scope
        let r = std::panic::catch_unwind(|| autocast(DType::F16, || panic!("inside")));
        assert!(r.is_err());
        assert_eq!(autocast_dtype(), None);
    }

    #[test]
    fn parameters_are_cast_once_per_scope_and_value() {
        let p = Var::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap().requires_grad_(true).unwrap();
        let x = Var::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
        let (a, b, c, d, e) = autocast(DType::F16, || {
            let a = lower(&p);
            let b = lower(&p);
            let c = jit_core::no_grad(|| lower(&p));
            let d = autocast(DType::BF16, || lower(&p)).unwrap();
            p.assign(&Var::from_vec(vec![4.0f32, 5.0, 6.0], &[3]).unwrap()).unwrap();
            let e = lower(&p);
            (a, b, c, d, e)
        })
        .unwrap();
        assert!(a.same_node(&b), "the same parameter, value and mode: one cast");
        assert!(!a.same_node(&c), "no_grad makes its own cast");
        assert_eq!(d.dtype(), DType::BF16);
        assert!(!a.same_node(&e), "a new value misses");
        assert_eq!(e.to_vec_f64().unwrap(), [4.0, 5.0, 6.0]);
        assert!(!x.is_leaf() || !x.requires_grad(), "x is data");
        let (f, g) = autocast(DType::F16, || (lower(&x), lower(&x))).unwrap();
        assert!(!f.same_node(&g), "data is not cached");
        let h = autocast(DType::F16, || lower(&p)).unwrap();
        assert!(!h.same_node(&e), "the cache ends with the outermost scope");
        assert_eq!(CASTS.with(|c| c.borrow().len()), 0);
    }

    #[test]
    fn casts_follow_the_lists() {
        let x = Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let h = x.cast(DType::F16);
        let d = x.cast(DType::F64);
        assert_eq!(lower(&x).dtype(), DType::F32, "no scope, no cast");
        autocast(DType::BF16, || {
            assert_eq!(lower(&x).dtype(), DType::BF16);
            assert_eq!(lower(&h).dtype(), DType::BF16);
            assert_eq!(lower(&d).dtype(), DType::F64, "f64 is never cast");
            assert_eq!(full(&h).dtype(), DType::F32);
            assert_eq!(full(&x).dtype(), DType::F32);
            assert_eq!(full(&d).dtype(), DType::F64);
            assert_eq!(widened(&[&x, &d]).map(|v| v.len()), None, "nothing to widen");
            let v = widened(&[&h, &x]).expect("h widens");
            assert_eq!((v[0].dtype(), v[1].dtype()), (DType::F32, DType::F32));
            assert!(lowered(&[&x]).is_some());
        })
        .unwrap();
    }
}
