//! Typed host storage and live-buffer accounting.

use crate::cuda::memory::DeviceBuffer;
use crate::dtype::DType;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

static LIVE_BUFFERS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Number of [`Buffer`]s alive in this process (all backends). Tests use it to check
/// that realised graphs release what they no longer need.
pub fn live_buffers() -> usize {
    LIVE_BUFFERS.load(Ordering::Relaxed)
}

/// Bytes held by live [`Buffer`]s.
pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Host data of one dtype, contiguous, row-major.
#[derive(Clone, PartialEq)]
pub enum HostBuffer {
    /// bool
    Bool(Vec<bool>),
    /// u8
    U8(Vec<u8>),
    /// i32
    I32(Vec<i32>),
    /// i64
    I64(Vec<i64>),
    /// f16
    F16(Vec<f16>),
    /// bf16
    BF16(Vec<bf16>),
    /// f32
    F32(Vec<f32>),
    /// f64
    F64(Vec<f64>),
}

macro_rules! for_each_buffer {
    ($buf:expr, $v:ident => $body:expr) => {
        match $buf {
            HostBuffer::Bool($v) => $body,
            HostBuffer::U8($v) => $body,
            HostBuffer::I32($v) => $body,
            HostBuffer::I64($v) => $body,
            HostBuffer::F16($v) => $body,
            HostBuffer::BF16($v) => $body,
            HostBuffer::F32($v) => $body,
            HostBuffer::F64($v) => $body,
        }
    };
}

impl HostBuffer {
    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        match self {
            HostBuffer::Bool(_) => DType::Bool,
            HostBuffer::U8(_) => DType::U8,
            HostBuffer::I32(_) => DType::I32,
            HostBuffer::I64(_) => DType::I64,
            HostBuffer::F16(_) => DType::F16,
            HostBuffer::BF16(_) => DType::BF16,
            HostBuffer::F32(_) => DType::F32,
            HostBuffer::F64(_) => DType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        for_each_buffer!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as f64 (bool as 0/1, integers converted).
    pub fn get_f64(&self, i: usize) -> f64 {
        for_each_buffer!(self, v => v[i].to_f64())
    }

    /// Element `i` as i64 (floats truncated toward zero).
    pub fn get_i64(&self, i: usize) -> i64 {
        for_each_buffer!(self, v => v[i].to_i64())
    }

    /// All elements converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        for_each_buffer!(self, v => v.iter().map(|x| x.to_f64()).collect())
    }

    /// All elements converted to i64.
    pub fn to_i64_vec(&self) -> Vec<i64> {
        for_each_buffer!(self, v => v.iter().map(|x| x.to_i64()).collect())
    }

    /// Builds a buffer of `dtype` from f64 values, rounding each to the dtype.
    pub fn from_f64s(dtype: DType, vals: impl IntoIterator<Item = f64>) -> HostBuffer {
        let it = vals.into_iter();
        match dtype {
            DType::Bool => HostBuffer::Bool(it.map(bool::from_f64).collect()),
            DType::U8 => HostBuffer::U8(it.map(u8::from_f64).collect()),
            DType::I32 => HostBuffer::I32(it.map(i32::from_f64).collect()),
            DType::I64 => HostBuffer::I64(it.map(i64::from_f64).collect()),
            DType::F16 => HostBuffer::F16(it.map(crate::dtype::f16_from_f64).collect()),
            DType::BF16 => HostBuffer::BF16(it.map(crate::dtype::bf16_from_f64).collect()),
            DType::F32 => HostBuffer::F32(it.map(f32::from_f64).collect()),
            DType::F64 => HostBuffer::F64(it.collect()),
        }
    }

    /// Builds a buffer of `dtype` from i64 values (wrapping into integer ranges).
    pub fn from_i64s(dtype: DType, vals: impl IntoIterator<Item = i64>) -> HostBuffer {
        let it = vals.into_iter();
        match dtype {
            DType::Bool => HostBuffer::Bool(it.map(bool::from_i64).collect()),
            DType::U8 => HostBuffer::U8(it.map(u8::from_i64).collect()),
            DType::I32 => HostBuffer::I32(it.map(i32::from_i64).collect()),
            DType::I64 => HostBuffer::I64(it.collect()),
            DType::F16 => HostBuffer::F16(it.map(f16::from_i64).collect()),
            DType::BF16 => HostBuffer::BF16(it.map(bf16::from_i64).collect()),
            DType::F32 => HostBuffer::F32(it.map(f32::from_i64).collect()),
            DType::F64 => HostBuffer::F64(it.map(f64::from_i64).collect()),
        }
    }

