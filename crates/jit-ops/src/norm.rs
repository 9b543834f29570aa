//! Normalisation with PyTorch's semantics: batch norm (training and evaluation,
//! running statistics with momentum), instance norm (optionally tracking running
//! statistics), layer norm and group norm. Statistics use the biased variance;
//! running variances the unbiased one. Everything is composite, so it fuses and
//! differentiates like any other graph.

use crate::reduce::ReduceOps;
use jit_core::{no_grad, Error, Result, Var};

/// The statistics of batch or instance norm that carry over between calls.
pub struct RunningStats<'a> {
    /// Running mean per channel, `[C]`.
    pub mean: &'a Var,
    /// Running (unbiased) variance per channel, `[C]`.
    pub var: &'a Var,
    /// Weight of the new batch in the update (PyTorch's default 0.1).
    pub momentum: f64,
}

/// `[1, C, 1, ..]` view of a per-channel value for an input of rank `rank`.
fn per_channel(v: &Var, rank: usize) -> Result<Var> {
    let mut shape = vec![1isize; rank];
    shape[1] = -1;
    v.reshape(&shape)
}

fn check_channels(op: &str, x: &Var, what: &str, v: Option<&Var>) -> Result<()> {
    if let Some(v) = v {
        if x.ndim() < 2 || v.shape() != [x.shape()[1]] {
            return Err(Error::shape(
                op,
                format!(
                    "{what} must have shape [{}] for input {:?}, got {:?}",
                    x.shape().get(1).unwrap_or(&0),
                    x.shape(),
                    v.shape()
                ),
            ));
        }
    }
    Ok(())
}

fn affine(y: Var, weight: Option<&Var>, bias: Option<&Var>, rank: usize) -> Result<Var> {
    let y = match weight {
        Some(w) => y.try_mul(&per_channel(w, rank)?)?,
        None => y,
    };
    match bias {
        Some(b) => y.try_add(&per_channel(b, rank)?),
        None => Ok(y),
    }
}

/// `(x - mean) * rsqrt(var + eps)` with statistics over `dims` (biased variance).
fn normalize(x: &Var, dims: &[isize], eps: f64) -> Result<(Var, Var, Var)> {
    let mean = x.mean(dims, true)?;
    let var = x.var(dims, false, true)?;
    Ok((scale_by_rstd(x, &mean, &var, eps)?, mean, var))
}

/// `(x - mean) * rsqrt(var + eps)`: PyTorch's CPU and CUDA normalisations multiply by
/// the reciprocal standard deviation, and so do we. Per statistic the reciprocal is
/// computed once (the kernel hoists it out of the loop over the normalised
/// elements), where a division would run once per element.
fn scale_by_rstd(x: &Var, mean: &Var, var: &Var, eps: f64) -> Result<Var> {
    x.try_sub(mean)?.try_mul(var.try_add(eps)?.rsqrt())
}

/// Updates running statistics in place from a batch's mean and biased variance over
/// `count` values per channel.
fn update_running(stats: &RunningStats<'_>, mean: &Var, var: &Var, count: usize) -> Result<()> {
    no_grad(|| -> Result<()> {
        let m = stats.momentum;
        let c = stats.mean.shape()[0] as isize;
        let mean = mean.reshape(&[-1, c])?.mean(&[0], false)?;
        let unbiased =
            var.reshape(&[-1, c])?.mean(&[0], false)?.try_mul(count as f64 / (count as f64 - 1.0).max(1.0))?;
        let new_mean = stats.mean.try_mul(1.0 - m)?.try_add(&mean.detach().try_mul(m)?)?.cast(stats.mean.dtype());
        let new_var = stats.var.try_mul(1.0 - m)?.try_add(&unbiased.detach().try_mul(m)?)?.cast(stats.var.dtype());
        jit_core::realize(&[new_mean.clone(), new_var.clone()])?;
        stats.mean.assign(&new_mean)?;
        stats.var.assign(&new_var)
    })
}

/// `torch.nn.functional.batch_norm` for `[N, C, ..]` inputs. In training (or without
/// running statistics) the batch's statistics over every dim but 1 normalise, and
/// the running ones are updated in place; in evaluation the running ones are used.
pub fn batch_norm(
    x: &Var,
    running: Option<RunningStats<'_>>,
    weight: Option<&Var>,
    bias: Option<&Var>,
    training: bool,
    eps: f64,
) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x]) {
        return Ok(batch_norm(&v[0], running, weight, bias, training, eps)?.cast(x.dtype()));
    }
    let op = "batch_norm";
    if x.ndim() < 2 {
        return Err(Error::shape(op, format!("input must be [N, C, ..], got shape {:?}", x.shape())));
    }
    check_channels(op, x, "weight", weight)?;
    check_channels(op, x, "bias", bias)?;
    if let Some(r) = &running {
        check_channels(op, x, "running_mean", Some(r.mean))?;
        check_channels(op, x, "running_var", Some(r.var))?;
    }
    let rank = x.ndim();
    let dims: Vec<isize> = (0..rank as isize).filter(|&d| d != 1).collect();
    let y = match (&running, training) {
        (Some(r), false) => {
            let mean = per_channel(r.mean, rank)?.cast(x.dtype());
            let var = per_channel(r.var, rank)?.cast(x.dtype());
            scale_by_rstd(x, &mean, &var, eps)?
        }
        _ => {
            let count = x.numel() / x.shape()[1].max(1);
            if count <= 1 && training {
                return Err(Error::shape(
                    op,
                    format!("expected more than 1 value per channel when training, got input {:?}", x.shape()),
                ));
            }
            let (y, mean, var) = normalize(x, &dims, eps)?;
            if let (Some(r), true) = (&running, training) {
                update_running(r, &mean, &var, count)?;
            }
            y
        }
    };
    affine(y, weight, bias, rank)
}

