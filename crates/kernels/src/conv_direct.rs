//! Direct 2-d convolution on the CPU, for products whose inner dimension per kernel
//! tap is small: an RGB image into a 9x9 layer, the 32-channel layers of the style
//! networks, a strided convolution after its space-to-depth rewrite. There the
//! shifted gemms of [`ExternOp::Conv2dShift`](crate::ExternOp::Conv2dShift) would
//! re-read and re-write the whole output once per tap with an inner dimension of
//! only `C`, and an im2col would write `C x kh x kw` copies of the input. Instead,
//! each tile of up to [`OB`] output channels by one or two vectors of grid columns
//! keeps its sums in registers while every `(channel, tap)` pair adds one shifted
//! row of the input times one weight per output channel. With many pairs the pairs
//! run in chunks whose weights stay in the first-level cache.
//!
//! The layout is the one of `Conv2dShift`'s forward pass: the input is padded and
//! stored on the grid `[Hp, Wp]`, taps are flat offsets on that grid, and output
//! column `p` (row-major on the grid) is valid when it lies in the valid corner.
//!
//! Pairs whose weights are zero for every output channel are dropped before the
//! loop: the space-to-depth form of a 3x3 stride-2 convolution has 16 taps per
//! input channel of which 7 are structurally zero.
//!
//! The tile loops are written with explicit AVX-512 or AVX2 FMA intrinsics (chosen
//! at run time) and a portable fallback, all from one generic body.

use rayon::prelude::*;

/// Up to this many input channels, the forward product runs as a direct convolution
/// whatever the kernel size (the shifted gemms' inner dimension would be too thin).
pub const DIRECT_MAX_CHANNELS: usize = 15;

/// With more channels and more than one tap, the direct convolution runs when it
/// keeps at most this many `(channel, tap)` pairs (32 channels of a 3x3 kernel, or 128 space-to-depth
/// channels of a 3x3 stride-2 one); beyond, the weights and input rows of a tile no
/// longer stay in the first-level cache (the pairs then run in chunks, see [`forward`]),
/// and the shifted gemms were faster with the earlier one-vector tiles (measured
/// on the 2-core test machine: 32->32 3x3 at 128x128 1.6 ms direct against 2.1 ms,
/// 64->128 at 128x128 12.4 ms against 8.6 ms). That depends on the processor: up to
/// [`DIRECT_MAX_TUNED_PAIRS`] the faster of the two is measured per shape.
pub const DIRECT_MAX_PAIRS: usize = 288;

/// Input columns ahead of a tile that the AVX-512 tiles prefetch (two tiles).
const PREFETCH: usize = 64;

/// Output channels per block of the packed weight. The AVX-512 tiles take a whole
/// block by two vectors of columns; the AVX2 tiles take it in two groups of up to
/// six channels by two vectors (12 sums, two input vectors and one weight in the 16
/// registers: 8 loads for 12 FMAs). On the 2-core AVX2 test machine (`--example
/// conv_direct_probe`) blocks of 12 in groups of 6 took 64 -> 64 at 258² from 132
/// to 155 GF/s and 128 -> 128 at 130² from 136 to 163 GF/s against blocks of 8 by
/// one vector; groups of 4 by three vectors need more than 16 registers and ran at
/// half the speed.
pub const OB: usize = 12;

/// The sizes of one direct convolution (one image of the batch).
#[derive(Debug, Clone, Copy)]
pub struct DirectConv<'a> {
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Elements per channel plane (`Hp * Wp`), of the input and of the output.
    pub plane: usize,
    /// Output columns to compute, `0..l <= plane` (every valid output lies there);
    /// the output needs only `(o - 1) * plane + l` elements. Channel `c`'s reads
    /// reach column `l - 1 + max(shifts)` of its plane, which may run into the
    /// next channel's plane but must stay inside the input.
    pub l: usize,
    /// Flat grid offset of each kernel tap, in the weight's `kh x kw` order.
    pub shifts: &'a [usize],
}

/// The weight repacked for the tiles ([`pack`]): the kept `(channel, tap)` pairs'
/// input offsets and, per block of [`OB`] output channels, `[pair][OB]` weights
/// (zero-padded). One packing serves every image of a batch.
#[derive(Debug, Clone)]
pub struct Packed {
    offsets: Vec<usize>,
    blocks: Vec<Vec<f32>>,
}

/// Repacks `w` (`[O, C, T]`) for [`forward`], dropping the `(channel, tap)` pairs whose
/// weights are zero for every output channel.
///
/// # Panics
/// When `w` is shorter than the sizes say (callers check it first).
pub fn pack(s: &DirectConv<'_>, w: &[f32]) -> Packed {
    Packed::new(s, w)
}

/// Up to this many `(channel, tap)` pairs (256 channels of a 3x3 kernel) beyond
/// [`DIRECT_MAX_PAIRS`], which product is faster depends on the processor: on a
/// Zen 4 with two cores the direct convolution wins up to 256 channels (64 -> 64 at
/// 256x256: 21.8 against 34.7 ms), on the Intel machine of earlier measurements the
/// shifted gemms won from 64 channels. [`Choice::Measure`]: the caller times both
/// once per shape and keeps the faster.
pub const DIRECT_MAX_TUNED_PAIRS: usize = 2304;

