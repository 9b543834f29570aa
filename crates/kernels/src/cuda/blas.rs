//! Library operations on the device: the batched matrix product through cuBLAS
//! (f32 and f64; f32 stays exact unless TF32 is allowed with `JIT_ALLOW_TF32=1`, as
//! PyTorch's `allow_tf32`; f16 and bf16 with f32 accumulation through
//! `cublasGemmStridedBatchedEx`). What this module does not cover (the shifted-gemm
//! convolution, sizes beyond 32-bit, or a missing cuBLAS) answers `None` and runs on
//! the host.

use super::memory::DeviceBuffer;
use super::runtime::runtime;
use crate::buffer::Buffer;
use crate::dtype::DType;
use crate::error::KernelError;
use crate::extern_op::ExternOp;
use cudarc::cublas::sys::{cublasHandle_t, cublasMath_t, cublasOperation_t};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

struct Handle(cublasHandle_t);

// SAFETY: the handle is only used under the mutex below, one thread at a time, as
// cuBLAS requires.
unsafe impl Send for Handle {}

/// The process's cuBLAS handle on the runtime's stream; `None` when cuBLAS cannot be
/// loaded (said once on stderr; products then run on the host).
fn handle() -> Option<&'static Mutex<Handle>> {
    static H: OnceLock<Option<Mutex<Handle>>> = OnceLock::new();
    H.get_or_init(|| {
        let made = catch_unwind(AssertUnwindSafe(|| -> Result<Handle, String> {
            // SAFETY: only tries to open the library by name.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err("libcublas was not found on the loader path".into());
            }
            let rt = runtime().map_err(|e| e.to_string())?;
            rt.bind().map_err(|e| e.to_string())?;
            let h = cudarc::cublas::result::create_handle().map_err(|e| format!("cublasCreate: {e}"))?;
            // SAFETY: `h` is a live handle; the stream belongs to the bound context.
            unsafe { cudarc::cublas::result::set_stream(h, rt.cu_stream().cast()) }
                .map_err(|e| format!("cublasSetStream: {e}"))?;
            let mode = if super::tf32_allowed() {
                cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
            } else {
                cublasMath_t::CUBLAS_DEFAULT_MATH
            };
            // SAFETY: `h` is a live handle.
            unsafe { cudarc::cublas::sys::cublasSetMathMode(h, mode) }
                .result()
                .map_err(|e| format!("cublasSetMathMode: {e}"))?;
            Ok(Handle(h))
        }));
        match made {
            Ok(Ok(h)) => Some(Mutex::new(h)),
            Ok(Err(why)) => {
                eprintln!("[jit] cuBLAS is not usable ({why}); matrix products run on the host");
                None
            }
            Err(_) => {
                eprintln!("[jit] cuBLAS panicked while starting; matrix products run on the host");
                None
            }
        }
    })
    .as_ref()
}

/// Runs `op` on the device when this module (or cuDNN, [`super::dnn`], for
/// [`ExternOp::Conv2d`]) covers it: `Ok(None)` means "not here, run it on the host".
pub fn run_extern(op: &ExternOp, inputs: &[(&Buffer, &[usize])], dtype: DType) -> Result<Option<Buffer>, KernelError> {
    match *op {
        ExternOp::Matmul { trans_a, trans_b } => {
            let [(a, sa), (b, sb)] = inputs else { return Ok(None) };
            matmul(trans_a, trans_b, (a, sa), (b, sb), dtype)
        }
        ExternOp::Conv2d { pass, spec } => super::dnn::conv2d(pass, &spec, inputs, dtype),
        ExternOp::Conv2dShift { .. } | ExternOp::Conv2dStride2 { .. } | ExternOp::Argsort { .. } => Ok(None),
    }
}

