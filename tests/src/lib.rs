//! Helpers for the integration tests: a seeded random generator that reports its
//! seed, a plain-Rust n-d array used as an independent oracle, and closeness checks.

#![warn(missing_docs)]

pub mod cuda_emu;
pub mod fake_device;
pub mod gradcheck;
pub mod graphgen;
pub mod workloads;

use jit_core::{DType, HostBuffer, Var};
use std::time::{SystemTime, UNIX_EPOCH};

/// A small deterministic generator (splitmix64).
pub struct Rng {
    state: u64,
    /// The seed it started from, printed on failure.
    pub seed: u64,
}

impl Rng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed, seed }
    }

    /// A fresh seed from `JIT_TEST_SEED` or the clock; the seed is printed so that a
    /// failing run can be reproduced with `JIT_TEST_SEED=<seed>`.
    pub fn fresh(test: &str) -> Rng {
        let seed = std::env::var("JIT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
            t ^ (test.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ hash(test)
        });
        println!("{test}: seed {seed} (rerun with JIT_TEST_SEED={seed})");
        Rng::new(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Integer in `lo..=hi`.
    pub fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    /// Index in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A random shape of rank `0..=max_rank` with sizes drawn from awkward values
    /// (1, 2, 3, 5, 7, 9, 13, 17, and 0 when `allow_empty`).
    pub fn shape(&mut self, max_rank: usize, allow_empty: bool) -> Vec<usize> {
        let rank = self.below(max_rank + 1);
        (0..rank).map(|_| self.dim_size(allow_empty)).collect()
    }

    /// One awkward dim size.
    pub fn dim_size(&mut self, allow_empty: bool) -> usize {
        const SIZES: [usize; 8] = [1, 2, 3, 5, 7, 9, 13, 17];
        if allow_empty && self.chance(0.05) {
            0
        } else {
            SIZES[self.below(SIZES.len())]
        }
    }

    /// A random array with values in `[lo, hi)`.
    pub fn nd(&mut self, shape: &[usize], lo: f64, hi: f64) -> Nd {
        Nd::from_fn(shape, |_| self.uniform(lo, hi))
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// A plain row-major n-d array of f64: the independent computation the tests
/// compare against.
#[derive(Debug, Clone, PartialEq)]
pub struct Nd {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f64>,
}

impl Nd {
    /// Builds an array by calling `f` on every multi-index, in row-major order.
    pub fn from_fn(shape: &[usize], mut f: impl FnMut(&[usize]) -> f64) -> Nd {
        let n: usize = shape.iter().product();
        let mut data = Vec::with_capacity(n);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..n {
            data.push(f(&idx));
            for d in (0..shape.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Nd { shape: shape.to_vec(), data }
    }

    /// Element at a multi-index.
    pub fn at(&self, idx: &[usize]) -> f64 {
        let mut flat = 0;
        for (d, &i) in idx.iter().enumerate() {
            assert!(i < self.shape[d], "index {idx:?} out of range for {:?}", self.shape);
            flat = flat * self.shape[d] + i;
        }
        self.data[flat]
    }

    /// Element at a NumPy-broadcast position of a larger `out_shape` index.
    pub fn at_broadcast(&self, idx: &[usize]) -> f64 {
        let lead = idx.len() - self.shape.len();
        let own: Vec<usize> =
            self.shape.iter().enumerate().map(|(d, &n)| if n == 1 { 0 } else { idx[lead + d] }).collect();
        self.at(&own)
    }

    /// Element-wise map.
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Nd {
        Nd { shape: self.shape.clone(), data: self.data.iter().map(|&v| f(v)).collect() }
    }

    /// The array as a `Var` of `dtype`.
    pub fn var(&self, dtype: DType) -> Var {
        Var::from_host(HostBuffer::from_f64s(dtype, self.data.iter().copied()), &self.shape).expect("shape matches")
    }

    /// The values rounded to `dtype` (what a `Var` of that dtype holds).
    pub fn rounded(&self, dtype: DType) -> Nd {
        self.map(|v| dtype.round_f64(v))
    }
}

/// The environment's backend (`JIT_BACKEND`: CUDA on the emulated device, say) and
/// every host backend, each fused and unfused: the settings an op test compares
/// against its plain loops.
pub fn every_backend() -> Vec<jit_core::Flags> {
    use jit_core::Backend;
    let mut backends = vec![jit_core::flags().backend];
    for b in [Backend::Cpu, Backend::Interpreter, Backend::Reference] {
        if !backends.contains(&b) {
            backends.push(b);
        }
    }
    backends
        .into_iter()
        .flat_map(|backend| [true, false].map(|fusion| jit_core::Flags { backend, fusion, dump: false }))
        .collect()
}

/// Asserts that `got` has `want`'s shape and values within `rtol`/`atol`
/// (`|g - w| <= atol + rtol * |w|`; NaN matches NaN, infinities must be equal).
pub fn assert_close(got: &Var, want: &Nd, rtol: f64, atol: f64, ctx: &str) {
    assert_eq!(got.shape(), &want.shape[..], "{ctx}: shape");
    let g = got.to_vec_f64().unwrap_or_else(|e| panic!("{ctx}: realisation failed: {e}"));
    assert_values_close(&g, &want.data, rtol, atol, ctx);
}

/// Slice form of [`assert_close`].
pub fn assert_values_close(got: &[f64], want: &[f64], rtol: f64, atol: f64, ctx: &str) {
    assert_eq!(got.len(), want.len(), "{ctx}: number of elements");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        assert!(ok, "{ctx}: element {k}: got {g:e}, want {w:e} (rtol {rtol:e}, atol {atol:e})");
    }
}

/// The f64 tolerance appropriate to values stored in `dtype` after one rounding.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 2e-6,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 0.0,
    }
}

/// The absolute tolerance for values stored in `dtype`: half the spacing of its
/// subnormal numbers (where relative precision runs out).
pub fn atol(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 6e-8,
        DType::BF16 => 1e-40,
        DType::F32 => 1e-45,
        _ => 0.0,
    }
}

/// Multi-indices of a shape in row-major order.
pub fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let _ = Nd::from_fn(shape, |i| {
        out.push(i.to_vec());
        0.0
    });
    out
}

