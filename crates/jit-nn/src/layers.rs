//! Layers with PyTorch's names, parameter names and shapes, and default
//! initialisation (`kaiming_uniform_(a=sqrt(5))` for weights, which is
//! `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, the same bound for biases; norms start at
//! weight 1, bias 0).

use crate::module::{Module, TrainingFlag};
use jit_ops::prelude::*;
use std::sync::Arc;

/// A realised parameter drawn from `U(-bound, bound)`.
fn uniform(shape: &[usize], bound: f64) -> Result<Var> {
    let v = Var::rand(shape, DType::F32)?.try_mul(2.0 * bound)?.try_sub(bound)?;
    v.sync()?;
    v.requires_grad_(true)
}

fn constant(shape: &[usize], value: f64) -> Result<Var> {
    let v = Var::full(shape, value, DType::F32);
    v.sync()?;
    v.requires_grad_(true)
}

fn buffer(shape: &[usize], value: f64, dtype: DType) -> Result<Var> {
    let v = Var::full(shape, value, dtype);
    v.sync()?;
    Ok(v)
}

fn opt_param(name: &str, v: &Option<Var>) -> Vec<(String, Var)> {
    v.iter().map(|v| (name.to_string(), v.clone())).collect()
}

/// `nn.Conv2d`: `weight [out, in / groups, kh, kw]`, `bias [out]`.
pub struct Conv2d {
    /// The kernel.
    pub weight: Var,
    /// The bias, if any.
    pub bias: Option<Var>,
    /// Stride, padding, dilation, groups, padding mode.
    pub options: Conv2dOptions,
}

impl Conv2d {
    /// A convolution with PyTorch's default initialisation.
    pub fn new(in_ch: usize, out_ch: usize, kernel: usize, options: Conv2dOptions, bias: bool) -> Result<Conv2d> {
        let g = options.groups.max(1);
        if !in_ch.is_multiple_of(g) || !out_ch.is_multiple_of(g) {
            return Err(Error::argument("Conv2d", format!("groups={g} must divide {in_ch} and {out_ch} channels")));
        }
        let fan_in = in_ch / g * kernel * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = uniform(&[out_ch, in_ch / g, kernel, kernel], bound)?;
        let bias = if bias { Some(uniform(&[out_ch], bound)?) } else { None };
        Ok(Conv2d { weight, bias, options })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        conv2d(x, &self.weight, self.bias.as_ref(), &self.options)
    }
    fn type_name(&self) -> &'static str {
        "Conv2d"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(opt_param("bias", &self.bias));
        p
    }
}

/// `nn.ConvTranspose2d`: `weight [in, out / groups, kh, kw]`, `bias [out]`.
pub struct ConvTranspose2d {
    /// The kernel.
    pub weight: Var,
    /// The bias, if any.
    pub bias: Option<Var>,
    /// Stride, padding, output padding, dilation, groups.
    pub options: ConvTranspose2dOptions,
}

impl ConvTranspose2d {
    /// A transposed convolution with PyTorch's default initialisation (its fan-in is
    /// `weight.size(1) * kh * kw`).
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        options: ConvTranspose2dOptions,
        bias: bool,
    ) -> Result<Self> {
        let g = options.groups.max(1);
        let fan_in = out_ch / g * kernel * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let weight = uniform(&[in_ch, out_ch / g, kernel, kernel], bound)?;
        let bias = if bias { Some(uniform(&[out_ch], bound)?) } else { None };
        Ok(ConvTranspose2d { weight, bias, options })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        conv_transpose2d(x, &self.weight, self.bias.as_ref(), &self.options)
    }
    fn type_name(&self) -> &'static str {
        "ConvTranspose2d"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(opt_param("bias", &self.bias));
        p
    }
}

/// `nn.Linear`: `weight [out, in]`, `bias [out]`.
pub struct Linear {
    /// The weight.
    pub weight: Var,
    /// The bias, if any.
    pub bias: Option<Var>,
}

