//! The data-dependent indexing ops (`gather`, `index_select`, `take_along_dim`,
//! `scatter_add`, `scatter_reduce`, `index_add`, `masked_fill`, `one_hot`,
//! `embedding`) against plain Rust loops, on random awkward shapes and every
//! dtype, on each backend fused and unfused; their gradients against finite
//! differences; and the plan: one load per index element, whatever the size of
//! the indexed dim.

use integration_tests::gradcheck::check;
use integration_tests::{assert_values_close, every_backend, Nd, Rng};
use jit_core::{Backend, Flags};
use jit_ops::prelude::*;

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

fn flat(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(strides(shape)).map(|(i, s)| i * s).sum()
}

/// Row-major multi-index of flat position `p`.
fn unflat(mut p: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = p % shape[d];
        p /= shape[d];
    }
    idx
}

/// `torch.gather` in plain Rust; out-of-range indices read 0.
fn gather_ref(x: &[f64], xs: &[usize], dim: usize, index: &[i64], is: &[usize]) -> Vec<f64> {
    (0..index.len())
        .map(|p| {
            let mut i = unflat(p, is);
            let j = index[p];
            if j < 0 || j as usize >= xs[dim] {
                return 0.0;
            }
            i[dim] = j as usize;
            x[flat(&i, xs)]
        })
        .collect()
}

/// Scatter of `src` (index-shaped) into `out` with `f`, skipping out-of-range
/// indices; returns how many sources reached each position.
fn scatter_ref(
    out: &mut [f64],
    os: &[usize],
    dim: usize,
    index: &[i64],
    is: &[usize],
    src: &[f64],
    f: impl Fn(f64, f64) -> f64,
) -> Vec<usize> {
    let mut count = vec![0; out.len()];
    for (p, &v) in src.iter().enumerate().take(index.len()) {
        let mut i = unflat(p, is);
        let j = index[p];
        if j < 0 || j as usize >= os[dim] {
            continue;
        }
        i[dim] = j as usize;
        let t = flat(&i, os);
        out[t] = f(out[t], v);
        count[t] += 1;
    }
    count
}

/// A random shape of rank 1..=4 with awkward sizes (no empty dims).
fn shape(rng: &mut Rng) -> Vec<usize> {
    (0..1 + rng.below(4)).map(|_| rng.dim_size(false)).collect()
}

/// An index shape for `xs` along `dim`: at most `xs` outside `dim`, any length
/// along it (zero included).
fn index_shape(rng: &mut Rng, xs: &[usize], dim: usize) -> Vec<usize> {
    xs.iter().enumerate().map(|(d, &n)| if d == dim { rng.below(2 * n + 2) } else { 1 + rng.below(n) }).collect()
}

/// Random indices into a dim of size `n`, a few of them out of range when `wild`.
fn indices(rng: &mut Rng, len: usize, n: usize, wild: bool) -> Vec<i64> {
    (0..len)
        .map(|_| if wild && rng.chance(0.1) { rng.int(-3, n as i64 + 3) } else { rng.int(0, n as i64 - 1) })
        .collect()
}

fn data(rng: &mut Rng, shape: &[usize], dtype: DType) -> Nd {
    if dtype.is_float() {
        rng.nd(shape, -4.0, 4.0).rounded(dtype)
    } else if dtype == DType::Bool {
        Nd::from_fn(shape, |_| f64::from(u8::from(rng.chance(0.5))))
    } else {
        Nd::from_fn(shape, |_| rng.int(0, 100) as f64)
    }
}

fn index_var(index: &[i64], shape: &[usize], dtype: DType) -> Var {
    Var::from_vec(index.to_vec(), shape).unwrap().cast(dtype)
}

#[test]
fn gather_matches_plain_indexing_on_every_dtype_and_backend() {
    let mut rng = Rng::fresh("gather_matches_plain_indexing_on_every_dtype_and_backend");
    for round in 0..24 {
        let xs = shape(&mut rng);
        let dim = rng.below(xs.len());
        let is = index_shape(&mut rng, &xs, dim);
        let dtype = [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::I64, DType::U8, DType::Bool]
            [round % 8];
        let index_dtype = [DType::I64, DType::I32][rng.below(2)];
        let x = data(&mut rng, &xs, dtype);
        let index = indices(&mut rng, is.iter().product(), xs[dim], true);
        let want = gather_ref(&x.data, &xs, dim, &index, &is);
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let got = x.var(dtype).gather(dim as isize - xs.len() as isize, &index_var(&index, &is, index_dtype));
                let got = got.unwrap();
                assert_eq!(got.dtype(), dtype);
                let ctx = format!("gather {xs:?} dim {dim} index {is:?} {dtype} {flags:?} (seed {})", rng.seed);
                assert_values_close(&got.to_vec_f64().unwrap(), &want, 0.0, 0.0, &ctx);
            });
        }
    }
}

