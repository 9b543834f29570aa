//! Extern ops: work that is not generated from the kernel IR but handed to a library
//! (the `gemm` crate on the CPU). Inputs arrive materialised and contiguous; the
//! graph layer differentiates them with their own rules.

use crate::conv2d::Conv2dSpec;
use crate::host_pool::{self, Fill};
use crate::{DType, HostBuffer, KernelError};
use rayon::prelude::*;

/// An extern op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExternOp {
    /// Batched matrix product `out[b] = op(a[b]) · op(b[b])`, where `op` transposes
    /// the last two dims when the flag is set. Inputs are `[Ba, r, c]` with `Ba` equal
    /// to the batch or 1 (broadcast); the output is `[B, M, N]`. Float dtypes; f16 and
    /// bf16 are multiplied in f32 and rounded once.
    Matmul {
        /// Use the transpose of the first input.
        trans_a: bool,
        /// Use the transpose of the second input.
        trans_b: bool,
    },
    /// A unit-stride, single-group 2-d convolution on an already padded input, as
    /// `kh x kw` accumulated gemms over shifted views of it (no im2col). Every tensor
    /// lives on the padded grid `[Hp, Wp]`; outputs are valid in the top-left
    /// `[Hp - (kh-1) dh, Wp - (kw-1) dw]` corner and zero elsewhere.
    Conv2dShift {
        /// Which product.
        pass: ConvPass,
        /// Kernel height and width.
        kernel: [usize; 2],
        /// Dilation.
        dilation: [usize; 2],
    },
    /// A stride-2, single-group, undilated 2-d convolution's forward product on an
    /// already padded input, computed directly (no space-to-depth copy of the input):
    /// `(xp [N, C, Hp, Wp], w [O, C, kh, kw]) -> y [N, O, (Hp - kh) / 2 + 1, (Wp - kw)
    /// / 2 + 1]`. Its gradients are conv2d's own rule (the space-to-depth form).
    Conv2dStride2 {
        /// Kernel height and width.
        kernel: [usize; 2],
    },
    /// One pass of a convolution with PyTorch's geometry (stride, zero padding,
    /// dilation, groups) on the unpadded input, as a library computes it (cuDNN on
    /// the CUDA backend; [`crate::conv2d`]'s loops elsewhere):
    /// `Forward (x [N, C, H, W], w [O, C/g, kh, kw]) -> y [N, O, OH, OW]`,
    /// `BackwardData (dy, w) -> dx [N, C, H, W]`, `BackwardFilter (dy, x) -> dw`.
    /// Differentiable to any order: each pass's gradients are the other two.
    Conv2d {
        /// Which product.
        pass: ConvPass,
        /// The convolution's geometry.
        spec: Conv2dSpec,
    },
    /// The positions that sort each row of `x [R, n]` along its last dim, as i64
    /// `[R, n]`: stable (ties keep their order in both directions), NaN after every
    /// number ascending and before every number descending, as `torch.sort(stable=
    /// True)` and the sorting network of `jit_ops::sort`. Any dtype. The host sorts
    /// each row (rows in parallel); the CUDA backend builds the network instead.
    Argsort {
        /// Largest first.
        descending: bool,
    },
}

/// The three products of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvPass {
    /// `(xp [N, C, Hp, Wp], w [O, C, kh, kw]) -> y [N, O, Hp, Wp]`.
    Forward,
    /// `(dy [N, O, Hp, Wp], w [O, C, kh, kw]) -> dxp [N, C, Hp, Wp]`.
    BackwardData,
    /// `(dy [N, O, Hp, Wp], xp [N, C, Hp, Wp]) -> dw [O, C, kh, kw]`.
    BackwardFilter,
}