impl Linear {
    /// A linear layer with PyTorch's default initialisation.
    pub fn new(in_features: usize, out_features: usize, bias: bool) -> Result<Linear> {
        let bound = 1.0 / (in_features.max(1) as f64).sqrt();
        let weight = uniform(&[out_features, in_features], bound)?;
        let bias = if bias { Some(uniform(&[out_features], bound)?) } else { None };
        Ok(Linear { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var) -> Result<Var> {
        linear(x, &self.weight, self.bias.as_ref())
    }
    fn type_name(&self) -> &'static str {
        "Linear"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = vec![("weight".to_string(), self.weight.clone())];
        p.extend(opt_param("bias", &self.bias));
        p
    }
}

/// `nn.Embedding`: `weight [num_embeddings, embedding_dim]`; the forward pass picks
/// the rows named by an integer value of any shape (see [`jit_ops::embedding`]).
pub struct Embedding {
    /// The table.
    pub weight: Var,
    /// The row that receives no gradient (and starts at zero), if any.
    pub padding_idx: Option<usize>,
}

impl Embedding {
    /// A table with PyTorch's initialisation: standard normal entries, the padding
    /// row zero.
    pub fn new(num_embeddings: usize, embedding_dim: usize, padding_idx: Option<usize>) -> Result<Embedding> {
        if let Some(p) = padding_idx.filter(|&p| p >= num_embeddings) {
            return Err(Error::argument(
                "Embedding",
                format!("padding_idx {p} is outside the {num_embeddings} rows of the table"),
            ));
        }
        let shape = [num_embeddings, embedding_dim];
        let mut w = Var::randn(&shape, DType::F32)?;
        if let Some(p) = padding_idx {
            let row = Var::index(&shape, 0, DType::I64)?.eq(p as i64)?;
            w = Var::where_(&row, 0.0, &w)?;
        }
        w.sync()?;
        Ok(Embedding { weight: w.requires_grad_(true)?, padding_idx })
    }
}

impl Module for Embedding {
    fn forward(&self, x: &Var) -> Result<Var> {
        jit_ops::embedding(&self.weight, x, self.padding_idx)
    }
    fn type_name(&self) -> &'static str {
        "Embedding"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}

macro_rules! stateless {
    ($(#[$doc:meta])* $name:ident $(($($field:ident: $ty:ty),*))?, $torch:literal, |$s:ident, $x:ident| $body:expr) => {
        $(#[$doc])*
        pub struct $name { $($(#[doc = concat!("`", stringify!($field), "`")] pub $field: $ty),*)? }
        impl Module for $name {
            fn forward(&self, $x: &Var) -> Result<Var> {
                let $s = self;
                let _ = $s;
                $body
            }
            fn type_name(&self) -> &'static str {
                $torch
            }
        }
    };
}

stateless!(
    /// `nn.ReLU`.
    ReLU, "ReLU", |_s, x| x.relu()
);
stateless!(
    /// `nn.LeakyReLU`.
    LeakyReLU(slope: f64), "LeakyReLU", |s, x| x.leaky_relu(s.slope)
);
stateless!(
    /// `nn.Sigmoid`.
    Sigmoid, "Sigmoid", |_s, x| Ok(x.sigmoid())
);
stateless!(
    /// `nn.Tanh`.
    Tanh, "Tanh", |_s, x| Ok(x.tanh())
);
stateless!(
    /// `nn.GELU` (`approximate="tanh"` when `tanh`).
    GELU(tanh: bool), "GELU", |s, x| if s.tanh { x.gelu_tanh() } else { x.gelu() }
);
stateless!(
    /// `nn.SiLU`.
    SiLU, "SiLU", |_s, x| x.silu()
);
stateless!(
    /// `nn.ELU`.
    ELU(alpha: f64), "ELU", |s, x| x.elu(s.alpha)
);
stateless!(
    /// `nn.Softplus` (PyTorch's defaults: `beta` 1, `threshold` 20).
    Softplus(beta: f64, threshold: f64), "Softplus", |s, x| x.softplus(s.beta, s.threshold)
);
stateless!(
    /// `nn.Hardsigmoid`.
    Hardsigmoid, "Hardsigmoid", |_s, x| x.hardsigmoid()
);
stateless!(
    /// `nn.Hardswish`.
    Hardswish, "Hardswish", |_s, x| x.hardswish()
);
stateless!(
    /// `nn.Mish`.
    Mish, "Mish", |_s, x| x.mish()
);
stateless!(
    /// `nn.MaxPool2d`.
    MaxPool2d(options: Pool2dOptions), "MaxPool2d", |s, x| max_pool2d(x, &s.options)
);
stateless!(
    /// `nn.AvgPool2d`.
    AvgPool2d(options: Pool2dOptions, count_include_pad: bool), "AvgPool2d", |s, x| avg_pool2d(x, &s.options, s.count_include_pad, None)
);
stateless!(
    /// `nn.AdaptiveAvgPool2d`.
    AdaptiveAvgPool2d(size: [usize; 2]), "AdaptiveAvgPool2d", |s, x| adaptive_avg_pool2d(x, s.size)
);
stateless!(
    /// `nn.ReflectionPad2d` with `(left, right, top, bottom)`.
    ReflectionPad2d(padding: [usize; 4]), "ReflectionPad2d", |s, x| x.pad(&s.padding, PadMode::Reflect)
);
stateless!(
    /// `nn.ZeroPad2d` with `(left, right, top, bottom)`.
    ZeroPad2d(padding: [usize; 4]), "ZeroPad2d", |s, x| x.pad(&s.padding, PadMode::Constant(0.0))
);
stateless!(
    /// `nn.Flatten` (from dim 1 to the last, as PyTorch's default).
    Flatten, "Flatten", |_s, x| x.flatten(1, -1)
);
stateless!(
    /// `nn.PixelShuffle`.
    PixelShuffle(upscale_factor: usize), "PixelShuffle", |s, x| pixel_shuffle(x, s.upscale_factor)
);
stateless!(
    /// `nn.PixelUnshuffle`.
    PixelUnshuffle(downscale_factor: usize), "PixelUnshuffle", |s, x| pixel_unshuffle(x, s.downscale_factor)
);
stateless!(
    /// `nn.Unfold`.
    Unfold(options: FoldOptions), "Unfold", |s, x| unfold(x, &s.options)
);
stateless!(
    /// `nn.Fold`.
    Fold(output_size: [usize; 2], options: FoldOptions), "Fold", |s, x| fold(x, s.output_size, &s.options)
);

/// How [`Upsample`] resizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpsampleMode {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear, with `align_corners`.
    Bilinear(bool),
}

/// `nn.Upsample` by an integer factor or to a size.
pub struct Upsample {
    /// Output size or scale.
    pub resize: Resize,
    /// Nearest or bilinear.
    pub mode: UpsampleMode,
}

impl Module for Upsample {
    fn forward(&self, x: &Var) -> Result<Var> {
        match self.mode {
            UpsampleMode::Bilinear(ac) => upsample_bilinear2d(x, self.resize, ac),
            UpsampleMode::Nearest => {
                let [h, w] = match *x.shape() {
                    [_, _, h, w] => [h, w],
                    _ => return Err(Error::shape("Upsample", format!("input must be 4-D, got {:?}", x.shape()))),
                };
                let size = match self.resize {
                    Resize::Size(s) => s,
                    Resize::Scale([a, b]) => [(h as f64 * a).floor() as usize, (w as f64 * b).floor() as usize],
                };
                x.interpolate_nearest(&size)
            }
        }
    }
    fn type_name(&self) -> &'static str {
        "Upsample"
    }
}

/// `nn.Dropout`: in training, zeroes elements with probability `p` and scales the
/// rest by `1 / (1 - p)`; the identity in evaluation.
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub p: f64,
    training: TrainingFlag,
}

impl Dropout {
    /// Dropout with probability `p`.
    pub fn new(p: f64) -> Result<Dropout> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::argument("Dropout", format!("p must lie in [0, 1), got {p}")));
        }
        Ok(Dropout { p, training: TrainingFlag::default() })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Var) -> Result<Var> {
        if !self.training.get() || self.p == 0.0 {
            return Ok(x.clone());
        }
        let keep = Var::rand(x.shape(), DType::F32)?.ge(self.p)?;
        Var::where_(&keep, &x.try_mul(1.0 / (1.0 - self.p))?, 0.0)
    }
    fn type_name(&self) -> &'static str {
        "Dropout"
    }
    fn set_own_training(&self, on: bool) {
        self.training.set(on);
    }
}

