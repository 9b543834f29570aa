//! Shape and indexing ops against plain index arithmetic, on awkward and empty shapes,
//! including non-contiguous compositions.

use integration_tests::{assert_close, Nd, Rng};
use jit_core::IndexExpr as E;
use jit_ops::prelude::*;

fn reflect(j: isize, n: usize) -> usize {
    let m = n as isize - 1;
    let r = if j < 0 {
        -j
    } else if j > m {
        2 * m - j
    } else {
        j
    };
    r as usize
}

#[test]
fn transpose_permute_and_views() {
    let mut rng = Rng::fresh("transpose_permute_and_views");
    for _ in 0..30 {
        let shape: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.dim_size(true)).collect();
        let x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F32);
        let v = x.var(DType::F32);
        let r = shape.len();
        // random permutation
        let mut perm: Vec<usize> = (0..r).collect();
        for i in (1..r).rev() {
            perm.swap(i, rng.below(i + 1));
        }
        let p: Vec<isize> = perm.iter().map(|&d| d as isize).collect();
        let out_shape: Vec<usize> = perm.iter().map(|&d| shape[d]).collect();
        let want = Nd::from_fn(&out_shape, |o| {
            let mut src = vec![0; r];
            for (k, &d) in perm.iter().enumerate() {
                src[d] = o[k];
            }
            x.at(&src)
        });
        assert_close(&v.permute(&p).unwrap(), &want, 0.0, 0.0, &format!("permute {shape:?} {perm:?}"));
        let (a, b) = (rng.below(r), rng.below(r));
        let mut ts = shape.clone();
        ts.swap(a, b);
        let want = Nd::from_fn(&ts, |o| {
            let mut src = o.to_vec();
            src.swap(a, b);
            x.at(&src)
        });
        assert_close(&v.transpose(a as isize, b as isize - r as isize).unwrap(), &want, 0.0, 0.0, "transpose");
        // views keep the row-major order
        let flat = v.flatten(0, -1).unwrap();
        assert_eq!(flat.shape(), &[x.data.len()]);
        assert_close(&flat, &Nd { shape: vec![x.data.len()], data: x.data.clone() }, 0.0, 0.0, "flatten");
        let u = v.unsqueeze(-1).unwrap();
        assert_eq!(u.shape().len(), r + 1);
        assert_eq!(u.squeeze(-1).unwrap().shape(), &shape[..]);
    }
    let x = Var::zeros(&[1, 3, 1, 2], DType::F32);
    assert_eq!(x.squeeze_all().unwrap().shape(), &[3, 2]);
    assert_eq!(x.squeeze(1).unwrap().shape(), &[1, 3, 1, 2], "squeezing a dim of size 3 is a no-op");
    assert_eq!(x.view(&[-1, 2]).unwrap().shape(), &[3, 2]);
    assert_eq!(x.flatten(1, 2).unwrap().shape(), &[1, 3, 2]);
    assert_eq!(x.unsqueeze(0).unwrap().shape(), &[1, 1, 3, 1, 2]);
}

#[test]
fn slicing_with_steps_and_negative_bounds() {
    let x = Var::arange(10);
    let s = |start, end, step| x.slice(0, start, end, step).unwrap().to_vec::<i64>().unwrap();
    assert_eq!(s(1, Some(8), 3), vec![1, 4, 7]);
    assert_eq!(s(-3, None, 1), vec![7, 8, 9]);
    assert_eq!(s(0, Some(-7), 2), vec![0, 2]);
    assert_eq!(s(8, Some(2), 1), Vec::<i64>::new());
    assert_eq!(s(-100, Some(100), 4), vec![0, 4, 8]);
    assert_eq!(x.narrow(0, 2, 3).unwrap().to_vec::<i64>().unwrap(), vec![2, 3, 4]);
    let mut rng = Rng::fresh("slicing_with_steps_and_negative_bounds");
    for _ in 0..30 {
        let shape: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.dim_size(false)).collect();
        let d = rng.below(shape.len());
        let n = shape[d] as isize;
        let (start, end, step) = (
            rng.int(-n as i64 - 2, n as i64 + 2) as isize,
            rng.int(-n as i64 - 2, n as i64 + 2) as isize,
            1 + rng.below(4),
        );
        let x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F64);
        let norm = |v: isize| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let picked: Vec<usize> = (norm(start)..norm(end)).step_by(step).map(|i| i as usize).collect();
        let mut out = shape.clone();
        out[d] = picked.len();
        let want = Nd::from_fn(&out, |o| {
            let mut src = o.to_vec();
            src[d] = picked[o[d]];
            x.at(&src)
        });
        let got = x.var(DType::F64).slice(d as isize, start, Some(end), step).unwrap();
        assert_close(&got, &want, 0.0, 0.0, &format!("slice {shape:?} dim {d} {start}:{end}:{step}"));
    }
}

