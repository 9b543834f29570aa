//! AdaIN (Huang and Belongie, 2017) as the PyTorch reference code defines it
//! (naoto0804/pytorch-AdaIN): the normalised VGG19 encoder to relu4_1, adaptive
//! instance normalisation, the mirrored decoder (reflection pads, nearest x2
//! upsampling, no output activation), the content-style trade-off `alpha`,
//! interpolation between styles, colour preservation, and the training losses.
//!
//! Statistics follow the PyTorch reference's `calc_mean_std`: the variance is
//! *unbiased* (divides by `H*W - 1`) and `eps = 1e-5` is added inside the square
//! root. The original Lua/Torch code uses the biased variance and adds `eps` to the
//! standard deviation; on 32x32 relu4_1 maps the two differ by about 0.1% in the
//! standard deviation, and checkpoints trained with either work with both.

use crate::vgg::{build, check_image, load_checkpoint, Layer, Vgg19};
use jit_nn::layers::Sequential;
use jit_nn::{Module, ModuleExt};
use jit_ops::prelude::*;
use std::path::Path;

/// The `eps` of the reference `calc_mean_std`.
pub const EPS: f64 = 1e-5;

/// Per-sample, per-channel mean and standard deviation of `feat` (`[N, C, H, W]`),
/// each `[N, C, 1, 1]`: the reference `calc_mean_std` (unbiased variance, `eps`
/// inside the square root). A map with a single position has no unbiased variance
/// and is refused.
pub fn calc_mean_std(feat: &Var, eps: f64) -> Result<(Var, Var)> {
    let op = "calc_mean_std";
    let [_, _, h, w] = match *feat.shape() {
        [n, c, h, w] => [n, c, h, w],
        _ => return Err(Error::shape(op, format!("expects features [N, C, H, W], got {:?}", feat.shape()))),
    };
    if h * w < 2 {
        return Err(Error::shape(
            op,
            format!(
                "features of shape {:?} have one position per channel: the unbiased variance needs two (the image is too small for this depth)",
                feat.shape()
            ),
        ));
    }
    let mean = feat.mean(&[2, 3], true)?;
    let std = feat.var(&[2, 3], true, true)?.try_add(eps)?.sqrt();
    Ok((mean, std))
}

/// `(feat - mean) / std` per sample and channel (the reference
/// `mean_variance_norm`, used by MCCNet and SANet).
pub fn mean_variance_norm(feat: &Var) -> Result<Var> {
    let (mean, std) = calc_mean_std(feat, EPS)?;
    feat.try_sub(&mean)?.try_div(&std)
}

/// Adaptive instance normalisation: `content` features re-normalised to the
/// per-channel mean and standard deviation of `style` features. The style batch
/// is 1 or the content's; spatial sizes may differ.
pub fn adain(content: &Var, style: &Var) -> Result<Var> {
    if content.ndim() != 4 || style.ndim() != 4 || content.shape()[1] != style.shape()[1] {
        return Err(Error::shape(
            "adain",
            format!("content {:?} and style {:?} must be [N, C, H, W] with the same C", content.shape(), style.shape()),
        ));
    }
    let (sn, cn) = (style.shape()[0], content.shape()[0]);
    if sn != 1 && sn != cn {
        return Err(Error::shape(
            "adain",
            format!("a style batch of {sn} does not match a content batch of {cn} (use 1 or {cn})"),
        ));
    }
    let (s_mean, s_std) = calc_mean_std(style, EPS)?;
    let (c_mean, c_std) = calc_mean_std(content, EPS)?;
    // (content - c_mean) / c_std * s_std + s_mean, with the ratio of the standard
    // deviations formed once per sample and channel: a multiplication per element
    // instead of a division and a multiplication (within an ulp of the reference's
    // order)
    content.try_sub(&c_mean)?.try_mul(s_std.try_div(&c_std)?)?.try_add(&s_mean)
}

/// The 29 layers of the reference decoder (`net.decoder`).
pub(crate) fn decoder_layers() -> Vec<Layer> {
    use Layer::*;
    let mut out = Vec::new();
    let conv = |out: &mut Vec<Layer>, i, o| out.extend([Pad, Conv(i, o, 3), Relu]);
    conv(&mut out, 512, 256);
    out.push(Up);
    for _ in 0..3 {
        conv(&mut out, 256, 256);
    }
    conv(&mut out, 256, 128);
    out.push(Up);
    conv(&mut out, 128, 128);
    conv(&mut out, 128, 64);
    out.push(Up);
    conv(&mut out, 64, 64);
    out.extend([Pad, Conv(64, 3, 3)]); // no activation at the output
    out
}

/// The AdaIN decoder (also MCCNet's and SANet's), with PyTorch's default
/// initialisation and its parameters requiring gradients. Layers are named by
/// position as in `decoder.pth` (`1.weight` .. `28.bias`).
pub fn decoder() -> Result<Sequential> {
    build(&decoder_layers())
}

