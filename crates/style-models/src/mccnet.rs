//! MCCNet (Deng et al., "Arbitrary Video Style Transfer via Multi-Channel
//! Correlation", AAAI 2021) as its reference code defines it (diyiiyiii/MCCNet,
//! `net.py`): the multi-channel correlation module at relu4_1 between the VGG19
//! encoder and the AdaIN decoder, and its training losses (content at relu4_1 and
//! relu5_1 on normalised features, mean/std style loss over five levels, the noise
//! term for temporal stability, the two identity terms, total variation).
//!
//! Checkpoints: `mcc_module_iter_N.pth` holds `MCCN.f.weight`, `MCCN.g.*`,
//! `MCCN.out_conv.*`, `MCCN.fc.*`; the decoder has the AdaIN decoder's layout.

use crate::adain::{decoder, mean_variance_norm, style_loss};
use crate::vgg::{check_image, load_checkpoint, Vgg19};
use jit_nn::layers::{Conv2d, Linear, Sequential};
use jit_nn::{Module, ModuleExt};
use jit_ops::prelude::*;
use std::path::Path;

/// Loss weights of the reference `train.py`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MccWeights {
    /// Content loss (3).
    pub content: f64,
    /// Style loss (10).
    pub style: f64,
    /// Noise (temporal stability) loss (3000).
    pub noise: f64,
    /// Identity loss on images (70).
    pub identity1: f64,
    /// Identity loss on features (1).
    pub identity2: f64,
    /// Total variation (1e-4).
    pub tv: f64,
}

impl Default for MccWeights {
    fn default() -> Self {
        MccWeights { content: 3.0, style: 10.0, noise: 3000.0, identity1: 70.0, identity2: 1.0, tv: 1e-4 }
    }
}

/// The multi-channel correlation block (`MCCNet` in the reference code).
pub struct Mcc {
    /// 1x1 convolution of the normalised content features.
    pub f: Conv2d,
    /// 1x1 convolution of the normalised style features.
    pub g: Conv2d,
    /// 1x1 output convolution.
    pub out_conv: Conv2d,
    /// Mixes the per-channel style correlations.
    pub fc: Linear,
}

impl Mcc {
    /// A block for `c` channels with PyTorch's default initialisation.
    pub fn new(c: usize) -> Result<Mcc> {
        let conv = || Conv2d::new(c, c, 1, Conv2dOptions::new(1, 0), true);
        Ok(Mcc { f: conv()?, g: conv()?, out_conv: conv()?, fc: Linear::new(c, c, true)? })
    }

    /// `content + out_conv(f(norm(content)) * fc(sum(G^2) / sum(G)))` with
    /// `G = g(norm(style))` summed per channel over the style's positions.
    pub fn apply(&self, content: &Var, style: &Var) -> Result<Var> {
        let (b, c) = match (content.shape(), style.shape()) {
            ([bc, cc, _, _], [bs, cs, _, _]) if cc == cs && (bs == bc || *bs == 1) => (*bs, *cs),
            _ => {
                return Err(Error::shape(
                    "mccnet",
                    format!(
                        "content {:?} and style {:?} features must be [N, C, H, W] with the same C (style batch 1 or the content's)",
                        content.shape(),
                        style.shape()
                    ),
                ))
            }
        };
        let f = self.f.forward(&mean_variance_norm(content)?)?;
        let g = self.g.forward(&mean_variance_norm(style)?)?.flatten(2, 3)?;
        let corr = g.try_mul(&g)?.sum(&[2], false)?.try_div(&g.sum(&[2], false)?)?;
        let corr = self.fc.forward(&corr)?.view(&[b as isize, c as isize, 1, 1])?;
        content.try_add(&self.out_conv.forward(&f.try_mul(&corr)?)?)
    }
}

impl Module for Mcc {
    fn forward(&self, _x: &Var) -> Result<Var> {
        Err(Error::argument("MCCNet", "takes content and style features: call apply(content, style)"))
    }
    fn type_name(&self) -> &'static str {
        "MCCNet"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("f".into(), &self.f), ("g".into(), &self.g), ("out_conv".into(), &self.out_conv), ("fc".into(), &self.fc)]
    }
}

/// The reference `MCC_Module`: one [`Mcc`] named `MCCN`.
pub struct MccModule {
    /// The block.
    pub mccn: Mcc,
}

impl Module for MccModule {
    fn forward(&self, _x: &Var) -> Result<Var> {
        Err(Error::argument("MCC_Module", "takes content and style features: call mccn.apply(content, style)"))
    }
    fn type_name(&self) -> &'static str {
        "MCC_Module"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("MCCN".into(), &self.mccn)]
    }
}

/// The MCCNet network: frozen encoder, correlation module, decoder.
pub struct MccNet {
    /// The normalised VGG19.
    pub vgg: Vgg19,
    /// The correlation module.
    pub mcc_module: MccModule,
    /// The decoder.
    pub decoder: Sequential,
}

impl MccNet {
    /// Default-initialised module and decoder.
    pub fn new() -> Result<MccNet> {
        Ok(MccNet { vgg: Vgg19::new()?, mcc_module: MccModule { mccn: Mcc::new(512)? }, decoder: decoder()? })
    }