impl ExternOp {
    /// Short name for messages and dumps.
    pub fn name(&self) -> &'static str {
        match self {
            ExternOp::Matmul { .. } => "matmul",
            ExternOp::Conv2dShift { .. } | ExternOp::Conv2dStride2 { .. } | ExternOp::Conv2d { .. } => "conv2d",
            ExternOp::Argsort { .. } => "sort",
        }
    }

    /// [`Self::name`] with what tells the variants apart (a convolution's pass, a
    /// transposed operand, the sort's direction), for profiles and dumps.
    pub fn label(&self) -> String {
        let pass = |p: ConvPass| match p {
            ConvPass::Forward => "conv2d",
            ConvPass::BackwardData => "conv2d input-grad",
            ConvPass::BackwardFilter => "conv2d weight-grad",
        };
        match *self {
            ExternOp::Matmul { trans_a, trans_b } => match (trans_a, trans_b) {
                (false, false) => "matmul".into(),
                (true, false) => "matmul Aᵀ·B".into(),
                (false, true) => "matmul A·Bᵀ".into(),
                (true, true) => "matmul Aᵀ·Bᵀ".into(),
            },
            ExternOp::Conv2dShift { pass: p, .. } | ExternOp::Conv2d { pass: p, .. } => pass(p).into(),
            ExternOp::Conv2dStride2 { .. } => "conv2d stride-2".into(),
            ExternOp::Argsort { descending } => if descending { "sort descending" } else { "sort" }.into(),
        }
    }

    /// How many inputs the op takes.
    pub fn arity(&self) -> usize {
        match self {
            ExternOp::Argsort { .. } => 1,
            _ => 2,
        }
    }

    /// Whether the op takes inputs of `dtype` (the products take float dtypes only).
    pub fn accepts(&self, dtype: DType) -> bool {
        match self {
            ExternOp::Argsort { .. } => true,
            _ => dtype.is_float(),
        }
    }

    /// The output dtype for inputs of `dtype`.
    pub fn out_dtype(&self, dtype: DType) -> DType {
        match self {
            ExternOp::Argsort { .. } => DType::I64,
            _ => dtype,
        }
    }

    /// The output shape for inputs of `shapes`, or why they do not fit.
    pub fn out_shape(&self, shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
        match *self {
            ExternOp::Matmul { trans_a, trans_b } => {
                let [a, b] = shapes else { return Err(format!("needs 2 inputs, got {}", shapes.len())) };
                if a.len() != 3 || b.len() != 3 {
                    return Err(format!("needs inputs of rank 3 ([batch, rows, cols]), got {a:?} and {b:?}"));
                }
                let (m, ka) = if trans_a { (a[2], a[1]) } else { (a[1], a[2]) };
                let (kb, n) = if trans_b { (b[2], b[1]) } else { (b[1], b[2]) };
                if ka != kb {
                    return Err(format!(
                        "inner dims differ: {a:?}{} times {b:?}{} ({ka} vs {kb})",
                        if trans_a { "ᵀ" } else { "" },
                        if trans_b { "ᵀ" } else { "" }
                    ));
                }
                let batch = a[0].max(b[0]);
                if (a[0] != batch && a[0] != 1) || (b[0] != batch && b[0] != 1) {
                    return Err(format!("batch sizes {} and {} do not broadcast", a[0], b[0]));
                }
                Ok(vec![batch, m, n])
            }
            ExternOp::Conv2dShift { pass, kernel, dilation } => {
                let [a, b] = shapes else { return Err(format!("needs 2 inputs, got {}", shapes.len())) };
                let g = ConvGeom::new(pass, a, b, kernel, dilation)?;
                Ok(match pass {
                    ConvPass::Forward => vec![g.n, g.o, g.hp, g.wp],
                    ConvPass::BackwardData => vec![g.n, g.c, g.hp, g.wp],
                    ConvPass::BackwardFilter => vec![g.o, g.c, kernel[0], kernel[1]],
                })
            }
            ExternOp::Conv2dStride2 { kernel } => {
                let [a, b] = shapes else { return Err(format!("needs 2 inputs, got {}", shapes.len())) };
                let (n, s) = stride2_geom(a, b, kernel)?;
                let [oh, ow] = s.out();
                Ok(vec![n, s.o, oh, ow])
            }
            ExternOp::Conv2d { pass, spec } => {
                let [a, b] = shapes else { return Err(format!("needs 2 inputs, got {}", shapes.len())) };
                spec.out_shape(pass, a, b)
            }
            ExternOp::Argsort { .. } => match shapes {
                [x] if x.len() == 2 => Ok(x.to_vec()),
                [x] => Err(format!("needs an input of rank 2 ([rows, n]), got {x:?}")),
                _ => Err(format!("needs 1 input, got {}", shapes.len())),
            },
        }
    }

    /// Runs the op with the library on host data.
    pub fn run_cpu(&self, inputs: &[(&HostBuffer, &[usize])], dtype: DType) -> Result<HostBuffer, KernelError> {
        match *self {
            ExternOp::Matmul { trans_a, trans_b } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let shape = self.out_shape(&[sa, sb]).map_err(|e| self.bad(e))?;
                let g = Geometry::new(sa, sb, &shape, trans_a, trans_b);
                match dtype {
                    DType::F32 => {
                        Ok(HostBuffer::F32(gemm_batched(&g, slice_f32(a)?.as_ref(), slice_f32(b)?.as_ref())?))
                    }
                    DType::F64 => {
                        let (a, b) = (a.as_slice::<f64>(), b.as_slice::<f64>());
                        let (Some(a), Some(b)) = (a, b) else { return Err(self.bad("inputs are not f64".into())) };
                        Ok(HostBuffer::F64(gemm_batched(&g, a, b)?))
                    }
                    DType::F16 | DType::BF16 => {
                        let out = gemm_batched(&g, slice_f32(a)?.as_ref(), slice_f32(b)?.as_ref())?;
                        Ok(HostBuffer::F32(out).into_dtype(dtype))
                    }
                    d => Err(self.bad(format!("{d} is not supported (float dtypes only)"))),
                }
            }
            ExternOp::Conv2dShift { pass, kernel, dilation } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let g = ConvGeom::new(pass, sa, sb, kernel, dilation).map_err(|e| self.bad(e))?;
                let out = conv_shift(&g, pass, slice_f32(a)?.as_ref(), slice_f32(b)?.as_ref())?;
                Ok(HostBuffer::F32(out).into_dtype(dtype))
            }
            ExternOp::Conv2dStride2 { kernel } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let (n, s) = stride2_geom(sa, sb, kernel).map_err(|e| self.bad(e))?;
                let out = conv_stride2(n, &s, slice_f32(a)?.as_ref(), slice_f32(b)?.as_ref())?;
                Ok(HostBuffer::F32(out).into_dtype(dtype))
            }
            // off the device: the f64 loops, one rounding per output
            ExternOp::Conv2d { .. } => self.run_reference(inputs, dtype),
            ExternOp::Argsort { descending } => {
                let [(x, sx)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                self.out_shape(&[sx]).map_err(|e| self.bad(e))?;
                let mut out = host_pool::take(DType::I64, x.len(), Fill::Overwritten, "a sort's positions")?;
                let HostBuffer::I64(dst) = &mut out else { return Err(self.bad("the output is not i64".into())) };
                argsort_rows(x, sx[1], descending, dst);
                Ok(out)
            }
        }
    }

    /// The op in f64 with one rounding per output (the reference backend's oracle).
    pub fn run_reference(&self, inputs: &[(&HostBuffer, &[usize])], dtype: DType) -> Result<HostBuffer, KernelError> {
        match *self {
            ExternOp::Matmul { trans_a, trans_b } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let shape = self.out_shape(&[sa, sb]).map_err(|e| self.bad(e))?;
                let g = Geometry::new(sa, sb, &shape, trans_a, trans_b);
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                let mut out = vec![0.0; g.batch * g.m * g.n];
                for bi in 0..g.batch {
                    let (ao, bo) = (g.a_offset(bi), g.b_offset(bi));
                    for i in 0..g.m {
                        for j in 0..g.n {
                            let mut acc = 0.0;
                            for k in 0..g.k {
                                acc += a[ao + i * g.a_rs + k * g.a_cs] * b[bo + k * g.b_rs + j * g.b_cs];
                            }
                            out[(bi * g.m + i) * g.n + j] = acc;
                        }
                    }
                }
                Ok(HostBuffer::from_f64s(dtype, out))
            }
            ExternOp::Conv2dShift { pass, kernel, dilation } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let g = ConvGeom::new(pass, sa, sb, kernel, dilation).map_err(|e| self.bad(e))?;
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                Ok(HostBuffer::from_f64s(dtype, conv_shift_reference(&g, pass, &a, &b)))
            }
            ExternOp::Conv2dStride2 { kernel } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let (n, s) = stride2_geom(sa, sb, kernel).map_err(|e| self.bad(e))?;
                let (a, b) = (a.to_f64_vec(), b.to_f64_vec());
                let ([oh, ow], [kh, kw]) = (s.out(), kernel);
                let mut out = vec![0.0; n * s.o * oh * ow];
                for (i, y) in out.iter_mut().enumerate() {
                    let (v, u, o, bi) = (i % ow, (i / ow) % oh, (i / (ow * oh)) % s.o, i / (ow * oh * s.o));
                    for ci in 0..s.c {
                        for ki in 0..kh {
                            for kj in 0..kw {
                                *y += b[((o * s.c + ci) * kh + ki) * kw + kj]
                                    * a[((bi * s.c + ci) * s.hp + 2 * u + ki) * s.wp + 2 * v + kj];
                            }
                        }
                    }
                }
                Ok(HostBuffer::from_f64s(dtype, out))
            }
            ExternOp::Conv2d { pass, spec } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.wrong_arity(inputs.len())) };
                let dims = spec.dims(pass, sa, sb).map_err(|e| self.bad(e))?;
                let out = crate::conv2d::run_f64(&spec, pass, dims, &a.to_f64_vec(), &b.to_f64_vec())
                    .map_err(|e| self.bad(e))?;
                Ok(HostBuffer::from_f64s(dtype, out))
            }
            // exact on every dtype: the host's sort is its own oracle
            ExternOp::Argsort { .. } => self.run_cpu(inputs, dtype),
        }
    }

    fn wrong_arity(&self, got: usize) -> KernelError {
        self.bad(format!("needs {} inputs, got {got}", self.arity()))
    }

    fn bad(&self, reason: String) -> KernelError {
        KernelError::Internal { op: self.name().into(), reason }
    }
}

/// [`ExternOp::Argsort`] of the rows of `n` elements of `x`, into `out`.
fn argsort_rows(x: &HostBuffer, n: usize, descending: bool, out: &mut [i64]) {
    match x {
        HostBuffer::Bool(v) => sort_rows(v, n, descending, out, |a, b| a.cmp(b)),
        HostBuffer::U8(v) => sort_rows(v, n, descending, out, |a, b| a.cmp(b)),
        HostBuffer::I32(v) => sort_rows(v, n, descending, out, |a, b| a.cmp(b)),
        HostBuffer::I64(v) => sort_rows(v, n, descending, out, |a, b| a.cmp(b)),
        HostBuffer::F16(v) => sort_rows(v, n, descending, out, |a, b| nan_last(a.to_f32(), b.to_f32())),
        HostBuffer::BF16(v) => sort_rows(v, n, descending, out, |a, b| nan_last(a.to_f32(), b.to_f32())),
        HostBuffer::F32(v) => sort_rows(v, n, descending, out, |a, b| nan_last(*a, *b)),
        HostBuffer::F64(v) => sort_rows(v, n, descending, out, |a, b| nan_last(*a, *b)),
    }
}