/// `nn.BatchNorm2d` (`weight`, `bias`; buffers `running_mean`, `running_var`,
/// `num_batches_tracked`).
pub struct BatchNorm2d {
    /// Scale (`None` without affine).
    pub weight: Option<Var>,
    /// Shift.
    pub bias: Option<Var>,
    /// Running mean.
    pub running_mean: Var,
    /// Running variance.
    pub running_var: Var,
    /// Updates counted (PyTorch keeps it; it is not used with a fixed momentum).
    pub num_batches_tracked: Var,
    /// Weight of a new batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance.
    pub eps: f64,
    training: TrainingFlag,
}

impl BatchNorm2d {
    /// Batch norm over `channels` with PyTorch's defaults (eps 1e-5, momentum 0.1,
    /// affine).
    pub fn new(channels: usize) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: Some(constant(&[channels], 1.0)?),
            bias: Some(constant(&[channels], 0.0)?),
            running_mean: buffer(&[channels], 0.0, DType::F32)?,
            running_var: buffer(&[channels], 1.0, DType::F32)?,
            num_batches_tracked: buffer(&[], 0.0, DType::I64)?,
            momentum: 0.1,
            eps: 1e-5,
            training: TrainingFlag::default(),
        })
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        let training = self.training.get();
        let stats = RunningStats { mean: &self.running_mean, var: &self.running_var, momentum: self.momentum };
        if training {
            jit_core::no_grad(|| self.num_batches_tracked.assign(&self.num_batches_tracked.try_add(1i64)?))?;
        }
        batch_norm(x, Some(stats), self.weight.as_ref(), self.bias.as_ref(), training, self.eps)
    }
    fn type_name(&self) -> &'static str {
        "BatchNorm2d"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = opt_param("weight", &self.weight);
        p.extend(opt_param("bias", &self.bias));
        p
    }
    fn own_buffers(&self) -> Vec<(String, Var)> {
        vec![
            ("running_mean".into(), self.running_mean.clone()),
            ("running_var".into(), self.running_var.clone()),
            ("num_batches_tracked".into(), self.num_batches_tracked.clone()),
        ]
    }
    fn set_own_training(&self, on: bool) {
        self.training.set(on);
    }
}

