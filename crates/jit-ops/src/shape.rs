//! Shape and indexing operators, each a `reshape` or a `reindex` (plus `where` for
//! `cat`, and the `gather` meta-op for `gather` and `index_select`).

use jit_core::{normalize_dim, normalize_dims, DType, Error, IndexExpr as E, Result, Var};

/// Padding modes of [`ShapeOps::pad`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    /// Pad with a constant value.
    Constant(f64),
    /// Mirror without repeating the edge (`torch` "reflect"); padding must be smaller
    /// than the dim.
    Reflect,
    /// Repeat the edge value (`torch` "replicate").
    Replicate,
}

/// Shape and indexing operators with PyTorch semantics. Dims may be negative.
pub trait ShapeOps: Sized {
    /// Same as [`Var::reshape`].
    fn view(&self, shape: &[isize]) -> Result<Var>;
    /// Merges dims `start..=end` into one.
    fn flatten(&self, start: isize, end: isize) -> Result<Var>;
    /// Removes `dim` if its size is 1 (else returns the value unchanged).
    fn squeeze(&self, dim: isize) -> Result<Var>;
    /// Removes every dim of size 1.
    fn squeeze_all(&self) -> Result<Var>;
    /// Inserts a dim of size 1 at `dim` (in `[-ndim-1, ndim]`).
    fn unsqueeze(&self, dim: isize) -> Result<Var>;
    /// Swaps two dims.
    fn transpose(&self, d0: isize, d1: isize) -> Result<Var>;
    /// Reorders dims: output dim `k` is input dim `dims[k]`.
    fn permute(&self, dims: &[isize]) -> Result<Var>;
    /// `len` elements of `dim` from `start`.
    fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Var>;
    /// Python slicing `x[start:end:step]` along `dim` (negative bounds count from the
    /// end and are clamped; `step` must be positive).
    fn slice(&self, dim: isize, start: isize, end: Option<isize>, step: usize) -> Result<Var>;
    /// Pads the last dims: `pads` is `[last_lo, last_hi, second_last_lo, ...]` as in
    /// `torch.nn.functional.pad`.
    fn pad(&self, pads: &[usize], mode: PadMode) -> Result<Var>;
    /// Reverses the order along each of `dims`.
    fn flip(&self, dims: &[isize]) -> Result<Var>;
    /// Broadcasts to `shape` (-1 keeps a dim; new dims are added in front).
    fn expand(&self, shape: &[isize]) -> Result<Var>;
    /// Tiles the value `reps[d]` times along each dim (`torch.Tensor.repeat`).
    fn repeat(&self, reps: &[usize]) -> Result<Var>;
    /// Splits into pieces of `size` along `dim` (the last may be smaller).
    fn split(&self, size: usize, dim: isize) -> Result<Vec<Var>>;
    /// Splits into pieces of the given sizes along `dim`.
    fn split_sizes(&self, sizes: &[usize], dim: isize) -> Result<Vec<Var>>;
    /// Splits into `chunks` pieces along `dim` (`torch.chunk`).
    fn chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Var>>;
    /// `out[i] = self[i with dim replaced by index[i]]` (`torch.gather`); `index` is
    /// an integer value of the same rank. Out-of-range indices read 0 (PyTorch
    /// raises; indices are not read when the graph is built). The gradient is a
    /// scatter-add into the input's shape.
    fn gather(&self, dim: isize, index: &Var) -> Result<Var>;
    /// Selects the entries `index` (1-D integer) along `dim` (`torch.index_select`).
    fn index_select(&self, dim: isize, index: &Var) -> Result<Var>;
    /// Nearest-neighbour resize of the last `size.len()` dims, with PyTorch's
    /// `mode="nearest"` rule `src = floor(dst * in / out)`.
    fn interpolate_nearest(&self, size: &[usize]) -> Result<Var>;
    /// Nearest-neighbour upsampling of an NCHW value by an integer factor.
    fn upsample_nearest2d(&self, scale: usize) -> Result<Var>;
    /// Rotates along each of `dims` by the matching entry of `shifts` (elements
    /// leaving the end come back at the start, `torch.roll`); with no dims, rotates
    /// the flattened value by the one shift and restores the shape.
    fn roll(&self, shifts: &[isize], dims: &[isize]) -> Result<Var>;
    /// The lower triangle of the last two dims (`torch.tril`): entries with
    /// `column - row <= diagonal` kept, the others zero.
    fn tril(&self, diagonal: i64) -> Result<Var>;
    /// The upper triangle of the last two dims (`torch.triu`): entries with
    /// `column - row >= diagonal` kept, the others zero.
    fn triu(&self, diagonal: i64) -> Result<Var>;
}