/// The order of floats with NaN after every number (and equal to NaN); `-0.0`
/// equals `0.0`.
fn nan_last<T: PartialOrd>(a: T, b: T) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.partial_cmp(&a).is_none(), b.partial_cmp(&b).is_none()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        (false, false) => a.partial_cmp(&b).unwrap_or(Equal),
    }
}

/// The stable sorting permutation of each row of `n` elements of `v` under `cmp`
/// (reversed when `descending`; ties keep their order either way) into `out`, rows
/// in parallel.
fn sort_rows<T: Sync>(
    v: &[T],
    n: usize,
    descending: bool,
    out: &mut [i64],
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering + Sync,
) {
    if n == 0 {
        return;
    }
    out.par_chunks_mut(n).zip(v.par_chunks(n)).for_each_init(Vec::new, |perm: &mut Vec<usize>, (dst, row)| {
        perm.clear();
        perm.extend(0..row.len());
        // merge sort (stable): equal keys keep their original order
        perm.sort_by(|&i, &j| {
            let o = cmp(&row[i], &row[j]);
            if descending {
                o.reverse()
            } else {
                o
            }
        });
        for (d, &p) in dst.iter_mut().zip(perm.iter()) {
            *d = p as i64;
        }
    });
}

/// Strides of one batched product (elements, row-major storage).
struct Geometry {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a_batch: usize,
    b_batch: usize,
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_cs: usize,
}

impl Geometry {
    fn new(sa: &[usize], sb: &[usize], out: &[usize], trans_a: bool, trans_b: bool) -> Geometry {
        let (batch, m, n) = (out[0], out[1], out[2]);
        let k = if trans_a { sa[1] } else { sa[2] };
        // logical A is m x k: element (i, k) of a stored [r, c] matrix
        let (a_rs, a_cs) = if trans_a { (1, sa[2]) } else { (sa[2], 1) };
        let (b_rs, b_cs) = if trans_b { (1, sb[2]) } else { (sb[2], 1) };
        let a_batch = if sa[0] == 1 { 0 } else { sa[1] * sa[2] };
        let b_batch = if sb[0] == 1 { 0 } else { sb[1] * sb[2] };
        Geometry { batch, m, n, k, a_batch, b_batch, a_rs, a_cs, b_rs, b_cs }
    }
    fn a_offset(&self, b: usize) -> usize {
        b * self.a_batch
    }
    fn b_offset(&self, b: usize) -> usize {
        b * self.b_batch
    }
}

fn slice_f32(x: &HostBuffer) -> Result<std::borrow::Cow<'_, [f32]>, KernelError> {
    Ok(match x.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => match x.cast(DType::F32) {
            HostBuffer::F32(v) => std::borrow::Cow::Owned(v),
            _ => unreachable!("cast to f32 gives f32"),
        },
    })
}

/// Element types the `gemm` crate multiplies.
trait GemmElem: Copy + Send + Sync + std::ops::Add<Output = Self> + 'static {
    const ZERO: Self;
    const ONE: Self;
    /// A vector of `n` elements from the host pool.
    fn take(n: usize, fill: Fill, what: &str) -> Result<Vec<Self>, KernelError>;
}
impl GemmElem for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn take(n: usize, fill: Fill, what: &str) -> Result<Vec<f32>, KernelError> {
        host_pool::take_f32(n, fill, what)
    }
}
impl GemmElem for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn take(n: usize, fill: Fill, what: &str) -> Result<Vec<f64>, KernelError> {
        match host_pool::take(DType::F64, n, fill, what)? {
            HostBuffer::F64(v) => Ok(v),
            _ => unreachable!("an f64 buffer was asked for"),
        }
    }
}

fn gemm_batched<T: GemmElem>(g: &Geometry, a: &[T], b: &[T]) -> Result<Vec<T>, KernelError> {
    let len = g.batch * g.m * g.n;
    // gemm overwrites the output unless the inner dimension is empty
    let fill = if g.k == 0 { Fill::Zeroed } else { Fill::Overwritten };
    let mut out = T::take(len, fill, &format!("the {}x{}x{} matmul output", g.batch, g.m, g.n))?;
    if len == 0 {
        return Ok(out);
    }
    if g.k == 0 {
        return Ok(out);
    }
    // Many small products: one thread per product. Few large ones: gemm's own threads.
    let small = g.m * g.n * g.k < (1 << 18);
    let one = |(bi, dst): (usize, &mut [T])| {
        let par = if small { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(0) };
        // SAFETY: the pointers and strides describe in-bounds elements of `a`, `b`
        // (checked by `out_shape` against the input shapes, which the caller matched
        // to the buffer lengths) and of `dst`, a distinct m x n row-major block.
        unsafe {
            gemm_view_on(
                [g.m, g.n, g.k],
                (dst.as_mut_ptr(), 1, g.n as isize),
                false,
                (a.as_ptr().add(g.a_offset(bi)), g.a_cs as isize, g.a_rs as isize),
                (b.as_ptr().add(g.b_offset(bi)), g.b_cs as isize, g.b_rs as isize),
                par,
            );
        }
    };
    let need_a = g.a_offset(g.batch - 1) + (g.m.max(1) - 1) * g.a_rs + (g.k - 1) * g.a_cs;
    let need_b = g.b_offset(g.batch - 1) + (g.k - 1) * g.b_rs + (g.n.max(1) - 1) * g.b_cs;
    if need_a >= a.len() || need_b >= b.len() {
        return Err(KernelError::Internal {
            op: "matmul".into(),
            reason: format!("input buffers of {} and {} elements are too short", a.len(), b.len()),
        });
    }
    if let Some(parts) = inner_split(g, rayon::current_num_threads()) {
        gemm_split_inner(g, a, b, &mut out, parts);
        return Ok(out);
    }
    let blocks = out.chunks_mut(g.m * g.n).enumerate();
    if small && g.batch > 1 {
        blocks.collect::<Vec<_>>().into_par_iter().for_each(one);
    } else {
        blocks.for_each(one);
    }
    Ok(out)
}

/// `out = a · b` for every product of the batch, each as `parts` single-threaded
/// products over consecutive ranges of the inner dimension, run in parallel and
/// summed in order. The bounds of `a` and `b` are the caller's (as in
/// [`gemm_batched`]).
fn gemm_split_inner<T: GemmElem>(g: &Geometry, a: &[T], b: &[T], out: &mut [T], parts: usize) {
    let (len_mn, k) = (g.m * g.n, g.k);
    let parts = parts.clamp(1, k.max(1));
    for (bi, dst) in out.chunks_mut(len_mn).enumerate() {
        let partials: Vec<Vec<T>> = (0..parts)
            .into_par_iter()
            .map(|p| {
                let (k0, k1) = (p * k / parts, (p + 1) * k / parts);
                let mut acc = vec![T::ZERO; len_mn];
                // SAFETY: the views are those of gemm_batched's `one` (checked against
                // the buffer lengths there), restricted to the inner indices k0..k1.
                unsafe {
                    gemm_once(
                        [g.m, g.n, k1 - k0],
                        (acc.as_mut_ptr(), 1, g.n as isize),
                        false,
                        (a.as_ptr().add(g.a_offset(bi) + k0 * g.a_cs), g.a_cs as isize, g.a_rs as isize),
                        (b.as_ptr().add(g.b_offset(bi) + k0 * g.b_rs), g.b_cs as isize, g.b_rs as isize),
                        gemm::Parallelism::None,
                    );
                }
                acc
            })
            .collect();
        dst.copy_from_slice(&partials[0]);
        for part in &partials[1..] {
            for (o, v) in dst.iter_mut().zip(part) {
                *o = *o + *v;
            }
        }
    }
}