#[test]
fn padding_modes() {
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3]).unwrap();
    let p = |m| x.pad(&[2, 2], m).unwrap().to_vec::<f32>().unwrap();
    assert_eq!(p(PadMode::Constant(-1.0)), vec![-1.0, -1.0, 1.0, 2.0, 3.0, -1.0, -1.0]);
    assert_eq!(p(PadMode::Reflect), vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]);
    assert_eq!(p(PadMode::Replicate), vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]);
    let mut rng = Rng::fresh("padding_modes");
    for _ in 0..30 {
        let shape: Vec<usize> = (0..2 + rng.below(2)).map(|_| 2 + rng.below(6)).collect();
        let x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F32);
        let k = 1 + rng.below(2); // number of padded dims
        let r = shape.len();
        let mut pads = vec![];
        for j in 0..k {
            let n = shape[r - 1 - j];
            pads.push(rng.below(n));
            pads.push(rng.below(n));
        }
        let mut out = shape.clone();
        for j in 0..k {
            out[r - 1 - j] += pads[2 * j] + pads[2 * j + 1];
        }
        for mode in [PadMode::Constant(0.5), PadMode::Reflect, PadMode::Replicate] {
            let want = Nd::from_fn(&out, |o| {
                let mut src = o.to_vec();
                for j in 0..k {
                    let d = r - 1 - j;
                    let jj = o[d] as isize - pads[2 * j] as isize;
                    let n = shape[d];
                    src[d] = match mode {
                        PadMode::Constant(_) => {
                            if jj < 0 || jj >= n as isize {
                                return 0.5;
                            }
                            jj as usize
                        }
                        PadMode::Reflect => reflect(jj, n),
                        PadMode::Replicate => jj.clamp(0, n as isize - 1) as usize,
                    };
                }
                x.at(&src)
            });
            let got = x.var(DType::F32).pad(&pads, mode).unwrap();
            assert_close(&got, &want, 0.0, 0.0, &format!("pad {shape:?} {pads:?} {mode:?}"));
        }
    }
}

#[test]
fn non_contiguous_compositions() {
    // transpose of a slice of a reflect pad of a flip
    let mut rng = Rng::fresh("non_contiguous_compositions");
    for _ in 0..20 {
        let (h, w) = (3 + rng.below(5), 3 + rng.below(6));
        let x = rng.nd(&[2, h, w], -1.0, 1.0).rounded(DType::F32);
        let got = x
            .var(DType::F32)
            .flip(&[-1])
            .unwrap()
            .pad(&[2, 1, 1, 2], PadMode::Reflect)
            .unwrap()
            .slice(1, 1, None, 2)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let (ph, pw) = (h + 3, w + 3);
        let sliced: Vec<usize> = (1..ph).step_by(2).collect();
        let want = Nd::from_fn(&[2, pw, sliced.len()], |o| {
            let (b, jw, ih) = (o[0], o[1], o[2]);
            let y = reflect(sliced[ih] as isize - 1, h);
            let xw = reflect(jw as isize - 2, w);
            x.at(&[b, y, w - 1 - xw])
        });
        assert_close(&got, &want, 0.0, 0.0, &format!("composition h={h} w={w}"));
    }
}

