//! Convolutions on the device through cuDNN: the three passes of
//! [`ExternOp::Conv2d`] (forward, backward-data, backward-filter) with the legacy
//! convolution API that cuDNN 8 and 9 both have.
//!
//! - The algorithm is chosen once per pass, shape and dtype and kept for the
//!   process: by cuDNN's heuristics (`cudnnGet*Algorithm_v7`, PyTorch's default), or
//!   by timing every algorithm (`cudnnFind*Algorithm`) with `JIT_CUDNN_BENCHMARK=1`
//!   (PyTorch's `torch.backends.cudnn.benchmark = True`).
//! - f32 computes without TF32 (`CUDNN_FMA_MATH`) unless `JIT_ALLOW_TF32=1`, as
//!   PyTorch's `allow_tf32`; f16 and bf16 store halves and accumulate in f32 (tensor
//!   cores); f64 computes in f64.
//! - `JIT_CUDNN=0` turns cuDNN off: `conv2d` is then built as im2col + cuBLAS.
//!
//! A missing library, sizes beyond 32-bit or a shape cuDNN declines answer `None`
//! (the pass then runs on the host, said once per shape on stderr); any other cuDNN
//! failure is an error naming the pass and the shapes.
//!
//! [`ExternOp::Conv2d`]: crate::ExternOp::Conv2d

use super::memory::DeviceBuffer;
use super::runtime::runtime;
use super::tf32_allowed;
use crate::buffer::Buffer;
use crate::conv2d::{Conv2dDims, Conv2dSpec};
use crate::dtype::DType;
use crate::error::KernelError;
use crate::extern_op::ConvPass;
use cudarc::cudnn::result as dnn;
use cudarc::cudnn::result::CudnnError;
use cudarc::cudnn::sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

struct Handle(sys::cudnnHandle_t);

// SAFETY: the handle is only used under the mutex below, one thread at a time, as
// cuDNN requires of a handle.
unsafe impl Send for Handle {}

/// 0: not read yet; 1: on; 2: off.
static ENABLED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether cuDNN may be used: `JIT_CUDNN=0` turns it off (convolutions are then
/// built as im2col + cuBLAS), as does [`set_enabled`].
pub fn enabled() -> bool {
    use std::sync::atomic::Ordering;
    match ENABLED.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("JIT_CUDNN").map_or(true, |v| v.trim() != "0");
            ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        v => v == 1,
    }
}

/// Turns cuDNN on or off for graphs built from now on (the fallback, im2col +
/// cuBLAS, can then be compared with it in one process); a graph already built with
/// cuDNN's passes runs them on the host while it is off.
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// Whether convolutions can go to cuDNN: enabled, the library loads and a handle
/// starts on the runtime's stream (which needs a GPU). Said once on stderr when not.
pub fn usable() -> bool {
    enabled() && handle().is_some()
}

fn handle() -> Option<&'static Mutex<Handle>> {
    static H: OnceLock<Option<Mutex<Handle>>> = OnceLock::new();
    H.get_or_init(|| {
        let made = catch_unwind(AssertUnwindSafe(|| -> Result<Handle, String> {
            // SAFETY: only tries to open the library by name.
            if !unsafe { sys::is_culib_present() } {
                return Err("libcudnn was not found on the loader path".into());
            }
            let rt = runtime().map_err(|e| e.to_string())?;
            rt.bind().map_err(|e| e.to_string())?;
            let h = dnn::create_handle().map_err(|e| format!("cudnnCreate: {e}"))?;
            // SAFETY: `h` is a live handle; the stream belongs to the bound context.
            unsafe { dnn::set_stream(h, rt.cu_stream().cast()) }.map_err(|e| format!("cudnnSetStream: {e}"))?;
            Ok(Handle(h))
        }));
        match made {
            Ok(Ok(h)) => Some(Mutex::new(h)),
            Ok(Err(why)) => {
                eprintln!("[jit] cuDNN is not usable ({why}); convolutions run as im2col + matrix products");
                None
            }
            Err(_) => {
                eprintln!("[jit] cuDNN panicked while starting; convolutions run as im2col + matrix products");
                None
            }
        }
    })
    .as_ref()
}

/// The algorithm of one pass.
#[derive(Debug, Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// What was chosen for one pass and shape.
#[derive(Debug, Clone, Copy)]
struct Choice {
    algo: Algo,
    math: sys::cudnnMathType_t,
    workspace: usize,
}

type Key = (ConvPass, Conv2dSpec, [usize; 3], DType);

