//! Every way `conv2d` runs on the CPU, against the reference backend (f64), forward
//! and backward, on random awkward sizes: the direct convolution (fewer than 16
//! input channels, or at most 288 channel-tap pairs), shifted gemms (more), the
//! Winograd form (3x3 with 64 or more channels in and out), the direct stride-2 product (at most 288 pairs; its gradients through the
//! space-to-depth form), space-to-depth (other strides, or more pairs: shifted
//! gemms), and the im2col product (groups, a 1x1 kernel with stride, f64, and every
//! convolution built for the CUDA backend). Seeds are printed; rerun with
//! `JIT_TEST_SEED=<seed>`.

use integration_tests::Rng;
use jit_core::{grad_with, planned_externs, realize, with_flags, Backend, ConvPass, ExternOp, Flags, GradOptions};
use jit_ops::prelude::*;

/// One configuration: input `[n, c, h, w]`, weight `[o, c / groups, kh, kw]`.
struct Case {
    name: &'static str,
    x: [usize; 4],
    o: usize,
    kernel: [usize; 2],
    opts: Conv2dOptions,
    bias: bool,
}

fn cases(rng: &mut Rng) -> Vec<Case> {
    let odd = |rng: &mut Rng, lo: usize| lo + 2 * rng.below(3) + 1;
    vec![
        // columns beyond one tile of 32 and a tail; 9 outputs: a partial output block
        Case {
            name: "direct 3 channels",
            x: [2, 3, odd(rng, 4), 30 + rng.below(9)],
            o: 9,
            kernel: [3, 3],
            opts: Conv2dOptions { padding: [1, 1], ..Default::default() },
            bias: true,
        },
        Case {
            name: "direct 9x9 reflect",
            x: [1, 4, 9 + rng.below(4), 11 + rng.below(4)],
            o: 3,
            kernel: [9, 9],
            opts: Conv2dOptions { padding: [4, 4], padding_mode: ConvPadding::Reflect, ..Default::default() },
            bias: true,
        },
        Case {
            name: "direct dilated",
            x: [1, 5, odd(rng, 6), odd(rng, 5)],
            o: 6,
            kernel: [3, 2],
            opts: Conv2dOptions { padding: [2, 1], dilation: [2, 3], ..Default::default() },
            bias: false,
        },
        Case {
            name: "direct 20 channels",
            x: [2, 20, odd(rng, 4), 33 + rng.below(40)],
            o: 11,
            kernel: [3, 3],
            opts: Conv2dOptions { padding: [1, 1], ..Default::default() },
            bias: true,
        },
        Case {
            name: "shifted gemms",
            x: [2, 33, odd(rng, 4), odd(rng, 5)],
            o: 5,
            kernel: [3, 3],
            opts: Conv2dOptions { padding: [1, 1], ..Default::default() },
            bias: true,
        },
        // 64 or more channels in and out, 3x3: the Winograd form forward and for the
        // input gradient (odd grids: tiles that overhang the valid corner)
        Case {
            name: "winograd",
            x: [2, 64 + rng.below(9), odd(rng, 4), 9 + rng.below(12)],
            o: 64 + rng.below(7),
            kernel: [3, 3],
            opts: Conv2dOptions { padding: [1, 1], ..Default::default() },
            bias: true,
        },
        Case {
            name: "winograd reflect, unpadded",
            x: [1, 66, 3 + rng.below(7), odd(rng, 3)],
            o: 65,
            kernel: [3, 3],
            opts: Conv2dOptions {
                padding: [rng.below(2), 1],
                padding_mode: ConvPadding::Reflect,
                ..Default::default()
            },
            bias: false,
        },
        Case {
            name: "direct stride 2, 4 channels",
            x: [2, 4, odd(rng, 6), odd(rng, 7)],
            o: 7,
            kernel: [3, 3],
            opts: Conv2dOptions { stride: [2, 2], padding: [1, 1], ..Default::default() },
            bias: true,
        },
        Case {
            name: "direct stride 2, 24 channels",
            x: [1, 24, odd(rng, 6), 40 + rng.below(30)],
            o: 9,
            kernel: [3, 3],
            opts: Conv2dOptions { stride: [2, 2], padding: [1, 1], ..Default::default() },
            bias: false,
        },
        Case {
            name: "space-to-depth stride 2, shifted gemms",
            x: [1, 40, odd(rng, 6), odd(rng, 7)],
            o: 6,
            kernel: [3, 3],
            opts: Conv2dOptions { stride: [2, 2], padding: [1, 1], ..Default::default() },
            bias: true,
        },
        Case {
            name: "space-to-depth stride 3x2 reflect",
            x: [1, 3, 10 + rng.below(4), 9 + rng.below(4)],
            o: 4,
            kernel: [4, 3],
            opts: Conv2dOptions {
                stride: [3, 2],
                padding: [1, 1],
                padding_mode: ConvPadding::Reflect,
                ..Default::default()
            },
            bias: false,
        },
        Case {
            name: "im2col groups",
            x: [1, 4, odd(rng, 4), odd(rng, 4)],
            o: 6,
            kernel: [3, 3],
            opts: Conv2dOptions { stride: [2, 1], padding: [1, 1], groups: 2, ..Default::default() },
            bias: true,
        },
        Case {
            name: "im2col 1x1 stride 2",
            x: [1, 8, odd(rng, 4), odd(rng, 4)],
            o: 3,
            kernel: [1, 1],
            opts: Conv2dOptions { stride: [2, 2], ..Default::default() },
            bias: false,
        },
    ]
}