    /// A buffer of `n` copies of `value` (rounded to `dtype`).
    pub fn filled(dtype: DType, n: usize, value: f64) -> HostBuffer {
        if value == 0.0 && value.is_sign_positive() {
            return HostBuffer::zeros(dtype, n);
        }
        HostBuffer::from_f64s(dtype, std::iter::repeat_n(value, n))
    }

    /// A zero-filled buffer, or an out-of-memory error naming the size when the
    /// allocation fails. Large ones may come from the [host pool](crate::host_pool)
    /// (zeroed there); others are allocated zeroed, without touching every element.
    pub fn try_zeros(dtype: DType, n: usize) -> Result<HostBuffer, crate::KernelError> {
        crate::host_pool::take(dtype, n, crate::host_pool::Fill::Zeroed, "a buffer")
    }

    /// A zero-filled buffer (allocated zeroed, without touching every element).
    /// Aborts like any Rust allocation when memory runs out; see [`Self::try_zeros`].
    pub fn zeros(dtype: DType, n: usize) -> HostBuffer {
        match dtype {
            DType::Bool => HostBuffer::Bool(vec![false; n]),
            DType::U8 => HostBuffer::U8(vec![0; n]),
            DType::I32 => HostBuffer::I32(vec![0; n]),
            DType::I64 => HostBuffer::I64(vec![0; n]),
            DType::F16 => HostBuffer::F16(vec![f16::ZERO; n]),
            DType::BF16 => HostBuffer::BF16(vec![bf16::ZERO; n]),
            DType::F32 => HostBuffer::F32(vec![0.0; n]),
            DType::F64 => HostBuffer::F64(vec![0.0; n]),
        }
    }

    /// Converts every element to `dtype` with the cast rules, taking the buffer
    /// (no copy when it already has that dtype).
    pub fn into_dtype(self, dtype: DType) -> HostBuffer {
        if dtype == self.dtype() {
            self
        } else {
            self.cast(dtype)
        }
    }

    /// A copy converted to `dtype` (a plain copy when it already has it).
    pub fn cast(&self, dtype: DType) -> HostBuffer {
        if dtype == self.dtype() {
            return self.clone();
        }
        // Between f32 and the half types (what mixed precision does around every
        // library product): directly, in parallel, with the `half` crate's vector
        // conversions; the general path goes through an f64 vector. Both round to
        // nearest even once (an f32 is exact in f64).
        match (self, dtype) {
            (HostBuffer::F16(v), DType::F32) => return HostBuffer::F32(convert(v, |i, o| i.convert_to_f32_slice(o))),
            (HostBuffer::BF16(v), DType::F32) => return HostBuffer::F32(convert(v, |i, o| i.convert_to_f32_slice(o))),
            (HostBuffer::F32(v), DType::F16) => return HostBuffer::F16(convert(v, |i, o| o.convert_from_f32_slice(i))),
            (HostBuffer::F32(v), DType::BF16) => {
                return HostBuffer::BF16(convert(v, |i, o| o.convert_from_f32_slice(i)))
            }
            _ => {}
        }
        if self.dtype().is_float() {
            HostBuffer::from_f64s(dtype, self.to_f64_vec())
        } else {
            HostBuffer::from_i64s(dtype, self.to_i64_vec())
        }
    }