#[test]
fn flip_expand_repeat() {
    let x = Var::from_vec(vec![1i64, 2, 3, 4, 5, 6], &[2, 3]).unwrap();
    assert_eq!(x.flip(&[0, 1]).unwrap().to_vec::<i64>().unwrap(), vec![6, 5, 4, 3, 2, 1]);
    assert_eq!(x.flip(&[1]).unwrap().to_vec::<i64>().unwrap(), vec![3, 2, 1, 6, 5, 4]);
    let c = Var::from_vec(vec![1i64, 2], &[2, 1]).unwrap();
    let e = c.expand(&[2, 2, -1]).unwrap();
    assert_eq!(e.shape(), &[2, 2, 1]);
    let e = c.expand(&[3, 2, 4]).unwrap();
    assert_eq!(e.to_vec::<i64>().unwrap(), [[1; 4], [2; 4]].concat().repeat(3));
    let r = x.repeat(&[2, 1, 2]).unwrap();
    assert_eq!(r.shape(), &[2, 2, 6]);
    assert_eq!(r.narrow(0, 1, 1).unwrap().to_vec::<i64>().unwrap(), vec![1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]);
}

#[test]
fn cat_stack_split_chunk() {
    let mut rng = Rng::fresh("cat_stack_split_chunk");
    for _ in 0..20 {
        let r = 1 + rng.below(3);
        let base: Vec<usize> = (0..r).map(|_| rng.dim_size(false)).collect();
        let d = rng.below(r);
        let parts: Vec<Nd> = (0..1 + rng.below(4))
            .map(|_| {
                let mut s = base.clone();
                s[d] = rng.below(4);
                rng.nd(&s, -1.0, 1.0).rounded(DType::F32)
            })
            .collect();
        let vars: Vec<Var> = parts.iter().map(|p| p.var(DType::F32)).collect();
        let got = cat(&vars, d as isize).unwrap();
        let total: usize = parts.iter().map(|p| p.shape[d]).sum();
        let mut out = base.clone();
        out[d] = total;
        let want = Nd::from_fn(&out, |o| {
            let mut k = o[d];
            for p in &parts {
                if k < p.shape[d] {
                    let mut src = o.to_vec();
                    src[d] = k;
                    return p.at(&src);
                }
                k -= p.shape[d];
            }
            unreachable!()
        });
        assert_close(
            &got,
            &want,
            0.0,
            0.0,
            &format!("cat dim {d} of {:?}", parts.iter().map(|p| p.shape.clone()).collect::<Vec<_>>()),
        );
        // split the concatenation back into the parts
        let sizes: Vec<usize> = parts.iter().map(|p| p.shape[d]).collect();
        let back = got.split_sizes(&sizes, d as isize).unwrap();
        for (b, p) in back.iter().zip(&parts) {
            assert_close(b, p, 0.0, 0.0, "split_sizes");
        }
    }
    let x = Var::arange(7);
    let parts = x.split(3, 0).unwrap();
    assert_eq!(
        parts.iter().map(|p| p.to_vec::<i64>().unwrap()).collect::<Vec<_>>(),
        vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
    );
    let parts = x.chunk(3, 0).unwrap();
    assert_eq!(parts.iter().map(Var::numel).collect::<Vec<_>>(), vec![3, 3, 1]);
    let a = Var::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
    let b = Var::from_vec(vec![3.0f32, 4.0], &[2]).unwrap();
    let s = stack(&[a.clone(), b.clone()], 1).unwrap();
    assert_eq!(s.shape(), &[2, 2]);
    assert_eq!(s.to_vec::<f32>().unwrap(), vec![1.0, 3.0, 2.0, 4.0]);
    // cat promotes dtypes
    let i = Var::from_vec(vec![5i32], &[1]).unwrap();
    let m = cat(&[a, i], 0).unwrap();
    assert_eq!(m.dtype(), DType::F32);
    assert_eq!(m.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 5.0]);
    // -0.0 and NaN are copied exactly
    let z = Var::from_vec(vec![-0.0f32, f32::NAN], &[2]).unwrap();
    let c = cat(&[z.clone(), z], 0).unwrap().to_vec::<f32>().unwrap();
    assert!(c[0].is_sign_negative() && c[1].is_nan() && c[2].is_sign_negative());
}