/// The AdaIN network: encoder (frozen) and decoder.
pub struct AdaIn {
    /// The normalised VGG19.
    pub vgg: Vgg19,
    /// The decoder.
    pub decoder: Sequential,
}

impl AdaIn {
    /// Default-initialised encoder and decoder (for training, or to load into).
    pub fn new() -> Result<AdaIn> {
        Ok(AdaIn { vgg: Vgg19::new()?, decoder: decoder()? })
    }

    /// The encoder from `vgg_normalised.pth` and the decoder from `decoder.pth`
    /// (or `.safetensors` files with the same keys); every decoder key must match.
    pub fn load(vgg: &Path, decoder_path: &Path) -> Result<AdaIn> {
        let net = AdaIn { vgg: Vgg19::load(vgg)?, decoder: decoder()? };
        load_checkpoint(&net.decoder, decoder_path, true)?;
        Ok(net)
    }

    /// Stylises `content` (`[1, 3, H, W]` in 0..1, or a batch) with `styles`
    /// (each `[1, 3, h, w]`): the reference `style_transfer`. With several styles,
    /// `weights` (one per style, the reference normalises them to sum 1) mix the
    /// AdaIN targets; `alpha` in 0..=1 trades style (1) against content (0). The
    /// output size is the decoder's: H and W rounded down to multiples of 8.
    pub fn stylize(&self, content: &Var, styles: &[Var], weights: Option<&[f64]>, alpha: f64) -> Result<Var> {
        check_image("adain", content)?;
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::argument("adain", format!("alpha must be in 0..=1, got {alpha}")));
        }
        let weights: Vec<f64> = match weights {
            Some(w) if w.len() != styles.len() => {
                return Err(Error::argument(
                    "adain",
                    format!("{} interpolation weights for {} styles", w.len(), styles.len()),
                ))
            }
            Some(w) => w.to_vec(),
            None if styles.len() == 1 => vec![1.0],
            None => {
                return Err(Error::argument("adain", format!("{} styles need interpolation weights", styles.len())))
            }
        };
        let content_f = self.vgg.encode(content)?;
        let mut feat: Option<Var> = None;
        for (s, w) in styles.iter().zip(&weights) {
            check_image("adain", s)?;
            let t = adain(&content_f, &self.vgg.encode(s)?)?.try_mul(*w)?;
            feat = Some(match feat {
                None => t,
                Some(f) => f.try_add(&t)?,
            });
        }
        let feat = feat.ok_or_else(|| Error::argument("adain", "no style image given"))?;
        let feat = feat.try_mul(alpha)?.try_add(&content_f.try_mul(1.0 - alpha)?)?;
        self.decoder.forward(&feat)
    }

    /// The training losses of the reference `Net.forward` on a batch of `content`
    /// and `style` images: `(loss_c, loss_s)`, the content loss at relu4_1 against
    /// the AdaIN target and the style loss as mean/std MSE over relu1_1..relu4_1.
    pub fn losses(&self, content: &Var, style: &Var, alpha: f64) -> Result<(Var, Var)> {
        let style_feats = self.vgg.features(style, 4)?;
        let content_feat = self.vgg.encode(content)?;
        let t = adain(&content_feat, &style_feats[3])?;
        let t = t.try_mul(alpha)?.try_add(&content_feat.try_mul(1.0 - alpha)?)?;
        let g = self.decoder.forward(&t)?;
        if g.shape() != content.shape() {
            return Err(Error::shape(
                "adain training",
                format!(
                    "images of {:?} come back from the decoder as {:?}: training crops must be multiples of 8",
                    content.shape(),
                    g.shape()
                ),
            ));
        }
        let g_feats = self.vgg.features(&g, 4)?;
        let loss_c = mse_loss(&g_feats[3], &t, Reduction::Mean)?;
        let mut loss_s: Option<Var> = None;
        for (a, b) in g_feats.iter().zip(&style_feats) {
            let l = style_loss(a, b)?;
            loss_s = Some(match loss_s {
                None => l,
                Some(s) => s.try_add(&l)?,
            });
        }
        Ok((loss_c, loss_s.expect("four levels")))
    }

    /// The decoder's parameters (what training optimises).
    pub fn trainable(&self) -> Vec<Var> {
        self.decoder.parameters()
    }
}

/// The reference `calc_style_loss`: MSE between the means plus MSE between the
/// standard deviations of two feature maps.
pub fn style_loss(input: &Var, target: &Var) -> Result<Var> {
    let (im, is) = calc_mean_std(input, EPS)?;
    let (tm, ts) = calc_mean_std(target, EPS)?;
    mse_loss(&im, &tm, Reduction::Mean)?.try_add(&mse_loss(&is, &ts, Reduction::Mean)?)
}