/// Parts to split a product's inner dimension into, one single-threaded product
/// per part and thread, then summed: for a small output with a long inner dimension
/// (a Gram matrix `F Fᵀ` of a feature map), which gemm would parallelise over the
/// output alone. `None` for the ordinary path.
///
/// With `threads` threads: when every thread gets at least 1024 inner indices and
/// the output has at most 512 x 512 elements (a partial sum per thread), in
/// products of at least 2^22 multiply-adds (batches of small products keep one
/// thread per product). On the
/// 2-core development machine (`cargo run --release -p kernels --example
/// matmul_split_probe`): `[64, 65536] · [65536, 64]` 12.4 ms with gemm's threads,
/// 4.9 ms split; `[128, 16384] · [16384, 128]` 6.8 against 4.2 ms; `[512, 4096] ·
/// [4096, 512]` level. `JIT_MATMUL_SPLIT=0` turns it off, for measurements.
fn inner_split(g: &Geometry, threads: usize) -> Option<usize> {
    let work = g.m * g.n * g.k;
    let candidate = threads > 1 && g.k >= 1024 * threads && g.m * g.n <= 1 << 18 && work >= 1 << 22;
    if !candidate || std::env::var("JIT_MATMUL_SPLIT").as_deref() == Ok("0") {
        return None;
    }
    Some(threads)
}

/// The batch and per-image sizes of a [`ExternOp::Conv2dStride2`].
fn stride2_geom(
    a: &[usize],
    b: &[usize],
    kernel: [usize; 2],
) -> Result<(usize, crate::conv_direct::Stride2Conv), String> {
    let (&[n, c, hp, wp], &[o, wc, kh, kw]) = (a, b) else {
        return Err(format!("needs 4-d inputs, got {a:?} and {b:?}"));
    };
    if wc != c || [kh, kw] != kernel || kernel.contains(&0) {
        return Err(format!("weight {b:?} does not fit input {a:?} and kernel {kernel:?}"));
    }
    if hp < kh || wp < kw {
        return Err(format!("the grid {hp}x{wp} is smaller than the kernel {kernel:?}"));
    }
    Ok((n, crate::conv_direct::Stride2Conv { c, o, hp, wp, kernel }))
}

/// The stride-2 forward product, one image after another.
fn conv_stride2(n: usize, s: &crate::conv_direct::Stride2Conv, a: &[f32], b: &[f32]) -> Result<Vec<f32>, KernelError> {
    let [oh, ow] = s.out();
    let (per_in, per_out) = (s.c * s.hp * s.wp, s.o * oh * ow);
    if a.len() < n * per_in || b.len() < s.o * s.c * s.kernel[0] * s.kernel[1] {
        return Err(KernelError::Internal {
            op: "conv2d".into(),
            reason: format!("input and weight buffers of {} and {} elements are too short", a.len(), b.len()),
        });
    }
    let mut out = host_pool::take_f32(n * per_out, Fill::Overwritten, "a conv2d result")?;
    let packed = crate::conv_direct::pack_stride2(s, b);
    for bi in 0..n {
        let dst = &mut out[bi * per_out..(bi + 1) * per_out];
        crate::conv_direct::forward_stride2(s, &packed, &a[bi * per_in..(bi + 1) * per_in], dst);
    }
    Ok(out)
}

/// The shapes measured in the range where the faster product depends on the
/// processor, `(pass, c, o, plane, columns, tap shifts)` of the direct form ->
/// direct is faster (see [`crate::conv_direct::Choice::Measure`]).
type Tuned = std::collections::HashMap<(ConvPass, usize, usize, usize, usize, Vec<usize>), bool>;

fn tuned() -> &'static std::sync::Mutex<Tuned> {
    static T: std::sync::OnceLock<std::sync::Mutex<Tuned>> = std::sync::OnceLock::new();
    T.get_or_init(Default::default)
}

/// Sizes of a [`ExternOp::Conv2dShift`].
struct ConvGeom {
    n: usize,
    c: usize,
    o: usize,
    hp: usize,
    wp: usize,
    /// Valid output height and width.
    oh: usize,
    ow: usize,
    kernel: [usize; 2],
    dilation: [usize; 2],
}

impl ConvGeom {
    fn new(
        pass: ConvPass,
        a: &[usize],
        b: &[usize],
        kernel: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<ConvGeom, String> {
        let four = |s: &[usize]| -> Result<[usize; 4], String> {
            s.try_into().map_err(|_| format!("needs 4-d inputs, got {s:?}"))
        };
        let (a, b) = (four(a)?, four(b)?);
        let (n, c, o, hp, wp) = match pass {
            ConvPass::Forward => {
                if b[1] != a[1] || [b[2], b[3]] != kernel {
                    return Err(format!("weight {b:?} does not fit input {a:?} and kernel {kernel:?}"));
                }
                (a[0], a[1], b[0], a[2], a[3])
            }
            ConvPass::BackwardData => {
                if b[0] != a[1] || [b[2], b[3]] != kernel {
                    return Err(format!("weight {b:?} does not fit output gradient {a:?} and kernel {kernel:?}"));
                }
                (a[0], b[1], a[1], a[2], a[3])
            }
            ConvPass::BackwardFilter => {
                if a[0] != b[0] || [a[2], a[3]] != [b[2], b[3]] {
                    return Err(format!("output gradient {a:?} and input {b:?} do not share a batch and grid"));
                }
                (a[0], b[1], a[1], a[2], a[3])
            }
        };
        let span = |d: usize| (kernel[d] - 1) * dilation[d];
        if kernel.contains(&0) || dilation.contains(&0) || hp <= span(0) || wp <= span(1) {
            return Err(format!("the grid {hp}x{wp} is smaller than the dilated kernel {kernel:?} x {dilation:?}"));
        }
        Ok(ConvGeom { n, c, o, hp, wp, oh: hp - span(0), ow: wp - span(1), kernel, dilation })
    }

    /// Flat offset of tap `t` on the grid.
    fn tap(&self, t: usize) -> usize {
        let (ki, kj) = (t / self.kernel[1], t % self.kernel[1]);
        ki * self.dilation[0] * self.wp + kj * self.dilation[1]
    }

    /// Grid columns covering every valid output: `(oh - 1) * wp + ow`.
    fn cols(&self) -> usize {
        (self.oh - 1) * self.wp + self.ow
    }
}

/// A strided matrix view: pointer, column stride, row stride (elements).
type View<P> = (P, isize, isize);

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`, for `[m, n, k]`
/// on strided views, on the calling thread alone (`Parallelism::None`) or on all
/// threads (`Parallelism::Rayon(_)`). With threads, a product of at most 128 rows
/// and enough columns is split into one column block per thread, each a
/// single-threaded gemm: the same sums in the same order (bit for bit), and faster
/// than the gemm crate's own threads there. On the 2-core development machine
/// (`cargo run --release -p kernels --example gemm_split_probe`), the 64-channel
/// 3x3 convolutions at 130², batch 2: forward 22.3 -> 18.2 ms, input gradient 20.1
/// -> 17.4 ms; `[64, 64] · [64, 65536]` 8.8 -> 4.9 ms. With 256 or more rows
/// gemm's threads were 10-15% faster, so those keep them. `JIT_GEMM_SPLIT=0` keeps
/// gemm's threads everywhere, for measurements.
///
/// # Safety
/// Every element each view describes must lie inside its live buffer, and `dst`
/// must not overlap the sources.
unsafe fn gemm_view_on<T: GemmElem>(
    [m, n, k]: [usize; 3],
    dst: View<*mut T>,
    accumulate: bool,
    lhs: View<*const T>,
    rhs: View<*const T>,
    parallelism: gemm::Parallelism,
) {
    let threads = rayon::current_num_threads();
    let split = matches!(parallelism, gemm::Parallelism::Rayon(_))
        && threads > 1
        && m <= 128
        && n >= 64 * threads
        && m * n * k >= 1 << 20
        && std::env::var("JIT_GEMM_SPLIT").as_deref() != Ok("0");
    if !split {
        gemm_once([m, n, k], dst, accumulate, lhs, rhs, parallelism);
        return;
    }
    // column blocks of whole 16-column groups, the last one taking the rest
    let bound = |p: usize| if p == threads { n } else { p * n / threads / 16 * 16 };
    let (d, l, r) = (dst.0 as usize, lhs.0 as usize, rhs.0 as usize);
    (0..threads).into_par_iter().for_each(|p| {
        let (j0, j1) = (bound(p), bound(p + 1));
        if j1 <= j0 {
            return;
        }
        // SAFETY: columns j0..j1 of the caller's views, which lie inside their
        // buffers; the blocks write disjoint columns of dst.
        unsafe {
            gemm_once(
                [m, j1 - j0, k],
                ((d as *mut T).offset(j0 as isize * dst.1), dst.1, dst.2),
                accumulate,
                (l as *const T, lhs.1, lhs.2),
                ((r as *const T).offset(j0 as isize * rhs.1), rhs.1, rhs.2),
                gemm::Parallelism::None,
            );
        }
    });
}

/// `dst = lhs · rhs` in f32 for `[m, n, k]` on strided views, on the calling thread.
///
/// # Safety
/// As for [`gemm_view_on`].
pub(crate) unsafe fn gemm_f32(mnk: [usize; 3], dst: View<*mut f32>, lhs: View<*const f32>, rhs: View<*const f32>) {
    gemm_once(mnk, dst, false, lhs, rhs, gemm::Parallelism::None);
}

/// One call of the gemm crate on strided views: `dst = lhs · rhs`, or `dst += lhs ·
/// rhs` with `accumulate`.
///
/// # Safety
/// As for [`gemm_view_on`].
unsafe fn gemm_once<T: GemmElem>(
    [m, n, k]: [usize; 3],
    dst: View<*mut T>,
    accumulate: bool,
    lhs: View<*const T>,
    rhs: View<*const T>,
    parallelism: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.1,
        dst.2,
        accumulate,
        lhs.0,
        lhs.1,
        lhs.2,
        rhs.0,
        rhs.1,
        rhs.2,
        T::ONE,
        T::ONE,
        false,
        false,
        false,
        parallelism,
    );
}