/// Keeps the entries of the last two dims where `cond(column - row - diagonal)`
/// holds, zero elsewhere (a reindex condition: fuses, and its gradient is the same
/// mask).
fn triangle(x: &Var, op: &str, cond: fn(E) -> E, diagonal: i64) -> Result<Var> {
    if x.ndim() < 2 {
        return Err(Error::Shape {
            op: op.into(),
            msg: format!("needs at least 2 dims (a matrix or a batch of them), got shape {:?}", x.shape()),
        });
    }
    let (r, c) = (x.ndim() - 2, x.ndim() - 1);
    let keep = cond(E::idx(c) - E::idx(r) - diagonal);
    x.reindex(x.shape(), identity_exprs(x.ndim()), 0.0, vec![keep])
}

fn identity_exprs(n: usize) -> Vec<E> {
    (0..n).map(E::idx).collect()
}

fn reindex(x: &Var, shape: &[usize], exprs: Vec<E>) -> Result<Var> {
    x.reindex(shape, exprs, 0.0, vec![])
}

impl ShapeOps for Var {
    fn view(&self, shape: &[isize]) -> Result<Var> {
        self.reshape(shape)
    }

    fn flatten(&self, start: isize, end: isize) -> Result<Var> {
        if self.ndim() == 0 {
            return self.reshape(&[1]);
        }
        let s = normalize_dim("flatten", start, self.shape())?;
        let e = normalize_dim("flatten", end, self.shape())?;
        if s > e {
            return Err(Error::argument("flatten", format!("start dim {start} comes after end dim {end}")));
        }
        let sh = self.shape();
        let mut new: Vec<isize> = sh[..s].iter().map(|&d| d as isize).collect();
        new.push(sh[s..=e].iter().product::<usize>() as isize);
        new.extend(sh[e + 1..].iter().map(|&d| d as isize));
        self.reshape(&new)
    }

    fn squeeze(&self, dim: isize) -> Result<Var> {
        let d = normalize_dim("squeeze", dim, self.shape())?;
        if self.ndim() == 0 || self.shape()[d] != 1 {
            return Ok(self.clone());
        }
        let new: Vec<isize> =
            self.shape().iter().enumerate().filter(|&(k, _)| k != d).map(|(_, &n)| n as isize).collect();
        self.reshape(&new)
    }

    fn squeeze_all(&self) -> Result<Var> {
        let new: Vec<isize> = self.shape().iter().filter(|&&n| n != 1).map(|&n| n as isize).collect();
        self.reshape(&new)
    }

    fn unsqueeze(&self, dim: isize) -> Result<Var> {
        let mut ext = self.shape().to_vec();
        ext.push(1);
        let d = normalize_dim("unsqueeze", dim, &ext)?;
        let mut new: Vec<isize> = self.shape().iter().map(|&n| n as isize).collect();
        new.insert(d, 1);
        self.reshape(&new)
    }

    fn transpose(&self, d0: isize, d1: isize) -> Result<Var> {
        let a = normalize_dim("transpose", d0, self.shape())?;
        let b = normalize_dim("transpose", d1, self.shape())?;
        let mut perm: Vec<isize> = (0..self.ndim() as isize).collect();
        if self.ndim() > 0 {
            perm.swap(a, b);
        }
        self.permute(&perm)
    }