/// Colour preservation of the reference code (`coral`): returns `source`
/// (`[3, H, W]` or `[1, 3, H, W]`, typically the style image) with its colour
/// mean and covariance matched to `target`'s (the content image). The 3x3 matrix
/// square roots are computed on the host in f64.
pub fn coral(source: &Var, target: &Var) -> Result<Var> {
    let op = "coral";
    let flat = |x: &Var| -> Result<(Vec<f64>, usize)> {
        let n = x.numel() / 3;
        let ok = matches!(*x.shape(), [3, _, _] | [1, 3, _, _]);
        if !ok || n < 2 {
            return Err(Error::shape(
                op,
                format!("expects one RGB image [3, H, W] or [1, 3, H, W], got {:?}", x.shape()),
            ));
        }
        Ok((x.to_vec_f64()?, n))
    };
    let (s, sn) = flat(source)?;
    let (t, tn) = flat(target)?;
    let stats = |x: &[f64], n: usize| -> ([f64; 3], [f64; 3], Vec<f64>, Mat3) {
        let mut mean = [0.0; 3];
        let mut std = [0.0; 3];
        let mut norm = vec![0.0; 3 * n];
        for c in 0..3 {
            let ch = &x[c * n..(c + 1) * n];
            mean[c] = ch.iter().sum::<f64>() / n as f64;
            std[c] = (ch.iter().map(|v| (v - mean[c]).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
            for (o, v) in norm[c * n..(c + 1) * n].iter_mut().zip(ch) {
                *o = (v - mean[c]) / std[c];
            }
        }
        let mut cov = [[0.0; 3]; 3];
        for (i, row) in cov.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (0..n).map(|k| norm[i * n + k] * norm[j * n + k]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        (mean, std, norm, cov)
    };
    let (_, _, s_norm, s_cov) = stats(&s, sn);
    let (t_mean, t_std, _, t_cov) = stats(&t, tn);
    if s_cov.iter().flatten().chain(t_cov.iter().flatten()).any(|v| !v.is_finite()) {
        return Err(Error::argument(op, "an image with a constant colour channel has no colour statistics to match"));
    }
    let m = mul3(&sym_pow(&t_cov, 0.5), &sym_pow(&s_cov, -0.5));
    let mut out = vec![0f32; 3 * sn];
    for c in 0..3 {
        for k in 0..sn {
            let v: f64 = (0..3).map(|j| m[c][j] * s_norm[j * sn + k]).sum();
            out[c * sn + k] = (v * t_std[c] + t_mean[c]) as f32;
        }
    }
    Var::from_vec(out, source.shape())
}

type Mat3 = [[f64; 3]; 3];

fn mul3(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut o = [[0.0; 3]; 3];
    for (i, row) in o.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    o
}

/// `a^p` of a symmetric positive-definite 3x3 matrix through its eigen
/// decomposition (cyclic Jacobi rotations).
fn sym_pow(a: &Mat3, p: f64) -> Mat3 {
    let mut d = *a;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _ in 0..64 {
        let off = d[0][1].powi(2) + d[0][2].powi(2) + d[1][2].powi(2);
        if off < 1e-30 * (d[0][0].powi(2) + d[1][1].powi(2) + d[2][2].powi(2)) {
            break;
        }
        for (i, j) in [(0, 1), (0, 2), (1, 2)] {
            if d[i][j] == 0.0 {
                continue;
            }
            let theta = (d[j][j] - d[i][i]) / (2.0 * d[i][j]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
            // d <- R^T d R, v <- v R with R the rotation in the (i, j) plane
            for row in d.iter_mut() {
                let (a, b) = (row[i], row[j]);
                row[i] = c * a - s * b;
                row[j] = s * a + c * b;
            }
            let (ri, rj) = (d[i], d[j]);
            d[i] = std::array::from_fn(|k| c * ri[k] - s * rj[k]);
            d[j] = std::array::from_fn(|k| s * ri[k] + c * rj[k]);
            for row in v.iter_mut() {
                let (vi, vj) = (row[i], row[j]);
                row[i] = c * vi - s * vj;
                row[j] = s * vi + c * vj;
            }
        }
    }
    let mut o = [[0.0; 3]; 3];
    for (r, row) in o.iter_mut().enumerate() {
        for (col, x) in row.iter_mut().enumerate() {
            *x = (0..3).map(|k| v[r][k] * d[k][k].max(0.0).powf(p) * v[col][k]).sum();
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_positions_match_the_reference() {
        let l = decoder_layers();
        assert_eq!(l.len(), 29);
        assert_eq!(l[1], Layer::Conv(512, 256, 3));
        assert_eq!(l[28], Layer::Conv(64, 3, 3));
        let ups: Vec<usize> = l.iter().enumerate().filter(|(_, x)| **x == Layer::Up).map(|(i, _)| i).collect();
        assert_eq!(ups, [3, 16, 23]);
    }

    #[test]
    fn matrix_powers_invert_and_square() {
        let a = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
        let r = sym_pow(&a, 0.5);
        let sq = mul3(&r, &r);
        let inv = mul3(&sym_pow(&a, -1.0), &a);
        for i in 0..3 {
            for j in 0..3 {
                assert!((sq[i][j] - a[i][j]).abs() < 1e-12, "{sq:?}");
                assert!((inv[i][j] - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{inv:?}");
            }
        }
    }
}