#[test]
fn gather_and_index_select() {
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]).unwrap();
    let idx = Var::from_vec(vec![2i64, 0, 1, 1], &[2, 2]).unwrap();
    assert_eq!(x.gather(1, &idx).unwrap().to_vec::<f32>().unwrap(), vec![3.0, 1.0, 5.0, 5.0]);
    let idx0 = Var::from_vec(vec![1i64, 0, 1], &[1, 3]).unwrap();
    assert_eq!(x.gather(0, &idx0).unwrap().to_vec::<f32>().unwrap(), vec![4.0, 2.0, 6.0]);
    let sel = Var::from_vec(vec![2i32, 2, 0, 1], &[4]).unwrap();
    let y = x.index_select(1, &sel).unwrap();
    assert_eq!(y.shape(), &[2, 4]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.0, 3.0, 1.0, 2.0, 6.0, 6.0, 4.0, 5.0]);
    let mut rng = Rng::fresh("gather_and_index_select");
    for _ in 0..20 {
        let shape: Vec<usize> = (0..1 + rng.below(3)).map(|_| rng.dim_size(false)).collect();
        let d = rng.below(shape.len());
        let x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F64);
        let mut ishape: Vec<usize> = shape.iter().map(|&n| 1 + rng.below(n)).collect();
        ishape[d] = 1 + rng.below(5);
        let ind = Nd::from_fn(&ishape, |_| rng.below(shape[d]) as f64);
        let got = x.var(DType::F64).gather(d as isize, &ind.var(DType::I64)).unwrap();
        let want = Nd::from_fn(&ishape, |o| {
            let mut src = o.to_vec();
            src[d] = ind.at(o) as usize;
            x.at(&src)
        });
        assert_close(&got, &want, 0.0, 0.0, &format!("gather {shape:?} dim {d} index {ishape:?}"));
    }
}

#[test]
fn nearest_upsampling() {
    let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[1, 1, 2, 2]).unwrap();
    let y = x.upsample_nearest2d(2).unwrap();
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    // torch: F.interpolate(arange(5), size=3, mode="nearest") picks floor(i * 5 / 3) = 0, 1, 3
    let z = Var::arange(5).reshape(&[1, 5]).unwrap().interpolate_nearest(&[3]).unwrap();
    assert_eq!(z.to_vec::<i64>().unwrap(), vec![0, 1, 3]);
    let z = Var::arange(3).interpolate_nearest(&[7]).unwrap();
    assert_eq!(z.to_vec::<i64>().unwrap(), vec![0, 0, 0, 1, 1, 2, 2]);
}

#[test]
fn empty_dims_flow_through_shape_ops() {
    let e = Var::zeros(&[2, 0, 3], DType::F32);
    assert_eq!(e.transpose(0, 2).unwrap().shape(), &[3, 0, 2]);
    assert_eq!(e.pad(&[1, 1], PadMode::Constant(0.0)).unwrap().shape(), &[2, 0, 5]);
    assert_eq!(e.flip(&[1]).unwrap().to_vec::<f32>().unwrap().len(), 0);
    assert_eq!(e.repeat(&[2, 1, 1]).unwrap().shape(), &[4, 0, 3]);
    let c = cat(&[e.clone(), Var::ones(&[2, 2, 3], DType::F32)], 1).unwrap();
    assert_eq!(c.to_vec::<f32>().unwrap(), vec![1.0; 12]);
}

/// A lazily built computation.
type Chain<'a> = Box<dyn Fn() -> Var + 'a>;