/// The gather fused with what surrounds it: a computed input (stored first), a
/// computed index, a reduction over the gathered values and a zero pad around
/// them (a guarded read).
#[test]
fn gather_fuses_with_computed_operands_reductions_and_pads() {
    let mut rng = Rng::fresh("gather_fuses_with_computed_operands_reductions_and_pads");
    for _ in 0..8 {
        let xs = vec![rng.dim_size(false), 1 + rng.dim_size(false)];
        let is = vec![xs[0], 1 + rng.below(9)];
        let x = rng.nd(&xs, -2.0, 2.0).rounded(DType::F32);
        let raw = indices(&mut rng, is.iter().product(), xs[1], false);
        // index = (raw + 1) % n, computed in the kernel
        let index: Vec<i64> = raw.iter().map(|&j| (j + 1) % xs[1] as i64).collect();
        let y: Vec<f64> = x.data.iter().map(|v| v * 2.0 + 1.0).collect();
        let g = gather_ref(&y, &xs, 1, &index, &is);
        let sums: Vec<f64> = g.chunks(is[1]).map(|r| r.iter().sum::<f64>()).collect();
        let padded =
            Nd::from_fn(
                &[is[0], is[1] + 2],
                |i| if i[1] == 0 || i[1] > is[1] { 0.0 } else { g[i[0] * is[1] + i[1] - 1] },
            );
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let xv = x.var(DType::F32).try_mul(2.0).unwrap().try_add(1.0).unwrap();
                let iv = Var::from_vec(raw.clone(), &is).unwrap().try_add(1).unwrap().remainder(xs[1] as i64).unwrap();
                let gv = xv.gather(1, &iv).unwrap();
                let ctx = format!("{xs:?} {is:?} {flags:?} (seed {})", rng.seed);
                let s = gv.sum(&[1], false).unwrap();
                assert_values_close(&s.to_vec_f64().unwrap(), &sums, 1e-5, 1e-5, &format!("sum: {ctx}"));
                let p = gv.pad(&[1, 1], PadMode::Constant(0.0)).unwrap();
                assert_values_close(&p.to_vec_f64().unwrap(), &padded.data, 1e-6, 0.0, &format!("pad: {ctx}"));
            });
        }
    }
}

#[test]
fn index_select_and_take_along_dim_match_plain_indexing() {
    let mut rng = Rng::fresh("index_select_and_take_along_dim_match_plain_indexing");
    for _ in 0..12 {
        let xs = shape(&mut rng);
        let dim = rng.below(xs.len());
        let k = rng.below(7);
        let x = data(&mut rng, &xs, DType::F32);
        let sel = indices(&mut rng, k, xs[dim], false);
        let mut os = xs.clone();
        os[dim] = k;
        let want = Nd::from_fn(&os, |i| {
            let mut s = i.to_vec();
            s[dim] = sel[i[dim]] as usize;
            x.at(&s)
        });
        // take_along_dim with an index of size 1 outside `dim` (broadcast)
        let mut ts: Vec<usize> = vec![1; xs.len()];
        ts[dim] = k;
        let want_take = Nd::from_fn(&os, |i| {
            let mut s = i.to_vec();
            s[dim] = sel[i[dim]] as usize;
            x.at(&s)
        });
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx = format!("{xs:?} dim {dim} {sel:?} {flags:?} (seed {})", rng.seed);
                let got = x.var(DType::F32).index_select(dim as isize, &Var::from_vec(sel.clone(), &[k]).unwrap());
                assert_values_close(&got.unwrap().to_vec_f64().unwrap(), &want.data, 0.0, 0.0, &ctx);
                let ti = Var::from_vec(sel.clone(), &ts).unwrap();
                let got = x.var(DType::F32).take_along_dim(&ti, dim as isize).unwrap();
                assert_eq!(got.shape(), &os[..], "take_along_dim shape: {ctx}");
                assert_values_close(&got.to_vec_f64().unwrap(), &want_take.data, 0.0, 0.0, &ctx);
            });
        }
    }
}