/// `nn.InstanceNorm2d` (no affine and no running statistics by default, as in
/// PyTorch).
pub struct InstanceNorm2d {
    /// Scale, with `affine`.
    pub weight: Option<Var>,
    /// Shift, with `affine`.
    pub bias: Option<Var>,
    /// Running mean and variance, with `track_running_stats`.
    pub running: Option<(Var, Var)>,
    /// Weight of a new batch in the running statistics.
    pub momentum: f64,
    /// Added to the variance.
    pub eps: f64,
    training: TrainingFlag,
}

impl InstanceNorm2d {
    /// Instance norm over `channels`.
    pub fn new(channels: usize, affine: bool, track_running_stats: bool) -> Result<InstanceNorm2d> {
        let (weight, bias) =
            if affine { (Some(constant(&[channels], 1.0)?), Some(constant(&[channels], 0.0)?)) } else { (None, None) };
        let running = if track_running_stats {
            Some((buffer(&[channels], 0.0, DType::F32)?, buffer(&[channels], 1.0, DType::F32)?))
        } else {
            None
        };
        Ok(InstanceNorm2d { weight, bias, running, momentum: 0.1, eps: 1e-5, training: TrainingFlag::default() })
    }
}

impl Module for InstanceNorm2d {
    fn forward(&self, x: &Var) -> Result<Var> {
        let stats = self.running.as_ref().map(|(m, v)| RunningStats { mean: m, var: v, momentum: self.momentum });
        let use_input = self.training.get() || self.running.is_none();
        instance_norm(x, stats, self.weight.as_ref(), self.bias.as_ref(), use_input, self.eps)
    }
    fn type_name(&self) -> &'static str {
        "InstanceNorm2d"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = opt_param("weight", &self.weight);
        p.extend(opt_param("bias", &self.bias));
        p
    }
    fn own_buffers(&self) -> Vec<(String, Var)> {
        match &self.running {
            Some((m, v)) => vec![("running_mean".into(), m.clone()), ("running_var".into(), v.clone())],
            None => vec![],
        }
    }
    fn set_own_training(&self, on: bool) {
        self.training.set(on);
    }
}