    /// Loads the three checkpoints (every key of the module and decoder must match).
    pub fn load(vgg: &Path, decoder_path: &Path, mcc_module: &Path) -> Result<MccNet> {
        let net = MccNet { vgg: Vgg19::load(vgg)?, ..MccNet::new()? };
        load_checkpoint(&net.decoder, decoder_path, true)?;
        load_checkpoint(&net.mcc_module, mcc_module, true)?;
        Ok(net)
    }

    /// relu4_1 features through the module and the decoder.
    fn transfer(&self, content4: &Var, style4: &Var) -> Result<Var> {
        self.decoder.forward(&self.mcc_module.mccn.apply(content4, style4)?)
    }

    /// Stylises `content` with `style` (`[N, 3, H, W]` in 0..1); `alpha` blends the
    /// transferred features with the content's (1 = full style).
    pub fn stylize(&self, content: &Var, style: &Var, alpha: f64) -> Result<Var> {
        check_image("mccnet", content)?;
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::argument("mccnet", format!("alpha must be in 0..=1, got {alpha}")));
        }
        let c = self.vgg.encode(content)?;
        let s = self.vgg.encode(style)?;
        let t = self.mcc_module.mccn.apply(&c, &s)?;
        let t = if alpha < 1.0 { t.try_mul(alpha)?.try_add(&c.try_mul(1.0 - alpha)?)? } else { t };
        self.decoder.forward(&t)
    }

    /// The reference `Net.forward` losses, weighted and summed: returns the total
    /// and the named unweighted terms (`noise`, `content`, `style`, `identity1`,
    /// `identity2`, `tv`). `noise` is the Gaussian noise added to the content
    /// (the reference draws its standard deviation from U(0.01, 0.02)).
    pub fn losses(
        &self,
        content: &Var,
        style: &Var,
        noise: &Var,
        w: &MccWeights,
    ) -> Result<(Var, Vec<(&'static str, Var)>)> {
        let mse = |a: &Var, b: &Var| mse_loss(a, b, Reduction::Mean);
        let style_feats = self.vgg.features(style, 5)?;
        let content_feats = self.vgg.features(content, 5)?;
        let noisy_feats = self.vgg.features(&content.try_add(noise)?, 5)?;
        let ics = self.transfer(&content_feats[3], &style_feats[3])?;
        same_shape(&ics, content)?;
        let ics_feats = self.vgg.features(&ics, 5)?;
        let mut loss_c = mse(&mean_variance_norm(&ics_feats[4])?, &mean_variance_norm(&content_feats[4])?)?;
        loss_c = loss_c.try_add(&mse(&mean_variance_norm(&ics_feats[3])?, &mean_variance_norm(&content_feats[3])?)?)?;
        let mut loss_s = style_loss(&ics_feats[0], &style_feats[0])?;
        for i in 1..5 {
            loss_s = loss_s.try_add(&style_loss(&ics_feats[i], &style_feats[i])?)?;
        }
        let tv = tv_sum_abs(&ics)?;
        let ics_n = self.transfer(&noisy_feats[3], &style_feats[3])?;
        let loss_noise = mse(&ics_n, &ics)?;
        let icc = self.transfer(&content_feats[3], &content_feats[3])?;
        let iss = self.transfer(&style_feats[3], &style_feats[3])?;
        let l1 = mse(&icc, content)?.try_add(&mse(&iss, style)?)?;
        let icc_feats = self.vgg.features(&icc, 5)?;
        let iss_feats = self.vgg.features(&iss, 5)?;
        let mut l2 = mse(&icc_feats[0], &content_feats[0])?.try_add(&mse(&iss_feats[0], &style_feats[0])?)?;
        for i in 1..5 {
            l2 = l2.try_add(&mse(&icc_feats[i], &content_feats[i])?)?.try_add(&mse(&iss_feats[i], &style_feats[i])?)?;
        }
        let total = loss_noise
            .try_mul(w.noise)?
            .try_add(&loss_c.try_mul(w.content)?)?
            .try_add(&loss_s.try_mul(w.style)?)?
            .try_add(&l1.try_mul(w.identity1)?)?
            .try_add(&l2.try_mul(w.identity2)?)?
            .try_add(&tv.try_mul(w.tv)?)?;
        let terms = vec![
            ("noise", loss_noise),
            ("content", loss_c),
            ("style", loss_s),
            ("identity1", l1),
            ("identity2", l2),
            ("tv", tv),
        ];
        Ok((total, terms))
    }

    /// What training optimises: the decoder's and the module's parameters.
    pub fn trainable(&self) -> Vec<Var> {
        let mut p = self.decoder.parameters();
        p.extend(self.mcc_module.parameters());
        p
    }
}

/// The reference's total variation: summed absolute differences (not divided by
/// the batch).
pub(crate) fn tv_sum_abs(y: &Var) -> Result<Var> {
    tv_loss(y, false)?.try_mul(y.shape()[0] as f64)
}

/// An error when a decoded image's shape differs from its input's.
pub(crate) fn same_shape(out: &Var, input: &Var) -> Result<()> {
    if out.shape() == input.shape() {
        return Ok(());
    }
    Err(Error::shape(
        "training",
        format!(
            "images of {:?} come back from the decoder as {:?}: training crops must be multiples of 16",
            input.shape(),
            out.shape()
        ),
    ))
}