#[test]
fn scatter_reduce_matches_plain_loops_in_every_mode() {
    let mut rng = Rng::fresh("scatter_reduce_matches_plain_loops_in_every_mode");
    let modes = [
        (ScatterReduce::Sum, "sum"),
        (ScatterReduce::Prod, "prod"),
        (ScatterReduce::Mean, "mean"),
        (ScatterReduce::Amax, "amax"),
        (ScatterReduce::Amin, "amin"),
    ];
    for round in 0..30 {
        let os = shape(&mut rng);
        let dim = rng.below(os.len());
        let is = index_shape(&mut rng, &os, dim);
        // a source at least the index's shape
        let ss: Vec<usize> = is.iter().map(|&n| n + rng.below(2)).collect();
        let (mode, name) = modes[round % 5];
        let include_self = rng.chance(0.5);
        let dtype = [DType::F32, DType::F64, DType::I64, DType::I32][rng.below(4)];
        let x = data(&mut rng, &os, dtype);
        let src_full = if mode == ScatterReduce::Prod && dtype.is_float() {
            rng.nd(&ss, 0.5, 1.5).rounded(dtype)
        } else if mode == ScatterReduce::Prod {
            Nd::from_fn(&ss, |_| rng.int(-2, 2) as f64)
        } else {
            data(&mut rng, &ss, dtype)
        };
        // the index-shaped corner of the source, row-major
        let src: Vec<f64> = (0..is.iter().product()).map(|p| src_full.at(&unflat(p, &is))).collect();
        let index = indices(&mut rng, is.iter().product(), os[dim], true);
        let comb = |a: f64, b: f64| match mode {
            ScatterReduce::Sum | ScatterReduce::Mean => a + b,
            ScatterReduce::Prod => a * b,
            ScatterReduce::Amax => a.max(b),
            ScatterReduce::Amin => a.min(b),
        };
        let mut out = if include_self {
            x.data.clone()
        } else {
            let id = match mode {
                ScatterReduce::Sum | ScatterReduce::Mean => 0.0,
                ScatterReduce::Prod => 1.0,
                ScatterReduce::Amax => f64::NEG_INFINITY,
                ScatterReduce::Amin => f64::INFINITY,
            };
            vec![id; x.data.len()]
        };
        let count = scatter_ref(&mut out, &os, dim, &index, &is, &src, comb);
        let want: Vec<f64> = out
            .iter()
            .zip(&count)
            .zip(&x.data)
            .map(|((&v, &c), &orig)| {
                if c == 0 {
                    return orig;
                }
                if mode != ScatterReduce::Mean {
                    return v;
                }
                let n = (c + usize::from(include_self)) as f64;
                if dtype.is_float() {
                    v / n
                } else {
                    (v / n).floor()
                }
            })
            .collect();
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx = format!(
                    "{name} include_self {include_self} {os:?} dim {dim} index {is:?} src {ss:?} {dtype} {flags:?} (seed {})",
                    rng.seed
                );
                let iv = Var::from_vec(index.clone(), &is).unwrap();
                let got = x.var(dtype).scatter_reduce(dim as isize, &iv, &src_full.var(dtype), mode, include_self);
                let got = got.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(got.shape(), &os[..]);
                // float sums are combined in another order than the f64 loop's; the
                // absolute part covers cancellation (values up to 4, a few dozen
                // of them per position)
                let (rtol, atol) = match dtype {
                    DType::F32 => (1e-5, 1e-4),
                    DType::F64 => (1e-12, 1e-12),
                    _ => (0.0, 0.0),
                };
                assert_values_close(&got.to_vec_f64().unwrap(), &want, rtol, atol, &ctx);
            });
        }
    }
}