    fn permute(&self, dims: &[isize]) -> Result<Var> {
        if dims.len() != self.ndim() {
            return Err(Error::Shape {
                op: "permute".into(),
                msg: format!(
                    "got {} dims {dims:?} for a value of rank {} (shape {:?})",
                    dims.len(),
                    self.ndim(),
                    self.shape()
                ),
            });
        }
        let p = normalize_dims("permute", dims, self.shape())?;
        if p.iter().enumerate().all(|(k, &d)| k == d) {
            return Ok(self.clone());
        }
        let shape: Vec<usize> = p.iter().map(|&d| self.shape()[d]).collect();
        // input dim p[k] is output index k
        let mut exprs = vec![E::c(0); self.ndim()];
        for (k, &d) in p.iter().enumerate() {
            exprs[d] = E::idx(k);
        }
        reindex(self, &shape, exprs)
    }

    fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Var> {
        let d = normalize_dim("narrow", dim, self.shape())?;
        let n = self.shape().get(d).copied().unwrap_or(1);
        if start + len > n {
            return Err(Error::Shape {
                op: "narrow".into(),
                msg: format!("start {start} + length {len} exceeds size {n} of dim {d} (shape {:?})", self.shape()),
            });
        }
        self.slice(dim, start as isize, Some((start + len) as isize), 1)
    }

    fn slice(&self, dim: isize, start: isize, end: Option<isize>, step: usize) -> Result<Var> {
        let d = normalize_dim("slice", dim, self.shape())?;
        if step == 0 {
            return Err(Error::argument("slice", "step must be positive"));
        }
        if self.ndim() == 0 {
            return Err(Error::Shape { op: "slice".into(), msg: "cannot slice a rank-0 value".into() });
        }
        let n = self.shape()[d] as isize;
        let norm = |v: isize| if v < 0 { (v + n).max(0) } else { v.min(n) };
        let s = norm(start);
        let e = norm(end.unwrap_or(n));
        let len = if e > s { ((e - s) as usize).div_ceil(step) } else { 0 };
        if s == 0 && len as isize == n && step == 1 {
            return Ok(self.clone());
        }
        let mut shape = self.shape().to_vec();
        shape[d] = len;
        let mut exprs = identity_exprs(self.ndim());
        exprs[d] = E::idx(d) * step as i64 + s as i64;
        reindex(self, &shape, exprs)
    }