/// Which product runs a forward convolution ([`choose`]).
#[derive(Debug)]
pub enum Choice {
    /// The direct convolution, with its packed weight.
    Direct(Packed),
    /// The shifted gemms.
    Gemm,
    /// Either may be faster: time both on the first call for this shape.
    Measure,
}

/// The product for these sizes and weights: direct up to [`DIRECT_MAX_CHANNELS`]
/// channels or [`DIRECT_MAX_PAIRS`] pairs, measured up to
/// [`DIRECT_MAX_TUNED_PAIRS`] (unless `JIT_CONV_ALGO` is `direct` or `gemm`), shifted
/// gemms beyond and for 1x1 kernels.
///
/// # Panics
/// As for [`pack`].
pub fn choose(s: &DirectConv<'_>, w: &[f32]) -> Choice {
    let taps = s.shifts.len();
    if s.c <= DIRECT_MAX_CHANNELS {
        return Choice::Direct(pack(s, w));
    }
    if taps == 1 {
        // a 1x1 kernel is one gemm with the channels as inner dimension
        return Choice::Gemm;
    }
    // pairs whose weights are all zero are dropped (the zero taps of a space-to-
    // depth weight): count the kept ones without packing
    assert!(w.len() >= s.o * s.c * taps, "the weight holds {} of {} values", w.len(), s.o * s.c * taps);
    let pairs = (0..s.c * taps).filter(|&p| (0..s.o).any(|o| w[o * s.c * taps + p] != 0.0)).count();
    if pairs <= DIRECT_MAX_PAIRS {
        return Choice::Direct(pack(s, w));
    }
    if pairs > DIRECT_MAX_TUNED_PAIRS {
        return Choice::Gemm;
    }
    match algo_override() {
        Some(true) => Choice::Direct(pack(s, w)),
        Some(false) => Choice::Gemm,
        None => Choice::Measure,
    }
}

/// Whether [`choose`] picks the shifted gemms from the sizes alone, whatever the
/// weights: more than [`DIRECT_MAX_CHANNELS`] input channels, and one tap or more
/// than [`DIRECT_MAX_TUNED_PAIRS`] pairs before any zero pair is dropped. (Dropping zero
/// pairs could bring such a weight into the measured range; callers that would
/// have to build the weight first take this answer as final.)
pub fn gemms_by_size(c: usize, taps: usize) -> bool {
    c > DIRECT_MAX_CHANNELS && (taps == 1 || c * taps > DIRECT_MAX_TUNED_PAIRS)
}

/// `JIT_CONV_ALGO=direct|gemm` fixes the product in the measured range; anything
/// else (the default `auto`) measures.
fn algo_override() -> Option<bool> {
    static O: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *O.get_or_init(|| match std::env::var("JIT_CONV_ALGO").as_deref().map(str::trim) {
        Ok("direct") => Some(true),
        Ok("gemm") => Some(false),
        _ => None,
    })
}

impl Packed {
    fn new(s: &DirectConv<'_>, w: &[f32]) -> Packed {
        let taps = s.shifts.len();
        assert!(w.len() >= s.o * s.c * taps, "the weight holds {} of {} values", w.len(), s.o * s.c * taps);
        let at = |o: usize, ci: usize, t: usize| w[(o * s.c + ci) * taps + t];
        let pairs: Vec<(usize, usize)> = (0..s.c)
            .flat_map(|ci| (0..taps).map(move |t| (ci, t)))
            .filter(|&(ci, t)| (0..s.o).any(|o| at(o, ci, t) != 0.0))
            .collect();
        let offsets: Vec<usize> = pairs.iter().map(|&(ci, t)| ci * s.plane + s.shifts[t]).collect();
        let blocks = (0..s.o.div_ceil(OB))
            .map(|b| {
                let mut v = vec![0.0f32; pairs.len() * OB];
                for (j, &(ci, t)) in pairs.iter().enumerate() {
                    for k in 0..OB.min(s.o - b * OB) {
                        v[j * OB + k] = at(b * OB + k, ci, t);
                    }
                }
                v
            })
            .collect();
        Packed { offsets, blocks }
    }
}