#[test]
fn scatter_add_index_add_masked_fill_and_one_hot() {
    let mut rng = Rng::fresh("scatter_add_index_add_masked_fill_and_one_hot");
    // the documentation's example of torch.scatter_add
    let src = Var::ones(&[2, 5], DType::F32);
    let index = Var::from_vec(vec![0i64, 1, 2, 0, 0, 0, 1, 2, 2, 2], &[2, 5]).unwrap();
    let got = Var::zeros(&[3, 5], DType::F32).scatter_add(0, &index, &src).unwrap();
    let want = [2.0, 0.0, 0.0, 1.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0];
    assert_eq!(got.to_vec::<f32>().unwrap(), want.map(|v| v as f32).to_vec());
    for _ in 0..10 {
        let xs = shape(&mut rng);
        let dim = rng.below(xs.len());
        let k = rng.below(2 * xs[dim] + 1);
        let mut ss = xs.clone();
        ss[dim] = k;
        let x = rng.nd(&xs, -1.0, 1.0).rounded(DType::F64);
        let source = rng.nd(&ss, -1.0, 1.0).rounded(DType::F64);
        let sel = indices(&mut rng, k, xs[dim], false);
        let alpha = rng.uniform(-2.0, 2.0);
        let mut want = x.data.clone();
        for (p, &v) in source.data.iter().enumerate() {
            let mut i = unflat(p, &ss);
            i[dim] = sel[i[dim]] as usize;
            want[flat(&i, &xs)] += alpha * v;
        }
        let mask = Nd::from_fn(&xs[xs.len() - 1..], |_| f64::from(u8::from(rng.chance(0.5))));
        let filled: Vec<f64> =
            (0..x.data.len()).map(|p| if mask.data[p % mask.data.len()] != 0.0 { -7.5 } else { x.data[p] }).collect();
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx = format!("{xs:?} dim {dim} {sel:?} {flags:?} (seed {})", rng.seed);
                let iv = Var::from_vec(sel.clone(), &[k]).unwrap();
                let got = x.var(DType::F64).index_add(dim as isize, &iv, &source.var(DType::F64), alpha).unwrap();
                assert_values_close(&got.to_vec_f64().unwrap(), &want, 1e-12, 1e-12, &format!("index_add {ctx}"));
                let m = mask.var(DType::Bool);
                let got = x.var(DType::F64).masked_fill(&m, -7.5).unwrap();
                assert_values_close(&got.to_vec_f64().unwrap(), &filled, 0.0, 0.0, &format!("masked_fill {ctx}"));
            });
        }
    }
    let classes = Var::from_vec(vec![2i64, 0, 4, -1, 1, 9], &[2, 3]).unwrap();
    let hot = classes.one_hot(5).unwrap();
    assert_eq!(hot.shape(), &[2, 3, 5]);
    assert_eq!(hot.dtype(), DType::I64);
    let want: Vec<i64> = [2i64, 0, 4, -1, 1, 9].iter().flat_map(|&c| (0..5).map(move |k| i64::from(k == c))).collect();
    assert_eq!(hot.to_vec::<i64>().unwrap(), want, "out-of-range classes give rows of zeros");
}