    fn pad(&self, pads: &[usize], mode: PadMode) -> Result<Var> {
        if !pads.len().is_multiple_of(2) || pads.len() / 2 > self.ndim() {
            return Err(Error::Shape {
                op: "pad".into(),
                msg: format!(
                    "padding {pads:?} must have an even length of at most 2 x rank ({}) for shape {:?}",
                    2 * self.ndim(),
                    self.shape()
                ),
            });
        }
        let mut shape = self.shape().to_vec();
        let mut exprs = identity_exprs(self.ndim());
        for (k, pair) in pads.chunks(2).enumerate() {
            let d = self.ndim() - 1 - k;
            let (lo, hi) = (pair[0], pair[1]);
            let n = self.shape()[d];
            // sizes and index arithmetic are i64 in the kernels
            let size = n.checked_add(lo).and_then(|s| s.checked_add(hi)).filter(|&s| s <= i64::MAX as usize);
            let Some(size) = size else {
                return Err(Error::Shape {
                    op: "pad".into(),
                    msg: format!("padding ({lo}, {hi}) of dim {d} (size {n}) is too large (shape {:?})", self.shape()),
                });
            };
            let j = E::idx(d) - lo as i64;
            exprs[d] = match mode {
                PadMode::Constant(_) => j,
                PadMode::Reflect => {
                    if lo >= n.max(1) || hi >= n.max(1) {
                        return Err(Error::Shape {
                            op: "pad".into(),
                            msg: format!(
                                "reflect padding ({lo}, {hi}) must be smaller than the size {n} of dim {d} (shape {:?})",
                                self.shape()
                            ),
                        });
                    }
                    let m = n as i64 - 1;
                    E::c(m) - (E::c(m) - j.abs()).abs()
                }
                PadMode::Replicate => {
                    if n == 0 && (lo > 0 || hi > 0) {
                        return Err(Error::Shape {
                            op: "pad".into(),
                            msg: format!("cannot replicate-pad the empty dim {d} (shape {:?})", self.shape()),
                        });
                    }
                    j.clamp(0, n as i64 - 1)
                }
            };
            shape[d] = size;
        }
        let fill = if let PadMode::Constant(v) = mode { v } else { 0.0 };
        // the gradient as gathers (the reindex's own rule is a scatter-add, which
        // runs as one sequential loop per plane); replicate padding keeps the scatter
        let padded: Vec<(usize, usize, usize)> = pads
            .chunks(2)
            .enumerate()
            .map(|(k, pair)| (self.ndim() - 1 - k, pair[0], pair[1]))
            .filter(|&(_, lo, hi)| lo > 0 || hi > 0)
            .collect();
        if matches!(mode, PadMode::Replicate) || padded.is_empty() {
            return self.reindex(&shape, exprs, fill, vec![]);
        }
        let in_shape = self.shape().to_vec();
        let forward = move |xs: &[Var]| Ok((xs[0].reindex(&shape, exprs, fill, vec![])?, vec![]));
        let backward = move |_: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
            let mut t = g.clone();
            for &(d, lo, hi) in &padded {
                let n = in_shape[d];
                t = match mode {
                    // stored between dims: each fold's kernel then checks the few
                    // guards of its own dim only
                    PadMode::Reflect => reflect_fold(&t, d, lo, hi, n)?.materialize(),
                    _ => t.narrow(d as isize, lo, n)?,
                };
            }
            Ok(vec![Some(t)])
        };
        jit_core::custom_op("pad", std::slice::from_ref(self), forward, std::sync::Arc::new(backward))
    }

    fn flip(&self, dims: &[isize]) -> Result<Var> {
        let ds = normalize_dims("flip", dims, self.shape())?;
        if self.ndim() == 0 {
            return Ok(self.clone());
        }
        let mut exprs = identity_exprs(self.ndim());
        for d in ds {
            exprs[d] = E::c(self.shape()[d] as i64 - 1) - E::idx(d);
        }
        reindex(self, self.shape(), exprs)
    }

    fn expand(&self, shape: &[isize]) -> Result<Var> {
        if shape.len() < self.ndim() {
            return Err(Error::Shape {
                op: "expand".into(),
                msg: format!("target {shape:?} has fewer dims than the value's shape {:?}", self.shape()),
            });
        }
        let lead = shape.len() - self.ndim();
        let mut target = Vec::with_capacity(shape.len());
        for (k, &s) in shape.iter().enumerate() {
            target.push(match s {
                -1 if k >= lead => self.shape()[k - lead],
                s if s >= 0 => s as usize,
                _ => {
                    return Err(Error::Shape {
                        op: "expand".into(),
                        msg: format!("size {s} at dim {k} of {shape:?} is invalid for shape {:?}", self.shape()),
                    })
                }
            });
        }
        self.broadcast_as(&target).map_err(|_| Error::Shape {
            op: "expand".into(),
            msg: format!("cannot expand shape {:?} to {shape:?}: only dims of size 1 can be expanded", self.shape()),
        })
    }

    fn repeat(&self, reps: &[usize]) -> Result<Var> {
        if reps.len() < self.ndim() {
            return Err(Error::Shape {
                op: "repeat".into(),
                msg: format!(
                    "{} repeat counts {reps:?} for a value of rank {} (shape {:?})",
                    reps.len(),
                    self.ndim(),
                    self.shape()
                ),
            });
        }
        let lead = reps.len() - self.ndim();
        let shape: Vec<usize> =
            reps.iter().enumerate().map(|(k, &r)| r * if k >= lead { self.shape()[k - lead] } else { 1 }).collect();
        let exprs: Vec<E> = (0..self.ndim()).map(|d| E::idx(d + lead).modulo(self.shape()[d] as i64)).collect();
        reindex(self, &shape, exprs)
    }

    fn split(&self, size: usize, dim: isize) -> Result<Vec<Var>> {
        if size == 0 {
            return Err(Error::argument("split", "split size must be positive"));
        }
        let d = normalize_dim("split", dim, self.shape())?;
        let n = self.shape().get(d).copied().unwrap_or(1);
        let mut sizes = vec![size; n / size];
        if !n.is_multiple_of(size) || n == 0 {
            sizes.push(n % size);
        }
        self.split_sizes(&sizes, dim)
    }

    fn split_sizes(&self, sizes: &[usize], dim: isize) -> Result<Vec<Var>> {
        let d = normalize_dim("split", dim, self.shape())?;
        let n = self.shape().get(d).copied().unwrap_or(1);
        if sizes.iter().sum::<usize>() != n {
            return Err(Error::Shape {
                op: "split".into(),
                msg: format!("sizes {sizes:?} do not add up to the size {n} of dim {d} (shape {:?})", self.shape()),
            });
        }
        let mut start = 0;
        let mut out = Vec::with_capacity(sizes.len());
        for &s in sizes {
            out.push(self.narrow(dim, start, s)?);
            start += s;
        }
        Ok(out)
    }

    fn chunk(&self, chunks: usize, dim: isize) -> Result<Vec<Var>> {
        if chunks == 0 {
            return Err(Error::argument("chunk", "number of chunks must be positive"));
        }
        let d = normalize_dim("chunk", dim, self.shape())?;
        let n = self.shape().get(d).copied().unwrap_or(1);
        self.split(n.div_ceil(chunks).max(1), dim)
    }

    fn gather(&self, dim: isize, index: &Var) -> Result<Var> {
        let d = normalize_dim("gather", dim, self.shape())?;
        if index.dtype().is_float() || index.dtype() == DType::Bool {
            return Err(Error::DType {
                op: "gather".into(),
                msg: format!("index must be an integer value, got {}", index.dtype()),
            });
        }
        if index.ndim() != self.ndim() {
            return Err(Error::Shape {
                op: "gather".into(),
                msg: format!("index of shape {:?} must have the rank of the input {:?}", index.shape(), self.shape()),
            });
        }
        for k in 0..self.ndim() {
            if k != d && index.shape()[k] > self.shape()[k] {
                return Err(Error::Shape {
                    op: "gather".into(),
                    msg: format!("index shape {:?} exceeds input shape {:?} at dim {k}", index.shape(), self.shape()),
                });
            }
        }
        if self.ndim() == 0 {
            return Ok(self.clone());
        }
        // the gather meta-op: one data-dependent load per output element
        self.gather_indexed(d, index)
    }

    fn index_select(&self, dim: isize, index: &Var) -> Result<Var> {
        let d = normalize_dim("index_select", dim, self.shape())?;
        if index.ndim() != 1 {
            return Err(Error::Shape {
                op: "index_select".into(),
                msg: format!("index must be 1-D, got shape {:?}", index.shape()),
            });
        }
        if self.ndim() == 0 {
            return self.gather(0, index);
        }
        let mut shape = self.shape().to_vec();
        shape[d] = index.shape()[0];
        let new: Vec<usize> = (0..self.ndim()).filter(|&k| k != d).collect();
        let idx = index.broadcast_to_dims(&shape, &new)?;
        self.gather(dim, &idx)
    }

    fn roll(&self, shifts: &[isize], dims: &[isize]) -> Result<Var> {
        if dims.is_empty() {
            let [shift] = shifts else {
                return Err(Error::argument(
                    "roll",
                    format!("without dims, give exactly one shift (got {})", shifts.len()),
                ));
            };
            let shape: Vec<isize> = self.shape().iter().map(|&d| d as isize).collect();
            return self.reshape(&[-1])?.roll(&[*shift], &[0])?.reshape(&shape);
        }
        if shifts.len() != dims.len() {
            return Err(Error::argument(
                "roll",
                format!("got {} shifts for {} dims; give one per dim", shifts.len(), dims.len()),
            ));
        }
        let mut exprs = identity_exprs(self.ndim());
        for (&s, &dim) in shifts.iter().zip(dims) {
            let d = normalize_dim("roll", dim, self.shape())?;
            let n = self.shape()[d] as i64;
            if n == 0 {
                continue;
            }
            // out[i] = in[(i - s) mod n], composed with earlier shifts of the same dim
            let s = (s as i64).rem_euclid(n);
            if s != 0 {
                exprs[d] = (exprs[d].clone() - s).modulo(n);
            }
        }
        reindex(self, self.shape(), exprs)
    }

    fn tril(&self, diagonal: i64) -> Result<Var> {
        triangle(self, "tril", |e| e.le(0), diagonal)
    }

    fn triu(&self, diagonal: i64) -> Result<Var> {
        triangle(self, "triu", |e| e.ge(0), diagonal)
    }

    fn interpolate_nearest(&self, size: &[usize]) -> Result<Var> {
        if size.len() > self.ndim() {
            return Err(Error::Shape {
                op: "interpolate".into(),
                msg: format!("output size {size:?} has more dims than the input shape {:?}", self.shape()),
            });
        }
        let lead = self.ndim() - size.len();
        let mut shape = self.shape().to_vec();
        let mut exprs = identity_exprs(self.ndim());
        let in_shape = self.shape().to_vec();
        for (k, &out) in size.iter().enumerate() {
            let d = lead + k;
            let inp = self.shape()[d];
            if inp == 0 && out > 0 {
                return Err(Error::Shape {
                    op: "interpolate".into(),
                    msg: format!("cannot resize the empty dim {d} of shape {:?}", self.shape()),
                });
            }
            shape[d] = out;
            if out > 0 {
                // floor(i * in / out) with the ratio in lowest terms: a whole-number
                // ratio such as 128 -> 256 reads floor(i / 2), whose small divisor
                // stays literal in kernels (a division by a launch argument otherwise)
                let g = gcd(inp, out);
                exprs[d] = (E::idx(d) * (inp / g) as i64).floor_div((out / g) as i64);
            }
        }
        if shape.contains(&0) || in_shape.contains(&0) {
            return reindex(self, &shape, exprs);
        }
        let resized: Vec<(usize, usize)> = (lead..self.ndim()).map(|d| (d, shape[d])).collect();
        let forward = move |xs: &[Var]| Ok((reindex(&xs[0], &shape, exprs)?, vec![]));
        // the gradient as gathers: each input position sums the outputs that read it
        let backward = move |_: &[Var], g: &Var| -> Result<Vec<Option<Var>>> {
            let mut t = g.clone();
            for &(d, out) in &resized {
                t = nearest_fold(&t, d, in_shape[d], out)?;
            }
            Ok(vec![Some(t)])
        };
        jit_core::custom_op("interpolate", std::slice::from_ref(self), forward, std::sync::Arc::new(backward))
    }

    fn upsample_nearest2d(&self, scale: usize) -> Result<Var> {
        if self.ndim() != 4 {
            return Err(Error::Shape {
                op: "upsample_nearest2d".into(),
                msg: format!("expects an NCHW value, got shape {:?}", self.shape()),
            });
        }
        let (h, w) = (self.shape()[2], self.shape()[3]);
        self.interpolate_nearest(&[h * scale, w * scale])
    }
}