/// `y[o, p] = sum over (c, t) of w[o, c, t] * xp[c, p + shifts[t]]` for `p < l`;
/// `xp` is `[C, plane]`, `w` is `[O, C, T]` given [`pack`]ed for these sizes, `y` is
/// `[O, plane]` (its last plane may end after column `l`; columns from `l` on are
/// left as they are).
///
/// # Panics
/// When a buffer is shorter than the sizes say (callers check them first).
pub fn forward(s: &DirectConv<'_>, packed: &Packed, xp: &[f32], y: &mut [f32]) {
    let reach = s.c.saturating_sub(1) * s.plane + s.l + s.shifts.iter().copied().max().unwrap_or(0);
    let written = s.o.saturating_sub(1) * s.plane + s.l;
    assert!(s.l <= s.plane && y.len() >= written, "{} columns of {}-column planes", s.l, s.plane);
    assert!(s.l == 0 || s.c == 0 || xp.len() >= reach, "the input holds {} of {reach} values", xp.len());
    assert_eq!(packed.blocks.len(), s.o.div_ceil(OB), "the weight was packed for other sizes");
    let isa = Isa::detect();
    let pw = isa.columns();
    let full_tiles = s.l / pw;
    let (pairs, group) = chunking(packed);
    let groups = packed.blocks.len().div_ceil(group);
    // enough tasks to balance the threads, each a run of whole tiles for one group
    // of blocks (so that a task reads only its group's weights), the group-major
    // order keeping a thread on few groups
    let per_task = (full_tiles * groups / (rayon::current_num_threads() * 8)).clamp(1, 16);
    let runs = full_tiles.div_ceil(per_task);
    let tasks = groups * runs + 1; // +1: the column tail
    let (x_addr, y_addr) = (xp.as_ptr() as usize, y.as_mut_ptr() as usize);
    (0..tasks).into_par_iter().for_each(|task| {
        let (x, y) = (x_addr as *const f32, y_addr as *mut f32);
        if task + 1 == tasks {
            for (b, wb) in packed.blocks.iter().enumerate() {
                let nb = OB.min(s.o - b * OB);
                // SAFETY: as below, columns full_tiles*pw..l.
                unsafe { tail(&packed.offsets, wb, x, y.add(b * OB * s.plane), s.plane, nb, full_tiles * pw, s.l) };
            }
            return;
        }
        let (g, run) = (task / runs, task % runs);
        let tiles = run * per_task..((run + 1) * per_task).min(full_tiles);
        let first = g * group;
        let blocks = &packed.blocks[first..(first + group).min(packed.blocks.len())];
        // chunks of pairs: a chunk's weights for the group stay in the first-level
        // cache while the task's tiles run through them
        let mut j0 = 0;
        while j0 < packed.offsets.len() {
            let j1 = (j0 + pairs).min(packed.offsets.len());
            let off = &packed.offsets[j0..j1];
            for t in tiles.clone() {
                for (i, wb) in blocks.iter().enumerate() {
                    let b = first + i;
                    let nb = OB.min(s.o - b * OB);
                    // SAFETY: the tile writes rows b*OB..b*OB + nb, columns
                    // t*pw..(t+1)*pw <= l of y, which no other task writes (and
                    // reads them back after the first chunk); its reads of input
                    // channel c end before c*plane + l + max shift <= the input's
                    // length (asserted above).
                    unsafe { isa.tile(off, &wb[j0 * OB..], x, y.add(b * OB * s.plane), s.plane, nb, t * pw, j0 > 0) };
                }
            }
            j0 = j1;
        }
    });
}

/// Pairs per chunk and blocks per group for [`forward`]: everything at once up to
/// [`DIRECT_MAX_PAIRS`] pairs (or with `JIT_DIRECT_CHUNKS=0`), otherwise chunks of
/// [`CHUNK_PAIRS`] pairs and as many blocks as keep a chunk's weights within
/// [`CHUNK_WEIGHT_BYTES`]. A tile after a chunk's first adds to the sums it stored.
/// Measured on the 2-core AVX2 machine: 128 -> 128 at 130² 148 -> 163 GF/s,
/// 256 -> 256 at 66² 139 -> 156, 512 -> 512 at 34² 93 -> 124; 64 channels unchanged.
fn chunking(packed: &Packed) -> (usize, usize) {
    let n = packed.offsets.len();
    if n <= DIRECT_MAX_PAIRS || !chunks_enabled() {
        return (n.max(1), packed.blocks.len().max(1));
    }
    let pairs = CHUNK_PAIRS.min(n);
    (pairs, (CHUNK_WEIGHT_BYTES / (pairs * OB * 4)).max(1))
}

/// Pairs of one chunk of [`forward`] (64 and 256 measured within 2% of it, 32
/// 10% slower).
const CHUNK_PAIRS: usize = 128;

/// Weight bytes of one chunk for one group of blocks (half the first-level cache).
const CHUNK_WEIGHT_BYTES: usize = 16 * 1024;

/// Whether `JIT_DIRECT_CHUNKS` leaves chunking on (anything but `0`).
fn chunks_enabled() -> bool {
    static O: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *O.get_or_init(|| std::env::var("JIT_DIRECT_CHUNKS").map(|v| v.trim() != "0").unwrap_or(true))
}

/// The instruction set the tiles use.
#[derive(Debug, Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// Two vectors of columns by groups of up to six channels.
    #[cfg(target_arch = "x86_64")]
    Avx2Pair,
    /// One vector of columns by a whole block of channels, for rows narrower than
    /// the pair tiles.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Eight lanes of portable code.
    Plain,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2Pair;
            }
        }
        Isa::Plain
    }

    /// These tiles, or the one-vector AVX2 tiles when rows of `cols` columns are
    /// narrower than these tiles (the scalar tail would run whole rows).
    fn fitting(self, cols: usize) -> Isa {
        #[cfg(target_arch = "x86_64")]
        if cols < self.columns()
            && matches!(self, Isa::Avx2Pair | Isa::Avx512)
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2;
        }
        let _ = cols;
        self
    }

    /// Grid columns per tile.
    fn columns(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => 2 * x86::Avx512::LANES,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Pair => 2 * x86::Avx2::LANES,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::Avx2::LANES,
            Isa::Plain => Plain::LANES,
        }
    }

    /// One full tile.
    ///
    /// # Safety
    /// As for [`tile`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        self,
        off: &[usize],
        w: &[f32],
        x: *const f32,
        y: *mut f32,
        ys: usize,
        nb: usize,
        p0: usize,
        acc: bool,
    ) {
        // SAFETY: forwarded; the feature-specific entry points run only where
        // `detect` found their features.
        unsafe {
            match self {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => x86::tile_avx512(off, w, x, y, ys, nb, p0, acc),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Pair => x86::tile_avx2_pair(off, w, x, y, ys, nb, p0, acc),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => x86::tile_avx2(off, w, x, y, ys, nb, p0, acc),
                Isa::Plain => tile_nb::<Plain, 1>(off, w.as_ptr(), x, y, ys, nb, p0, acc),
            }
        }
    }
}