#[test]
fn padded_chains_agree_with_the_reference_backend() {
    // the decoder's bias + ReLU + nearest x2 + reflection pad, the conv input's zero
    // pad and a replicate pad, at widths around the vector width and around the
    // span of lanes checked at once: the CPU backend's vector loop checks spans of
    // lanes, then single blocks, and runs the borders scalar
    use jit_core::{with_flags, Backend, Flags};
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    let mut rng = Rng::fresh("padded_chains");
    for w in [1usize, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 45] {
        let h = 2 + rng.below(4);
        let x = rng.nd(&[2, 3, h, w], -1.0, 1.0).rounded(DType::F32).var(DType::F32);
        let b = rng.nd(&[1, 3, 1, 1], -0.5, 0.5).rounded(DType::F32).var(DType::F32);
        let chains: Vec<(&str, Chain)> = vec![
            (
                "upsample+reflect",
                Box::new(|| {
                    x.try_add(&b)
                        .unwrap()
                        .relu()
                        .unwrap()
                        .upsample_nearest2d(2)
                        .unwrap()
                        .pad(&[1, 1, 1, 1], PadMode::Reflect)
                        .unwrap()
                }),
            ),
            ("zero pad", Box::new(|| x.try_mul(2.0).unwrap().pad(&[1, 2, 1, 0], PadMode::Constant(0.0)).unwrap())),
            ("replicate", Box::new(|| x.try_add(&b).unwrap().pad(&[2, 3, 0, 1], PadMode::Replicate).unwrap())),
            // offsets with floor divisions and moduli of negative values (each lane
            // gathered on its own; power-of-two divisors as shifts and masks)
            (
                "floor-div gather",
                Box::new(|| {
                    let e = vec![E::idx(0), E::idx(1), E::idx(2), (E::idx(3) - 5).floor_div(2) + 3];
                    x.reindex(&[2, 3, h, 2 * w - 1], e, 0.0, vec![]).unwrap().try_mul(&b).unwrap()
                }),
            ),
            // every second element, ending on the buffer's last one (the vector loop
            // reads a stride-2 step as two vectors and a shuffle)
            (
                "stride-2 step",
                Box::new(|| {
                    let e = vec![E::idx(0), E::idx(1), E::idx(2), E::idx(3) * 2 + (w as i64 + 1) % 2];
                    x.reindex(&[2, 3, h, w.div_ceil(2)], e, 0.0, vec![]).unwrap().try_mul(&b).unwrap()
                }),
            ),
            // per-row statistics computed once per row of the vector loop
            (
                "row-invariant",
                Box::new(|| {
                    let s = b.try_mul(&b).unwrap().try_add(1.0).unwrap().sqrt();
                    x.try_sub(&b).unwrap().try_div(&s).unwrap().try_mul(&b).unwrap()
                }),
            ),
            (
                "modulo gather",
                Box::new(|| {
                    let m = w.min(4) as i64;
                    let e = vec![E::idx(0), E::idx(1), E::idx(2), (E::idx(3) - 7).modulo(m)];
                    x.reindex(&[2, 3, h, w + 6], e, 0.0, vec![]).unwrap().try_add(&b).unwrap()
                }),
            ),
        ];
        for (name, f) in chains {
            let run = |flags| {
                with_flags(flags, || {
                    let v = f();
                    v.sync().unwrap();
                    v
                })
            };
            let (a, r) = (run(cpu), run(reference));
            assert_eq!(a.to_vec::<f32>().unwrap(), r.to_vec::<f32>().unwrap(), "{name} at width {w}");
        }
    }
}

/// The gradients of reflection / constant padding and of nearest resizing are
/// written as gathers; check them as adjoints of the forward maps on random awkward
/// shapes (pads up to the size minus one, ratios up and down that are not
/// integers): `<f(x), g> = <x, grad>` in f64 for random `x` and `g`, on the
/// reference backend and fused on the CPU backend (f32 there).
#[test]
fn pad_and_resize_gradients_are_adjoints_of_the_forward_maps() {
    use jit_core::{grad_with, with_flags, Backend, DType, Flags, GradOptions};
    let mut rng = Rng::fresh("pad_and_resize_gradients_are_adjoints_of_the_forward_maps");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    for round in 0..24 {
        let (h, w) = (1 + rng.below(7), 2 + rng.below(9));
        let shape = [1 + rng.below(2), 1 + rng.below(3), h, w];
        let kind = round % 3;
        let (ph, pw) = (rng.below(h), 1 + rng.below(w - 1));
        let size = [1 + rng.below(3 * h), 1 + rng.below(3 * w)];
        let f = |x: &Var| -> jit_core::Result<Var> {
            match kind {
                0 => x.pad(&[pw, pw - 1, ph, h - 1 - ph], PadMode::Reflect),
                1 => x.pad(&[pw, 0, 0, ph], PadMode::Constant(0.25)),
                _ => x.interpolate_nearest(&size),
            }
        };
        let x = rng.nd(&shape, -1.0, 1.0);
        let out_shape = with_flags(reference, || f(&x.var(DType::F64)).unwrap().shape().to_vec());
        let g = rng.nd(&out_shape, -1.0, 1.0);
        for (flags, dtype, tol) in [(reference, DType::F64, 1e-12), (cpu, DType::F32, 1e-5)] {
            let (lhs, rhs) = with_flags(flags, || {
                let xv = x.var(dtype).requires_grad_(true).unwrap();
                let y = f(&xv).unwrap();
                let gv = g.var(dtype);
                let dx = grad_with(
                    &y,
                    std::slice::from_ref(&xv),
                    GradOptions { seed: Some(gv.clone()), create_graph: false },
                )
                .unwrap()
                .remove(0);
                let (yv, gd, xd, dxd) =
                    (y.to_vec_f64().unwrap(), g.data.clone(), x.data.clone(), dx.to_vec_f64().unwrap());
                let lhs: f64 = yv.iter().zip(&gd).map(|(a, b)| a * b).sum();
                let rhs: f64 = xd.iter().zip(&dxd).map(|(a, b)| a * b).sum();
                (lhs, rhs)
            });
            let what = ["reflect pad", "constant pad", "nearest resize"][kind];
            // the constant fill adds 0.25 * (sum of g over the padding) to <f(x), g>
            let fill = if kind == 1 {
                with_flags(reference, || {
                    let y = f(&Var::zeros(&shape, DType::F64)).unwrap().to_vec_f64().unwrap();
                    y.iter().zip(&g.data).map(|(a, b)| a * b).sum::<f64>()
                })
            } else {
                0.0
            };
            assert!(
                (lhs - fill - rhs).abs() <= tol * (1.0 + lhs.abs()),
                "{what} {shape:?} pads ({ph}, {pw}) size {size:?} ({dtype}): <f(x), g> - fill = {} but <x, grad> = {rhs}",
                lhs - fill
            );
        }
    }
}