/// The adjoint of reflection padding along `d` (`lo` and `hi` added to a length of
/// `n`): `g` has `n + lo + hi` entries there and the result `n`, each the sum of the
/// (one to three) padded positions that mirror it, as three gathers.
fn reflect_fold(g: &Var, d: usize, lo: usize, hi: usize, n: usize) -> Result<Var> {
    let mut shape = g.shape().to_vec();
    shape[d] = n;
    // `src` read at `e` along `d`; out of its range reads 0 (plain range checks on a
    // narrowed source, which vector loops handle, rather than extra conditions)
    let at = |src: &Var, e: E| {
        let mut exprs = identity_exprs(shape.len());
        exprs[d] = e;
        src.reindex(&shape, exprs, 0.0, vec![])
    };
    let i = || E::idx(d);
    // position i reads padded j = i + lo; the left mirror j = lo - i (j < lo, so
    // 1 <= i <= lo); the right mirror j = lo + 2 (n - 1) - i (j >= lo + n, so
    // n - 1 - hi <= i <= n - 2)
    let mut sum = at(g, i() + lo as i64)?;
    if lo > 0 {
        sum = sum.try_add(&at(&g.narrow(d as isize, 0, lo)?, E::c(lo as i64) - i())?)?;
    }
    if hi > 0 {
        sum = sum.try_add(&at(&g.narrow(d as isize, lo + n, hi)?, E::c(n as i64 - 2) - i())?)?;
    }
    Ok(sum)
}

