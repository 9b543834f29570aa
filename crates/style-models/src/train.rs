//! The training loop of the feed-forward style networks, as the reference
//! `train.py` scripts run it: batches of random crops from a content folder and a
//! style folder, Adam with `lr / (1 + lr_decay * iter)`, periodic checkpoints and
//! sample images, and resuming from the latest checkpoint.
//!
//! Batches are a pure function of the seed and the step (which files, which
//! crops), so a resumed run sees exactly the batches the uninterrupted run would
//! have seen: with the decoder, module and optimizer state restored, the next
//! step's loss is the same.
//!
//! Checkpoints in the save directory, per saved step `N`:
//! `decoder_iter_N.safetensors` (the keys of the reference `decoder.pth`), the
//! network's module (`mcc_module_iter_N`, `transformer_iter_N`) and
//! `optimizer_iter_N.safetensors`; samples go to `samples/iter_N.png` (content,
//! style and output side by side).
//!
//! With [`TrainOptions::mixed_precision`] the losses are computed under
//! [`autocast`] (convolutions in f16 or bf16, parameters f32) and each step goes
//! through a [`GradScaler`], whose state is checkpointed as `scaler_iter_N.safetensors`
//! so that a resumed run scales as the uninterrupted one would have.

use crate::adain::AdaIn;
use crate::mccnet::{MccNet, MccWeights};
use crate::sanet::{SaNet, SaWeights};
use image::RgbImage;
use jit_core::Distribution;
use jit_nn::amp::{autocast, GradScaler};
use jit_nn::data::{apply, ImageFolder, Transform};
use jit_nn::image_io::{from_rgb8, save_image};
use jit_nn::optim::{Adam, Optimizer};
use jit_nn::{Module, ModuleExt};
use jit_ops::prelude::*;
use std::path::{Path, PathBuf};

/// A network the loop can train.
pub trait TrainNet {
    /// Its name in messages.
    fn name(&self) -> &'static str;
    /// The parameters to optimise.
    fn trainable(&self) -> Vec<Var>;
    /// The weighted total loss and the named unweighted terms for one batch;
    /// `seed` drives any randomness of the loss (MCCNet's noise).
    fn losses(&self, content: &Var, style: &Var, seed: u64) -> Result<(Var, Vec<(&'static str, Var)>)>;
    /// The modules saved in checkpoints, with their file stems.
    fn saved(&self) -> Vec<(&'static str, &(dyn Module + 'static))>;
    /// The stylised images for a sample.
    fn sample(&self, content: &Var, style: &Var) -> Result<Var>;
}

/// AdaIN with its content-style weighting (the reference: content 1, style 10).
pub struct AdaInTraining {
    /// The network.
    pub net: AdaIn,
    /// Content weight.
    pub content_weight: f64,
    /// Style weight.
    pub style_weight: f64,
}

impl TrainNet for AdaInTraining {
    fn name(&self) -> &'static str {
        "adain"
    }
    fn trainable(&self) -> Vec<Var> {
        self.net.trainable()
    }
    fn losses(&self, content: &Var, style: &Var, _seed: u64) -> Result<(Var, Vec<(&'static str, Var)>)> {
        let (c, s) = self.net.losses(content, style, 1.0)?;
        let total = c.try_mul(self.content_weight)?.try_add(&s.try_mul(self.style_weight)?)?;
        Ok((total, vec![("content", c), ("style", s)]))
    }
    fn saved(&self) -> Vec<(&'static str, &(dyn Module + 'static))> {
        vec![("decoder", &self.net.decoder)]
    }
    fn sample(&self, content: &Var, style: &Var) -> Result<Var> {
        let styles: Vec<Var> = (0..style.shape()[0]).map(|i| style.narrow(0, i, 1)).collect::<Result<_>>()?;
        let n = content.shape()[0].min(styles.len());
        let outs: Vec<Var> = (0..n)
            .map(|i| self.net.stylize(&content.narrow(0, i, 1)?, &styles[i..=i], None, 1.0))
            .collect::<Result<_>>()?;
        cat(&outs, 0)
    }
}

/// MCCNet with the reference loss weights.
pub struct MccTraining {
    /// The network.
    pub net: MccNet,
    /// Loss weights.
    pub weights: MccWeights,
}