/// Output and the gradients of input, weight (and bias) for the seed gradient `gy`.
fn run(flags: Flags, case: &Case, data: &[Vec<f64>], gy: &[f64]) -> Vec<Vec<f64>> {
    let dtype = if flags.backend == Backend::Reference { DType::F64 } else { DType::F32 };
    let all = build(flags, dtype, case, data, gy);
    realized(flags, &all)
}

/// `all` realised with `flags` in force, as f64 vectors.
fn realized(flags: Flags, all: &[Var]) -> Vec<Vec<f64>> {
    with_flags(flags, || {
        realize(all).unwrap();
        all.iter().map(|v| v.to_vec_f64().unwrap()).collect()
    })
}

/// The graph of [`run`] in `dtype`, built with `flags` in force (which chooses the
/// path), not realised.
fn build(flags: Flags, dtype: DType, case: &Case, data: &[Vec<f64>], gy: &[f64]) -> Vec<Var> {
    build_with(conv2d, flags, dtype, case, data, gy)
}

/// The convolution's signature, to build with [`conv2d`] or [`conv2d_library`].
type ConvFn = fn(&Var, &Var, Option<&Var>, &Conv2dOptions) -> jit_core::Result<Var>;

/// [`build`] with the convolution `conv`.
fn build_with(conv: ConvFn, flags: Flags, dtype: DType, case: &Case, data: &[Vec<f64>], gy: &[f64]) -> Vec<Var> {
    with_flags(flags, || {
        let [n, c, h, w] = case.x;
        let shapes: Vec<Vec<usize>> =
            vec![vec![n, c, h, w], vec![case.o, c / case.opts.groups, case.kernel[0], case.kernel[1]], vec![case.o]];
        let params: Vec<Var> = data
            .iter()
            .zip(&shapes)
            .map(|(d, s)| Var::from_vec(d.clone(), s).unwrap().cast(dtype).requires_grad_(true).unwrap())
            .collect();
        let b = if case.bias { Some(&params[2]) } else { None };
        let y = conv(&params[0], &params[1], b, &case.opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let seed = Var::from_vec(gy.to_vec(), y.shape()).unwrap().cast(dtype);
        let used = if case.bias { 3 } else { 2 };
        let grads = grad_with(&y, &params[..used], GradOptions { seed: Some(seed), create_graph: false })
            .unwrap_or_else(|e| panic!("{}: grad: {e}", case.name));
        let mut all = vec![y];
        all.extend(grads);
        all
    })
}

fn check(ctx: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    for (k, (g, r)) in got.iter().zip(want).enumerate() {
        let what = ["output", "d input", "d weight", "d bias"][k];
        assert_eq!(g.len(), r.len(), "{ctx}, {what}: length");
        let scale = r.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in g.iter().zip(r).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * scale + 1e-5 * b.abs(),
                "{ctx}, {what}: element {i}: got {a}, reference {b}"
            );
        }
    }
}