/// The adjoint of nearest resizing along `d` from `inp` to `out` entries
/// (`src = floor(dst inp / out)`): input position `j` sums the outputs `i` with
/// `j out <= i inp < (j + 1) out`, that is `i` from `ceil(j out / inp)` below
/// `ceil((j + 1) out / inp)`: at most `ceil(out / inp)` of them, one gather each
/// (without guards when `out` is a multiple of `inp`).
fn nearest_fold(g: &Var, d: usize, inp: usize, out: usize) -> Result<Var> {
    let mut shape = g.shape().to_vec();
    shape[d] = inp;
    let (o, n) = (out as i64, inp as i64);
    let first = |j: E| (j * o + (n - 1)).floor_div(n);
    let mut sum: Option<Var> = None;
    for t in 0..out.div_ceil(inp) as i64 {
        let mut exprs = identity_exprs(shape.len());
        let (e, conds) = if out.is_multiple_of(inp) {
            (E::idx(d) * (o / n) + t, vec![])
        } else {
            let i = first(E::idx(d)) + t;
            (i.clone(), vec![i.lt(first(E::idx(d) + 1))])
        };
        exprs[d] = e;
        let part = g.reindex(&shape, exprs, 0.0, conds)?;
        sum = Some(match sum {
            None => part,
            Some(s) => s.try_add(&part)?,
        });
    }
    // out >= 1 here, so there is at least one slot
    sum.ok_or_else(|| Error::shape("interpolate", "empty resize"))
}

