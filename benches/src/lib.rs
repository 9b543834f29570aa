//! Benchmarks of the framework. The criterion benches live in `benches/benches/`;
//! programs that compare with PyTorch in one run live in `benches/src/bin/` with
//! their Python companions next to `RESULTS.md`.

#![warn(missing_docs)]

pub mod report;
pub mod suite;

use jit_ops::prelude::*;

/// The VGG19 convolution stack from conv1_1 to relu5_1 (3x3 convolutions with zero
/// padding 1, ReLU, 2x2 max pooling), as `(in, out)` channels per conv and `None`
/// for a pool.
pub const VGG19_TO_RELU5_1: [Option<(usize, usize)>; 17] = [
    Some((3, 64)),
    Some((64, 64)),
    None,
    Some((64, 128)),
    Some((128, 128)),
    None,
    Some((128, 256)),
    Some((256, 256)),
    Some((256, 256)),
    Some((256, 256)),
    None,
    Some((256, 512)),
    Some((512, 512)),
    Some((512, 512)),
    Some((512, 512)),
    None,
    Some((512, 512)),
];

/// Weights and biases of [`VGG19_TO_RELU5_1`] (He-normal, seeded), as parameters.
pub fn vgg19_params(seed: u64) -> Result<Vec<(Var, Var)>> {
    manual_seed(seed);
    let mut out = Vec::new();
    for (i, o) in VGG19_TO_RELU5_1.iter().flatten() {
        let w = Var::randn(&[*o, *i, 3, 3], DType::F32)?.try_mul((2.0 / (9 * i) as f64).sqrt())?;
        let b = Var::zeros(&[*o], DType::F32);
        realize(&[w.clone(), b.clone()])?;
        out.push((w.requires_grad_(true)?, b.requires_grad_(true)?));
    }
    Ok(out)
}

/// The stack applied to `x` (`[N, 3, H, W]`): relu5_1 features.
pub fn vgg19_forward(x: &Var, params: &[(Var, Var)]) -> Result<Var> {
    let mut h = x.clone();
    let mut p = params.iter();
    for layer in VGG19_TO_RELU5_1 {
        h = match layer {
            Some(_) => {
                let (w, b) = p.next().ok_or_else(|| Error::argument("vgg19", "too few parameters"))?;
                conv2d(&h, w, Some(b), &Conv2dOptions::new(1, 1))?.relu()?
            }
            None => max_pool2d(&h, &Pool2dOptions::new(2))?,
        };
    }
    Ok(h)
}