#[test]
fn embedding_picks_rows_and_skips_the_padding_gradient() {
    let mut rng = Rng::fresh("embedding_picks_rows_and_skips_the_padding_gradient");
    let (num, dim) = (11, 5);
    let w = rng.nd(&[num, dim], -1.0, 1.0).rounded(DType::F32);
    let ids: Vec<i64> = (0..12).map(|_| rng.int(0, num as i64 - 1)).chain([3, 3]).collect();
    let iv = Var::from_vec(ids.clone(), &[2, 7]).unwrap();
    for flags in every_backend() {
        jit_core::with_flags(flags, || {
            let wv = w.var(DType::F32).requires_grad_(true).unwrap();
            let out = embedding(&wv, &iv, Some(3)).unwrap();
            assert_eq!(out.shape(), &[2, 7, dim]);
            let want: Vec<f64> =
                ids.iter().flat_map(|&i| w.data[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
            assert_values_close(&out.to_vec_f64().unwrap(), &want, 0.0, 0.0, &format!("{flags:?}"));
            let g = jit_core::grad(&out.sum(&[], false).unwrap(), std::slice::from_ref(&wv)).unwrap();
            let g = g[0].to_vec_f64().unwrap();
            for r in 0..num {
                let uses = if r == 3 { 0 } else { ids.iter().filter(|&&i| i == r as i64).count() };
                for c in 0..dim {
                    assert_eq!(g[r * dim + c], uses as f64, "row {r} column {c} {flags:?}");
                }
            }
        });
    }
    let err = embedding(&w.var(DType::F32), &iv, Some(num)).unwrap_err().to_string();
    assert!(err.contains("padding_idx 11 is outside the 11 rows"), "{err}");
}

#[test]
fn gradients_of_gathers_and_scatters_match_finite_differences() {
    let mut rng = Rng::fresh("gradients_of_gathers_and_scatters_match_finite_differences");
    let xs = [3, 4, 5];
    let x = rng.nd(&xs, -1.0, 1.0);
    let is = [3, 2, 5];
    // repeats and an out-of-range index along dim 1
    let gidx: Vec<i64> = (0..30).map(|k| if k == 7 { 9 } else { rng.int(0, 3) }).collect();
    check("gather dim 1", &mut rng, std::slice::from_ref(&x), |v| {
        v[0].gather(1, &Var::from_vec(gidx.clone(), &is).unwrap())
    });
    let src = rng.nd(&is, -1.0, 1.0);
    check("scatter_add (self and source)", &mut rng, &[x.clone(), src.clone()], |v| {
        v[0].scatter_add(1, &Var::from_vec(gidx.clone(), &is).unwrap(), &v[1])
    });
    for (mode, include_self) in [
        (ScatterReduce::Sum, false),
        (ScatterReduce::Mean, true),
        (ScatterReduce::Mean, false),
        (ScatterReduce::Amax, true),
        (ScatterReduce::Amin, false),
        (ScatterReduce::Prod, true),
    ] {
        // distinct magnitudes keep max/min away from ties (finite differences cannot
        // follow a kink), and away from zero for prod
        let xp = Nd { shape: xs.to_vec(), data: (0..60).map(|k| 0.5 + k as f64 / 64.0).collect() };
        let sp = Nd { shape: is.to_vec(), data: (0..30).map(|k| 0.52 + (k * 17 % 30) as f64 / 31.0).collect() };
        check(&format!("scatter_reduce {mode:?} include_self {include_self}"), &mut rng, &[xp, sp], |v| {
            v[0].scatter_reduce(1, &Var::from_vec(gidx.clone(), &is).unwrap(), &v[1], mode, include_self)
        });
    }
    let sel = vec![2i64, 0, 2];
    let source = rng.nd(&[3, 3, 5], -1.0, 1.0);
    check("index_add", &mut rng, &[x.clone(), source], |v| {
        v[0].index_add(1, &Var::from_vec(sel.clone(), &[3]).unwrap(), &v[1], -1.5)
    });
    // second order: the gradient of a gather is a scatter, whose gradient is a gather
    jit_core::with_flags(Flags { backend: Backend::Reference, fusion: false, dump: false }, || {
        let xv = x.var(DType::F64).requires_grad_(true).unwrap();
        let iv = Var::from_vec(gidx.clone(), &is).unwrap();
        let y = xv.gather(1, &iv).unwrap().pow(2.0).unwrap().sum(&[], false).unwrap();
        let opts = jit_core::GradOptions { seed: None, create_graph: true };
        let g = jit_core::grad_with(&y, std::slice::from_ref(&xv), opts).unwrap();
        let gg = jit_core::grad(&g[0].sum(&[], false).unwrap(), std::slice::from_ref(&xv)).unwrap();
        // d/dx sum_j 2 x_j (count_j) = 2 * count per element
        let mut count = vec![0.0; 60];
        scatter_ref(&mut count, &xs, 1, &gidx, &is, &[1.0; 30], |a, b| a + b);
        let want: Vec<f64> = count.iter().map(|c| 2.0 * c).collect();
        assert_values_close(&gg[0].to_vec_f64().unwrap(), &want, 1e-12, 0.0, "second derivative");
    });
}

/// One load per index element: selecting 3 rows of a 50000-row table plans no
/// reduction over the table (the earlier one-hot lowering compared every index
/// with every row), and a scatter-add of them is one scatter kernel.
#[test]
fn gathers_cost_one_load_per_index_element() {
    let table = Var::randn(&[50_000, 8], DType::F32).unwrap().materialize();
    table.sync().unwrap();
    let rows = table.index_select(0, &Var::from_vec(vec![49_999i64, 0, 17], &[3]).unwrap()).unwrap();
    let kernels = jit_core::planned_kernel_ir(std::slice::from_ref(&rows)).unwrap();
    assert_eq!(kernels.len(), 1, "{kernels:?}");
    assert_eq!(kernels[0].red_rank, 0, "no reduction over the table:\n{}", kernels[0]);
    assert!(kernels[0].to_string().contains("gather in"), "{}", kernels[0]);
    let got = rows.to_vec::<f32>().unwrap();
    let all = table.to_vec::<f32>().unwrap();
    assert_eq!(got[..8], all[49_999 * 8..]);
    assert_eq!(got[8..16], all[..8]);
    let back = Var::zeros(&[50_000, 8], DType::F32)
        .index_add(0, &Var::from_vec(vec![5i64, 5, 7], &[3]).unwrap(), &rows, 1.0)
        .unwrap();
    let kernels = jit_core::planned_kernel_ir(std::slice::from_ref(&back)).unwrap();
    assert_eq!(kernels.iter().filter(|k| k.has_scatter()).count(), 1, "{kernels:?}");
    // planned for the GPU, the scatter loops over the table's columns first, each
    // one a line of its own thread (lines along the last loop index); on the host
    // it keeps the rows' order (lines along the first)
    for (backend, line) in [(Backend::Cuda, "lines along i1"), (Backend::Cpu, "lines along i0")] {
        let flags = Flags { backend, fusion: true, dump: false };
        let kernels = jit_core::with_flags(flags, || jit_core::planned_kernel_ir(std::slice::from_ref(&back)).unwrap());
        let text: Vec<String> = kernels.iter().filter(|k| k.has_scatter()).map(|k| k.to_string()).collect();
        assert!(text.iter().any(|t| t.contains(line)), "{backend:?}: {text:?}");
    }
    assert!(kernels.iter().all(|k| k.red_rank == 0));
    let b = back.to_vec::<f32>().unwrap();
    for c in 0..8 {
        assert_eq!(b[5 * 8 + c], all[49_999 * 8 + c] + all[c]);
        assert_eq!(b[7 * 8 + c], all[17 * 8 + c]);
    }
    for (k, v) in b.iter().enumerate() {
        assert!(*v == 0.0 || k / 8 == 5 || k / 8 == 7, "row {} was written", k / 8);
    }
}

/// A large scatter along dim 0, whose rows may meet (one piece on the host, one
/// thread per column on the GPU), against plain loops.
#[test]
fn large_scatters_along_dim_0_agree_with_plain_loops() {
    let mut rng = Rng::fresh("large_scatters_along_dim_0_agree_with_plain_loops");
    let (os, is) = ([300, 40], [2000, 40]);
    let src = rng.nd(&is, -1.0, 1.0).rounded(DType::F64);
    let rows: Vec<i64> = (0..2000).map(|_| rng.int(0, 299)).collect();
    let index: Vec<i64> = rows.iter().flat_map(|&r| [r; 40]).collect();
    let mut want = vec![0.0; 12000];
    scatter_ref(&mut want, &os, 0, &index, &is, &src.data, |a, b| a + b);
    for flags in every_backend() {
        jit_core::with_flags(flags, || {
            let iv = Var::from_vec(rows.clone(), &[2000]).unwrap();
            let got = Var::zeros(&os, DType::F64).index_add(0, &iv, &src.var(DType::F64), 1.0).unwrap();
            assert_values_close(&got.to_vec_f64().unwrap(), &want, 1e-12, 1e-12, &format!("{flags:?}"));
        });
    }
}

/// Scatters large enough to run in parallel rows (split by the leading dims when
/// the rows' targets are provably disjoint) give the same result as one piece.
#[test]
fn large_scatters_split_into_rows_and_agree_with_the_reference() {
    let mut rng = Rng::fresh("large_scatters_split_into_rows_and_agree_with_the_reference");
    let os = [6, 40, 33];
    let is = [6, 90, 33];
    let src = rng.nd(&is, -1.0, 1.0).rounded(DType::F32);
    let index = indices(&mut rng, is.iter().product(), os[1], true);
    let mut want = vec![0.0; os.iter().product()];
    scatter_ref(&mut want, &os, 1, &index, &is, &src.data, |a, b| a + b);
    for flags in every_backend() {
        jit_core::with_flags(flags, || {
            let got = Var::zeros(&os, DType::F32)
                .scatter_add(1, &Var::from_vec(index.clone(), &is).unwrap(), &src.var(DType::F32))
                .unwrap();
            assert_values_close(&got.to_vec_f64().unwrap(), &want, 1e-5, 1e-6, &format!("{flags:?}"));
        });
    }
}

#[test]
fn bad_indexing_arguments_are_clear_errors() {
    let x = Var::zeros(&[3, 4], DType::F32);
    let i = Var::from_vec(vec![0i64, 1], &[1, 2]).unwrap();
    let msg = |r: Result<Var>| r.unwrap_err().to_string();
    assert_eq!(
        msg(x.scatter_add(1, &i, &Var::zeros(&[1, 2], DType::F64))),
        "scatter_add: the source must have the dtype of self, got f64 and f32"
    );
    assert_eq!(
        msg(x.scatter_add(1, &i, &Var::zeros(&[1, 1], DType::F32))),
        "scatter_add: the index of shape [1, 2] must have the rank of the source [1, 1] and fit in it"
    );
    assert_eq!(
        msg(x.scatter_add(0, &Var::from_vec(vec![0i64; 5], &[1, 5]).unwrap(), &Var::zeros(&[1, 5], DType::F32))),
        "scatter: the index of shape [1, 5] exceeds the indexed shape [3, 4] at dim 1"
    );
    assert_eq!(
        msg(x.scatter_add(1, &Var::zeros(&[1, 2], DType::F32), &Var::zeros(&[1, 2], DType::F32))),
        "scatter: the index must be an integer value, got f32"
    );
    assert_eq!(
        msg(x.index_add(0, &Var::from_vec(vec![0i64], &[1]).unwrap(), &Var::zeros(&[2, 4], DType::F32), 1.0)),
        "index_add: the source must have shape [1, 4] (self [3, 4] with the index's length at dim 0), got [2, 4]"
    );
    assert_eq!(
        msg(x.take_along_dim(&Var::from_vec(vec![0i64; 6], &[2, 3]).unwrap(), 1)),
        "take_along_dim: the input [3, 4] and the index [2, 3] do not broadcast at dim 0"
    );
    assert_eq!(msg(x.masked_fill(&Var::zeros(&[4], DType::F32), 1.0)), "masked_fill: the mask must be bool, got f32");
    assert_eq!(msg(x.one_hot(3)), "one_hot: needs integer class values, got f32");
    assert!(ScatterReduce::parse("max").unwrap_err().to_string().contains("amax"));
    assert_eq!(ScatterReduce::parse("amin").unwrap(), ScatterReduce::Amin);
    assert_eq!(
        msg(x.gather(2, &i)),
        "gather: dimension 2 is out of range for a tensor of rank 2 with shape [3, 4] (expected a dim in [-2, 1])"
    );
}

/// Row gathers (one index per row, the row contiguous: `index_select` on dim 0)
/// run on the CPU's vector loop: rows of 64, 7 (vectors and a scalar remainder), 4
/// and 1, indices out of range (rows of zeros) included, alone and fused with
/// arithmetic, against plain indexing.
#[test]
fn row_gathers_on_the_vector_loop_match_plain_indexing() {
    let mut rng = Rng::fresh("row_gathers_on_the_vector_loop_match_plain_indexing");
    for width in [64, 7, 4, 1] {
        let table = rng.nd(&[30, width], -1.0, 1.0).rounded(DType::F32);
        let idx: Vec<i64> = (0..50).map(|_| rng.int(-3, 33)).collect();
        let data = &table.data;
        let want: Vec<f64> = idx
            .iter()
            .flat_map(|&i| {
                (0..width).map(move |c| if (0..30).contains(&i) { data[i as usize * width + c] } else { 0.0 })
            })
            .collect();
        let fused: Vec<f64> = want.iter().map(|v| (v * 2.0 + 1.0).max(0.0)).collect();
        for flags in every_backend() {
            jit_core::with_flags(flags, || {
                let ctx = format!("width {width} {flags:?} (seed {})", rng.seed);
                let rows = table.var(DType::F32).index_select(0, &Var::from_vec(idx.clone(), &[50]).unwrap()).unwrap();
                assert_values_close(&rows.to_vec_f64().unwrap(), &want, 0.0, 0.0, &ctx);
                let f = rows.try_mul(2.0).unwrap().try_add(1.0).unwrap().relu().unwrap();
                assert_values_close(&f.to_vec_f64().unwrap(), &fused, 1e-6, 0.0, &format!("fused {ctx}"));
            });
        }
    }
}

/// `index_add` along dim 0 in f32 (the CPU backend adds four columns of a source row
/// per step into the target row) gives the IR executor's bits: with repeated
/// indices, every target element receives its contributions in source-row order,
/// as in the scalar loop. Rows of 1 to 67 columns (steps of four vectors, single
/// vectors, scalar remainders), `alpha` 1 and 0.5, fused and unfused.
#[test]
fn index_add_rows_in_vectors_match_the_executor_bit_for_bit() {
    let mut rng = Rng::fresh("index_add_rows_in_vectors_match_the_executor_bit_for_bit");
    for cols in [1, 3, 4, 5, 16, 17, 19, 35, 67] {
        let rows = 23;
        let target = rng.nd(&[7, cols], -1.0, 1.0).rounded(DType::F32).var(DType::F32);
        let source = rng.nd(&[rows, cols], -1e3, 1e3).rounded(DType::F32).var(DType::F32);
        // every target row hit several times, in a scrambled order
        let idx: Vec<i64> = (0..rows).map(|i| ((i * 5 + rng.below(3)) % 7) as i64).collect();
        let iv = Var::from_vec(idx.clone(), &[rows]).unwrap();
        for fusion in [true, false] {
            for alpha in [1.0, 0.5] {
                let run = |backend| {
                    jit_core::with_flags(Flags { backend, fusion, dump: false }, || {
                        let y = target.index_add(0, &iv, &source, alpha).unwrap();
                        y.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<u32>>()
                    })
                };
                let (cpu, exec) = (run(Backend::Cpu), run(Backend::Interpreter));
                assert_eq!(
                    cpu, exec,
                    "{cols} columns, fusion {fusion}, alpha {alpha}, idx {idx:?} (seed {})",
                    rng.seed
                );
            }
        }
    }
}

/// `zeros(...).index_add(...)` (and `scatter_add` onto zeros) is the scatter sum
/// alone, without a pass that adds the zero table: the same bits as adding `+0`
/// elementwise afterwards (a sum that starts from `+0` is never `-0`, the one value
/// that pass would change), `-0` and NaN sources included, on every backend fused
/// and unfused. A zero table that takes a gradient keeps the addition.
#[test]
fn index_add_onto_zeros_is_the_scatter_alone() {
    let mut rng = Rng::fresh("index_add_onto_zeros_is_the_scatter_alone");
    let (rows, table, cols) = (9 + rng.below(8), 5 + rng.below(4), 1 + rng.below(9));
    let mut src = rng.nd(&[rows, cols], -4.0, 4.0).rounded(DType::F32).data;
    // rows made of -0 (alone in their target or summed with each other), a NaN
    for c in 0..cols {
        src[c] = -0.0;
        src[cols + c] = -0.0;
    }
    src[2 * cols] = f64::NAN;
    let mut idx: Vec<i64> = (0..rows).map(|_| (2 + rng.below(table - 2)) as i64).collect();
    idx[0] = 0;
    idx[1] = 0;
    idx[2] = 1;
    let source = Var::from_vec(src.iter().map(|&v| v as f32).collect::<Vec<f32>>(), &[rows, cols]).unwrap();
    let iv = Var::from_vec(idx.clone(), &[rows]).unwrap();
    // the compiled backends add in f32 in source-row order; the reference backend
    // adds in f64 and rounds once
    let sums = |in_f64: bool| -> Vec<u32> {
        let mut t = vec![0.0f64; table * cols];
        for (r, &i) in idx.iter().enumerate() {
            for c in 0..cols {
                let at = i as usize * cols + c;
                t[at] =
                    if in_f64 { t[at] + src[r * cols + c] } else { f64::from(t[at] as f32 + src[r * cols + c] as f32) };
            }
        }
        t.iter().map(|&v| (v as f32 + 0.0).to_bits()).collect()
    };
    let (in_f32, in_f64) = (sums(false), sums(true));
    assert!(in_f32[..cols].iter().chain(&in_f64[..cols]).all(|&b| b == 0), "a sum of -0 from +0 is +0");
    for flags in every_backend() {
        let (backend, fusion) = (flags.backend, flags.fusion);
        let expected = if backend == Backend::Reference { &in_f64 } else { &in_f32 };
        jit_core::with_flags(flags, || {
            let y = Var::zeros(&[table, cols], DType::F32).index_add(0, &iv, &source, 1.0).unwrap();
            assert_eq!(y.op_name(), "scatter", "{backend:?} fusion {fusion}: the zero table is not added");
            let got: Vec<u32> = y.to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
            let same = got
                .iter()
                .zip(expected.iter())
                .all(|(a, b)| a == b || (f32::from_bits(*a).is_nan() && f32::from_bits(*b).is_nan()));
            assert!(same, "{backend:?} fusion {fusion}: {got:x?} against {expected:x?} (seed {})", rng.seed);
            let full_index = iv.unsqueeze(1).unwrap().broadcast_as(&[rows, cols]).unwrap();
            let y = Var::zeros(&[table, cols], DType::F32).scatter_add(0, &full_index, &source).unwrap();
            assert_eq!(y.op_name(), "scatter", "scatter_add onto zeros");
        });
    }
    let z = Var::zeros(&[table, cols], DType::F32).requires_grad_(true).unwrap();
    let y = z.index_add(0, &iv, &source, 1.0).unwrap();
    assert_eq!(y.op_name(), "add", "a zero table that takes a gradient keeps its addition");
    let g = jit_core::grad(&y.sum(&[0, 1], false).unwrap(), &[z]).unwrap();
    assert_eq!(g[0].to_vec::<f32>().unwrap(), vec![1.0; table * cols], "the zero table's gradient");
}