/// The error function in f64, independent of the framework's implementation: the
/// Maclaurin series for |x| < 3, the continued fraction of erfc beyond (both accurate
/// to about 1e-15).
pub fn erf_ref(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let (mut sum, mut term) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        let z = x.abs();
        let mut f = 0.0;
        for k in (1..100).rev() {
            f = (k as f64 / 2.0) / (z + f);
        }
        x.signum() * (1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f))
    }
}

/// splitmix64 (the fixture weight formula's mixer).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The counter-based values of `scripts/make_style_fixtures.py` for parameter
/// `name` of `shape`, bit for bit: `z = splitmix(fnv1a(name) ^ splitmix(i))`,
/// `u = z >> 40`, `f32((2u - 2^24) / 2^24 * bound)` with `bound = sqrt(6 / fan_in)`
/// for weights and 0.1 for biases.
pub fn formula_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let h = name.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3));
    let bound = if shape.len() >= 2 { (6.0 / shape[1..].iter().product::<usize>() as f64).sqrt() } else { 0.1 };
    let n: usize = shape.iter().product();
    (0..n as u64)
        .map(|i| {
            let u = (splitmix(h ^ splitmix(i)) >> 40) as i64;
            ((2 * u - (1 << 24)) as f64 / (1u64 << 24) as f64 * bound) as f32
        })
        .collect()
}

/// Fills every parameter and buffer of `m` with [`formula_values`] of its name.
pub fn formula_init(m: &(dyn jit_nn::Module + 'static)) {
    use jit_nn::ModuleExt;
    jit_core::no_grad(|| {
        for (name, v) in m.state_dict() {
            let data = formula_values(&name, v.shape());
            v.assign(&Var::from_vec(data, v.shape()).expect("shape")).expect("assign");
        }
    });
}

/// The path of the committed fixture `name`: under `$JIT_FIXTURES_DIR` when set (a
/// GPU machine runs the test binaries away from the source tree they were built
/// in), else `tests/fixtures` of this checkout.
pub fn fixture(name: &str) -> std::path::PathBuf {
    match std::env::var_os("JIT_FIXTURES_DIR") {
        Some(dir) => std::path::PathBuf::from(dir).join(name),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name),
    }
}