/// Runs a convolution pass as [`crate::conv_direct::choose`] says for its direct
/// form `direct` (weight `w` in that form's `[O, C, T]` layout): the direct
/// product, the shifted gemms (which accumulate into `out`, zeroed where the pass
/// needs it), or in the measured range the faster of the two, timed on the first
/// call for the shape. That call returns the faster one's result, so that later
/// calls give the same numbers.
fn direct_or_gemms(
    pass: ConvPass,
    direct: &crate::conv_direct::DirectConv<'_>,
    w: &[f32],
    out: &mut Vec<f32>,
    len: usize,
    run_direct: impl Fn(&crate::conv_direct::Packed, &mut [f32]),
    run_gemms: impl Fn(&mut [f32]),
) -> Result<(), KernelError> {
    use crate::conv_direct::{choose, pack, Choice};
    #[cfg(test)]
    if let Some(direct_form) = tests::FORCE_FORM.with(|f| f.get()) {
        if direct_form {
            run_direct(&pack(direct, w), out);
        } else {
            run_gemms(out);
        }
        return Ok(());
    }
    match choose(direct, w) {
        Choice::Direct(packed) => run_direct(&packed, out),
        Choice::Gemm => run_gemms(out),
        Choice::Measure => {
            let key = (pass, direct.c, direct.o, direct.plane, direct.l, direct.shifts.to_vec());
            let known = tuned().lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
            match known {
                Some(true) => run_direct(&pack(direct, w), out),
                Some(false) => run_gemms(out),
                None => {
                    // the gemms accumulate into a buffer filled as `out` was
                    let fill = if pass == ConvPass::Forward { Fill::Overwritten } else { Fill::Zeroed };
                    let mut other = host_pool::take_f32(len, fill, "a conv2d result")?;
                    let started = std::time::Instant::now();
                    run_gemms(&mut other);
                    let gemm_time = started.elapsed();
                    let started = std::time::Instant::now();
                    run_direct(&pack(direct, w), out);
                    let direct_time = started.elapsed();
                    let direct_wins = direct_time <= gemm_time;
                    tuned().lock().unwrap_or_else(|e| e.into_inner()).insert(key, direct_wins);
                    if !direct_wins {
                        std::mem::swap(out, &mut other);
                    }
                    host_pool::give(HostBuffer::F32(other));
                }
            }
        }
    }
    Ok(())
}