    /// Borrow as a typed slice, if the dtype is `T`'s.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        T::slice_of(self)
    }

    /// Pointer to the first element (for compiled kernels).
    pub fn as_ptr(&self) -> *const u8 {
        for_each_buffer!(self, v => v.as_ptr().cast::<u8>())
    }

    /// Mutable pointer to the first element (for compiled kernels).
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        for_each_buffer!(self, v => v.as_mut_ptr().cast::<u8>())
    }

    /// Size of the data in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.len() * self.dtype().size_in_bytes()
    }

    /// The elements as bytes in memory order (little-endian on every supported
    /// host), for writing files.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: every element type is plain data without padding (bool is one byte
        // holding 0 or 1), the pointer and length describe the live vector's storage,
        // and the borrow of `self` keeps it alive and unmodified.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.size_in_bytes()) }
    }

    /// Elements of `dtype` from little-endian bytes (bool: any non-zero byte is true).
    /// `None` when the byte count is not a whole number of elements.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<HostBuffer> {
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return None;
        }
        fn parse<T, const N: usize>(bytes: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect()
        }
        Some(match dtype {
            DType::Bool => HostBuffer::Bool(bytes.iter().map(|&b| b != 0).collect()),
            DType::U8 => HostBuffer::U8(bytes.to_vec()),
            DType::I32 => HostBuffer::I32(parse(bytes, i32::from_le_bytes)),
            DType::I64 => HostBuffer::I64(parse(bytes, i64::from_le_bytes)),
            DType::F16 => HostBuffer::F16(parse(bytes, |b| f16::from_bits(u16::from_le_bytes(b)))),
            DType::BF16 => HostBuffer::BF16(parse(bytes, |b| bf16::from_bits(u16::from_le_bytes(b)))),
            DType::F32 => HostBuffer::F32(parse(bytes, f32::from_le_bytes)),
            DType::F64 => HostBuffer::F64(parse(bytes, f64::from_le_bytes)),
        })
    }
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostBuffer<{}>[{}]", self.dtype(), self.len())
    }
}

/// A Rust type that can be an element of a [`HostBuffer`].
pub trait Element: Copy + Send + Sync + 'static + std::fmt::Debug {
    /// Its dtype.
    const DTYPE: DType;
    /// Widening conversion (bool to 0/1).
    fn to_f64(self) -> f64;
    /// Integer view (floats truncated toward zero).
    fn to_i64(self) -> i64;
    /// Conversion with rounding to nearest / cast rules.
    fn from_f64(v: f64) -> Self;
    /// Conversion with integer wrapping.
    fn from_i64(v: i64) -> Self;
    /// Wraps a vector into a buffer.
    fn into_buffer(v: Vec<Self>) -> HostBuffer;
    /// A typed view of a buffer of this dtype.
    fn slice_of(b: &HostBuffer) -> Option<&[Self]>;
}