/// The vector operations a tile needs.
trait Lanes {
    /// A vector of `LANES` f32.
    type V: Copy;
    /// Elements per vector.
    const LANES: usize;
    /// All zero.
    unsafe fn zero() -> Self::V;
    /// `LANES` elements from `p` (any alignment).
    unsafe fn load(p: *const f32) -> Self::V;
    /// `*p` in every lane.
    unsafe fn splat(p: *const f32) -> Self::V;
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    /// Writes the lanes to `p` (any alignment).
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Asks for the cache line holding `p` (a hint; any address).
    #[inline(always)]
    unsafe fn prefetch(_p: *const f32) {}
}

/// The portable fallback: 8 lanes the compiler vectorises as it can.
struct Plain;

impl Lanes for Plain {
    type V = [f32; 8];
    const LANES: usize = 8;
    unsafe fn zero() -> [f32; 8] {
        [0.0; 8]
    }
    unsafe fn load(p: *const f32) -> [f32; 8] {
        // SAFETY: the caller's pointer is valid for 8 elements.
        unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) }
    }
    unsafe fn splat(p: *const f32) -> [f32; 8] {
        // SAFETY: the caller's pointer is valid.
        [unsafe { *p }; 8]
    }
    unsafe fn fma(a: [f32; 8], b: [f32; 8], c: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] * b[i] + c[i])
    }
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        std::array::from_fn(|i| a[i] + b[i])
    }
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        // SAFETY: the caller's pointer is valid for 8 elements.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], v) }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{tile_nb, Lanes, OB};
    use std::arch::x86_64::*;

    /// 16 lanes of AVX-512 with FMA.
    pub(super) struct Avx512;
    /// 8 lanes of AVX2 with FMA.
    pub(super) struct Avx2;

    impl Lanes for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            // SAFETY: the caller runs with AVX-512F enabled.
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: as above; p is valid for 16 elements.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m512 {
            // SAFETY: as above; p is valid.
            unsafe { _mm512_set1_ps(*p) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            // SAFETY: the caller runs with AVX-512F enabled.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            // SAFETY: the caller runs with AVX-512F enabled.
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            // SAFETY: as above; p is valid for 16 elements.
            unsafe { _mm512_storeu_ps(p, v) }
        }
        #[inline(always)]
        unsafe fn prefetch(p: *const f32) {
            // SAFETY: a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
        }
    }

    impl Lanes for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            // SAFETY: the caller runs with AVX enabled.
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: as above; p is valid for 8 elements.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> __m256 {
            // SAFETY: as above; p is valid.
            unsafe { _mm256_broadcast_ss(&*p) }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            // SAFETY: the caller runs with FMA enabled.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            // SAFETY: the caller runs with AVX enabled.
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            // SAFETY: as above; p is valid for 8 elements.
            unsafe { _mm256_storeu_ps(p, v) }
        }
    }

    /// A tile entry point compiled for the given target features; the body gets
    /// the tile's arguments under the names given.
    macro_rules! isa_tile {
        (
            $(#[$doc:meta])* $name:ident, $features:literal,
            |$off:ident, $w:ident, $x:ident, $y:ident, $ys:ident, $nb:ident, $p0:ident, $acc:ident| $body:block
        ) => {
            $(#[$doc])*
            ///
            /// # Safety
            /// As for [`super::tile`], on a processor with these features.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn $name(
                $off: &[usize],
                $w: &[f32],
                $x: *const f32,
                $y: *mut f32,
                $ys: usize,
                $nb: usize,
                $p0: usize,
                $acc: bool,
            ) {
                debug_assert!($w.len() >= $off.len() * OB);
                // SAFETY: forwarded; the features are enabled here.
                unsafe { $body }
            }
        };
    }

    /// Most output channels in one group of the AVX2 pair tiles.
    const PG: usize = 6;

    isa_tile!(
        /// A tile of two 16-lane vectors of columns by up to 12 output channels.
        tile_avx512, "avx512f,fma",
        |off, w, x, y, ys, nb, p0, acc| { tile_nb::<Avx512, 2>(off, w.as_ptr(), x, y, ys, nb, p0, acc) }
    );

    isa_tile!(
        /// A tile of two 8-lane vectors of columns, run over the block's output
        /// channels in groups of equal size up to [`PG`] (12 as 6 + 6, 8 as 4 + 4,
        /// 5 as one group): up to 12 sums, 2 input vectors and one weight in the
        /// registers, 8 loads for 12 FMAs. Measured against the three-vector by
        /// three-channel tiles that ran where a tile's reads fit the first-level
        /// cache: 8 -> 4 at 514² 118 -> 136 GF/s, 32 -> 8 at 258² 132 -> 143, the
        /// others level. A software prefetch four tiles ahead (as in the AVX-512
        /// tiles) gained nothing on the large layers and cost up to 10% on the
        /// small ones.
        tile_avx2_pair, "avx2,fma",
        |off, w, x, y, ys, nb, p0, acc| {
            let g = nb.div_ceil(nb.div_ceil(PG));
            let mut k = 0;
            while k < nb {
                tile_nb::<Avx2, 2>(off, w.as_ptr().add(k), x, y.add(k * ys), ys, (nb - k).min(g), p0, acc);
                k += g;
            }
        }
    );

    isa_tile!(
        /// A tile of one 8-lane vector of columns by up to 12 output channels, for
        /// rows narrower than the pair tiles (`Isa::fitting`).
        tile_avx2, "avx2,fma",
        |off, w, x, y, ys, nb, p0, acc| { tile_nb::<Avx2, 1>(off, w.as_ptr(), x, y, ys, nb, p0, acc) }
    );
}

