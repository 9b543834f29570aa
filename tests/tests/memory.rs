//! Memory ownership: realised nodes drop their inputs, intermediates are freed after
//! their last consumer, and long chains neither leak nor overflow the stack.
//!
//! One test per binary: the live-buffer counter is process-wide.

use jit_ops::prelude::*;

#[test]
fn memory_stays_bounded() {
    let base = jit_core::live_buffers();

    // 1000 steps of x = x * 0.5 + 1; x.sync(): a bounded number of live buffers.
    let mut x = Var::ones(&[64], DType::F32);
    let mut peak = 0;
    for step in 0..1000 {
        x = x * 0.5 + 1.0;
        x.sync().unwrap();
        let live = jit_core::live_buffers() - base;
        peak = peak.max(live);
        assert!(live <= 2, "step {step}: {live} live buffers");
    }
    // the fixed point of x -> x/2 + 1 is 2
    assert!(x.to_vec::<f32>().unwrap().iter().all(|&v| (v - 2.0).abs() < 1e-6));
    assert!(peak >= 1);
    drop(x);
    assert_eq!(jit_core::live_buffers(), base, "everything freed after the last handle is dropped");

    // A long unrealised chain: intermediates of one realisation are freed as it goes.
    let mut y = Var::ones(&[1000], DType::F32);
    for _ in 0..500 {
        y = y * 1.001;
    }
    y.sync().unwrap();
    assert_eq!(jit_core::live_buffers() - base, 1, "only the result stays alive");
    assert!(y.inputs().is_empty());
    drop(y);

    // Dropping a very deep unrealised graph does not overflow the stack.
    let mut z = Var::ones(&[1], DType::F32);
    for _ in 0..200_000 {
        z = z + 1.0;
    }
    drop(z);
    assert_eq!(jit_core::live_buffers(), base);

    // Realising a deep chain does not recurse either.
    let mut w = Var::zeros(&[2], DType::F64);
    for _ in 0..20_000 {
        w = w + 1.0;
    }
    assert_eq!(w.to_vec::<f64>().unwrap(), vec![20_000.0, 20_000.0]);
    drop(w);

    // A value used by two consumers is computed once and freed when both are done.
    let a = Var::arange(100).cast(DType::F32);
    let s = (&a * 2.0).sum_all().unwrap();
    let m = (&a * 3.0).max(&[0], false).unwrap();
    realize(&[s.clone(), m.clone()]).unwrap();
    assert_eq!(jit_core::live_buffers() - base, 2, "only the two results stay alive");
    assert_eq!(s.item::<f32>().unwrap(), 9900.0);
    assert_eq!(m.item::<f32>().unwrap(), 297.0);
    drop((a, s, m));
    assert_eq!(jit_core::live_buffers(), base);

    // Autograd keeps only what the gradient rules read. `h + 1` reads nothing, so the
    // realised h is freed once the user drops it (backward recomputes exp(x) from
    // x, which exp's rule keeps); `h * h` reads h, so it stays alive.
    let x = Var::from_vec(vec![0.5f32; 4096], &[4096]).unwrap().requires_grad_(true).unwrap();
    let h = x.exp();
    h.sync().unwrap();
    let y = (&h + 1.0).sum_all().unwrap();
    y.sync().unwrap();
    drop(h);
    assert_eq!(jit_core::live_buffers() - base, 2, "x and y only: h is not kept for backward");
    let g = jit_core::grad(&y, std::slice::from_ref(&x)).unwrap();
    assert!(g[0].to_vec::<f32>().unwrap().iter().all(|&v| (v - 0.5f32.exp()).abs() < 1e-6));
    drop(g);
    let h = x.exp();
    h.sync().unwrap();
    let z = (&h * &h).sum_all().unwrap();
    z.sync().unwrap();
    drop(h);
    assert_eq!(jit_core::live_buffers() - base, 4, "x, y, z and h: mul's rule reads h");
    drop((y, z));
    assert_eq!(jit_core::live_buffers() - base, 1, "the records went with the values");
    drop(x);
    assert_eq!(jit_core::live_buffers(), base);

    // A deep recorded graph and its records are dropped without recursion.
    let p = Var::ones(&[1], DType::F32).requires_grad_(true).unwrap();
    let mut q = p.clone();
    for _ in 0..200_000 {
        q = &q * 1.0 + 1.0;
    }
    drop((p, q));
    assert_eq!(jit_core::live_buffers(), base);
}
