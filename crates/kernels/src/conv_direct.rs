//! Direct 2-d convolution on the CPU, for inputs with few channels (an RGB image, a
//! 4-channel feature map before a 9x9 output layer). There a product per kernel tap
//! has an inner dimension of only `C`, so the shifted gemms of
//! [`ExternOp::Conv2dShift`](crate::ExternOp::Conv2dShift) would re-read and re-write
//! the whole output once per tap, and an im2col would write `C x kh x kw` copies of
//! the input. Instead, each tile of `OB` output channels by `PW` grid columns keeps
//! its sums in registers while every `(channel, tap)` pair adds one shifted row of
//! the input times one weight.
//!
//! The layout is the one of `Conv2dShift`'s forward pass: the input is zero-padded
//! and stored on the grid `[Hp, Wp]`, taps are flat offsets on that grid, and output
//! column `p` (row-major on the grid) is valid when it lies in the valid corner.

use rayon::prelude::*;

/// Up to this many input channels, the forward product runs as a direct convolution.
pub const DIRECT_MAX_CHANNELS: usize = 15;

/// Output channels per tile.
const OB: usize = 8;
/// Grid columns per tile (a multiple of every vector width).
const PW: usize = 32;
/// Tiles of columns per parallel task.
const TILES_PER_TASK: usize = 16;

/// The sizes of one direct convolution (one image of the batch).
#[derive(Debug, Clone, Copy)]
pub struct DirectConv<'a> {
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Elements per channel plane (`Hp * Wp`).
    pub plane: usize,
    /// Output columns to compute, `0..l` (every valid output lies there, and
    /// `l - 1 + max(shifts) < plane`).
    pub l: usize,
    /// Flat grid offset of each kernel tap, in the weight's `kh x kw` order.
    pub shifts: &'a [usize],
}

/// A tile function: `(sizes, xp, w, y, o0, nb, p0)`, a full tile of columns `p0..p0 +
/// PW` or, with `tail`, the last columns `p0..l`.
type TileFn = unsafe fn(&DirectConv<'_>, &[f32], &[f32], *mut f32, usize, usize, usize, bool);

/// `y[o, p] = sum over (c, t) of w[o, c, t] * xp[c, p + shifts[t]]` for `p < l`;
/// `xp` is `[C, plane]`, `w` is `[O, C, T]`, `y` is `[O, plane]` (columns from `l`
/// on are left as they are).
///
/// # Panics
/// When a buffer is shorter than the sizes say (callers check them first).
pub fn forward(s: &DirectConv<'_>, xp: &[f32], w: &[f32], y: &mut [f32]) {
    let taps = s.shifts.len();
    assert!(xp.len() >= s.c * s.plane && w.len() >= s.o * s.c * taps && y.len() >= s.o * s.plane);
    assert!(s.l == 0 || s.l - 1 + s.shifts.iter().copied().max().unwrap_or(0) < s.plane);
    let tile = pick_tile();
    let oblocks = s.o.div_ceil(OB);
    let full_tiles = s.l / PW;
    let tasks_per_block = full_tiles.div_ceil(TILES_PER_TASK) + 1; // +1: the column tail
    let y_addr = y.as_mut_ptr() as usize;
    (0..oblocks * tasks_per_block).into_par_iter().for_each(|task| {
        let (ob, part) = (task / tasks_per_block, task % tasks_per_block);
        let o0 = ob * OB;
        let nb = OB.min(s.o - o0);
        let y = y_addr as *mut f32;
        if part + 1 < tasks_per_block {
            let first = part * TILES_PER_TASK;
            for t in first..(first + TILES_PER_TASK).min(full_tiles) {
                // SAFETY: the tile writes rows o0..o0 + nb, columns t*PW..(t+1)*PW <= l
                // of y, which no other task writes; its reads stay below
                // (l - 1 + max shift) < plane in each input row (asserted above).
                unsafe { tile(s, xp, w, y, o0, nb, t * PW, false) };
            }
        } else {
            // SAFETY: as above, columns full_tiles*PW..l.
            unsafe { tile(s, xp, w, y, o0, nb, full_tiles * PW, true) };
        }
    });
}

/// The widest tile function this processor runs.
fn pick_tile() -> TileFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
            return tile_avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return tile_avx2;
        }
    }
    tile_plain
}