impl TrainNet for MccTraining {
    fn name(&self) -> &'static str {
        "mccnet"
    }
    fn trainable(&self) -> Vec<Var> {
        self.net.trainable()
    }
    fn losses(&self, content: &Var, style: &Var, seed: u64) -> Result<(Var, Vec<(&'static str, Var)>)> {
        // the reference: std ~ U(0.01, 0.02), noise ~ N(0, std)
        let std = 0.01 + 0.01 * (mix(seed) >> 11) as f64 / (1u64 << 53) as f64;
        let noise = Var::random(content.shape(), Distribution::Normal { mean: 0.0, std }, DType::F32, mix(seed ^ 1))?;
        self.net.losses(content, style, &noise, &self.weights)
    }
    fn saved(&self) -> Vec<(&'static str, &(dyn Module + 'static))> {
        vec![("decoder", &self.net.decoder), ("mcc_module", &self.net.mcc_module)]
    }
    fn sample(&self, content: &Var, style: &Var) -> Result<Var> {
        self.net.stylize(content, style, 1.0)
    }
}

/// SANet with the reference loss weights.
pub struct SaTraining {
    /// The network.
    pub net: SaNet,
    /// Loss weights.
    pub weights: SaWeights,
}

impl TrainNet for SaTraining {
    fn name(&self) -> &'static str {
        "sanet"
    }
    fn trainable(&self) -> Vec<Var> {
        self.net.trainable()
    }
    fn losses(&self, content: &Var, style: &Var, _seed: u64) -> Result<(Var, Vec<(&'static str, Var)>)> {
        self.net.losses(content, style, &self.weights)
    }
    fn saved(&self) -> Vec<(&'static str, &(dyn Module + 'static))> {
        vec![("decoder", &self.net.decoder), ("transformer", &self.net.transform)]
    }
    fn sample(&self, content: &Var, style: &Var) -> Result<Var> {
        self.net.stylize(content, style)
    }
}

/// The loop's settings (defaults: the reference `train.py`).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Folder of content images (searched recursively).
    pub content_dir: PathBuf,
    /// Folder of style images.
    pub style_dir: PathBuf,
    /// Where checkpoints and samples go.
    pub save_dir: PathBuf,
    /// Last step (160000).
    pub max_iter: u64,
    /// Images per batch (8).
    pub batch_size: usize,
    /// Base learning rate (1e-4).
    pub lr: f64,
    /// Inverse decay per step (5e-5).
    pub lr_decay: f64,
    /// Pictures are resized to this square first (512).
    pub image_size: u32,
    /// Then cropped at random to this square (256).
    pub crop: u32,
    /// Steps between checkpoints (10000; the last step is always saved).
    pub save_interval: u64,
    /// Steps between sample images (0: none).
    pub sample_interval: u64,
    /// Seed of the batches and of any noise.
    pub seed: u64,
    /// Continue from the latest checkpoint in `save_dir`, if any.
    pub resume: bool,
    /// `Some(F16)` or `Some(BF16)`: mixed-precision training (losses under
    /// autocast, steps through a gradient scaler); `None`: f32.
    pub mixed_precision: Option<DType>,
    /// The gradient scaler's starting scale (PyTorch's `init_scale`, 65536). Steps
    /// whose half-precision gradients overflow are skipped while the scale halves,
    /// so a network with large gradients starts faster from a smaller one.
    pub init_scale: f64,
}