/// The three convolution products as accumulated gemms over shifted grid views.
fn conv_shift(g: &ConvGeom, pass: ConvPass, a: &[f32], b: &[f32]) -> Result<Vec<f32>, KernelError> {
    let taps = g.kernel[0] * g.kernel[1];
    let plane = g.hp * g.wp;
    let l = g.cols();
    let len = match pass {
        ConvPass::Forward => g.n * g.o * plane,
        ConvPass::BackwardData => g.n * g.c * plane,
        ConvPass::BackwardFilter => g.o * g.c * taps,
    };
    // the forward products overwrite columns 0..l (the first tap, or the direct
    // kernel) and the rest is zeroed below; the other passes accumulate
    let fill = if pass == ConvPass::Forward { Fill::Overwritten } else { Fill::Zeroed };
    let mut out = host_pool::take_f32(len, fill, "a conv2d result")?;
    let expected = |what: &str, have: usize, want: usize| -> Result<(), KernelError> {
        if have < want {
            return Err(KernelError::Internal {
                op: "conv2d".into(),
                reason: format!("{what} holds {have} elements, {want} needed"),
            });
        }
        Ok(())
    };
    // weight tap t as an [O, C] matrix: element (o, c) at o*C*T + c*T + t
    let (w_rs, w_cs) = ((g.c * taps) as isize, taps as isize);
    match pass {
        ConvPass::Forward => {
            expected("the input", a.len(), g.n * g.c * plane)?;
            expected("the weight", b.len(), g.o * g.c * taps)?;
            let shifts: Vec<usize> = (0..taps).map(|t| g.tap(t)).collect();
            let direct = crate::conv_direct::DirectConv { c: g.c, o: g.o, plane, l, shifts: &shifts };
            let run_direct = |packed: &crate::conv_direct::Packed, out: &mut [f32]| {
                for bi in 0..g.n {
                    let xp = &a[bi * g.c * plane..(bi + 1) * g.c * plane];
                    let dst = &mut out[bi * g.o * plane..(bi + 1) * g.o * plane];
                    crate::conv_direct::forward(&direct, packed, xp, dst);
                }
            };
            let run_gemms = |out: &mut [f32]| {
                for bi in 0..g.n {
                    let dst = &mut out[bi * g.o * plane..(bi + 1) * g.o * plane];
                    for t in 0..taps {
                        // y[:, 0..l] += W_t · xp[:, tap..tap + l]
                        // SAFETY: every view stays inside its buffer: the input view ends at
                        // tap(t) + l <= plane (ConvGeom::cols), the weight view at o*C*T.
                        unsafe {
                            gemm_view_on(
                                [g.o, l, g.c],
                                (dst.as_mut_ptr(), 1, plane as isize),
                                t > 0,
                                (b.as_ptr().add(t), w_cs, w_rs),
                                (a.as_ptr().add(bi * g.c * plane + g.tap(t)), 1, plane as isize),
                                gemm::Parallelism::Rayon(0),
                            );
                        }
                    }
                }
            };
            if crate::conv_winograd::applies(g.c, g.o, g.kernel, g.dilation) {
                let s = crate::conv_winograd::WinogradConv { c: g.c, o: g.o, hp: g.hp, wp: g.wp, full: false };
                let u = crate::conv_winograd::transform_weight(&s, b)?;
                crate::conv_winograd::forward(&s, &u, g.n, a, &mut out);
            } else {
                // a thin product per tap: accumulate in registers instead
                direct_or_gemms(pass, &direct, b, &mut out, len, run_direct, run_gemms)?;
            }
        }
        ConvPass::BackwardData => {
            expected("the output gradient", a.len(), g.n * g.o * plane)?;
            expected("the weight", b.len(), g.o * g.c * taps)?;
            let run_gemms = |out: &mut [f32]| {
                for bi in 0..g.n {
                    let dst = &mut out[bi * g.c * plane..(bi + 1) * g.c * plane];
                    for t in 0..taps {
                        // dxp[:, tap..tap + l] += W_tᵀ · dy[:, 0..l]
                        // SAFETY: as in the forward pass, with the roles of the views swapped.
                        unsafe {
                            gemm_view_on(
                                [g.c, l, g.o],
                                (dst.as_mut_ptr().add(g.tap(t)), 1, plane as isize),
                                true,
                                (b.as_ptr().add(t), w_rs, w_cs),
                                (a.as_ptr().add(bi * g.o * plane), 1, plane as isize),
                                gemm::Parallelism::Rayon(0),
                            );
                        }
                    }
                }
            };
            // The same sums as a forward direct convolution: for the grid columns q
            // in last..l (last = the last tap's offset), dxp[c, q] = sum over (o, t)
            // of W[o, c, t] * dy[o, (q - last) + (last - tap(t))], every read inside
            // dy's columns 0..l; the first and the last `last` columns, where some
            // taps fall outside, take the gemms' sums over the columns that fall
            // inside.
            let last = g.tap(taps - 1);
            if crate::conv_winograd::applies(g.o, g.c, g.kernel, g.dilation) {
                // the full correlation of dy with the flipped weight, channels swapped
                let s = crate::conv_winograd::WinogradConv { c: g.o, o: g.c, hp: g.hp, wp: g.wp, full: true };
                let mut flipped = host_pool::take_f32(g.c * g.o * 9, Fill::Overwritten, "a flipped weight")?;
                flipped.par_chunks_mut(g.o * 9).enumerate().for_each(|(c, row)| {
                    for (o, dst) in row.chunks_mut(9).enumerate() {
                        for (t, x) in dst.iter_mut().enumerate() {
                            *x = b[(o * g.c + c) * 9 + 8 - t];
                        }
                    }
                });
                let u = crate::conv_winograd::transform_weight(&s, &flipped)?;
                host_pool::give(HostBuffer::F32(flipped));
                crate::conv_winograd::forward(&s, &u, g.n, a, &mut out);
            } else if l <= last || crate::conv_direct::gemms_by_size(g.o, taps) {
                // (decided before transposing a weight of up to tens of megabytes)
                run_gemms(&mut out);
            } else {
                let shifts: Vec<usize> = (0..taps).map(|t| last - g.tap(t)).collect();
                let direct = crate::conv_direct::DirectConv { c: g.o, o: g.c, plane, l: l - last, shifts: &shifts };
                let mut wt = vec![0.0f32; g.c * g.o * taps];
                wt.par_chunks_mut(g.o * taps).enumerate().for_each(|(c, row)| {
                    for (o, dst) in row.chunks_mut(taps).enumerate() {
                        dst.copy_from_slice(&b[(o * g.c + c) * taps..][..taps]);
                    }
                });
                let run_direct = |packed: &crate::conv_direct::Packed, out: &mut [f32]| {
                    for bi in 0..g.n {
                        let dy = &a[bi * g.o * plane..(bi + 1) * g.o * plane];
                        let dst = &mut out[bi * g.c * plane..(bi + 1) * g.c * plane];
                        crate::conv_direct::forward(&direct, packed, dy, &mut dst[last..]);
                        for t in 0..taps {
                            // the border columns: dxp[:, tap + j] += W_tᵀ · dy[:, j] for
                            // the j in 0..l with tap + j < last or tap + j >= l
                            let tap = g.tap(t);
                            for (j0, j1) in [(0, last - tap), (l - tap, l)] {
                                if j1 > j0 {
                                    // SAFETY: as in the gemms above, for columns j0..j1 < l
                                    // of dy and tap + j0..tap + j1 <= plane of dxp.
                                    unsafe {
                                        gemm_view_on(
                                            [g.c, j1 - j0, g.o],
                                            (dst.as_mut_ptr().add(tap + j0), 1, plane as isize),
                                            true,
                                            (b.as_ptr().add(t), w_rs, w_cs),
                                            (dy.as_ptr().add(j0), 1, plane as isize),
                                            gemm::Parallelism::Rayon(0),
                                        );
                                    }
                                }
                            }
                        }
                    }
                };
                direct_or_gemms(pass, &direct, &wt, &mut out, len, run_direct, run_gemms)?;
            }
        }
        ConvPass::BackwardFilter => {
            expected("the output gradient", a.len(), g.n * g.o * plane)?;
            expected("the input", b.len(), g.n * g.c * plane)?;
            let threads = rayon::current_num_threads();
            match filter_form(l, threads) {
                FilterForm::Split => filter_split(g, a, b, &mut out, threads),
                FilterForm::Copied => filter_im2col(g, a, b, &mut out, FILTER_BLOCK_FLOATS)?,
            }
        }
    }
    if pass != ConvPass::BackwardFilter {
        // the grid columns past the valid width hold partial sums: zero them
        let planes = len / plane;
        for p in 0..planes {
            let grid = &mut out[p * plane..(p + 1) * plane];
            let valid = match pass {
                ConvPass::Forward => (g.oh, g.ow),
                _ => (g.hp, g.wp),
            };
            for (r, row) in grid.chunks_mut(g.wp).enumerate() {
                if r >= valid.0 {
                    row.fill(0.0);
                } else {
                    row[valid.1..].fill(0.0);
                }
            }
        }
    }
    Ok(out)
}

/// How [`conv_shift`] computes a filter gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FilterForm {
    /// [`filter_split`]: per-tap products over the grid columns split across threads.
    Split,
    /// [`filter_im2col`]: one product over copied taps.
    Copied,
}

/// The copied block of [`filter_im2col`]: about 8 MiB of f32.
const FILTER_BLOCK_FLOATS: usize = 2 << 20;

/// [`FilterForm::Split`] when the grid gives every thread at least 1024 columns,
/// else [`FilterForm::Copied`]; `JIT_CONV_FILTER=split|im2col` fixes the choice
/// (for measurements: `cargo run --release -p kernels --example conv_filter_probe`).
/// On the 2-core development machine, for 3x3 kernels: 256 channels on a 34² grid,
/// batch 2, 31 ms split over gemm's threads (the grid was too small to split the
/// columns) against 16 ms copied; 256 -> 512 channels on 18², 9.6 against 7.6 ms;
/// 64 channels on 130², 16.8 against 20.5 ms.
fn filter_form(cols: usize, threads: usize) -> FilterForm {
    match std::env::var("JIT_CONV_FILTER").as_deref().map(str::trim) {
        Ok("split") => FilterForm::Split,
        Ok("im2col") => FilterForm::Copied,
        _ if cols / 1024 < threads => FilterForm::Copied,
        _ => FilterForm::Split,
    }
}

