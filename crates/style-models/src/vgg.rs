//! The normalised VGG19 encoder of the AdaIN reference code (`net.vgg` of
//! naoto0804/pytorch-AdaIN, shared by MCCNet and SANet): a leading 1x1 convolution
//! that does the colour preprocessing (RGB in 0..1 to mean-subtracted BGR in 0..255),
//! then VGG19's sixteen 3x3 convolutions, each after a reflection pad, ReLUs and
//! 2x2 max pooling with `ceil_mode=True`.
//!
//! The layers keep PyTorch's positions (`0.weight`, `2.weight`, .. `50.weight`), so
//! `vgg_normalised.pth` loads by name. The encoder is sliced as the reference `Net`
//! slices it: `[0:4]` to relu1_1, `[4:11]` to relu2_1, `[11:18]` to relu3_1,
//! `[18:31]` to relu4_1, `[31:44]` to relu5_1; `[31:34]` goes from relu4_1 to
//! relu4_2 (the content layer of Gatys et al.).

use jit_nn::layers::{Conv2d, MaxPool2d, ReLU, ReflectionPad2d, Sequential};
use jit_nn::{LoadReport, Module, ModuleExt};
use jit_ops::prelude::*;
use std::ops::Range;
use std::path::Path;

/// One layer of a VGG-style stack: what the reference `nn.Sequential` holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Layer {
    /// `nn.ReflectionPad2d((1, 1, 1, 1))`.
    Pad,
    /// `nn.Conv2d(in, out, (k, k))` without padding.
    Conv(usize, usize, usize),
    /// `nn.ReLU()`.
    Relu,
    /// `nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True)`.
    Pool,
    /// `nn.Upsample(scale_factor=2, mode='nearest')`.
    Up,
}

/// Builds the `nn.Sequential` for `layers` with PyTorch's default initialisation.
pub(crate) fn build(layers: &[Layer]) -> Result<Sequential> {
    let mut seq = Sequential::default();
    for layer in layers {
        match *layer {
            Layer::Pad => seq.push(ReflectionPad2d { padding: [1, 1, 1, 1] }),
            Layer::Conv(i, o, k) => seq.push(Conv2d::new(i, o, k, Conv2dOptions::new(1, 0), true)?),
            Layer::Relu => seq.push(ReLU {}),
            Layer::Pool => seq.push(MaxPool2d { options: Pool2dOptions::new(2).ceil_mode(true) }),
            Layer::Up => seq.push(Upsample2x),
        }
    }
    Ok(seq)
}

/// `nn.Upsample(scale_factor=2, mode='nearest')`.
pub(crate) struct Upsample2x;

impl Module for Upsample2x {
    fn forward(&self, x: &Var) -> Result<Var> {
        x.upsample_nearest2d(2)
    }
    fn type_name(&self) -> &'static str {
        "Upsample"
    }
}

/// The 53 layers of the normalised VGG19 (`net.vgg`), in order.
pub(crate) fn vgg19_layers() -> Vec<Layer> {
    use Layer::*;
    let mut out = vec![Conv(3, 3, 1)];
    // (channels in, channels out, convolutions) per block; a pool follows each
    // block but the last
    let blocks = [(3, 64, 2), (64, 128, 2), (128, 256, 4), (256, 512, 4), (512, 512, 4)];
    for (b, &(i, o, n)) in blocks.iter().enumerate() {
        for c in 0..n {
            out.extend([Pad, Conv(if c == 0 { i } else { o }, o, 3), Relu]);
        }
        if b + 1 < blocks.len() {
            out.push(Pool);
        }
    }
    out
}

/// Names of the feature levels an encoder pass can return.
pub const LEVELS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];

/// Layer ranges of the reference `Net`'s `enc_1` .. `enc_5`.
pub const SLICES: [Range<usize>; 5] = [0..4, 4..11, 11..18, 18..31, 31..44];

/// The normalised VGG19 encoder.
pub struct Vgg19 {
    /// All 53 layers (`net.vgg`), named by position as in `vgg_normalised.pth`.
    pub layers: Sequential,
    stages: Vec<Sequential>,
    relu4_2: Sequential,
}

impl Vgg19 {
    /// The encoder with PyTorch's default initialisation (load real weights with
    /// [`Vgg19::load`]). Its parameters do not require gradients: the encoder is
    /// frozen in every network here.
    pub fn new() -> Result<Vgg19> {
        let layers = build(&vgg19_layers())?;
        for (_, p) in layers.named_parameters() {
            p.requires_grad_(false)?;
        }
        let stages = SLICES.iter().map(|r| layers.slice(r.clone())).collect::<Result<_>>()?;
        let relu4_2 = layers.slice(31..34)?;
        Ok(Vgg19 { layers, stages, relu4_2 })
    }

