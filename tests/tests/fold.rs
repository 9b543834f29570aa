//! `unfold`, `fold`, `pixel_shuffle` and `pixel_unshuffle` against their definitions
//! written as plain loops, on random awkward shapes and window options, on the
//! default backend (the CPU, or CUDA with `JIT_BACKEND=cuda`) fused and unfused and
//! on the reference backend; `fold` as the adjoint of
//! `unfold`; finite-difference gradients; clear errors. Seeds are printed; rerun
//! with `JIT_TEST_SEED=<seed>`.

use integration_tests::gradcheck::check;
use integration_tests::{assert_close, Nd, Rng};
use jit_core::{with_flags, Backend, Flags};
use jit_ops::prelude::*;

/// The three ways a graph runs: the default backend (`JIT_BACKEND`: the CPU, or
/// CUDA in gpu-check) fused and unfused, and the oracle.
fn modes() -> [(Flags, DType, f64); 3] {
    let backend = jit_core::flags().backend;
    let backend = if backend == Backend::Reference { Backend::Cpu } else { backend };
    [
        (Flags { backend, fusion: true, dump: false }, DType::F32, 1e-6),
        (Flags { backend, fusion: false, dump: false }, DType::F32, 1e-6),
        (Flags { backend: Backend::Reference, fusion: false, dump: false }, DType::F64, 1e-12),
    ]
}

fn random_options(rng: &mut Rng) -> FoldOptions {
    let mut pick = |choices: &[usize]| [choices[rng.below(choices.len())], choices[rng.below(choices.len())]];
    FoldOptions {
        kernel: pick(&[1, 2, 3]),
        dilation: pick(&[1, 1, 2]),
        padding: pick(&[0, 0, 1, 2]),
        stride: pick(&[1, 2, 3]),
    }
}

/// Windows along each axis, or `None` when the padded plane is smaller than the window.
fn windows(o: &FoldOptions, size: [usize; 2]) -> Option<[usize; 2]> {
    let mut out = [0; 2];
    for d in 0..2 {
        let span = o.dilation[d] * (o.kernel[d] - 1) + 1;
        let padded = size[d] + 2 * o.padding[d];
        out[d] = padded.checked_sub(span)? / o.stride[d] + 1;
    }
    Some(out)
}

/// The input pixel (row, col) that tap (i, j) of window (wy, wx) reads, if inside.
fn tap(o: &FoldOptions, size: [usize; 2], [wy, wx]: [usize; 2], [i, j]: [usize; 2]) -> Option<[usize; 2]> {
    let y = (wy * o.stride[0] + i * o.dilation[0]) as isize - o.padding[0] as isize;
    let x = (wx * o.stride[1] + j * o.dilation[1]) as isize - o.padding[1] as isize;
    (y >= 0 && x >= 0 && (y as usize) < size[0] && (x as usize) < size[1]).then_some([y as usize, x as usize])
}