/// Random data for `case` (values exact in f32, so that every backend starts from
/// the same numbers) and a seed gradient of the output's size.
fn data_for(rng: &mut Rng, case: &Case) -> (Vec<Vec<f64>>, Vec<f64>) {
    let [n, c, h, w] = case.x;
    let o = &case.opts;
    let out =
        |len: usize, d: usize| (len + 2 * o.padding[d] - o.dilation[d] * (case.kernel[d] - 1) - 1) / o.stride[d] + 1;
    let sizes = [n * c * h * w, case.o * (c / o.groups) * case.kernel[0] * case.kernel[1], case.o];
    let data = sizes.iter().map(|&k| rng.nd(&[k], -1.0, 1.0).rounded(DType::F32).data).collect();
    let gy = rng.nd(&[n * case.o * out(h, 0) * out(w, 1)], -1.0, 1.0).rounded(DType::F32).data;
    (data, gy)
}

#[test]
fn every_conv2d_path_matches_the_reference_backend() {
    let mut rng = Rng::fresh("every_conv2d_path_matches_the_reference_backend");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    for fusion in [true, false] {
        let cpu = Flags { backend: Backend::Cpu, fusion, dump: false };
        for case in cases(&mut rng) {
            let (data, gy) = data_for(&mut rng, &case);
            let want = run(reference, &case, &data, &gy);
            let got = run(cpu, &case, &data, &gy);
            let ctx = format!("{} ({}), x {:?}", case.name, if fusion { "fused" } else { "unfused" }, case.x);
            check(&ctx, &got, &want);
        }
    }
}

/// On the CUDA backend every convolution is im2col + matrix products (the direct,
/// shifted-gemm and stride-2 products exist on the host only): the graph built with
/// the CUDA backend in force plans no other library call, forward and backward, and
/// realised on the CPU backend it matches the reference. Needs no GPU: the backend
/// only chooses the path while the graph is built.
#[test]
fn convolutions_built_for_cuda_use_device_products_only() {
    let mut rng = Rng::fresh("convolutions_built_for_cuda_use_device_products_only");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cuda = Flags { backend: Backend::Cuda, fusion: true, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    for case in cases(&mut rng) {
        let (data, gy) = data_for(&mut rng, &case);
        let for_cuda = build(cuda, DType::F32, &case, &data, &gy);
        let externs = with_flags(cuda, || planned_externs(&for_cuda)).unwrap();
        assert!(!externs.is_empty(), "{}: no matrix product planned", case.name);
        // cuDNN's passes where it is usable (a GPU machine), matrix products otherwise
        for op in &externs {
            assert!(
                matches!(op, ExternOp::Matmul { .. } | ExternOp::Conv2d { .. }),
                "{}: {op:?} has no device implementation",
                case.name
            );
        }
        assert_eq!(
            externs.iter().any(|op| matches!(op, ExternOp::Conv2d { .. })),
            jit_core::cudnn_usable(),
            "{}: cuDNN's passes are planned exactly when cuDNN is usable: {externs:?}",
            case.name
        );
        let host = build(cpu, DType::F32, &case, &data, &gy);
        let host_externs = with_flags(cpu, || planned_externs(&host)).unwrap();
        if case.name.starts_with("direct") || case.name.starts_with("shifted") {
            assert!(
                host_externs.iter().any(|op| !matches!(op, ExternOp::Matmul { .. })),
                "{}: the CPU backend should use its own product, planned {host_externs:?}",
                case.name
            );
        }
        let got = with_flags(cpu, || {
            realize(&for_cuda).unwrap();
            for_cuda.iter().map(|v| v.to_vec_f64().unwrap()).collect::<Vec<_>>()
        });
        let want = run(reference, &case, &data, &gy);
        check(&format!("{} built for cuda, run on the cpu, x {:?}", case.name, case.x), &got, &want);
    }
}

/// f64 convolutions on the CPU backend are computed in f64 (im2col and an f64 gemm;
/// the direct and shifted-gemm products compute in f32): within 1e-12 of the
/// reference, forward and backward.
#[test]
fn f64_convolutions_keep_f64_precision() {
    let mut rng = Rng::fresh("f64_convolutions_keep_f64_precision");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    for case in cases(&mut rng) {
        // not rounded to f32: f64 data shows an f32 computation at once
        let (_, gy) = data_for(&mut rng, &case);
        let [n, c, h, w] = case.x;
        let sizes = [n * c * h * w, case.o * (c / case.opts.groups) * case.kernel[0] * case.kernel[1], case.o];
        let data: Vec<Vec<f64>> = sizes.iter().map(|&k| rng.nd(&[k], -1.0, 1.0).data).collect();
        let want = run(reference, &case, &data, &gy);
        let all = build(cpu, DType::F64, &case, &data, &gy);
        let got: Vec<Vec<f64>> = with_flags(cpu, || {
            realize(&all).unwrap();
            all.iter().map(|v| v.to_vec_f64().unwrap()).collect()
        });
        for (k, (g, r)) in got.iter().zip(&want).enumerate() {
            let scale = r.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(r).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-12 * scale,
                    "{} (f64), {}: element {i}: cpu {a}, reference {b}",
                    case.name,
                    ["output", "d input", "d weight", "d bias"][k]
                );
            }
        }
    }
}