/// Guarded loads and index conditions in the CPU backend's vector loops: blocks of
/// four lanes where a guard holds on every lane load, blocks where it fails on every
/// lane give the fill value without loading, and blocks where it changes inside run
/// the scalar body. Rows of many widths (shorter and longer than a block, windows
/// starting and ending mid-block, rows longer than the span of lanes checked at
/// once), fused on the CPU against the reference.
#[test]
fn guarded_loads_vectorise_by_uniform_blocks() {
    use jit_core::{with_flags, Backend, DType, Flags};
    let mut rng = Rng::fresh("guarded_loads_vectorise_by_uniform_blocks");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    for w in [1usize, 3, 4, 5, 8, 9, 15, 16, 17, 31, 33, 64, 67, 100, 130, 131, 200] {
        let (rows, lo) = (1 + rng.below(3), rng.below(w + 2));
        let hi = lo + rng.below(w + 2);
        let x = rng.nd(&[rows, w + 6], -1.0, 1.0);
        let build = |flags: Flags, dtype: DType| {
            with_flags(flags, || {
                let x = x.var(dtype);
                let i = || E::idx(1);
                // a window of a reversed read, valid for lo <= i <= hi (guarded load
                // plus an index condition), a shifted read past both ends (range
                // guards), and a constant pad
                let rev = x
                    .reindex(
                        &[rows, w],
                        vec![E::idx(0), E::c(w as i64 + 2) - i()],
                        0.0,
                        vec![i().ge(lo as i64), i().le(hi as i64)],
                    )
                    .unwrap();
                let shifted = x.reindex(&[rows, w], vec![E::idx(0), i() * 2 - 3], 0.5, vec![]).unwrap();
                let padded = x.narrow(1, 0, w).unwrap().pad(&[2, 0], PadMode::Constant(-2.0)).unwrap();
                // a nearest-upsampling read under a condition on the halved index
                // (monotone along the row, but not contiguous)
                let halved = x
                    .reindex(
                        &[rows, w],
                        vec![E::idx(0), i().floor_div(2) + 1],
                        0.0,
                        vec![i().floor_div(2).ge((lo / 2) as i64)],
                    )
                    .unwrap();
                let y = (&rev + &shifted).try_add(padded.narrow(1, 0, w).unwrap()).unwrap().try_add(halved).unwrap();
                y.to_vec_f64().unwrap()
            })
        };
        let (want, got) = (build(reference, DType::F64), build(cpu, DType::F32));
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6, "width {w}, window {lo}..={hi}: element {k}: cpu {a}, reference {b}");
        }
    }
}