/// `unfold` by definition.
fn unfold_loops(x: &Nd, o: &FoldOptions) -> Nd {
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [oh, ow] = windows(o, [h, w]).unwrap();
    let [kh, kw] = o.kernel;
    Nd::from_fn(&[n, c * kh * kw, oh * ow], |idx| {
        let (b, row, l) = (idx[0], idx[1], idx[2]);
        let (ch, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
        match tap(o, [h, w], [l / ow, l % ow], [i, j]) {
            Some([y, xx]) => x.at(&[b, ch, y, xx]),
            None => 0.0,
        }
    })
}

/// `fold` by definition: every tap adds its value to the pixel it covers.
fn fold_loops(cols: &Nd, size: [usize; 2], o: &FoldOptions) -> Nd {
    let [n, rows, _] = [cols.shape[0], cols.shape[1], cols.shape[2]];
    let [kh, kw] = o.kernel;
    let c = rows / (kh * kw);
    let [oh, ow] = windows(o, size).unwrap();
    let mut out = Nd { shape: vec![n, c, size[0], size[1]], data: vec![0.0; n * c * size[0] * size[1]] };
    for b in 0..n {
        for row in 0..rows {
            let (ch, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
            for l in 0..oh * ow {
                if let Some([y, x]) = tap(o, size, [l / ow, l % ow], [i, j]) {
                    out.data[((b * c + ch) * size[0] + y) * size[1] + x] += cols.at(&[b, row, l]);
                }
            }
        }
    }
    out
}

/// A random case: options, input shape [N, C, H, W] with at least one window.
fn case(rng: &mut Rng) -> (FoldOptions, [usize; 4]) {
    loop {
        let o = random_options(rng);
        let shape = [1 + rng.below(2), 1 + rng.below(3), 1 + rng.below(9), 1 + rng.below(9)];
        if windows(&o, [shape[2], shape[3]]).is_some() {
            return (o, shape);
        }
    }
}

#[test]
fn unfold_and_fold_match_their_definitions() {
    let mut rng = Rng::fresh("unfold_and_fold_match_their_definitions");
    for _ in 0..40 {
        let (o, shape) = case(&mut rng);
        let [n, c, h, w] = shape;
        let [oh, ow] = windows(&o, [h, w]).unwrap();
        let x = rng.nd(&shape, -1.0, 1.0);
        let cols = rng.nd(&[n, c * o.kernel[0] * o.kernel[1], oh * ow], -1.0, 1.0);
        let want_u = unfold_loops(&x, &o);
        let want_f = fold_loops(&cols, [h, w], &o);
        for (flags, dtype, tol) in modes() {
            let ctx = format!("{o:?} on {shape:?}, {flags:?}");
            with_flags(flags, || {
                // an element-wise producer and consumer, so that fusion has work to do
                let xv = x.rounded(dtype).var(dtype);
                let u = unfold(&(&xv * 2.0), &o).unwrap() + 1.0;
                let want =
                    Nd { shape: want_u.shape.clone(), data: want_u.data.iter().map(|v| v * 2.0 + 1.0).collect() };
                assert_close(&u, &want.rounded(dtype), tol, tol, &format!("unfold {ctx}"));
                let cv = cols.rounded(dtype).var(dtype);
                let f = fold(&cv, [h, w], &o).unwrap();
                let want = fold_loops(&cols.rounded(dtype), [h, w], &o);
                assert_close(&f, &want, tol * 10.0, tol * 10.0, &format!("fold {ctx}"));
                // the unbatched forms
                let u3 = unfold(&xv.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(), &o).unwrap();
                assert_eq!(u3.shape(), &want_u.shape[1..], "{ctx}");
                let f2 = fold(&cv.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(), [h, w], &o).unwrap();
                assert_eq!(f2.shape(), &[c, h, w], "{ctx}");
            });
        }
        // the adjoint identity <unfold(x), y> = <x, fold(y)> (f64 loops)
        let lhs: f64 = want_u.data.iter().zip(&cols.data).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.data.iter().zip(&want_f.data).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() <= 1e-9 * (1.0 + lhs.abs()), "adjoint {o:?} {shape:?}: {lhs} vs {rhs}");
    }
}

#[test]
fn pixel_shuffle_matches_its_definition_and_unshuffle_inverts_it() {
    let mut rng = Rng::fresh("pixel_shuffle_matches_its_definition_and_unshuffle_inverts_it");
    for _ in 0..20 {
        let r = 1 + rng.below(3);
        let lead: Vec<usize> = (0..rng.below(3)).map(|_| 1 + rng.below(3)).collect();
        let (c, h, w) = (1 + rng.below(3), 1 + rng.below(4), 1 + rng.below(4));
        let mut shape = lead.clone();
        shape.extend([c * r * r, h, w]);
        let x = rng.nd(&shape, -1.0, 1.0).rounded(DType::F32);
        let k = lead.len();
        let mut out_shape = lead.clone();
        out_shape.extend([c, h * r, w * r]);
        let want = Nd::from_fn(&out_shape, |o| {
            let (ch, y, xx) = (o[k], o[k + 1], o[k + 2]);
            let mut src = o[..k].to_vec();
            src.extend([ch * r * r + (y % r) * r + xx % r, y / r, xx / r]);
            x.at(&src)
        });
        for (flags, _, _) in modes() {
            with_flags(flags, || {
                let ctx = format!("r {r} on {shape:?}, {flags:?}");
                let y = pixel_shuffle(&x.var(DType::F32), r).unwrap();
                assert_close(&y, &want, 0.0, 0.0, &format!("pixel_shuffle {ctx}"));
                let back = pixel_unshuffle(&want.var(DType::F32), r).unwrap();
                assert_close(&back, &x, 0.0, 0.0, &format!("pixel_unshuffle {ctx}"));
            });
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng::fresh("fold gradients_match_finite_differences");
    for _ in 0..4 {
        let (o, shape) = case(&mut rng);
        let [n, c, h, w] = shape;
        let [oh, ow] = windows(&o, [h, w]).unwrap();
        let x = rng.nd(&shape, -1.0, 1.0);
        check(&format!("unfold {o:?}"), &mut rng, &[x], |v| unfold(&v[0], &o));
        let cols = rng.nd(&[n, c * o.kernel[0] * o.kernel[1], oh * ow], -1.0, 1.0);
        check(&format!("fold {o:?}"), &mut rng, &[cols], |v| fold(&v[0], [h, w], &o));
    }
    let x = rng.nd(&[2, 8, 3, 2], -1.0, 1.0);
    check("pixel_shuffle", &mut rng, &[x], |v| pixel_shuffle(&v[0], 2));
    let x = rng.nd(&[1, 2, 4, 6], -1.0, 1.0);
    check("pixel_unshuffle", &mut rng, &[x], |v| pixel_unshuffle(&v[0], 2));
}

#[test]
fn bad_arguments_name_the_op_and_shapes() {
    let msg = |r: Result<Var>| r.expect_err("expected an error").to_string();
    let x = Var::zeros(&[1, 2, 5, 5], DType::F32);
    assert_eq!(
        msg(unfold(&Var::zeros(&[5, 5], DType::F32), &FoldOptions::new(2))),
        "unfold: input must be 3-D or 4-D, got shape [5, 5]"
    );
    assert_eq!(
        msg(unfold(&x, &FoldOptions::new(0))),
        "unfold: kernel_size [0, 0], stride [1, 1] and dilation [1, 1] must be positive"
    );
    assert_eq!(
        msg(unfold(&x, &FoldOptions::new(4).dilation(2))),
        "unfold: the plane [5, 5] padded by [0, 0] is smaller than the dilated window [7, 7]"
    );
    assert_eq!(
        msg(unfold(&x, &FoldOptions::new(2).stride(1 << 40))),
        "unfold: stride [1099511627776, 1099511627776] is too large (at most 2147483647)"
    );
    let cols = Var::zeros(&[1, 8, 16], DType::F32);
    assert_eq!(
        msg(fold(&cols, [5, 5], &FoldOptions::new(3))),
        "fold: input [1, 8, 16]: its 8 rows are not a multiple of the 9 taps of kernel_size [3, 3]"
    );
    assert_eq!(
        msg(fold(&cols, [4, 6], &FoldOptions::new(2))),
        "fold: input [1, 8, 16] has 16 columns, but an output of size [4, 6] has 3x5 = 15 windows of kernel_size \
         [2, 2], dilation [1, 1], padding [0, 0], stride [1, 1]"
    );
    assert!(fold(&cols, [5, 5], &FoldOptions::new(2)).is_ok());
    assert_eq!(
        msg(fold(&Var::zeros(&[4], DType::F32), [2, 2], &FoldOptions::new(1))),
        "fold: input must be 2-D or 3-D, got shape [4]"
    );
    assert_eq!(
        msg(pixel_shuffle(&Var::zeros(&[1, 6, 2, 2], DType::F32), 2)),
        "pixel_shuffle: the 6 channels of [1, 6, 2, 2] are not divisible by the square of the upscale factor 2"
    );
    assert_eq!(
        msg(pixel_unshuffle(&Var::zeros(&[1, 1, 4, 5], DType::F32), 2)),
        "pixel_unshuffle: the height 4 and width 5 of [1, 1, 4, 5] are not both divisible by the downscale factor 2"
    );
    assert!(msg(pixel_shuffle(&Var::zeros(&[4, 4], DType::F32), 2))
        .starts_with("pixel_shuffle: needs an input of at least 3 dims"));
}