/// [`tile`] with the block's output-channel count as a constant, so that the sums
/// stay in registers.
///
/// # Safety
/// As for [`tile`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_nb<S: Lanes, const NV: usize>(
    off: &[usize],
    w: *const f32,
    x: *const f32,
    y: *mut f32,
    ys: usize,
    nb: usize,
    p0: usize,
    acc: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        macro_rules! by_nb {
            ($acc:literal) => {
                match nb {
                    12 => tile::<S, 12, NV, $acc>(off, w, x, y, ys, p0),
                    11 => tile::<S, 11, NV, $acc>(off, w, x, y, ys, p0),
                    10 => tile::<S, 10, NV, $acc>(off, w, x, y, ys, p0),
                    9 => tile::<S, 9, NV, $acc>(off, w, x, y, ys, p0),
                    8 => tile::<S, 8, NV, $acc>(off, w, x, y, ys, p0),
                    7 => tile::<S, 7, NV, $acc>(off, w, x, y, ys, p0),
                    6 => tile::<S, 6, NV, $acc>(off, w, x, y, ys, p0),
                    5 => tile::<S, 5, NV, $acc>(off, w, x, y, ys, p0),
                    4 => tile::<S, 4, NV, $acc>(off, w, x, y, ys, p0),
                    3 => tile::<S, 3, NV, $acc>(off, w, x, y, ys, p0),
                    2 => tile::<S, 2, NV, $acc>(off, w, x, y, ys, p0),
                    _ => tile::<S, 1, NV, $acc>(off, w, x, y, ys, p0),
                }
            };
        }
        if acc {
            by_nb!(true)
        } else {
            by_nb!(false)
        }
    }
}

/// One tile: `NB` output channels (rows `0..NB` of `y`, `ys` apart) by `NV` vectors
/// of columns from `p0`: `y[k, p0 + i] = sum over pairs j of w[j*OB + k] *
/// x[off[j] + p0 + i]`, or `y[k, p0 + i] +=` that sum when `ACC`. The sums start from zero
/// either way and the stored values are added at the end: loading them into the
/// sums before the loop made the compiler spill sums to the stack in the loop (64 ->
/// 64 at 258²: 155 -> 80 GF/s).
///
/// # Safety
/// `x` must be readable at `off[j] + p0 + i` for every pair and column of the tile,
/// `wp` must be readable at `j * OB + k` for every pair `j` and row `k < NB`, and the tile's elements of `y` must be
/// writable by this caller alone.
#[inline(always)]
unsafe fn tile<S: Lanes, const NB: usize, const NV: usize, const ACC: bool>(
    off: &[usize],
    wp: *const f32,
    x: *const f32,
    y: *mut f32,
    ys: usize,
    p0: usize,
) {
    // SAFETY: every access is inside the ranges the caller vouches for.
    unsafe {
        let mut acc = [[S::zero(); NV]; NB];
        for (j, &o) in off.iter().enumerate() {
            let src = x.add(o + p0);
            S::prefetch(src.wrapping_add(PREFETCH));
            let mut xs = [S::zero(); NV];
            for (v, xv) in xs.iter_mut().enumerate() {
                *xv = S::load(src.add(v * S::LANES));
            }
            let wj = wp.add(j * OB);
            for (k, row) in acc.iter_mut().enumerate() {
                let wk = S::splat(wj.add(k));
                for (a, &xv) in row.iter_mut().zip(&xs) {
                    *a = S::fma(wk, xv, *a);
                }
            }
        }
        for (k, row) in acc.iter().enumerate() {
            for (v, &a) in row.iter().enumerate() {
                let dst = y.add(k * ys + p0 + v * S::LANES);
                S::store(dst, if ACC { S::add(S::load(dst), a) } else { a });
            }
        }
    }
}

/// The sizes of one stride-2 direct convolution (one image of the batch, one group,
/// no dilation) on an already padded input `[C, Hp, Wp]`.
#[derive(Debug, Clone, Copy)]
pub struct Stride2Conv {
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Padded input height.
    pub hp: usize,
    /// Padded input width.
    pub wp: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
}

impl Stride2Conv {
    /// Output height and width: `(Hp - kh) / 2 + 1`, `(Wp - kw) / 2 + 1`.
    pub fn out(&self) -> [usize; 2] {
        [(self.hp - self.kernel[0]) / 2 + 1, (self.wp - self.kernel[1]) / 2 + 1]
    }

    /// Length of a row of one phase (even or odd columns) of an input row.
    fn half(&self) -> usize {
        self.wp.div_ceil(2)
    }