    /// The encoder with the weights of a `vgg_normalised.pth` (or `.safetensors`)
    /// file. Every key must match; a file holding only the first 31 layers (to
    /// relu4_1, as some repositories save it) also loads, and then the deeper
    /// levels are refused by name when asked for.
    pub fn load(path: &Path) -> Result<Vgg19> {
        let vgg = Vgg19::new()?;
        let report = load_checkpoint(&vgg.layers, path, false)?;
        let deep_missing = report.missing.iter().any(|k| key_layer(k).is_some_and(|i| i < 31));
        if deep_missing || !report.unexpected.is_empty() || !report.mismatched.is_empty() {
            return Err(Error::file(path, format!("not a normalised VGG19 checkpoint: {}", report.describe())));
        }
        Ok(vgg)
    }

    /// Features at relu1_1 .. relu(`levels`)_1 of images `x` (`[N, 3, H, W]` in
    /// 0..1): `encode_with_intermediate` of the reference code for `levels = 4`
    /// (AdaIN) or 5 (MCCNet, SANet).
    pub fn features(&self, x: &Var, levels: usize) -> Result<Vec<Var>> {
        check_image("vgg19", x)?;
        if !(1..=5).contains(&levels) {
            return Err(Error::argument("vgg19", format!("levels must be 1..=5, got {levels}")));
        }
        // each level's first reflection pad needs two positions per side
        let side = x.shape()[2].min(x.shape()[3]);
        let deepest = (1..levels).fold(side, |s, _| s.div_ceil(2));
        if deepest < 2 {
            let need = (1..levels).fold(2usize, |s, _| 2 * s - 1);
            return Err(Error::shape(
                "vgg19",
                format!(
                    "a {}x{} image is too small for {}: it needs at least {need} pixels per side",
                    x.shape()[2],
                    x.shape()[3],
                    LEVELS[levels - 1]
                ),
            ));
        }
        let mut out: Vec<Var> = Vec::with_capacity(levels);
        for stage in &self.stages[..levels] {
            let h = stage.forward(out.last().unwrap_or(x))?;
            out.push(h);
        }
        Ok(out)
    }

    /// relu4_1 features (the AdaIN encoder `vgg[:31]`).
    pub fn encode(&self, x: &Var) -> Result<Var> {
        Ok(self.features(x, 4)?.pop().expect("four levels"))
    }

    /// relu4_2 from relu4_1 features.
    pub fn relu4_2(&self, relu4_1: &Var) -> Result<Var> {
        self.relu4_2.forward(relu4_1)
    }
}

/// The layer index at the start of a state-dict key (`"12.weight"` -> 12).
fn key_layer(k: &str) -> Option<usize> {
    k.split('.').next()?.parse().ok()
}

/// Loads `path` (`.pth`, `.pt` or `.safetensors`) into `m` by name and returns
/// the report; a `state_dict.` or `module.` prefix (DataParallel) is stripped.
/// With `strict`, any missing, unexpected or mis-shaped key is an error naming the
/// file and every such key, and nothing is loaded.
pub fn load_checkpoint(m: &(dyn Module + 'static), path: &Path, strict: bool) -> Result<LoadReport> {
    let rename = |k: &str| -> Option<String> {
        let k = k.strip_prefix("state_dict.").unwrap_or(k);
        Some(k.strip_prefix("module.").unwrap_or(k).to_string())
    };
    if !path.is_file() {
        return Err(Error::file(path, "checkpoint not found"));
    }
    let is_st = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let load =
        |strict| if is_st { m.load_safetensors(path, strict, &rename) } else { m.load_pth(path, strict, &rename) };
    let report = load(strict).map_err(|e| match e {
        Error::File { path, msg } => Error::file(&path, format!("does not fit this {}: {msg}", m.type_name())),
        e => e,
    })?;
    Ok(report)
}

/// Checks that `x` is a batch of RGB images.
pub(crate) fn check_image(op: &str, x: &Var) -> Result<()> {
    match *x.shape() {
        [_, 3, h, w] if h >= 1 && w >= 1 => Ok(()),
        _ => Err(Error::shape(op, format!("expects images [N, 3, H, W], got shape {:?}", x.shape()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_positions_match_the_reference() {
        let l = vgg19_layers();
        assert_eq!(l.len(), 53);
        assert_eq!(l[0], Layer::Conv(3, 3, 1));
        assert_eq!(l[2], Layer::Conv(3, 64, 3));
        assert_eq!(l[30], Layer::Relu); // relu4_1
        assert_eq!(l[29], Layer::Conv(256, 512, 3));
        assert_eq!(l[43], Layer::Relu); // relu5_1
        assert_eq!(l[51], Layer::Conv(512, 512, 3));
        let pools: Vec<usize> = l.iter().enumerate().filter(|(_, x)| **x == Layer::Pool).map(|(i, _)| i).collect();
        assert_eq!(pools, [7, 14, 27, 40]);
    }
}