/// `nn.LayerNorm` over the trailing `normalized_shape`.
pub struct LayerNorm {
    /// The normalised trailing dims.
    pub normalized_shape: Vec<usize>,
    /// Scale.
    pub weight: Option<Var>,
    /// Shift.
    pub bias: Option<Var>,
    /// Added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Layer norm with PyTorch's defaults (affine, eps 1e-5).
    pub fn new(normalized_shape: &[usize]) -> Result<LayerNorm> {
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            weight: Some(constant(normalized_shape, 1.0)?),
            bias: Some(constant(normalized_shape, 0.0)?),
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Var) -> Result<Var> {
        layer_norm(x, &self.normalized_shape, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
    fn type_name(&self) -> &'static str {
        "LayerNorm"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = opt_param("weight", &self.weight);
        p.extend(opt_param("bias", &self.bias));
        p
    }
}

/// `nn.GroupNorm`.
pub struct GroupNorm {
    /// Channel groups.
    pub groups: usize,
    /// Scale per channel.
    pub weight: Option<Var>,
    /// Shift per channel.
    pub bias: Option<Var>,
    /// Added to the variance.
    pub eps: f64,
}

impl GroupNorm {
    /// Group norm with PyTorch's defaults (affine, eps 1e-5).
    pub fn new(groups: usize, channels: usize) -> Result<GroupNorm> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(Error::argument("GroupNorm", format!("{groups} groups must divide {channels} channels")));
        }
        Ok(GroupNorm {
            groups,
            weight: Some(constant(&[channels], 1.0)?),
            bias: Some(constant(&[channels], 0.0)?),
            eps: 1e-5,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Var) -> Result<Var> {
        group_norm(x, self.groups, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
    fn type_name(&self) -> &'static str {
        "GroupNorm"
    }
    fn own_params(&self) -> Vec<(String, Var)> {
        let mut p = opt_param("weight", &self.weight);
        p.extend(opt_param("bias", &self.bias));
        p
    }
}

/// `nn.Sequential`: children applied in order, named by their position. Slicing
/// keeps the children (the same parameters) and their original names, as
/// `vgg[4:11]` does in PyTorch.
#[derive(Clone, Default)]
pub struct Sequential {
    layers: Vec<(String, Arc<dyn Module>)>,
}

impl Sequential {
    /// A sequence of modules named `"0"`, `"1"`, ...
    pub fn new(layers: Vec<Arc<dyn Module>>) -> Sequential {
        Sequential { layers: layers.into_iter().enumerate().map(|(i, m)| (i.to_string(), m)).collect() }
    }

    /// Appends a module under the next free index.
    pub fn push(&mut self, m: impl Module + 'static) {
        let name = self.layers.last().and_then(|(n, _)| n.parse::<usize>().ok()).map_or(0, |i| i + 1);
        self.layers.push((name.to_string(), Arc::new(m)));
    }

    /// Number of children.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True without children.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Child `i` (by position).
    pub fn get(&self, i: usize) -> Option<&Arc<dyn Module>> {
        self.layers.get(i).map(|(_, m)| m)
    }

    /// The children at positions `range`, sharing their parameters, keeping their
    /// names.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Sequential> {
        if range.start > range.end || range.end > self.layers.len() {
            return Err(Error::argument(
                "Sequential::slice",
                format!("range {range:?} is out of bounds for {} layers", self.layers.len()),
            ));
        }
        Ok(Sequential { layers: self.layers[range].to_vec() })
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Var) -> Result<Var> {
        let mut h = x.clone();
        for (_, m) in &self.layers {
            h = m.forward(&h)?;
        }
        Ok(h)
    }
    fn type_name(&self) -> &'static str {
        "Sequential"
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.iter().map(|(n, m)| (n.clone(), m.as_ref())).collect()
    }
}