    /// The unit-stride problem on one output row's scratch: per input channel, `kh`
    /// input rows each split into its even and odd columns (`2 kh` rows of
    /// [`Self::half`]), so that tap `(ki, kj)` reads row `2 ki + kj % 2` from column
    /// `kj / 2` on, and output column `v` of the row is scratch column `v`.
    fn scratch_shifts(&self) -> Vec<usize> {
        let [kh, kw] = self.kernel;
        (0..kh * kw).map(|t| (2 * (t / kw) + (t % kw) % 2) * self.half() + (t % kw) / 2).collect()
    }

    /// Elements of one input channel's scratch: `2 kh` rows of [`Self::half`].
    fn scratch_plane(&self) -> usize {
        2 * self.kernel[0] * self.half()
    }
}

/// Repacks `w` (`[O, C, kh, kw]`) for [`forward_stride2`], dropping all-zero pairs.
///
/// # Panics
/// When `w` is shorter than the sizes say (callers check it first).
pub fn pack_stride2(s: &Stride2Conv, w: &[f32]) -> Packed {
    let shifts = s.scratch_shifts();
    Packed::new(&DirectConv { c: s.c, o: s.o, plane: s.scratch_plane(), l: 0, shifts: &shifts }, w)
}

/// `y[o, u, v] = sum over (c, ki, kj) of w[o, c, ki, kj] * xp[c, 2u + ki, 2v + kj]`:
/// `xp` is `[C, Hp, Wp]`, `y` is `[O, oh, ow]` ([`Stride2Conv::out`]), every element
/// written. Output rows are spread over the threads. For each, the `kh` input rows
/// it reads are split into even and odd columns in a per-thread scratch (a phase
/// split of a few cache-resident rows, instead of a copy of the whole input), and
/// the unit-stride tiles of [`forward`] run on it.
///
/// # Panics
/// When a buffer is shorter than the sizes say, or the kernel is larger than the
/// padded input (callers check them first).
pub fn forward_stride2(s: &Stride2Conv, packed: &Packed, xp: &[f32], y: &mut [f32]) {
    forward_stride2_with(s, packed, xp, y, Isa::detect().fitting(s.out()[1]))
}

/// [`forward_stride2`] with the given tiles.
fn forward_stride2_with(s: &Stride2Conv, packed: &Packed, xp: &[f32], y: &mut [f32], isa: Isa) {
    let [kh, kw] = s.kernel;
    assert!(kh >= 1 && kw >= 1 && s.hp >= kh && s.wp >= kw, "kernel {:?} on a {}x{} grid", s.kernel, s.hp, s.wp);
    let [oh, ow] = s.out();
    let (plane, half, scratch_plane) = (s.hp * s.wp, s.half(), s.scratch_plane());
    assert!(xp.len() >= s.c * plane && y.len() >= s.o * oh * ow);
    assert_eq!(packed.blocks.len(), s.o.div_ceil(OB), "the weight was packed for other sizes");
    let pw = isa.columns();
    let y_addr = y.as_mut_ptr() as usize;
    (0..oh).into_par_iter().for_each_init(
        || vec![0.0f32; s.c * scratch_plane],
        |scratch, u| {
            for ci in 0..s.c {
                for ki in 0..kh {
                    let src = &xp[ci * plane + (2 * u + ki) * s.wp..][..s.wp];
                    let (even, odd) = scratch[ci * scratch_plane + 2 * ki * half..][..2 * half].split_at_mut(half);
                    for (j, p) in src.chunks_exact(2).enumerate() {
                        even[j] = p[0];
                        odd[j] = p[1];
                    }
                    if s.wp % 2 == 1 {
                        even[half - 1] = src[s.wp - 1];
                    }
                }
            }
            let x = scratch.as_ptr();
            let y_row = |b: usize| (y_addr as *mut f32).wrapping_add(b * OB * oh * ow + u * ow);
            // tiles of pw columns, the last one shifted left to end at the row's end;
            // a row narrower than a tile runs through the scalar tail
            let tiles = if ow >= pw { ow.div_ceil(pw) } else { 0 };
            for t in 0..tiles {
                let v0 = (t * pw).min(ow - pw);
                for (b, wb) in packed.blocks.iter().enumerate() {
                    // SAFETY: rows b*OB.. of output row u, columns v0..v0 + pw <= ow,
                    // written by this task alone; pair j reads scratch row r at
                    // columns kj / 2 + v0 .. kj / 2 + v0 + pw <= kj / 2 + ow, which is
                    // at most the length of the row's phase (even: ceil(Wp / 2), odd:
                    // floor(Wp / 2)), since 2 (ow - 1) + kj <= Wp - 1.
                    unsafe { isa.tile(&packed.offsets, wb, x, y_row(b), oh * ow, OB.min(s.o - b * OB), v0, false) };
                }
            }
            if tiles == 0 {
                for (b, wb) in packed.blocks.iter().enumerate() {
                    // SAFETY: as above, columns 0..ow.
                    unsafe { tail(&packed.offsets, wb, x, y_row(b), oh * ow, OB.min(s.o - b * OB), 0, ow) };
                }
            }
        },
    );
}