/// Concatenates values of equal rank along `dim`; other dims must match. dtypes are
/// promoted as in `torch.cat`.
pub fn cat(xs: &[Var], dim: isize) -> Result<Var> {
    let first = xs.first().ok_or_else(|| Error::argument("cat", "expects at least one value"))?;
    let d = normalize_dim("cat", dim, first.shape())?;
    if first.ndim() == 0 {
        return Err(Error::Shape { op: "cat".into(), msg: "zero-dimensional values cannot be concatenated".into() });
    }
    let mut dt = first.dtype();
    for (k, x) in xs.iter().enumerate() {
        let same_rest =
            x.ndim() == first.ndim() && (0..first.ndim()).all(|j| j == d || x.shape()[j] == first.shape()[j]);
        if !same_rest {
            return Err(Error::Shape {
                op: "cat".into(),
                msg: format!(
                    "value {k} has shape {:?}, which does not match {:?} outside dim {d}",
                    x.shape(),
                    first.shape()
                ),
            });
        }
        dt = DType::promote(dt, x.dtype());
    }
    let total: usize = xs.iter().map(|x| x.shape()[d]).sum();
    let mut shape = first.shape().to_vec();
    shape[d] = total;
    // Each piece is shifted into place by a reindex; `where` on the position along
    // `dim` picks the piece, so values are copied exactly.
    let pos = Var::index(&shape, d, DType::I64)?;
    let mut offsets = Vec::with_capacity(xs.len());
    let mut off = 0usize;
    for x in xs {
        offsets.push(off);
        off += x.shape()[d];
    }
    let place = |x: &Var, off: usize| -> Result<Var> {
        let mut exprs = identity_exprs(shape.len());
        exprs[d] = E::idx(d) - off as i64;
        x.cast(dt).reindex(&shape, exprs, 0.0, vec![])
    };
    let last = xs.len() - 1;
    let mut out = place(&xs[last], offsets[last])?;
    for k in (0..last).rev() {
        let piece = place(&xs[k], offsets[k])?;
        out = Var::where_(&pos.lt(offsets[k + 1] as i64)?, &piece, &out)?;
    }
    Ok(out)
}

/// Stacks values of equal shape along a new dim.
pub fn stack(xs: &[Var], dim: isize) -> Result<Var> {
    let first = xs.first().ok_or_else(|| Error::argument("stack", "expects at least one value"))?;
    for (k, x) in xs.iter().enumerate() {
        if x.shape() != first.shape() {
            return Err(Error::Shape {
                op: "stack".into(),
                msg: format!("value {k} has shape {:?} but value 0 has shape {:?}", x.shape(), first.shape()),
            });
        }
    }
    let ys = xs.iter().map(|x| x.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
    cat(&ys, dim)
}

/// Greatest common divisor (`gcd(0, n) = n`).
fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