/// `conv2d_library` (cuDNN's three passes on the CUDA backend; here their host
/// loops) against `conv2d` on the reference backend (im2col and matrix products, an
/// independent formulation), forward and backward, fused and unfused, every case
/// (groups, strides, dilation, reflect padding, 1x1): only library passes are
/// planned, one per product.
#[test]
fn library_convolution_passes_match_the_reference_backend() {
    let mut rng = Rng::fresh("library_convolution_passes_match_the_reference_backend");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    for fusion in [true, false] {
        let cpu = Flags { backend: Backend::Cpu, fusion, dump: false };
        for case in cases(&mut rng) {
            let (data, gy) = data_for(&mut rng, &case);
            let all = build_with(conv2d_library, cpu, DType::F32, &case, &data, &gy);
            let externs = with_flags(cpu, || planned_externs(&all)).unwrap();
            let passes: Vec<ConvPass> = externs
                .iter()
                .map(|op| match op {
                    ExternOp::Conv2d { pass, .. } => *pass,
                    other => panic!("{}: {other:?} planned besides the library passes", case.name),
                })
                .collect();
            for pass in [ConvPass::Forward, ConvPass::BackwardData, ConvPass::BackwardFilter] {
                assert_eq!(passes.iter().filter(|p| **p == pass).count(), 1, "{}: {passes:?}", case.name);
            }
            let got = realized(cpu, &all);
            let want = run(reference, &case, &data, &gy);
            let ctx = format!("{} library ({}), x {:?}", case.name, if fusion { "fused" } else { "unfused" }, case.x);
            check(&ctx, &got, &want);
        }
    }
}

/// `d/d(x, w, gy) <r, d<gy, conv(x, w)>/dx> + <s, d<gy, conv(x, w)>/dw>` for random
/// `r` (`rx`) and `s` (`rw`): the gradients of the first gradients, built with
/// `create_graph`, in `dtype` with `flags` in force.
#[allow(clippy::too_many_arguments)]
fn second_derivatives(
    conv: ConvFn,
    flags: Flags,
    dtype: DType,
    case: &Case,
    data: &[Vec<f64>],
    gy: &[f64],
    rx: &[f64],
    rw: &[f64],
) -> Vec<Vec<f64>> {
    let wshape = [case.o, case.x[1] / case.opts.groups, case.kernel[0], case.kernel[1]];
    with_flags(flags, || {
        let v = |d: &[f64], s: &[usize]| Var::from_vec(d.to_vec(), s).unwrap().cast(dtype);
        let x = v(&data[0], &case.x).requires_grad_(true).unwrap();
        let wt = v(&data[1], &wshape).requires_grad_(true).unwrap();
        let y = conv(&x, &wt, None, &case.opts).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let g = v(gy, y.shape()).requires_grad_(true).unwrap();
        let inner = (&y * &g).sum_all().unwrap();
        let opts = GradOptions { seed: None, create_graph: true };
        let first = grad_with(&inner, &[x.clone(), wt.clone()], opts).unwrap();
        let outer = (&first[0] * &v(rx, &case.x))
            .sum_all()
            .unwrap()
            .try_add((&first[1] * &v(rw, &wshape)).sum_all().unwrap())
            .unwrap();
        let all = grad_with(&outer, &[x, wt, g], GradOptions::default())
            .unwrap_or_else(|e| panic!("{}: second derivatives: {e}", case.name));
        realize(&all).unwrap();
        all.iter().map(|t| t.to_vec_f64().unwrap()).collect()
    })
}