/// A tile function compiled for the given target features (`FMA` when they include
/// fused multiply-add); all share one signature ([`TileFn`]).
macro_rules! tile_fn {
    ($name:ident, $fma:literal $(, $cfg:meta, $features:literal)?) => {
        #[allow(clippy::too_many_arguments)]
        $(#[$cfg] #[target_feature(enable = $features)])?
        unsafe fn $name(
            s: &DirectConv<'_>,
            xp: &[f32],
            w: &[f32],
            y: *mut f32,
            o0: usize,
            nb: usize,
            p0: usize,
            tail: bool,
        ) {
            // SAFETY: forwarded from the caller.
            unsafe { tile_any::<$fma>(s, xp, w, y, o0, nb, p0, tail) }
        }
    };
}

tile_fn!(tile_avx512, true, cfg(target_arch = "x86_64"), "avx512f,fma");
tile_fn!(tile_avx2, true, cfg(target_arch = "x86_64"), "avx2,fma");
tile_fn!(tile_plain, false);

/// `a + w * x`, fused where the processor has FMA (one rounding), else two roundings.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, w: f32, x: f32) -> f32 {
    if FMA {
        w.mul_add(x, a)
    } else {
        a + w * x
    }
}

/// One tile: a full one with the output-channel count as a constant, so that the
/// sums stay in registers, or the columns' tail.
///
/// # Safety
/// Rows `o0..o0 + nb` and columns `p0..p0 + PW` of `y` (`[O, plane]`) must be
/// writable by this caller alone.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_any<const FMA: bool>(
    s: &DirectConv<'_>,
    xp: &[f32],
    w: &[f32],
    y: *mut f32,
    o0: usize,
    nb: usize,
    p0: usize,
    tail: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if tail {
            return tail_cols::<FMA>(s, xp, w, y, o0, nb, p0);
        }
        match nb {
            8 => tile_n::<8, FMA>(s, xp, w, y, o0, p0),
            7 => tile_n::<7, FMA>(s, xp, w, y, o0, p0),
            6 => tile_n::<6, FMA>(s, xp, w, y, o0, p0),
            5 => tile_n::<5, FMA>(s, xp, w, y, o0, p0),
            4 => tile_n::<4, FMA>(s, xp, w, y, o0, p0),
            3 => tile_n::<3, FMA>(s, xp, w, y, o0, p0),
            2 => tile_n::<2, FMA>(s, xp, w, y, o0, p0),
            _ => tile_n::<1, FMA>(s, xp, w, y, o0, p0),
        }
    }
}

#[inline(always)]
unsafe fn tile_n<const NB: usize, const FMA: bool>(
    s: &DirectConv<'_>,
    xp: &[f32],
    w: &[f32],
    y: *mut f32,
    o0: usize,
    p0: usize,
) {
    let taps = s.shifts.len();
    let mut acc = [[0.0f32; PW]; NB];
    for ci in 0..s.c {
        let row = &xp[ci * s.plane + p0..];
        for (t, &shift) in s.shifts.iter().enumerate() {
            let src: &[f32; PW] = row[shift..shift + PW].try_into().expect("a full tile of input");
            for (k, sums) in acc.iter_mut().enumerate() {
                let wv = w[((o0 + k) * s.c + ci) * taps + t];
                for (a, &x) in sums.iter_mut().zip(src) {
                    *a = madd::<FMA>(*a, wv, x);
                }
            }
        }
    }
    for (k, sums) in acc.iter().enumerate() {
        // SAFETY: the caller owns these PW columns of row o0 + k.
        let dst = unsafe { std::slice::from_raw_parts_mut(y.add((o0 + k) * s.plane + p0), PW) };
        dst.copy_from_slice(sums);
    }
}

/// The last columns `p0..l` (fewer than a tile), one output channel at a time.
///
/// # Safety
/// As for [`tile_any`], for columns `p0..l`.
#[inline(always)]
unsafe fn tail_cols<const FMA: bool>(
    s: &DirectConv<'_>,
    xp: &[f32],
    w: &[f32],
    y: *mut f32,
    o0: usize,
    nb: usize,
    p0: usize,
) {
    let taps = s.shifts.len();
    let width = s.l - p0;
    if width == 0 {
        return;
    }
    for k in 0..nb {
        let mut sums = [0.0f32; PW];
        for ci in 0..s.c {
            for (t, &shift) in s.shifts.iter().enumerate() {
                let wv = w[((o0 + k) * s.c + ci) * taps + t];
                let src = &xp[ci * s.plane + p0 + shift..][..width];
                for (a, &x) in sums.iter_mut().zip(src) {
                    *a = madd::<FMA>(*a, wv, x);
                }
            }
        }
        // SAFETY: the caller owns columns p0..l of row o0 + k.
        let dst = unsafe { std::slice::from_raw_parts_mut(y.add((o0 + k) * s.plane + p0), width) };
        dst.copy_from_slice(&sums[..width]);
    }
}