/// The last columns `p0..l` (fewer than a tile), one output channel at a time; with
/// FMA instructions where the processor has them (a plain build would call the C
/// library's `fmaf` for every product).
///
/// # Safety
/// As for [`tile`], for columns `p0..l` and `nb` rows.
#[allow(clippy::too_many_arguments)]
unsafe fn tail(off: &[usize], w: &[f32], x: *const f32, y: *mut f32, ys: usize, nb: usize, p0: usize, l: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the processor has FMA; the rest is the caller's promise.
        return unsafe { tail_fma(off, w, x, y, ys, nb, p0, l) };
    }
    // SAFETY: the caller's promise.
    unsafe { tail_body(off, w, x, y, ys, nb, p0, l) }
}

/// [`tail`] compiled for processors with FMA.
///
/// # Safety
/// As for [`tail`], on a processor with FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tail_fma(off: &[usize], w: &[f32], x: *const f32, y: *mut f32, ys: usize, nb: usize, p0: usize, l: usize) {
    // SAFETY: the caller's promise.
    unsafe { tail_body(off, w, x, y, ys, nb, p0, l) }
}

/// # Safety
/// As for [`tail`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tail_body(off: &[usize], w: &[f32], x: *const f32, y: *mut f32, ys: usize, nb: usize, p0: usize, l: usize) {
    const MAX: usize = 64;
    let width = l - p0;
    assert!(width <= MAX, "a column tail is shorter than a tile");
    for k in 0..nb {
        let mut sums = [0.0f32; MAX];
        for (j, &o) in off.iter().enumerate() {
            let wv = w[j * OB + k];
            // SAFETY: the caller vouches for these columns of every pair's row.
            let src = unsafe { std::slice::from_raw_parts(x.add(o + p0), width) };
            for (a, &xv) in sums.iter_mut().zip(src) {
                *a = wv.mul_add(xv, *a);
            }
        }
        // SAFETY: the caller owns columns p0..l of row k.
        let dst = unsafe { std::slice::from_raw_parts_mut(y.add(k * ys + p0), width) };
        dst.copy_from_slice(&sums[..width]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, in f64.
    fn naive(s: &DirectConv<'_>, xp: &[f32], w: &[f32]) -> Vec<f64> {
        let taps = s.shifts.len();
        let mut y = vec![0.0f64; s.o * s.plane];
        for o in 0..s.o {
            for p in 0..s.l {
                let mut acc = 0.0;
                for ci in 0..s.c {
                    for (t, &sh) in s.shifts.iter().enumerate() {
                        acc += w[(o * s.c + ci) * taps + t] as f64 * xp[ci * s.plane + p + sh] as f64;
                    }
                }
                y[o * s.plane + p] = acc;
            }
        }
        y
    }

    /// Uniform values in [-0.5, 0.5) from a fixed seed.
    fn xorshift(mut seed: u32) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed as f32 / u32::MAX as f32) - 0.5
        }
    }

    /// Every kind of tile this processor can run.
    fn isas_here() -> Vec<Isa> {
        let mut isas = vec![Isa::Plain];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                isas.extend([Isa::Avx2, Isa::Avx2Pair]);
            }
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    #[test]
    fn the_direct_product_is_chosen_by_channels_and_kept_pairs() {
        let decide = |c: usize, o: usize, taps: usize, zero: &dyn Fn(usize, usize) -> bool| {
            let shifts: Vec<usize> = (0..taps).collect();
            let w: Vec<f32> =
                (0..o * c * taps).map(|i| if zero((i / taps) % c, i % taps) { 0.0 } else { 1.0 }).collect();
            matches!(choose(&DirectConv { c, o, plane: 64, l: 1, shifts: &shifts }, &w), Choice::Direct(_))
        };
        let dense = |_: usize, _: usize| false;
        assert!(decide(3, 32, 81, &dense), "few channels, any kernel");
        assert!(decide(32, 32, 9, &dense), "32 channels of a 3x3 kernel");
        assert!(!decide(64, 64, 9, &dense), "576 pairs: measured, not chosen outright");
        assert!(!decide(512, 8, 9, &dense), "4608 pairs");
        assert!(!decide(32, 32, 1, &dense), "a 1x1 kernel is one gemm");
        // space-to-depth of a 3x3 stride-2 kernel: 7 of each phase group's 16 taps are zero
        let s2d_zero = |ch: usize, t: usize| 2 * (t / 2) + (ch % 4) / 2 > 2 || 2 * (t % 2) + ch % 2 > 2;
        assert!(decide(128, 32, 4, &s2d_zero), "288 kept of 512 pairs");
        assert!(!decide(128, 32, 4, &dense), "512 pairs");
        let choice = |c: usize, taps: usize| {
            let shifts: Vec<usize> = (0..taps).collect();
            let w = vec![1.0f32; 4 * c * taps];
            match choose(&DirectConv { c, o: 4, plane: 64, l: 1, shifts: &shifts }, &w) {
                Choice::Direct(_) => "direct",
                Choice::Gemm => "gemm",
                Choice::Measure => "measure",
            }
        };
        // (JIT_CONV_ALGO is not set in the tests)
        assert_eq!(choice(64, 9), "measure");
        assert_eq!(choice(256, 9), "measure");
        assert_eq!(choice(257, 9), "gemm");
        assert_eq!(choice(512, 1), "gemm");
    }

    #[test]
    fn stride2_matches_the_definition() {
        let mut rnd = xorshift(0x2545_f491);
        let kinds = isas_here();
        for &(c, o, hp, wp, kh, kw) in
            &[(3, 11, 21, 37, 3, 3), (4, 8, 9, 9, 2, 2), (2, 3, 7, 12, 1, 1), (5, 17, 8, 40, 3, 5)]
        {
            let s = Stride2Conv { c, o, hp, wp, kernel: [kh, kw] };
            let [oh, ow] = s.out();
            let xp: Vec<f32> = (0..c * hp * wp).map(|_| rnd()).collect();
            let mut w: Vec<f32> = (0..o * c * kh * kw).map(|_| rnd()).collect();
            for oi in 0..o {
                w[(oi * c + 1) * kh * kw] = 0.0;
            }
            let packed = pack_stride2(&s, &w);
            assert_eq!(packed.offsets.len(), c * kh * kw - 1, "the zero pair is dropped");
            for &isa in &kinds {
                let mut y = vec![f32::NAN; o * oh * ow];
                forward_stride2_with(&s, &packed, &xp, &mut y, isa);
                for oi in 0..o {
                    for u in 0..oh {
                        for v in 0..ow {
                            let mut want = 0.0f64;
                            for ci in 0..c {
                                for ki in 0..kh {
                                    for kj in 0..kw {
                                        want += w[((oi * c + ci) * kh + ki) * kw + kj] as f64
                                            * xp[(ci * hp + 2 * u + ki) * wp + 2 * v + kj] as f64;
                                    }
                                }
                            }
                            let got = y[(oi * oh + u) * ow + v] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                                "{isa:?} c={c} o={o} {hp}x{wp} k={kh}x{kw}: y[{oi}, {u}, {v}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    // Enough pairs to run in chunks (40 channels of a 3x3 kernel: 360 pairs, three
    // chunks), output channels in two groups of blocks with a partial last block,
    // against the definition in f64; and the same sums without chunks.
    #[test]
    fn chunked_pairs_match_the_definition() {
        let mut rnd = xorshift(0x1b87_3593);
        let (c, o, hp, wp, k) = (40, 31, 11, 37, 3);
        let plane = hp * wp;
        let shifts: Vec<usize> = (0..k * k).map(|t| (t / k) * wp + t % k).collect();
        let l = (hp - k) * wp + wp - k + 1;
        let xp: Vec<f32> = (0..c * plane).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..o * c * k * k).map(|_| rnd()).collect();
        let s = DirectConv { c, o, plane, l, shifts: &shifts };
        let packed = pack(&s, &w);
        let (pairs, group) = chunking(&packed);
        assert!(pairs < packed.offsets.len() && group < packed.blocks.len(), "{pairs} pairs, {group} blocks a chunk");
        let want = naive(&s, &xp, &w);
        let mut y = vec![f32::NAN; o * plane];
        forward(&s, &packed, &xp, &mut y);
        for oi in 0..o {
            for p in 0..l {
                let (got, want) = (y[oi * plane + p] as f64, want[oi * plane + p]);
                assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "y[{oi}, {p}] = {got}, want {want}");
            }
        }
    }

    // Every instruction set this machine has, every block size (o = 1..=19 covers
    // partial blocks), tails of several widths and weights with all-zero pairs.
    #[test]
    fn every_isa_matches_the_definition() {
        let isas = isas_here();
        let mut rnd = xorshift(0x9e37_79b9);
        for &(c, o, hp, wp, kh, kw) in &[(3, 19, 9, 41, 3, 3), (5, 8, 7, 70, 2, 5), (2, 3, 12, 33, 1, 1)] {
            let plane = hp * wp;
            let shifts: Vec<usize> = (0..kh * kw).map(|t| (t / kw) * wp + t % kw).collect();
            let l = (hp - kh) * wp + wp - kw + 1;
            let xp: Vec<f32> = (0..c * plane).map(|_| rnd()).collect();
            let mut w: Vec<f32> = (0..o * c * kh * kw).map(|_| rnd()).collect();
            // a structurally zero pair: channel 1, tap 0
            for oi in 0..o {
                w[(oi * c + 1) * kh * kw] = 0.0;
            }
            let s = DirectConv { c, o, plane, l, shifts: &shifts };
            let want = naive(&s, &xp, &w);
            let packed = Packed::new(&s, &w);
            assert_eq!(packed.offsets.len(), c * kh * kw - 1, "the zero pair is dropped");
            for &isa in &isas {
                let mut y = vec![f32::NAN; o * plane];
                let pw = isa.columns();
                let full = l / pw;
                for (b, wb) in packed.blocks.iter().enumerate() {
                    let nb = OB.min(o - b * OB);
                    let yb = y[b * OB * plane..].as_mut_ptr();
                    for t in 0..full {
                        // SAFETY: as in `forward`.
                        unsafe { isa.tile(&packed.offsets, wb, xp.as_ptr(), yb, plane, nb, t * pw, false) };
                    }
                    // SAFETY: as in `forward`.
                    unsafe { tail(&packed.offsets, wb, xp.as_ptr(), yb, plane, nb, full * pw, l) };
                }
                for oi in 0..o {
                    for p in 0..l {
                        let (got, want) = (y[oi * plane + p] as f64, want[oi * plane + p]);
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{isa:?} c={c} o={o} {kh}x{kw}: y[{oi}, {p}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