/// [`second_derivatives`] of `conv` on the CPU backend in f32 against `conv2d` on the
/// reference backend in f64, for every case of [`cases`] that `keep` selects.
fn second_derivatives_match(test: &str, conv: ConvFn, keep: fn(&Case) -> bool) {
    let mut rng = Rng::fresh(test);
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    for case in cases(&mut rng).into_iter().filter(keep) {
        let (data, gy) = data_for(&mut rng, &case);
        let [n, c, h, w] = case.x;
        let wshape = [case.o, c / case.opts.groups, case.kernel[0], case.kernel[1]];
        let rx = rng.nd(&[n, c, h, w], -1.0, 1.0).rounded(DType::F32).data;
        let rw = rng.nd(&wshape, -1.0, 1.0).rounded(DType::F32).data;
        let got = second_derivatives(conv, cpu, DType::F32, &case, &data, &gy, &rx, &rw);
        let want = second_derivatives(conv2d, reference, DType::F64, &case, &data, &gy, &rx, &rw);
        for (k, (g, r)) in got.iter().zip(&want).enumerate() {
            let scale = r.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(r).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{}: second derivative {}: element {i}: cpu {a}, reference {b}",
                    case.name,
                    ["d x", "d w", "d gy"][k]
                );
            }
        }
    }
}

/// Gradients of gradients through the library passes (each pass's gradient is
/// made of the other two) against the im2col formulation on the reference
/// backend: `d/d(x, w, gy) <r, d<gy, conv(x, w)>/dx>` and the same through `dw`.
#[test]
fn library_convolution_second_derivatives_match_the_reference() {
    second_derivatives_match("library_convolution_second_derivatives_match_the_reference", conv2d_library, |c| {
        c.opts.padding_mode == ConvPadding::Zeros
    });
}

/// The same through every host path of `conv2d` (the direct and shifted-gemm
/// products, the stride-2 product, space-to-depth, im2col, reflect padding): the
/// host passes' own gradient rules (each made of the other two, the forward one's
/// output gradient masked to the grid's valid corner), and the weight's gradient
/// read from the input itself.
#[test]
fn host_convolution_second_derivatives_match_the_reference() {
    second_derivatives_match("host_convolution_second_derivatives_match_the_reference", conv2d, |_| true);
}