/// Per pass, shape and dtype: the chosen algorithm, or `None` when cuDNN declined
/// (the pass then runs on the host without asking again).
fn chosen() -> &'static Mutex<HashMap<Key, Option<Choice>>> {
    static C: OnceLock<Mutex<HashMap<Key, Option<Choice>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn benchmark() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("JIT_CUDNN_BENCHMARK").is_ok_and(|v| v.trim() == "1"))
}

/// The tensor, filter and convolution descriptors of one convolution (the same for
/// its three passes), destroyed on drop.
struct Descriptors {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each non-null descriptor was created here and is destroyed once.
        unsafe {
            if !self.x.is_null() {
                let _ = dnn::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = dnn::destroy_tensor_descriptor(self.y);
            }
            if !self.w.is_null() {
                let _ = dnn::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = dnn::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

/// The math type requested for `dtype`: no TF32 for f32 unless allowed.
fn math_for(dtype: DType) -> sys::cudnnMathType_t {
    match dtype {
        DType::F32 if !tf32_allowed() => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        DType::F64 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        _ => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
    }
}

fn descriptors(spec: &Conv2dSpec, d: Conv2dDims, dtype: DType) -> Result<Descriptors, CudnnError> {
    use std::ptr::null_mut;
    let (data, compute) = match dtype {
        DType::F64 => (sys::cudnnDataType_t::CUDNN_DATA_DOUBLE, sys::cudnnDataType_t::CUDNN_DATA_DOUBLE),
        DType::F16 => (sys::cudnnDataType_t::CUDNN_DATA_HALF, sys::cudnnDataType_t::CUDNN_DATA_FLOAT),
        DType::BF16 => (sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16, sys::cudnnDataType_t::CUDNN_DATA_FLOAT),
        _ => (sys::cudnnDataType_t::CUDNN_DATA_FLOAT, sys::cudnnDataType_t::CUDNN_DATA_FLOAT),
    };
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let [oh, ow] = spec.out().map_err(|_| CudnnError(sys::cudnnStatus_t::CUDNN_STATUS_BAD_PARAM))?;
    let i = |v: usize| v as i32; // the caller checked that every size fits
    let mut s = Descriptors { x: null_mut(), y: null_mut(), w: null_mut(), conv: null_mut() };
    s.x = dnn::create_tensor_descriptor()?;
    s.y = dnn::create_tensor_descriptor()?;
    s.w = dnn::create_filter_descriptor()?;
    s.conv = dnn::create_convolution_descriptor()?;
    // SAFETY: the descriptors were just created and are live until `s` drops.
    unsafe {
        dnn::set_tensor4d_descriptor(s.x, nchw, data, [i(d.n), i(d.c), i(spec.input[0]), i(spec.input[1])])?;
        dnn::set_tensor4d_descriptor(s.y, nchw, data, [i(d.n), i(d.o), i(oh), i(ow)])?;
        let [kh, kw] = spec.kernel;
        dnn::set_filter4d_descriptor(s.w, data, nchw, [i(d.o), i(d.c / spec.groups), i(kh), i(kw)])?;
        dnn::set_convolution2d_descriptor(
            s.conv,
            i(spec.padding[0]),
            i(spec.padding[1]),
            i(spec.stride[0]),
            i(spec.stride[1]),
            i(spec.dilation[0]),
            i(spec.dilation[1]),
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            compute,
        )?;
        dnn::set_convolution_group_count(s.conv, i(spec.groups))?;
        dnn::set_convolution_math_type(s.conv, math_for(dtype))?;
    }
    Ok(s)
}

/// Whether cuDNN declined the configuration (rather than failing): 9 in cuDNN 8,
/// the 3000 range in cuDNN 9.
fn declined(e: &CudnnError) -> bool {
    let code = e.0 as u32;
    code == 9 || (3000..4000).contains(&code)
}

/// Picks the first successful result of a heuristic or timed query whose math
/// type respects the request (no tensor-op math for f32 without TF32).
macro_rules! pick {
    ($perf:expr, $variant:ident, $dtype:expr) => {{
        let strict = $dtype == DType::F32 && !tf32_allowed();
        $perf
            .iter()
            .find(|p| {
                p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                    && !(strict
                        && matches!(
                            p.mathType,
                            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
                                | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
                        ))
            })
            .map(|p| (Algo::$variant(p.algo), p.mathType))
    }};
}

/// Asks cuDNN for the algorithm of `pass` (heuristics, or timing with
/// `JIT_CUDNN_BENCHMARK=1`, falling back to the heuristics when timing fails) and
/// its workspace size. `Ok(None)`: nothing cuDNN offers fits the request.
///
/// # Safety
/// `h` and the descriptors are live.
unsafe fn choose(
    h: sys::cudnnHandle_t,
    s: &Descriptors,
    pass: ConvPass,
    dtype: DType,
) -> Result<Option<Choice>, CudnnError> {
    const MAX: usize = 16;
    let timed = benchmark();
    // timed (Find) when asked and it succeeds, else the heuristics (Get_v7); the
    // descriptors are passed in each query's own order
    macro_rules! query {
        ($find:path, $get:path, $variant:ident, $($desc:expr),+) => {{
            let mut perf = Vec::with_capacity(MAX);
            let mut count = 0i32;
            let timed_ok = timed
                && $find(h, $($desc),+, MAX as i32, &mut count, perf.as_mut_ptr())
                    == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS;
            if !timed_ok {
                $get(h, $($desc),+, MAX as i32, &mut count, perf.as_mut_ptr())?;
            }
            perf.set_len((count.max(0) as usize).min(MAX));
            pick!(perf, $variant, dtype)
        }};
    }
    let found = match pass {
        ConvPass::Forward => query!(
            sys::cudnnFindConvolutionForwardAlgorithm,
            dnn::get_convolution_forward_algorithm,
            Forward,
            s.x,
            s.w,
            s.conv,
            s.y
        ),
        ConvPass::BackwardData => query!(
            sys::cudnnFindConvolutionBackwardDataAlgorithm,
            dnn::get_convolution_backward_data_algorithm,
            Data,
            s.w,
            s.y,
            s.conv,
            s.x
        ),
        ConvPass::BackwardFilter => query!(
            sys::cudnnFindConvolutionBackwardFilterAlgorithm,
            dnn::get_convolution_backward_filter_algorithm,
            Filter,
            s.x,
            s.y,
            s.conv,
            s.w
        ),
    };
    let Some((algo, math)) = found else { return Ok(None) };
    // the queries may answer the default math type, which permits TF32 on Ampere and
    // later: f32 without TF32 runs with FMA math only (as PyTorch does)
    let math = if dtype == DType::F32 && !tf32_allowed() { sys::cudnnMathType_t::CUDNN_FMA_MATH } else { math };
    // the workspace for the chosen algorithm with its math type in force
    dnn::set_convolution_math_type(s.conv, math)?;
    let workspace = match algo {
        Algo::Forward(a) => dnn::get_convolution_forward_workspace_size(h, s.x, s.w, s.conv, s.y, a)?,
        Algo::Data(a) => dnn::get_convolution_backward_data_workspace_size(h, s.w, s.y, s.conv, s.x, a)?,
        Algo::Filter(a) => dnn::get_convolution_backward_filter_workspace_size(h, s.x, s.y, s.conv, s.w, a)?,
    };
    Ok(Some(Choice { algo, math, workspace }))
}

/// Runs one pass of a convolution with cuDNN: `Ok(None)` means "not here, run it on
/// the host" (no cuDNN, sizes beyond 32-bit, a dtype or shape cuDNN declines).
pub fn conv2d(
    pass: ConvPass,
    spec: &Conv2dSpec,
    inputs: &[(&Buffer, &[usize])],
    dtype: DType,
) -> Result<Option<Buffer>, KernelError> {
    let [(a, sa), (b, sb)] = inputs else { return Ok(None) };
    if !matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) || a.dtype() != dtype || b.dtype() != dtype
    {
        return Ok(None);
    }
    let bad = |reason: String| KernelError::Internal { op: "conv2d".into(), reason };
    let d = spec.dims(pass, sa, sb).map_err(bad)?;
    let out = spec.out_shape(pass, sa, sb).map_err(bad)?;
    let [oh, ow] = spec.out().map_err(bad)?;
    let [h, w] = spec.input;
    let fits = |v: usize| i32::try_from(v).is_ok();
    let sizes = [d.n * d.c * h * w, d.n * d.o * oh * ow, d.o * d.c * spec.kernel[0] * spec.kernel[1]];
    let params = spec.padding.into_iter().chain(spec.stride).chain(spec.dilation);
    if !sizes.into_iter().chain(params).all(fits) {
        return Ok(None);
    }
    if !enabled() {
        return Ok(None);
    }
    let Some(handle) = handle() else { return Ok(None) };
    let len: usize = out.iter().product();
    let y = DeviceBuffer::alloc(dtype, len, "a conv2d result")?;
    if len == 0 {
        return Ok(Some(Buffer::from_device(y)));
    }
    if sizes.contains(&0) {
        // an empty batch or channel set: sums over nothing
        y.memset(0)?;
        return Ok(Some(Buffer::from_device(y)));
    }
    let (da, db) = (a.device()?, b.device()?);
    let rt = runtime()?;
    rt.bind()?;
    let h = handle.lock().unwrap_or_else(|e| e.into_inner());
    let what = || format!("cuDNN conv2d {pass:?} of {sa:?} and {sb:?} ({spec:?}, {dtype})");
    let ran = catch_unwind(AssertUnwindSafe(|| -> Result<Option<()>, KernelError> {
        let fail = |e: CudnnError| bad(format!("{}: {e}", what()));
        let s = descriptors(spec, d, dtype).map_err(fail)?;
        let key: Key = (pass, *spec, [d.n, d.c, d.o], dtype);
        let known = chosen().lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
        let choice = match known {
            Some(c) => c,
            None => {
                // SAFETY: the handle and descriptors are live.
                let c = match unsafe { choose(h.0, &s, pass, dtype) } {
                    Ok(c) => c,
                    Err(e) if declined(&e) => None,
                    Err(e) => return Err(fail(e)),
                };
                if c.is_none() {
                    eprintln!("[jit] cuDNN offers no algorithm for {}; this pass runs on the host", what());
                }
                chosen().lock().unwrap_or_else(|e| e.into_inner()).insert(key, c);
                c
            }
        };
        let Some(choice) = choice else { return Ok(None) };
        let ws = if choice.workspace > 0 {
            Some(DeviceBuffer::alloc(DType::U8, choice.workspace, "the cuDNN convolution workspace")?)
        } else {
            None
        };
        let ws_ptr = ws.as_ref().map_or(std::ptr::null_mut(), |b| b.ptr() as *mut c_void);
        let (one64, zero64, one32, zero32) = (1.0f64, 0.0f64, 1.0f32, 0.0f32);
        let (alpha, beta): (*const c_void, *const c_void) = if dtype == DType::F64 {
            ((&one64 as *const f64).cast(), (&zero64 as *const f64).cast())
        } else {
            ((&one32 as *const f32).cast(), (&zero32 as *const f32).cast())
        };
        let (pa, pb, py) = (da.ptr() as *const c_void, db.ptr() as *const c_void, y.ptr() as *mut c_void);
        // SAFETY: the pointers address live device blocks of the sizes the
        // descriptors describe (checked by `dims` against the shapes, which the
        // planner matched to the buffers); the workspace has the size cuDNN asked
        // for; the scalars outlive the calls; the handle is used by this thread alone.
        let status = unsafe {
            dnn::set_convolution_math_type(s.conv, choice.math).map_err(fail)?;
            match choice.algo {
                Algo::Forward(al) => dnn::convolution_forward(
                    h.0,
                    alpha,
                    s.x,
                    pa,
                    s.w,
                    pb,
                    s.conv,
                    al,
                    ws_ptr,
                    choice.workspace,
                    beta,
                    s.y,
                    py,
                ),
                Algo::Data(al) => dnn::convolution_backward_data(
                    h.0,
                    alpha,
                    s.w,
                    pb,
                    s.y,
                    pa,
                    s.conv,
                    al,
                    ws_ptr,
                    choice.workspace,
                    beta,
                    s.x,
                    py,
                ),
                Algo::Filter(al) => dnn::convolution_backward_filter(
                    h.0,
                    alpha,
                    s.x,
                    pb,
                    s.y,
                    pa,
                    s.conv,
                    al,
                    ws_ptr,
                    choice.workspace,
                    beta,
                    s.w,
                    py,
                ),
            }
        };
        match status {
            Ok(()) => Ok(Some(())),
            Err(e) if declined(&e) => {
                eprintln!("[jit] cuDNN declined {} ({e}); this pass runs on the host", what());
                chosen().lock().unwrap_or_else(|e| e.into_inner()).insert(key, None);
                Ok(None)
            }
            Err(e) => Err(fail(e)),
        }
    }));
    match ran {
        Ok(Ok(Some(()))) => Ok(Some(Buffer::from_device(y))),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(bad(format!("{}: the cuDNN library lacks a function this call needs (cuDNN 8 or 9 is required; JIT_CUDNN=0 turns it off)", what()))),
    }
}
