//! SANet (Park and Lee, "Arbitrary Style Transfer with Style-Attentional
//! Networks", CVPR 2019) as its reference code defines it: style attention at
//! relu4_1 and relu5_1, merged (relu5_1 upsampled x2, reflection pad, 3x3
//! convolution), the AdaIN decoder, and the training losses (content on normalised
//! relu4_1 and relu5_1, mean/std style loss over five levels, identity losses).
//!
//! Checkpoints: `transformer_iter_N.pth` holds `sanet4_1.{f,g,h,out_conv}.*`,
//! `sanet5_1.*` and `merge_conv.*`; the decoder has the AdaIN decoder's layout.
//!
//! Where relu5_1 upsampled x2 does not match relu4_1's size (inputs that are not
//! multiples of 16, which make the reference code fail), it is resized to
//! relu4_1's size with nearest neighbours instead; for multiples of 16 the two
//! are the same.

use crate::adain::{decoder, mean_variance_norm, style_loss};
use crate::mccnet::same_shape;
use crate::vgg::{check_image, load_checkpoint, Vgg19};
use jit_nn::layers::{Conv2d, Sequential};
use jit_nn::{Module, ModuleExt};
use jit_ops::prelude::*;
use std::path::Path;

/// Loss weights of the reference training (content 1, style 3, identity 50 and 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaWeights {
    /// Content loss.
    pub content: f64,
    /// Style loss.
    pub style: f64,
    /// Identity loss on images.
    pub identity1: f64,
    /// Identity loss on features.
    pub identity2: f64,
}

impl Default for SaWeights {
    fn default() -> Self {
        SaWeights { content: 1.0, style: 3.0, identity1: 50.0, identity2: 1.0 }
    }
}

/// One style-attention block (`SANet` in the reference code).
pub struct SaBlock {
    /// Query: 1x1 convolution of the normalised content.
    pub f: Conv2d,
    /// Key: 1x1 convolution of the normalised style.
    pub g: Conv2d,
    /// Value: 1x1 convolution of the style.
    pub h: Conv2d,
    /// 1x1 output convolution.
    pub out_conv: Conv2d,
}

impl SaBlock {
    /// A block for `c` channels with PyTorch's default initialisation.
    pub fn new(c: usize) -> Result<SaBlock> {
        let conv = || Conv2d::new(c, c, 1, Conv2dOptions::new(1, 0), true);
        Ok(SaBlock { f: conv()?, g: conv()?, h: conv()?, out_conv: conv()? })
    }

    /// `content + out_conv(h(style) softmax(f(norm(content))^T g(norm(style)))^T)`.
    pub fn apply(&self, content: &Var, style: &Var) -> Result<Var> {
        let ([b, c, hh, ww], [bs, cs]) = match (content.shape(), style.shape()) {
            (&[b, c, h, w], &[bs, cs, _, _]) => ([b, c, h, w], [bs, cs]),
            _ => return Err(self.shape_error(content, style)),
        };
        if cs != c || (bs != b && bs != 1) {
            return Err(self.shape_error(content, style));
        }
        let q = self.f.forward(&mean_variance_norm(content)?)?.flatten(2, 3)?.transpose(1, 2)?; // [b, hw, c]
        let k = self.g.forward(&mean_variance_norm(style)?)?.flatten(2, 3)?; // [bs, c, hs ws]
        let v = self.h.forward(style)?.flatten(2, 3)?; // [bs, c, hs ws]
        let attn = matmul(&q, &k)?.softmax(-1)?; // [b, hw, hs ws]
        let o = matmul(&v, &attn.transpose(1, 2)?)?; // [b, c, hw]
        let o = o.view(&[b as isize, c as isize, hh as isize, ww as isize])?;
        content.try_add(&self.out_conv.forward(&o)?)
    }

    fn shape_error(&self, content: &Var, style: &Var) -> Error {
        Error::shape(
            "sanet",
            format!(
                "content {:?} and style {:?} features must be [N, C, H, W] with the same C (style batch 1 or the content's)",
                content.shape(),
                style.shape()
            ),
        )
    }
}

impl Module for SaBlock {
    fn forward(&self, _x: &Var) -> Result<Var> {
        Err(Error::argument("SANet", "takes content and style features: call apply(content, style)"))
    }
    fn type_name(&self) -> &'static str {
        "SANet"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("f".into(), &self.f), ("g".into(), &self.g), ("h".into(), &self.h), ("out_conv".into(), &self.out_conv)]
    }
}

/// The reference `Transform`: attention at relu4_1 and relu5_1, merged.
pub struct Transform {
    /// Attention on relu4_1.
    pub sanet4_1: SaBlock,
    /// Attention on relu5_1.
    pub sanet5_1: SaBlock,
    /// The 3x3 merge convolution (after a reflection pad).
    pub merge_conv: Conv2d,
}

impl Transform {
    /// Default-initialised for `c` channels.
    pub fn new(c: usize) -> Result<Transform> {
        Ok(Transform {
            sanet4_1: SaBlock::new(c)?,
            sanet5_1: SaBlock::new(c)?,
            merge_conv: Conv2d::new(c, c, 3, Conv2dOptions::new(1, 0), true)?,
        })
    }