/// The space-to-depth path rewrites the convolution; check it against an independent
/// formulation on the reference backend (f64): the unit-stride convolution with the
/// same padding, sampled every `stride` rows and columns, forward and backward.
#[test]
fn strided_convolutions_equal_subsampled_unit_stride_ones() {
    let mut rng = Rng::fresh("strided_convolutions_equal_subsampled_unit_stride_ones");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    for case in cases(&mut rng).into_iter().filter(|c| c.name.starts_with("space-to-depth")) {
        let [n, c, h, w] = case.x;
        let x = rng.nd(&[n, c, h, w], -1.0, 1.0).var(DType::F64);
        let wt = rng.nd(&[case.o, c, case.kernel[0], case.kernel[1]], -1.0, 1.0).var(DType::F64);
        with_flags(reference, || {
            let (x, wt) = (x.requires_grad_(true).unwrap(), wt.requires_grad_(true).unwrap());
            let strided = conv2d(&x, &wt, None, &case.opts).unwrap();
            let unit = Conv2dOptions { stride: [1, 1], ..case.opts };
            let [sh, sw] = case.opts.stride;
            let sampled = conv2d(&x, &wt, None, &unit)
                .unwrap()
                .slice(2, 0, None, sh)
                .unwrap()
                .slice(3, 0, None, sw)
                .unwrap()
                .narrow(2, 0, strided.shape()[2])
                .unwrap()
                .narrow(3, 0, strided.shape()[3])
                .unwrap();
            assert_eq!(strided.shape(), sampled.shape(), "{}", case.name);
            let gy = rng.nd(strided.shape(), -1.0, 1.0).var(DType::F64);
            let seed = |gy: &Var| GradOptions { seed: Some(gy.clone()), create_graph: false };
            let g1 = grad_with(&strided, &[x.clone(), wt.clone()], seed(&gy)).unwrap();
            let g2 = grad_with(&sampled, &[x.clone(), wt.clone()], seed(&gy)).unwrap();
            for (what, a, b) in
                [("output", &strided, &sampled), ("d input", &g1[0], &g2[0]), ("d weight", &g1[1], &g2[1])]
            {
                let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{} {what} element {i}: {p} vs {q}", case.name);
                }
            }
        });
    }
}

/// `conv_transpose2d_library` (cuDNN's backward-data pass on the CUDA backend; here
/// its host loop) against `conv_transpose2d` on the reference backend (a matrix
/// product and a scatter-add), forward and backward (input, weight, bias), for
/// strides with output padding, groups and dilation.
#[test]
fn library_transposed_convolutions_match_the_reference_backend() {
    let mut rng = Rng::fresh("library_transposed_convolutions_match_the_reference_backend");
    let reference = Flags { backend: Backend::Reference, fusion: false, dump: false };
    let cpu = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    let cases = [
        (
            [2, 4, 5, 6],
            [4, 3, 3, 3],
            ConvTranspose2dOptions { stride: [2, 2], padding: [1, 1], output_padding: [1, 0], ..Default::default() },
        ),
        ([1, 6, 4, 5], [6, 2, 3, 2], ConvTranspose2dOptions { stride: [1, 2], groups: 3, ..Default::default() }),
        (
            [1, 2, 5, 4],
            [2, 3, 3, 3],
            ConvTranspose2dOptions { dilation: [2, 1], padding: [2, 1], ..Default::default() },
        ),
    ];
    for (xs, ws, o) in cases {
        let x = rng.nd(&xs, -1.0, 1.0).rounded(DType::F32).data;
        let w = rng.nd(&ws, -1.0, 1.0).rounded(DType::F32).data;
        let cout = ws[1] * o.groups;
        let b = rng.nd(&[cout], -1.0, 1.0).rounded(DType::F32).data;
        type TConv = fn(&Var, &Var, Option<&Var>, &ConvTranspose2dOptions) -> jit_core::Result<Var>;
        let eval = |conv: TConv, flags: Flags, dtype: DType, gy: Option<&[f64]>| -> (Vec<Vec<f64>>, Vec<usize>) {
            with_flags(flags, || {
                let v = |d: &[f64], s: &[usize]| {
                    Var::from_vec(d.to_vec(), s).unwrap().cast(dtype).requires_grad_(true).unwrap()
                };
                let (xv, wv, bv) = (v(&x, &xs), v(&w, &ws), v(&b, &[cout]));
                let y = conv(&xv, &wv, Some(&bv), &o).unwrap();
                let shape = y.shape().to_vec();
                let Some(gy) = gy else { return (vec![], shape) };
                let seed = Var::from_vec(gy.to_vec(), &shape).unwrap().cast(dtype);
                let grads =
                    grad_with(&y, &[xv, wv, bv], GradOptions { seed: Some(seed), create_graph: false }).unwrap();
                let mut all = vec![y];
                all.extend(grads);
                realize(&all).unwrap();
                (all.iter().map(|t| t.to_vec_f64().unwrap()).collect(), shape)
            })
        };
        let (_, shape) = eval(conv_transpose2d, reference, DType::F64, None);
        let gy = rng.nd(&shape, -1.0, 1.0).rounded(DType::F32).data;
        let (want, _) = eval(conv_transpose2d, reference, DType::F64, Some(&gy));
        let (got, got_shape) = eval(conv_transpose2d_library, cpu, DType::F32, Some(&gy));
        assert_eq!(got_shape, shape, "{o:?}");
        check(&format!("transposed {o:?}"), &got, &want);
        let planned = with_flags(cpu, || {
            let xv = Var::from_vec(x.clone(), &xs).unwrap();
            let wv = Var::from_vec(w.clone(), &ws).unwrap();
            planned_externs(&[conv_transpose2d_library(&xv, &wv, None, &o).unwrap()]).unwrap()
        });
        assert!(
            matches!(planned.as_slice(), [ExternOp::Conv2d { pass: ConvPass::BackwardData, .. }]),
            "{o:?}: {planned:?}"
        );
    }
}