impl TrainOptions {
    /// The reference settings for the two folders and a save directory.
    pub fn new(content_dir: impl Into<PathBuf>, style_dir: impl Into<PathBuf>, save_dir: impl Into<PathBuf>) -> Self {
        TrainOptions {
            content_dir: content_dir.into(),
            style_dir: style_dir.into(),
            save_dir: save_dir.into(),
            max_iter: 160_000,
            batch_size: 8,
            lr: 1e-4,
            lr_decay: 5e-5,
            image_size: 512,
            crop: 256,
            save_interval: 10_000,
            sample_interval: 0,
            seed: 0,
            resume: false,
            mixed_precision: None,
            init_scale: 65536.0,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The step just taken (1-based, as the reference counts saved iterations).
    pub step: u64,
    /// The learning rate used.
    pub lr: f64,
    /// The weighted total loss.
    pub loss: f64,
    /// The unweighted terms.
    pub terms: Vec<(&'static str, f64)>,
    /// The checkpoint written after this step, if any.
    pub checkpoint: Option<PathBuf>,
    /// With mixed precision: the loss scale this step used, and whether its
    /// gradients overflowed so that the update was skipped.
    pub scaling: Option<(f64, bool)>,
}

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The batch of step `step` from `folder`: file choices and crops depend only on
/// `(seed, step)`. An unreadable file is skipped (another is drawn) and counted.
pub fn batch(folder: &ImageFolder, o: &TrainOptions, seed: u64, step: u64, skipped: &mut usize) -> Result<Var> {
    let transforms = [Transform::Resize([o.image_size, o.image_size]), Transform::RandomCrop([o.crop, o.crop])];
    let n = folder.files.len() as u64;
    let mut images = Vec::with_capacity(o.batch_size);
    for i in 0..o.batch_size as u64 {
        let mut got: Option<RgbImage> = None;
        let mut last_err = String::new();
        for attempt in 0..8u64 {
            let r = mix(seed ^ mix(step.wrapping_mul(0x1_0000_0001) ^ mix(i ^ (attempt << 32))));
            let path = &folder.files[(r % n) as usize];
            let img = jit_nn::image_io::read_rgb8(path).map_err(|e| e.to_string());
            match img.and_then(|img| apply(img, &transforms, mix(r))) {
                Ok(img) => {
                    got = Some(img);
                    break;
                }
                Err(e) => {
                    *skipped += 1;
                    last_err = e;
                }
            }
        }
        let img = got.ok_or_else(|| {
            Error::argument("train", format!("eight unreadable images in a row; the last: {last_err}"))
        })?;
        images.push(from_rgb8(&img)?);
    }
    cat(&images, 0)
}

/// Path of a checkpoint file.
pub fn checkpoint_path(dir: &Path, stem: &str, step: u64) -> PathBuf {
    dir.join(format!("{stem}_iter_{step}.safetensors"))
}

/// The latest step with a complete checkpoint (every module and the optimizer)
/// in `dir`.
pub fn latest_checkpoint(dir: &Path, net: &dyn TrainNet) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut steps: Vec<u64> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("optimizer_iter_")?.strip_suffix(".safetensors")?.parse().ok()
        })
        .collect();
    steps.sort_unstable();
    steps.into_iter().rev().find(|s| net.saved().iter().all(|(stem, _)| checkpoint_path(dir, stem, *s).is_file()))
}