/// The filter gradient of [`conv_shift`] as per-tap products `[O, C]` whose inner
/// dimension (the grid columns) is split into `parts`, one single-threaded
/// accumulation per part, then summed (gemm would parallelise over the small output
/// instead).
fn filter_split(g: &ConvGeom, a: &[f32], b: &[f32], out: &mut [f32], parts: usize) {
    let taps = g.kernel[0] * g.kernel[1];
    let plane = g.hp * g.wp;
    let l = g.cols();
    let parts = parts.clamp(1, l);
    // weight tap t as an [O, C] matrix: element (o, c) at o*C*T + c*T + t
    let (w_rs, w_cs) = ((g.c * taps) as isize, taps as isize);
    let (a_addr, b_addr) = (a.as_ptr() as usize, b.as_ptr() as usize);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, end) = (p * l / parts, (p + 1) * l / parts);
            let mut acc = vec![0.0f32; g.o * g.c * taps];
            let (a, b) = (a_addr as *const f32, b_addr as *const f32);
            for bi in 0..g.n {
                for t in 0..taps {
                    // dW_t += dy[:, cols] · xp[:, tap + cols]ᵀ, written with W_t's strides
                    // SAFETY: the destination view is W's tap t ([O, C] with strides
                    // (C*T, T) inside o*c*T elements); the source columns
                    // start..end <= l stay inside each plane (ConvGeom::cols), and
                    // conv_shift checked that both sources hold n planes.
                    unsafe {
                        gemm_view_on(
                            [g.o, g.c, end - start],
                            (acc.as_mut_ptr().add(t), w_cs, w_rs),
                            bi > 0,
                            (a.add(bi * g.o * plane + start), 1, plane as isize),
                            (b.add(bi * g.c * plane + g.tap(t) + start), plane as isize, 1),
                            if parts > 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(0) },
                        );
                    }
                }
            }
            acc
        })
        .collect();
    for part in &partials {
        for (o, v) in out.iter_mut().zip(part) {
            *o += v;
        }
    }
}

/// The filter gradient of [`conv_shift`] as one product per chunk of grid columns,
/// `dW [O, C*T] += dy[:, cols] · X[cols, C*T]`, where row `(c, t)` of `Xᵀ` is input
/// plane `c` shifted by tap `t` (copied: contiguous runs). Unlike the per-tap
/// products its inner dimension is long and its output wide, so gemm's threads
/// share it well on small grids.
fn filter_im2col(g: &ConvGeom, a: &[f32], b: &[f32], out: &mut [f32], block: usize) -> Result<(), KernelError> {
    let taps = g.kernel[0] * g.kernel[1];
    let plane = g.hp * g.wp;
    let l = g.cols();
    let rows = g.c * taps;
    // columns per chunk: the copied block about `block` floats
    let chunk = (block / rows).max(256).min(l);
    let mut col = host_pool::take_f32(rows * chunk, Fill::Overwritten, "a conv2d filter-gradient block")?;
    let mut first = true;
    for bi in 0..g.n {
        let mut start = 0;
        while start < l {
            let k = chunk.min(l - start);
            col.par_chunks_mut(chunk).enumerate().for_each(|(r, dst)| {
                let src = (bi * g.c + r / taps) * plane + g.tap(r % taps) + start;
                dst[..k].copy_from_slice(&b[src..src + k]);
            });
            // SAFETY: the destination is [O, C*T] row-major, all of `out` (o*c*T
            // elements); the output gradient's columns start..start + k <= l stay
            // inside plane o of batch bi (ConvGeom::cols); the block is [k, C*T]
            // column-major inside `col` (rows * chunk elements, k <= chunk).
            unsafe {
                gemm_view_on(
                    [g.o, rows, k],
                    (out.as_mut_ptr(), 1, rows as isize),
                    !first,
                    (a.as_ptr().add(bi * g.o * plane + start), 1, plane as isize),
                    (col.as_ptr(), chunk as isize, 1),
                    gemm::Parallelism::Rayon(0),
                );
            }
            first = false;
            start += k;
        }
    }
    host_pool::give(HostBuffer::F32(col));
    Ok(())
}