    /// The merged attention output for relu4_1 and relu5_1 features.
    pub fn apply(&self, content4: &Var, style4: &Var, content5: &Var, style5: &Var) -> Result<Var> {
        let a = self.sanet4_1.apply(content4, style4)?;
        let b = self.sanet5_1.apply(content5, style5)?;
        let (h, w) = (a.shape()[2], a.shape()[3]);
        let b = if b.shape()[2] * 2 == h && b.shape()[3] * 2 == w {
            b.upsample_nearest2d(2)?
        } else {
            b.interpolate_nearest(&[h, w])?
        };
        self.merge_conv.forward(&a.try_add(&b)?.pad(&[1, 1, 1, 1], PadMode::Reflect)?)
    }
}

impl Module for Transform {
    fn forward(&self, _x: &Var) -> Result<Var> {
        Err(Error::argument("Transform", "takes four feature maps: call apply(content4, style4, content5, style5)"))
    }
    fn type_name(&self) -> &'static str {
        "Transform"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("sanet4_1".into(), &self.sanet4_1),
            ("sanet5_1".into(), &self.sanet5_1),
            ("merge_conv".into(), &self.merge_conv),
        ]
    }
}

/// The SANet network: frozen encoder, transform, decoder.
pub struct SaNet {
    /// The normalised VGG19.
    pub vgg: Vgg19,
    /// Attention and merge.
    pub transform: Transform,
    /// The decoder.
    pub decoder: Sequential,
}

impl SaNet {
    /// Default-initialised transform and decoder.
    pub fn new() -> Result<SaNet> {
        Ok(SaNet { vgg: Vgg19::new()?, transform: Transform::new(512)?, decoder: decoder()? })
    }

    /// Loads the three checkpoints (every key of the transform and decoder must
    /// match).
    pub fn load(vgg: &Path, decoder_path: &Path, transform: &Path) -> Result<SaNet> {
        let net = SaNet { vgg: Vgg19::load(vgg)?, ..SaNet::new()? };
        load_checkpoint(&net.decoder, decoder_path, true)?;
        load_checkpoint(&net.transform, transform, true)?;
        Ok(net)
    }

    fn transfer(&self, c: &[Var], s: &[Var]) -> Result<Var> {
        self.decoder.forward(&self.transform.apply(&c[3], &s[3], &c[4], &s[4])?)
    }

    /// Stylises `content` with `style` (`[N, 3, H, W]` in 0..1).
    pub fn stylize(&self, content: &Var, style: &Var) -> Result<Var> {
        check_image("sanet", content)?;
        let c = self.vgg.features(content, 5)?;
        let s = self.vgg.features(style, 5)?;
        self.transfer(&c, &s)
    }

    /// The reference training losses, weighted and summed: the total and the named
    /// unweighted terms (`content`, `style`, `identity1`, `identity2`).
    pub fn losses(&self, content: &Var, style: &Var, w: &SaWeights) -> Result<(Var, Vec<(&'static str, Var)>)> {
        let mse = |a: &Var, b: &Var| mse_loss(a, b, Reduction::Mean);
        let sf = self.vgg.features(style, 5)?;
        let cf = self.vgg.features(content, 5)?;
        let g = self.transfer(&cf, &sf)?;
        same_shape(&g, content)?;
        let gf = self.vgg.features(&g, 5)?;
        let loss_c = mse(&mean_variance_norm(&gf[4])?, &mean_variance_norm(&cf[4])?)?
            .try_add(&mse(&mean_variance_norm(&gf[3])?, &mean_variance_norm(&cf[3])?)?)?;
        let mut loss_s = style_loss(&gf[0], &sf[0])?;
        for i in 1..5 {
            loss_s = loss_s.try_add(&style_loss(&gf[i], &sf[i])?)?;
        }
        let icc = self.transfer(&cf, &cf)?;
        let iss = self.transfer(&sf, &sf)?;
        let l1 = mse(&icc, content)?.try_add(&mse(&iss, style)?)?;
        let fcc = self.vgg.features(&icc, 5)?;
        let fss = self.vgg.features(&iss, 5)?;
        let mut l2 = mse(&fcc[0], &cf[0])?.try_add(&mse(&fss[0], &sf[0])?)?;
        for i in 1..5 {
            l2 = l2.try_add(&mse(&fcc[i], &cf[i])?)?.try_add(&mse(&fss[i], &sf[i])?)?;
        }
        let total = loss_c
            .try_mul(w.content)?
            .try_add(&loss_s.try_mul(w.style)?)?
            .try_add(&l1.try_mul(w.identity1)?)?
            .try_add(&l2.try_mul(w.identity2)?)?;
        Ok((total, vec![("content", loss_c), ("style", loss_s), ("identity1", l1), ("identity2", l2)]))
    }

    /// What training optimises: the decoder's and the transform's parameters.
    pub fn trainable(&self) -> Vec<Var> {
        let mut p = self.decoder.parameters();
        p.extend(self.transform.parameters());
        p
    }
}
