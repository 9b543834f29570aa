//! Accuracy of the compiled CPU backend's transcendental functions against f64 over
//! their useful ranges: within 1e-6 relative (or 1e-7 absolute near zeros).

use integration_tests::{assert_values_close, erf_ref};
use jit_core::{with_flags, Backend, Flags};
use jit_ops::prelude::*;

#[test]
fn transcendentals_are_accurate_in_f32() {
    let f = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    type F = fn(f64) -> f64;
    let cases: [(&str, F, f64, f64); 6] = [
        ("exp", f64::exp, -87.0, 88.0),
        ("log", f64::ln, 1e-30, 1e30),
        ("tanh", f64::tanh, -20.0, 20.0),
        ("erf", erf_ref, -6.0, 6.0),
        ("sin", f64::sin, -100.0, 100.0),
        ("cos", f64::cos, -100.0, 100.0),
    ];
    for (name, g, lo, hi) in cases {
        let n = 20_001;
        let xs: Vec<f32> = (0..n)
            .map(|k| {
                let t = k as f64 / (n - 1) as f64;
                let v = if name == "log" { (lo.ln() + t * (hi.ln() - lo.ln())).exp() } else { lo + t * (hi - lo) };
                v as f32
            })
            .collect();
        let want: Vec<f64> = xs.iter().map(|&x| g(f64::from(x))).collect();
        let x = Var::from_vec(xs, &[n]).unwrap();
        let got = with_flags(f, || {
            let y = match name {
                "exp" => x.exp(),
                "log" => x.log(),
                "tanh" => x.tanh(),
                "erf" => x.erf(),
                "sin" => x.sin(),
                _ => x.cos(),
            };
            y.to_vec_f64().unwrap()
        });
        assert_values_close(&got, &want, 1e-6, 1e-7, name);
    }
}