/// [`conv_shift`] by definition, in f64 (the reference backend's oracle).
fn conv_shift_reference(g: &ConvGeom, pass: ConvPass, a: &[f64], b: &[f64]) -> Vec<f64> {
    let [kh, kw] = g.kernel;
    let plane = g.hp * g.wp;
    let w_at = |w: &[f64], o: usize, c: usize, ki: usize, kj: usize| w[((o * g.c + c) * kh + ki) * kw + kj];
    let mut out = match pass {
        ConvPass::Forward => vec![0.0; g.n * g.o * plane],
        ConvPass::BackwardData => vec![0.0; g.n * g.c * plane],
        ConvPass::BackwardFilter => vec![0.0; g.o * g.c * kh * kw],
    };
    for n in 0..g.n {
        for o in 0..g.o {
            for c in 0..g.c {
                for ki in 0..kh {
                    for kj in 0..kw {
                        for y in 0..g.oh {
                            for x in 0..g.ow {
                                let src = (y + ki * g.dilation[0]) * g.wp + x + kj * g.dilation[1];
                                let dst = y * g.wp + x;
                                match pass {
                                    ConvPass::Forward => {
                                        out[(n * g.o + o) * plane + dst] +=
                                            w_at(b, o, c, ki, kj) * a[(n * g.c + c) * plane + src]
                                    }
                                    ConvPass::BackwardData => {
                                        out[(n * g.c + c) * plane + src] +=
                                            w_at(b, o, c, ki, kj) * a[(n * g.o + o) * plane + dst]
                                    }
                                    ConvPass::BackwardFilter => {
                                        out[((o * g.c + c) * kh + ki) * kw + kj] +=
                                            a[(n * g.o + o) * plane + dst] * b[(n * g.c + c) * plane + src]
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Forces the direct form (`Some(true)`) or the shifted gemms of a
        /// convolution pass on this thread, whatever the sizes.
        pub(super) static FORCE_FORM: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
    }

    /// The input gradient in both forms (the shifted gemms, and the direct
    /// convolution of the output gradient with the transposed weight and mirrored
    /// taps, its border columns from gemms), chosen and forced, on a dilated
    /// non-square kernel, 3x3 ones, and a grid too small for the direct form's
    /// middle columns, against the f64 definition. The output gradient is zero at
    /// the grid's invalid columns and NaN past its last valid column, which neither
    /// form may read.
    #[test]
    fn input_gradient_forms_match_the_definition() {
        for &(n, c, o, hp, wp, kernel, dilation) in &[
            (2, 5, 3, 9, 13, [2, 3], [2, 1]),
            (1, 7, 40, 8, 10, [3, 3], [1, 1]),
            (2, 20, 17, 6, 9, [3, 3], [1, 1]),
            (1, 4, 20, 3, 5, [3, 3], [1, 1]),
            (1, 2, 16, 70, 90, [3, 3], [1, 1]),
        ] {
            let taps = kernel[0] * kernel[1];
            let g =
                ConvGeom::new(ConvPass::BackwardData, &[n, o, hp, wp], &[o, c, kernel[0], kernel[1]], kernel, dilation)
                    .unwrap();
            let (plane, l) = (hp * wp, g.cols());
            let dy: Vec<f32> = (0..n * o * plane)
                .map(|i| {
                    let p = i % plane;
                    if p >= l {
                        f32::NAN
                    } else if p / wp >= g.oh || p % wp >= g.ow {
                        0.0
                    } else {
                        ((i * 37 % 101) as f32 - 50.0) / 50.0
                    }
                })
                .collect();
            let w: Vec<f32> = (0..o * c * taps).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
            let dyd: Vec<f64> = dy.iter().map(|&v| if v.is_nan() { 0.0 } else { v as f64 }).collect();
            let wd: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let want = conv_shift_reference(&g, ConvPass::BackwardData, &dyd, &wd);
            let op = ExternOp::Conv2dShift { pass: ConvPass::BackwardData, kernel, dilation };
            let (ab, wb) = (HostBuffer::F32(dy), HostBuffer::F32(w));
            for force in [None, Some(true), Some(false)] {
                FORCE_FORM.with(|f| f.set(force));
                let out = op.run_cpu(&[(&ab, &[n, o, hp, wp]), (&wb, &[o, c, kernel[0], kernel[1]])], DType::F32);
                FORCE_FORM.with(|f| f.set(None));
                let got = out.unwrap().as_slice::<f32>().unwrap().to_vec();
                assert_eq!(got.len(), want.len());
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{force:?} n={n} c={c} o={o} {hp}x{wp} {kernel:?}x{dilation:?}: element {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    /// A product split into column blocks, one per thread (here 3, whatever the
    /// machine), gives the bits of the single-threaded product, overwriting and
    /// accumulating, on strided views with an odd column count; products with more
    /// than 128 rows or too little work are not split and agree as well.
    #[test]
    fn column_blocks_give_the_bits_of_one_product() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for (m, n, k) in [(100, 1003, 21), (64, 4099, 7), (200, 700, 9), (5, 300, 3)] {
            let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
            let start: Vec<f32> = (0..m * (n + 3)).map(|i| (i % 7) as f32).collect();
            for accumulate in [false, true] {
                let run = |par: gemm::Parallelism| {
                    let mut dst = start.clone();
                    // SAFETY: lhs is [m, k] row-major, rhs [k, n] column-major, dst
                    // [m, n] with row stride n + 3, all inside their vectors.
                    pool.install(|| unsafe {
                        gemm_view_on(
                            [m, n, k],
                            (dst.as_mut_ptr(), 1, (n + 3) as isize),
                            accumulate,
                            (lhs.as_ptr(), 1, k as isize),
                            (rhs.as_ptr(), k as isize, 1),
                            par,
                        )
                    });
                    dst
                };
                let (one, all) = (run(gemm::Parallelism::None), run(gemm::Parallelism::Rayon(0)));
                assert!(one == all, "[{m}, {n}, {k}], accumulate {accumulate}: the split product differs");
                let want: f32 = (0..k).map(|i| lhs[i] * rhs[i]).sum::<f32>() + if accumulate { start[0] } else { 0.0 };
                assert!((one[0] - want).abs() <= 1e-4 * (1.0 + want.abs()), "[{m}, {n}, {k}]: {} vs {want}", one[0]);
            }
        }
    }

    /// Products split along the inner dimension match the f64 definition, in one to
    /// three parts (one of them uneven), transposed and batched, in f32 and f64; the
    /// split is chosen for a Gram matrix's shape and not for a batch of small ones.
    #[test]
    fn products_split_along_the_inner_dimension_match_the_definition() {
        let (batch, m, n, k) = (2, 5, 7, 2053);
        let a: Vec<f32> = (0..batch * m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let b: Vec<f32> = (0..batch * n * k).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let op = ExternOp::Matmul { trans_a: false, trans_b: true };
        let (ab, bb) = (HostBuffer::F32(a.clone()), HostBuffer::F32(b.clone()));
        let shapes: [&[usize]; 2] = [&[batch, m, k], &[batch, n, k]];
        let want = op.run_reference(&[(&ab, shapes[0]), (&bb, shapes[1])], DType::F64).unwrap().to_f64_vec();
        let g = Geometry::new(shapes[0], shapes[1], &[batch, m, n], false, true);
        for parts in 1..=3 {
            let mut out = vec![0.0f32; batch * m * n];
            gemm_split_inner(&g, &a, &b, &mut out, parts);
            for (i, (x, y)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (*x as f64 - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "f32 in {parts} parts, element {i}: {x} vs {y}"
                );
            }
            let (a64, b64): (Vec<f64>, Vec<f64>) =
                (a.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect());
            let mut out = vec![0.0f64; batch * m * n];
            gemm_split_inner(&g, &a64, &b64, &mut out, parts);
            for (i, (x, y)) in out.iter().zip(&want).enumerate() {
                assert!((x - y).abs() <= 1e-9 * (1.0 + y.abs()), "f64 in {parts} parts, element {i}: {x} vs {y}");
            }
        }
        let gram = Geometry::new(&[1, 64, 65536], &[1, 64, 65536], &[1, 64, 64], false, true);
        assert_eq!(inner_split(&gram, 2), Some(2));
        assert_eq!(inner_split(&gram, 1), None);
        assert_eq!(inner_split(&g, 2), None, "5 x 7 x 2053 is too little work to split");
    }

    /// Both forms of the filter gradient match the f64 definition: the split one
    /// in one to three parts, the copied one in one chunk and in two (one of them
    /// short), on a non-square grid with a non-square, dilated kernel.
    #[test]
    fn filter_gradient_forms_match_the_definition() {
        let (n, c, o, hp, wp, kernel, dilation) = (2, 3, 5, 21, 17, [3, 2], [2, 1]);
        let g = ConvGeom::new(ConvPass::BackwardFilter, &[n, o, hp, wp], &[n, c, hp, wp], kernel, dilation).unwrap();
        // the output gradient lives in the valid corner, zero elsewhere (the contract)
        let valid = |i: usize| (i % (hp * wp)) / wp < g.oh && i % wp < g.ow;
        let dy: Vec<f32> =
            (0..n * o * hp * wp).map(|i| if valid(i) { ((i * 53 % 89) as f32 - 44.0) / 44.0 } else { 0.0 }).collect();
        let x: Vec<f32> = (0..n * c * hp * wp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        assert!(
            g.cols() > 256 && g.cols() < 512,
            "two chunks of the copied form need 256 < {} < 512 columns",
            g.cols()
        );
        let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&v| v as f64).collect() };
        let want = conv_shift_reference(&g, ConvPass::BackwardFilter, &f64s(&dy), &f64s(&x));
        let check = |form: &str, got: &[f32]| {
            assert_eq!(got.len(), want.len(), "{form}");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{form}, element {i}: {a} vs {b}");
            }
        };
        for parts in 1..=3 {
            let mut out = vec![0.0f32; want.len()];
            filter_split(&g, &dy, &x, &mut out, parts);
            check(&format!("split in {parts}"), &out);
        }
        for block in [usize::MAX / 2, 1] {
            let mut out = vec![0.0f32; want.len()];
            filter_im2col(&g, &dy, &x, &mut out, block).unwrap();
            check(&format!("copied, block {block}"), &out);
        }
        assert_eq!(filter_form(500, 2), FilterForm::Copied);
    }

    /// In the range where the forward product is measured per shape, the first call
    /// (which runs both) and the later ones (the chosen product only) give the same
    /// numbers, and they match the f64 definition.
    #[test]
    fn measured_forward_products_are_stable_and_correct() {
        let (n, c, o, hp, wp) = (2, 40, 9, 7, 11);
        let x: Vec<f32> = (0..n * c * hp * wp).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let w: Vec<f32> = (0..o * c * 9).map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0).collect();
        let op = ExternOp::Conv2dShift { pass: ConvPass::Forward, kernel: [3, 3], dilation: [1, 1] };
        let (xb, wb) = (HostBuffer::F32(x.clone()), HostBuffer::F32(w.clone()));
        let run = || {
            let out = op.run_cpu(&[(&xb, &[n, c, hp, wp]), (&wb, &[o, c, 3, 3])], DType::F32).unwrap();
            out.as_slice::<f32>().unwrap().to_vec()
        };
        let first = run();
        assert_eq!(run(), first, "the second call computes the same numbers");
        let g = ConvGeom::new(ConvPass::Forward, &[n, c, hp, wp], &[o, c, 3, 3], [3, 3], [1, 1]).unwrap();
        let (xd, wd): (Vec<f64>, Vec<f64>) =
            (x.iter().map(|&v| v as f64).collect(), w.iter().map(|&v| v as f64).collect());
        let want = conv_shift_reference(&g, ConvPass::Forward, &xd, &wd);
        for (i, (a, b)) in first.iter().zip(&want).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "element {i}: {a} vs {b}");
        }
    }
}
