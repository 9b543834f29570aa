//! Optimisation-based style transfer (Gatys, Ecker and Bethge, 2016) on the
//! normalised VGG19: the image itself is optimised so that its relu4_2 features
//! match the content's and its Gram matrices at relu1_1..relu5_1 match the
//! style's, with a total-variation term, by Adam or L-BFGS.
//!
//! ```text
//! loss = content_weight * mse(relu4_2) + style_weight * sum_l mse(gram_l) + tv_weight * tv
//! ```
//! with `gram = F F^T / (C H W)` per image and `tv` the summed squared neighbour
//! differences per image.

use crate::vgg::{check_image, Vgg19};
use jit_nn::optim::{Adam, Lbfgs, LbfgsOptions, Optimizer};
use jit_ops::prelude::*;

/// Which optimiser drives the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GatysOptimizer {
    /// Adam with this learning rate (in image units, 0..1).
    Adam(f64),
    /// L-BFGS without line search (PyTorch's defaults, `max_iter` iterations per
    /// step).
    Lbfgs(usize),
}

/// Weights and the optimiser.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GatysOptions {
    /// Weight of the content term.
    pub content_weight: f64,
    /// Weight of the style term.
    pub style_weight: f64,
    /// Weight of the total-variation term.
    pub tv_weight: f64,
    /// The optimiser.
    pub optimizer: GatysOptimizer,
}

impl Default for GatysOptions {
    fn default() -> Self {
        GatysOptions { content_weight: 1.0, style_weight: 1e4, tv_weight: 1e-3, optimizer: GatysOptimizer::Adam(0.02) }
    }
}

/// `F F^T / (C H W)` per image: `[N, C, C]` from `[N, C, H, W]`.
pub fn gram(feat: &Var) -> Result<Var> {
    let [n, c, h, w] = match *feat.shape() {
        [n, c, h, w] => [n, c, h, w],
        _ => return Err(Error::shape("gram", format!("expects features [N, C, H, W], got {:?}", feat.shape()))),
    };
    let f = feat.view(&[n as isize, c as isize, (h * w) as isize])?;
    matmul(&f, &f.transpose(1, 2)?)?.try_div((c * h * w) as f64)
}

/// The targets of one transfer and the loss of a candidate image.
pub struct Gatys<'a> {
    vgg: &'a Vgg19,
    content_target: Var,
    style_grams: Vec<Var>,
    /// The weights.
    pub options: GatysOptions,
}

impl<'a> Gatys<'a> {
    /// Computes the targets: relu4_2 of `content` and the five Gram matrices of
    /// `style` (both `[1, 3, H, W]` in 0..1; sizes may differ).
    pub fn new(vgg: &'a Vgg19, content: &Var, style: &Var, options: GatysOptions) -> Result<Gatys<'a>> {
        check_image("gatys", content)?;
        check_image("gatys", style)?;
        let (content_target, style_grams) = jit_core::no_grad(|| -> Result<(Var, Vec<Var>)> {
            let cf = vgg.features(content, 4)?;
            let content_target = vgg.relu4_2(&cf[3])?;
            let grams = vgg.features(style, 5)?.iter().map(gram).collect::<Result<Vec<_>>>()?;
            let mut all = grams.clone();
            all.push(content_target.clone());
            realize(&all)?;
            Ok((content_target, grams))
        })?;
        Ok(Gatys { vgg, content_target, style_grams, options })
    }

    /// The total loss of `image` and its unweighted terms (`content`, `style`, `tv`).
    pub fn loss(&self, image: &Var) -> Result<(Var, [Var; 3])> {
        let o = &self.options;
        let f = self.vgg.features(image, 5)?;
        let c = mse_loss(&self.vgg.relu4_2(&f[3])?, &self.content_target, Reduction::Mean)?;
        let mut s: Option<Var> = None;
        for (x, g) in f.iter().zip(&self.style_grams) {
            let l = mse_loss(&gram(x)?, g, Reduction::Mean)?;
            s = Some(match s {
                None => l,
                Some(a) => a.try_add(&l)?,
            });
        }
        let s = s.expect("five levels");
        let tv = tv_loss(image, true)?;
        let total =
            c.try_mul(o.content_weight)?.try_add(&s.try_mul(o.style_weight)?)?.try_add(&tv.try_mul(o.tv_weight)?)?;
        Ok((total, [c, s, tv]))
    }

    /// Optimises `image` (a value that requires gradients, usually a copy of the
    /// content) for `steps` steps, calling `progress(step, loss)` after each; the
    /// pixels are clamped to 0..1 at the end. Returns the loss of each step.
    pub fn run(&self, image: &Var, steps: usize, progress: &mut dyn FnMut(usize, f64)) -> Result<Vec<f64>> {
        let mut losses = Vec::with_capacity(steps);
        match self.options.optimizer {
            GatysOptimizer::Adam(lr) => {
                let mut opt = Adam::new(vec![image.clone()], lr)?;
                for i in 0..steps {
                    let (loss, _) = self.loss(image)?;
                    opt.step(&loss)?;
                    let l = loss.item::<f32>()? as f64;
                    losses.push(l);
                    progress(i, l);
                }
            }
            GatysOptimizer::Lbfgs(max_iter) => {
                let options = LbfgsOptions { max_iter, max_eval: max_iter * 5 / 4, ..LbfgsOptions::default() };
                let mut opt = Lbfgs::new(vec![image.clone()], options)?;
                for i in 0..steps {
                    let l = opt.step(&mut || Ok(self.loss(image)?.0))?;
                    losses.push(l);
                    progress(i, l);
                }
            }
        }
        jit_core::no_grad(|| image.assign(&image.detach().clamp(Some(0.0), Some(1.0))?))?;
        Ok(losses)
    }
}
