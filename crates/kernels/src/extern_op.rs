//! Extern ops: work that is not generated from the kernel IR but handed to a library
//! (the `gemm` crate on the CPU). Inputs arrive materialised and contiguous; the
//! graph layer differentiates them with their own rules.

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
}

impl ExternOp {
    /// Short name for messages and dumps.
    pub fn name(&self) -> &'static str {
        match self {
            ExternOp::Matmul { .. } => "matmul",
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
        }
    }

    /// Runs the op with the library on host data.
    pub fn run_cpu(&self, inputs: &[(&HostBuffer, &[usize])], dtype: DType) -> Result<HostBuffer, KernelError> {
        match *self {
            ExternOp::Matmul { trans_a, trans_b } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.arity(inputs.len())) };
                let shape = self.out_shape(&[sa, sb]).map_err(|e| self.bad(e))?;
                let g = Geometry::new(sa, sb, &shape, trans_a, trans_b);
                match dtype {
                    DType::F32 => Ok(HostBuffer::F32(matmul_f32(&g, slice_f32(a)?.as_ref(), slice_f32(b)?.as_ref())?)),
                    DType::F64 => {
                        let (a, b) = (a.as_slice::<f64>(), b.as_slice::<f64>());
                        let (Some(a), Some(b)) = (a, b) else { return Err(self.bad("inputs are not f64".into())) };
                        Ok(HostBuffer::F64(gemm_batched(&g, a, b)?))
                    }
                    DType::F16 | DType::BF16 => {
                        let out = matmul_f32(&g, slice_f32(a)?.as_ref(), slice_f32(b)?.as_ref())?;
                        Ok(HostBuffer::F32(out).cast(dtype))
                    }
                    d => Err(self.bad(format!("{d} is not supported (float dtypes only)"))),
                }
            }
        }
    }

    /// The op in f64 with one rounding per output (the reference backend's oracle).
    pub fn run_reference(&self, inputs: &[(&HostBuffer, &[usize])], dtype: DType) -> Result<HostBuffer, KernelError> {
        match *self {
            ExternOp::Matmul { trans_a, trans_b } => {
                let [(a, sa), (b, sb)] = inputs else { return Err(self.arity(inputs.len())) };
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
        }
    }

    fn arity(&self, got: usize) -> KernelError {
        self.bad(format!("needs 2 inputs, got {got}"))
    }

    fn bad(&self, reason: String) -> KernelError {
        KernelError::Internal { op: self.name().into(), reason }
    }
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

fn matmul_f32(g: &Geometry, a: &[f32], b: &[f32]) -> Result<Vec<f32>, KernelError> {
    gemm_batched(g, a, b)
}

/// Element types the `gemm` crate multiplies.
trait GemmElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
}
impl GemmElem for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
}
impl GemmElem for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
}

fn gemm_batched<T: GemmElem>(g: &Geometry, a: &[T], b: &[T]) -> Result<Vec<T>, KernelError> {
    let len = g.batch * g.m * g.n;
    let mut out: Vec<T> = Vec::new();
    out.try_reserve_exact(len).map_err(|_| KernelError::OutOfMemory {
        device: "cpu".into(),
        bytes: (len * std::mem::size_of::<T>()) as u128,
        what: format!("the {}x{}x{} matmul output", g.batch, g.m, g.n),
    })?;
    out.resize(len, T::ZERO);
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
            gemm::gemm(
                g.m,
                g.n,
                g.k,
                dst.as_mut_ptr(),
                1,
                g.n as isize,
                false,
                a.as_ptr().add(g.a_offset(bi)),
                g.a_cs as isize,
                g.a_rs as isize,
                b.as_ptr().add(g.b_offset(bi)),
                g.b_cs as isize,
                g.b_rs as isize,
                T::ZERO,
                T::ONE,
                false,
                false,
                false,
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
    let blocks = out.chunks_mut(g.m * g.n).enumerate();
    if small && g.batch > 1 {
        blocks.collect::<Vec<_>>().into_par_iter().for_each(one);
    } else {
        blocks.for_each(one);
    }
    Ok(out)
}