fn matmul(
    trans_a: bool,
    trans_b: bool,
    (a, sa): (&Buffer, &[usize]),
    (b, sb): (&Buffer, &[usize]),
    dtype: DType,
) -> Result<Option<Buffer>, KernelError> {
    if !matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) || a.dtype() != dtype || b.dtype() != dtype
    {
        return Ok(None);
    }
    let op = ExternOp::Matmul { trans_a, trans_b };
    let out = op.out_shape(&[sa, sb]).map_err(|reason| KernelError::Internal { op: "matmul".into(), reason })?;
    let (batch, m, n) = (out[0], out[1], out[2]);
    let k = if trans_a { sa[1] } else { sa[2] };
    let fits = |v: usize| i32::try_from(v).is_ok();
    if ![batch, m, n, k, sa[1] * sa[2], sb[1] * sb[2], m * n].into_iter().all(fits) {
        return Ok(None);
    }
    let Some(handle) = handle() else { return Ok(None) };
    let c = DeviceBuffer::alloc(dtype, batch * m * n, "a matrix product")?;
    if batch * m * n == 0 {
        return Ok(Some(Buffer::from_device(c)));
    }
    if k == 0 {
        c.memset(0)?;
        return Ok(Some(Buffer::from_device(c)));
    }
    let (da, db) = (a.device()?, b.device()?);
    // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: a stored row-major [r, c] matrix
    // is its transpose in column-major order with leading dimension c. So cuBLAS
    // multiplies (B, op_b) by (A, op_a) into an n x m column-major result.
    let op_of = |t: bool| if t { cublasOperation_t::CUBLAS_OP_T } else { cublasOperation_t::CUBLAS_OP_N };
    let (lda, ldb) = (sa[2] as i32, sb[2] as i32);
    let stride_a = if sa[0] == 1 { 0 } else { (sa[1] * sa[2]) as i64 };
    let stride_b = if sb[0] == 1 { 0 } else { (sb[1] * sb[2]) as i64 };
    let stride_c = (m * n) as i64;
    let rt = runtime()?;
    rt.bind()?;
    let h = handle.lock().unwrap_or_else(|e| e.into_inner());
    let (bm, bn, bk, bb) = (n as i32, m as i32, k as i32, batch as i32);
    macro_rules! gemm {
        ($f:path, $t:ty) => {{
            let (one, zero): ($t, $t) = (1.0, 0.0);
            $f(
                h.0,
                op_of(trans_b),
                op_of(trans_a),
                bm,
                bn,
                bk,
                &one,
                db.ptr() as *const $t,
                ldb,
                stride_b,
                da.ptr() as *const $t,
                lda,
                stride_a,
                &zero,
                c.ptr() as *mut $t,
                bm,
                stride_c,
                bb,
            )
        }};
    }
    // SAFETY: the pointers address live device blocks holding the matrices the
    // shapes describe (checked by the planner and `out_shape`); scalars are host
    // values that outlive the call; the handle is used by this thread alone.
    let status = unsafe {
        match dtype {
            DType::F32 => gemm!(cudarc::cublas::result::sgemm_strided_batched, f32),
            DType::F64 => gemm!(cudarc::cublas::result::dgemm_strided_batched, f64),
            // half storage, f32 accumulation (PyTorch's default for f16 / bf16)
            _ => {
                use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
                let ty = if dtype == DType::F16 { cudaDataType::CUDA_R_16F } else { cudaDataType::CUDA_R_16BF };
                let (one, zero) = (1.0f32, 0.0f32);
                cudarc::cublas::result::gemm_strided_batched_ex(
                    h.0,
                    op_of(trans_b),
                    op_of(trans_a),
                    bm,
                    bn,
                    bk,
                    (&one as *const f32).cast(),
                    db.ptr() as *const std::ffi::c_void,
                    ty,
                    ldb,
                    stride_b,
                    da.ptr() as *const std::ffi::c_void,
                    ty,
                    lda,
                    stride_a,
                    (&zero as *const f32).cast(),
                    c.ptr() as *mut std::ffi::c_void,
                    ty,
                    bm,
                    stride_c,
                    bb,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
                )
            }
        }
    };
    status.map_err(|e| KernelError::Internal {
        op: "matmul".into(),
        reason: format!("cuBLAS gemm of [{batch}, {m}, {k}] x [{k}, {n}]: {e}"),
    })?;
    Ok(Some(Buffer::from_device(c)))
}