/// `torch.nn.functional.instance_norm` for `[N, C, ..]` inputs: statistics per sample
/// and channel over the spatial dims. With `use_input_stats = false` the running
/// statistics normalise; with running statistics and input statistics, the running
/// ones are updated with the batch average (PyTorch's `track_running_stats`).
pub fn instance_norm(
    x: &Var,
    running: Option<RunningStats<'_>>,
    weight: Option<&Var>,
    bias: Option<&Var>,
    use_input_stats: bool,
    eps: f64,
) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x]) {
        return Ok(instance_norm(&v[0], running, weight, bias, use_input_stats, eps)?.cast(x.dtype()));
    }
    let op = "instance_norm";
    if x.ndim() < 3 {
        return Err(Error::shape(op, format!("input must be [N, C, spatial..], got shape {:?}", x.shape())));
    }
    check_channels(op, x, "weight", weight)?;
    check_channels(op, x, "bias", bias)?;
    let rank = x.ndim();
    let dims: Vec<isize> = (2..rank as isize).collect();
    let y = if !use_input_stats {
        let Some(r) = &running else {
            return Err(Error::argument(op, "use_input_stats = false needs running statistics"));
        };
        let mean = per_channel(r.mean, rank)?.cast(x.dtype());
        let var = per_channel(r.var, rank)?.cast(x.dtype());
        scale_by_rstd(x, &mean, &var, eps)?
    } else {
        let count: usize = x.shape()[2..].iter().product();
        let (y, mean, var) = normalize(x, &dims, eps)?;
        if let Some(r) = &running {
            check_channels(op, x, "running_mean", Some(r.mean))?;
            update_running(r, &mean, &var, count)?;
        }
        y
    };
    affine(y, weight, bias, rank)
}

/// `torch.nn.functional.layer_norm`: statistics over the trailing dims of
/// `normalized_shape`; `weight` and `bias` have that shape.
pub fn layer_norm(
    x: &Var,
    normalized_shape: &[usize],
    weight: Option<&Var>,
    bias: Option<&Var>,
    eps: f64,
) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x]) {
        return layer_norm(&v[0], normalized_shape, weight, bias, eps);
    }
    let op = "layer_norm";
    let k = normalized_shape.len();
    if k == 0 || k > x.ndim() || x.shape()[x.ndim() - k..] != *normalized_shape {
        return Err(Error::shape(
            op,
            format!("normalized_shape {normalized_shape:?} must match the trailing dims of the input {:?}", x.shape()),
        ));
    }
    for (what, v) in [("weight", weight), ("bias", bias)] {
        if let Some(v) = v {
            if v.shape() != normalized_shape {
                return Err(Error::shape(
                    op,
                    format!("{what} must have shape {normalized_shape:?}, got {:?}", v.shape()),
                ));
            }
        }
    }
    let dims: Vec<isize> = (x.ndim() - k..x.ndim()).map(|d| d as isize).collect();
    let (y, _, _) = normalize(x, &dims, eps)?;
    let y = match weight {
        Some(w) => y.try_mul(w)?,
        None => y,
    };
    match bias {
        Some(b) => y.try_add(b),
        None => Ok(y),
    }
}

/// `torch.nn.functional.group_norm` for `[N, C, ..]`: channels split into `groups`,
/// statistics per sample and group; `weight` and `bias` are per channel.
pub fn group_norm(x: &Var, groups: usize, weight: Option<&Var>, bias: Option<&Var>, eps: f64) -> Result<Var> {
    if let Some(v) = crate::autocast::widened(&[x]) {
        return group_norm(&v[0], groups, weight, bias, eps);
    }
    let op = "group_norm";
    if x.ndim() < 2 || groups == 0 || !x.shape()[1].is_multiple_of(groups) {
        return Err(Error::shape(
            op,
            format!("groups={groups} must divide the channels of the input {:?} ([N, C, ..])", x.shape()),
        ));
    }
    check_channels(op, x, "weight", weight)?;
    check_channels(op, x, "bias", bias)?;
    let n = x.shape()[0] as isize;
    let grouped = x.reshape(&[n, groups as isize, -1])?;
    let (y, _, _) = normalize(&grouped, &[2], eps)?;
    let shape: Vec<isize> = x.shape().iter().map(|&d| d as isize).collect();
    affine(y.reshape(&shape)?, weight, bias, x.ndim())
}