macro_rules! element {
    ($t:ty, $variant:ident, $to_f:expr, $to_i:expr, $from_f:expr, $from_i:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn to_f64(self) -> f64 {
                ($to_f)(self)
            }
            fn to_i64(self) -> i64 {
                ($to_i)(self)
            }
            fn from_f64(v: f64) -> Self {
                ($from_f)(v)
            }
            fn from_i64(v: i64) -> Self {
                ($from_i)(v)
            }
            fn into_buffer(v: Vec<Self>) -> HostBuffer {
                HostBuffer::$variant(v)
            }
            fn slice_of(b: &HostBuffer) -> Option<&[Self]> {
                match b {
                    HostBuffer::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

element!(bool, Bool, |x: bool| f64::from(u8::from(x)), |x: bool| i64::from(x), |v: f64| v != 0.0, |v: i64| v != 0);
element!(u8, U8, f64::from, i64::from, |v: f64| v as i64 as u8, |v: i64| v as u8);
element!(i32, I32, f64::from, i64::from, |v: f64| v as i64 as i32, |v: i64| v as i32);
element!(i64, I64, |x: i64| x as f64, |x: i64| x, |v: f64| v as i64, |v: i64| v);
element!(f16, F16, |x: f16| x.to_f64(), |x: f16| x.to_f64() as i64, crate::dtype::f16_from_f64, |v: i64| {
    crate::dtype::f16_from_f64(v as f64)
});
element!(bf16, BF16, |x: bf16| x.to_f64(), |x: bf16| x.to_f64() as i64, crate::dtype::bf16_from_f64, |v: i64| {
    crate::dtype::bf16_from_f64(v as f64)
});
element!(f32, F32, f64::from, |x: f32| x as i64, |v: f64| v as f32, |v: i64| v as f32);
element!(f64, F64, |x: f64| x, |x: f64| x as i64, |v: f64| v, |v: i64| v as f64);

/// A value's storage, owned by the framework and counted in [`live_buffers`]: host
/// data, device data, or both. A copy on the other side is made on first demand
/// and kept (a weight uploaded once stays on the device for every later run).
pub struct Buffer {
    dtype: DType,
    len: usize,
    host: OnceLock<HostBuffer>,
    device: OnceLock<DeviceBuffer>,
}

impl Buffer {
    /// Takes ownership of host data.
    pub fn new(data: HostBuffer) -> Buffer {
        let b = Buffer { dtype: data.dtype(), len: data.len(), host: OnceLock::from(data), device: OnceLock::new() };
        b.count();
        b
    }

    /// Takes ownership of device data.
    pub fn from_device(data: DeviceBuffer) -> Buffer {
        let b = Buffer { dtype: data.dtype(), len: data.len(), host: OnceLock::new(), device: OnceLock::from(data) };
        b.count();
        b
    }

    fn count(&self) {
        LIVE_BUFFERS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(self.size_in_bytes(), Ordering::Relaxed);
    }

    /// The dtype of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size of the data in bytes (on one side).
    pub fn size_in_bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }

    /// True when a host copy exists (reading [`Self::host`] copies nothing).
    pub fn on_host(&self) -> bool {
        self.host.get().is_some()
    }

    /// True when a device copy exists.
    pub fn on_device(&self) -> bool {
        self.device.get().is_some()
    }

    /// The data on the host, copied from the device on first use (which waits for
    /// the device work that computes it).
    pub fn host(&self) -> Result<&HostBuffer, crate::KernelError> {
        if let Some(h) = self.host.get() {
            return Ok(h);
        }
        let d = self.device.get().ok_or_else(no_copy)?;
        let h = d.download()?;
        // two threads may copy at once; one copy is kept
        Ok(self.host.get_or_init(|| h))
    }

    /// The data on the CUDA device, copied from the host on first use.
    pub fn device(&self) -> Result<&DeviceBuffer, crate::KernelError> {
        if let Some(d) = self.device.get() {
            return Ok(d);
        }
        let h = self.host.get().ok_or_else(no_copy)?;
        let d = DeviceBuffer::upload(h, "a value copied to the device")?;
        Ok(self.device.get_or_init(|| d))
    }
}

/// The error of a buffer with neither copy (constructors always make one).
fn no_copy() -> crate::KernelError {
    crate::KernelError::Internal { op: "buffer".into(), reason: "a buffer holds neither host nor device data".into() }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        LIVE_BUFFERS.fetch_sub(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(self.size_in_bytes(), Ordering::Relaxed);
        // large host buffers go to the host pool for the next allocation of their
        // size; a device buffer goes back to the device allocator by itself
        if let Some(h) = self.host.take() {
            crate::host_pool::give(h);
        }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match (self.on_host(), self.on_device()) {
            (true, true) => "host+cuda",
            (false, true) => "cuda",
            _ => "host",
        };
        write!(f, "Buffer<{}>[{}] on {place}", self.dtype, self.len)
    }
}

/// `src` converted element by element by `f(source chunk, destination chunk)`, in
/// parallel chunks when it is large.
fn convert<S: Sync, D: Copy + Default + Send>(src: &[S], f: impl Fn(&[S], &mut [D]) + Sync) -> Vec<D> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    let mut out = vec![D::default(); src.len()];
    if src.len() <= CHUNK {
        f(src, &mut out);
    } else {
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, i)| f(i, o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_and_wrap() {
        let b = HostBuffer::from_f64s(DType::F16, [0.1, 65504.0, 1e6]);
        assert_eq!(b.get_f64(0), f16::from_f64(0.1).to_f64());
        assert_eq!(b.get_f64(1), 65504.0);
        assert!(b.get_f64(2).is_infinite());
        let i = HostBuffer::from_i64s(DType::U8, [256, -1, 7]);
        assert_eq!(i.to_i64_vec(), vec![0, 255, 7]);
        assert_eq!(HostBuffer::F32(vec![-1.5, 2.5]).cast(DType::I32).to_i64_vec(), vec![-1, 2]);
    }

    /// f64 -> f16 / bf16 rounds once: a value just past a half-way point rounds away
    /// from it even where rounding to f32 first lands on the half-way point.
    #[test]
    fn half_precision_rounds_f64_once() {
        let tiny = 2f64.powi(-40);
        let cases = [
            (DType::BF16, 1.0 + 2f64.powi(-8) + tiny, 1.0 + 2f64.powi(-7)),
            (DType::BF16, 1.0 + 2f64.powi(-8) - tiny, 1.0),
            (DType::BF16, -(1.0 + 2f64.powi(-8) + tiny), -(1.0 + 2f64.powi(-7))),
            (DType::BF16, 1.0 + 2f64.powi(-8), 1.0), // a true tie: to even
            (DType::F16, 1.0 + 2f64.powi(-11) + tiny, 1.0 + 2f64.powi(-10)),
            (DType::F16, 1.0 + 2f64.powi(-11), 1.0),
            (DType::F16, 2f64.powi(-25) + tiny, 2f64.powi(-24)), // past half the smallest subnormal
            (DType::F16, 1e300, f64::INFINITY),
            (DType::BF16, -1e300, f64::NEG_INFINITY),
            // an f32 whose last mantissa bits lie past a bf16 half-way point (0xf5308002)
            (DType::BF16, f32::from_bits(0xf530_8002) as f64, f32::from_bits(0xf531_0000) as f64),
        ];
        for (dt, v, want) in cases {
            assert_eq!(dt.round_f64(v), want, "{dt} {v:e}");
            assert_eq!(HostBuffer::from_f64s(dt, [v]).get_f64(0), want, "{dt} {v:e} into a buffer");
        }
        assert!(DType::BF16.round_f64(f64::NAN).is_nan() && DType::F16.round_f64(f64::NAN).is_nan());
    }

    /// The direct f32 <-> half conversions give the bits of the general path (through
    /// f64) on every kind of value, in a buffer large enough to run in parallel.
    #[test]
    fn half_conversions_match_the_general_path() {
        let mut vals: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            65504.0,
            65520.0, // rounds up to inf in f16
            1e-8,    // f16 subnormal range and below
            5.9604645e-8,
            3.0e38,
            1.0 + f32::EPSILON,
            f32::from_bits(0x3f80_4000), // 1 + 2^-11, an f16 tie
            f32::from_bits(0x3f80_8000), // 1 + 2^-8, a bf16 tie
            f32::MIN_POSITIVE,
        ];
        let mut z = 0x9E37_79B9_u32;
        while vals.len() < 200_003 {
            z ^= z << 13;
            z ^= z >> 17;
            z ^= z << 5;
            vals.push(f32::from_bits(z));
        }
        let src = HostBuffer::F32(vals);
        for dt in [DType::F16, DType::BF16] {
            let fast = src.cast(dt);
            let general = HostBuffer::from_f64s(dt, src.to_f64_vec());
            let bits = |b: &HostBuffer| -> Vec<u16> {
                match b {
                    HostBuffer::F16(v) => v.iter().map(|x| x.to_bits()).collect(),
                    HostBuffer::BF16(v) => v.iter().map(|x| x.to_bits()).collect(),
                    _ => unreachable!(),
                }
            };
            let (a, b) = (bits(&fast), bits(&general));
            for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                let nan = |h: u16| match dt {
                    DType::F16 => f16::from_bits(h).is_nan(),
                    _ => bf16::from_bits(h).is_nan(),
                };
                assert!(
                    x == y || (nan(*x) && nan(*y)),
                    "{dt} element {i} ({:#010x}): {x:#06x} vs {y:#06x}",
                    src.as_slice::<f32>().unwrap()[i].to_bits()
                );
            }
            let back = fast.cast(DType::F32);
            let general_back = HostBuffer::from_f64s(DType::F32, fast.to_f64_vec());
            let (p, q) = (back.as_slice::<f32>().unwrap(), general_back.as_slice::<f32>().unwrap());
            assert!(
                p.iter().zip(q).all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())),
                "{dt} back to f32"
            );
        }
    }
}