/// The host convolution passes on the padded grid, each differentiated by its own
/// rule (made of the other two): against finite differences on the reference
/// backend (f64), and the CPU backend's gradients (f32) against the reference's.
/// The output-gradient inputs of the two backward passes are zero outside the
/// grid's valid corner (the passes' contract), and the seed gradient of the forward
/// pass is not: its rule must ignore it there, where the CPU's products would read
/// it.
#[test]
fn host_convolution_passes_have_gradients() {
    use integration_tests::{gradcheck::check, Nd};
    let mut rng = Rng::fresh("host_convolution_passes_have_gradients");
    let (n, c, o, hp, wp) = (2, 3, 4, 6 + rng.below(3), 7 + rng.below(4));
    let (kernel, dilation) = ([3, 2], [1, 2]);
    let (oh, ow) = (hp - (kernel[0] - 1) * dilation[0], wp - (kernel[1] - 1) * dilation[1]);
    let valid = |x: Nd| Nd::from_fn(&x.shape.clone(), |i| if i[2] < oh && i[3] < ow { x.at(i) } else { 0.0 });
    for pass in [ConvPass::Forward, ConvPass::BackwardData, ConvPass::BackwardFilter] {
        let w = rng.nd(&[o, c, kernel[0], kernel[1]], -1.0, 1.0).rounded(DType::F32);
        let xp = rng.nd(&[n, c, hp, wp], -1.0, 1.0).rounded(DType::F32);
        let dy = valid(rng.nd(&[n, o, hp, wp], -1.0, 1.0).rounded(DType::F32));
        let inputs = match pass {
            ConvPass::Forward => [xp, w],
            ConvPass::BackwardData => [dy, w],
            ConvPass::BackwardFilter => [dy, xp],
        };
        let op = ExternOp::Conv2dShift { pass, kernel, dilation };
        check(&format!("{pass:?}"), &mut rng, &inputs, |v| Var::extern_op(op, v));
        let out_shape = match pass {
            ConvPass::Forward => vec![n, o, hp, wp],
            ConvPass::BackwardData => vec![n, c, hp, wp],
            ConvPass::BackwardFilter => vec![o, c, kernel[0], kernel[1]],
        };
        let seed = rng.nd(&out_shape, -1.0, 1.0).rounded(DType::F32);
        let grads = |backend: Backend, dtype: DType| -> Vec<Vec<f64>> {
            with_flags(Flags { backend, fusion: true, dump: false }, || {
                let vars: Vec<Var> = inputs.iter().map(|x| x.var(dtype).requires_grad_(true).unwrap()).collect();
                let y = Var::extern_op(op, &vars).unwrap();
                let opts = GradOptions { seed: Some(seed.var(dtype)), create_graph: false };
                let g = grad_with(&y, &vars, opts).unwrap();
                realize(&g).unwrap();
                g.iter().map(|t| t.to_vec_f64().unwrap()).collect()
            })
        };
        let (got, want) = (grads(Backend::Cpu, DType::F32), grads(Backend::Reference, DType::F64));
        for (k, (g, r)) in got.iter().zip(&want).enumerate() {
            let scale = r.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g.iter().zip(r).enumerate() {
                assert!((a - b).abs() <= 1e-5 * scale, "{pass:?}: gradient {k}, element {i}: cpu {a}, reference {b}");
            }
        }
    }
}