/// Trains `net`, calling `report` after each step. Returns the step reached.
pub fn train(net: &dyn TrainNet, o: &TrainOptions, report: &mut dyn FnMut(&StepReport)) -> Result<u64> {
    let finite_positive = |v: f64| v.is_finite() && v > 0.0;
    if o.batch_size == 0 || o.crop == 0 || o.crop > o.image_size || !finite_positive(o.lr) {
        return Err(Error::argument(
            "train",
            format!(
                "needs batch_size > 0, 0 < crop <= image_size and a finite lr > 0 (got {}, {}, {}, {})",
                o.batch_size, o.crop, o.image_size, o.lr
            ),
        ));
    }
    if !(o.lr_decay.is_finite() && o.lr_decay >= 0.0) {
        return Err(Error::argument("train", format!("lr_decay must be a finite number >= 0, got {}", o.lr_decay)));
    }
    if let Some(dt) = o.mixed_precision {
        autocast(dt, || ())?; // only f16 and bf16
    }
    let mut scaler = GradScaler::new().with_init_scale(o.init_scale)?.enabled(o.mixed_precision.is_some());
    let content = ImageFolder::new(&o.content_dir)?;
    let style = ImageFolder::new(&o.style_dir)?;
    std::fs::create_dir_all(&o.save_dir)
        .map_err(|e| Error::file(&o.save_dir, format!("cannot create the directory: {e}")))?;
    let mut opt = Adam::new(net.trainable(), o.lr)?;
    let mut start = 0;
    if o.resume {
        if let Some(step) = latest_checkpoint(&o.save_dir, net) {
            for (stem, m) in net.saved() {
                crate::vgg::load_checkpoint(m, &checkpoint_path(&o.save_dir, stem, step), true)?;
            }
            opt.load(&checkpoint_path(&o.save_dir, "optimizer", step))?;
            // a run that switches to mixed precision starts with a fresh scaler
            let scaler_file = checkpoint_path(&o.save_dir, "scaler", step);
            if scaler.is_enabled() && scaler_file.is_file() {
                load_scaler(&mut scaler, &scaler_file)?;
            }
            start = step;
        }
    }
    let (mut skipped_c, mut skipped_s) = (0, 0);
    for step in start..o.max_iter {
        let lr = o.lr / (1.0 + o.lr_decay * step as f64);
        opt.set_lr(lr);
        let c = batch(&content, o, o.seed, step, &mut skipped_c)?;
        let s = batch(&style, o, o.seed ^ 0x5354_594c_4553, step, &mut skipped_s)?;
        let losses = || net.losses(&c, &s, mix(o.seed ^ step));
        let (total, terms) = match o.mixed_precision {
            Some(dt) => autocast(dt, losses)??,
            None => losses()?,
        };
        let total = total.cast(DType::F32);
        let grads = jit_core::grad(&scaler.scale(&total)?, opt.params())?;
        let mut extra = vec![total.clone()];
        extra.extend(terms.iter().map(|(_, v)| v.clone()));
        let stepped = scaler.step_with_grads(&mut opt, &grads.into_iter().map(Some).collect::<Vec<_>>(), &extra)?;
        let scaling = scaler.is_enabled().then_some((stepped.scale, stepped.skipped));
        let loss = total.item::<f32>()? as f64;
        if !loss.is_finite() {
            let hint = if o.mixed_precision == Some(DType::F16) {
                " (f16 activations overflow above 65504: train in bf16 or f32)"
            } else {
                ""
            };
            return Err(Error::argument(
                "train",
                format!("{}: the loss is {loss} at step {}{hint}", net.name(), step + 1),
            ));
        }
        let terms = terms.iter().map(|(n, v)| Ok((*n, v.item::<f32>()? as f64))).collect::<Result<Vec<_>>>()?;
        let done = step + 1;
        let mut checkpoint = None;
        if done % o.save_interval.max(1) == 0 || done == o.max_iter {
            for (stem, m) in net.saved() {
                m.save_safetensors(&checkpoint_path(&o.save_dir, stem, done))?;
            }
            if scaler.is_enabled() {
                save_scaler(&scaler, &checkpoint_path(&o.save_dir, "scaler", done))?;
            }
            let p = checkpoint_path(&o.save_dir, "optimizer", done);
            opt.save(&p)?; // last: its presence marks a complete checkpoint
            checkpoint = Some(p);
        }
        if o.sample_interval > 0 && done % o.sample_interval == 0 {
            let out = jit_core::no_grad(|| net.sample(&c.narrow(0, 0, 1)?, &s.narrow(0, 0, 1)?))?;
            let out = out.clamp(Some(0.0), Some(1.0))?;
            let row = cat(&[c.narrow(0, 0, 1)?, s.narrow(0, 0, 1)?, out], 3)?;
            let dir = o.save_dir.join("samples");
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::file(&dir, format!("cannot create the directory: {e}")))?;
            save_image(&row, dir.join(format!("iter_{done}.png")))?;
        }
        report(&StepReport { step: done, lr, loss, terms, checkpoint, scaling });
    }
    Ok(o.max_iter.max(start))
}

/// Writes a gradient scaler's state (one f64 scalar per `state_dict` entry).
fn save_scaler(scaler: &GradScaler, path: &Path) -> Result<()> {
    let tensors: Vec<(String, Var)> = scaler.state_dict().into_iter().map(|(k, v)| (k, Var::scalar(v))).collect();
    jit_nn::safetensors_io::save(path, &tensors, Default::default())
}

/// Reads a state written by [`save_scaler`]; a damaged file is an error naming it.
fn load_scaler(scaler: &mut GradScaler, path: &Path) -> Result<()> {
    let (tensors, _) = jit_nn::safetensors_io::load(path)?;
    let state = tensors
        .iter()
        .map(|(k, v)| {
            let vals = v.to_vec_f64()?;
            match vals[..] {
                [x] => Ok((k.clone(), x)),
                _ => Err(Error::file(path, format!("{k} holds {} values, not one", vals.len()))),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    scaler.load_state_dict(&state).map_err(|e| Error::file(path, e.to_string()))
}
