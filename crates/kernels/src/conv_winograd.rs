//! Winograd F(2x2, 3x3) convolution on the CPU: the forward product and the input
//! gradient of a unit-stride, undilated 3x3 convolution with many channels, in the
//! padded-grid layout of [`ExternOp::Conv2dShift`](crate::ExternOp::Conv2dShift).
//!
//! Each 2x2 block of outputs (a *tile*) is `Aᵀ [Σ_c (G g Gᵀ) ⊙ (Bᵀ d B)] A`, where `d`
//! is the tile's 4x4 input window of channel `c` and `g` the 3x3 weight of the pair
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). The
//! sum over channels is 16 matrix products, one per position `ξ` of the 4x4
//! transformed tile: `M_ξ [O, T] = U_ξ [O, C] · V_ξ [C, T]` over `T` tiles. That is
//! 16 multiplications per tile and pair where the direct form needs 36: 2.25 times
//! fewer, for the price of the transforms (additions only, and halves in `G`),
//! which are linear in `C + O` per tile where the products are linear in `C x O`.
//!
//! Tiles run in blocks of whole tile rows ([`TILES_PER_BLOCK`] or more tiles), each
//! block on one thread: its input windows transformed into `V` (a scratch of `16 C T`
//! values), the 16 products into `M` (`16 O T`), and `M` transformed into the
//! outputs, so that `V` and `M` stay in the caches between the steps.
//!
//! The rounding differs from the direct sums (the transforms add and subtract
//! inputs and weights before multiplying): on the style networks' layers the
//! results agree with the f64 definition to a few units in the sixth digit of the
//! output's scale (`tests::winograd_matches_the_definition`).

use rayon::prelude::*;
use std::cell::RefCell;

/// Tiles per block of tile rows, at least (whole rows are taken): enough columns
/// for the products to run at speed.
pub const TILES_PER_BLOCK: usize = 128;

/// From this many input and output channels on, 3x3 forward products run in the
/// Winograd form. On the 2-core AVX2 machine (`--example conv_winograd_probe`, medians
/// of 7) it took 64 -> 64 at 258² from 34.3 to 23.2 ms against the direct
/// convolution, 128 -> 128 at 130² from 36.2 to 19.1 ms and 256 -> 256 at 66² from
/// 30.8 to 16.4 ms; with 32 channels the transforms cost more than they save (2.3
/// against 2.6 ms at 130²).
pub const MIN_CHANNELS: usize = 64;

/// Whether a forward product of a convolution with these channels, kernel and
/// dilation runs in the Winograd form: 3x3 undilated, at least [`MIN_CHANNELS`] in
/// and out, unless `JIT_CONV_WINOGRAD=0`.
pub fn applies(c: usize, o: usize, kernel: [usize; 2], dilation: [usize; 2]) -> bool {
    kernel == [3, 3] && dilation == [1, 1] && c >= MIN_CHANNELS && o >= MIN_CHANNELS && enabled()
}

/// `JIT_CONV_WINOGRAD=0` turns the Winograd form off (the direct or shifted-gemm
/// products instead, whose sums round like PyTorch's).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("JIT_CONV_WINOGRAD").as_deref().map(str::trim) != Ok("0"))
}

/// The sizes of one forward product on the padded grid (one image of a batch).
#[derive(Debug, Clone, Copy)]
pub struct WinogradConv {
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub o: usize,
    /// Padded grid height and width (of the input and of the output planes).
    pub hp: usize,
    /// See `hp`.
    pub wp: usize,
    /// `false`: the forward product, which reads the whole input grid and gives the
    /// outputs of its top-left `[hp - 2, wp - 2]` corner. `true`: the *full*
    /// correlation, which reads only the input's `[hp - 2, wp - 2]` corner (zero
    /// beyond it) shifted down and right by 2 and gives every output of the grid:
    /// with the weight flipped and its channels swapped, the input gradient of the
    /// forward product.
    pub full: bool,
}

impl WinogradConv {
    /// Valid output rows and columns: `hp - 2`, `wp - 2`, or the whole grid when
    /// `full`.
    fn valid(&self) -> (usize, usize) {
        if self.full {
            (self.hp, self.wp)
        } else {
            (self.hp - 2, self.wp - 2)
        }
    }

    /// Input rows and columns read (the rest is taken as 0), and the shift of the
    /// input against the outputs.
    fn readable(&self) -> (usize, usize, usize) {
        if self.full {
            (self.hp - 2, self.wp - 2, 2)
        } else {
            (self.hp, self.wp, 0)
        }
    }

    /// Tile rows and tile columns covering the valid outputs.
    fn tiles(&self) -> (usize, usize) {
        let (oh, ow) = self.valid();
        (oh.div_ceil(2), ow.div_ceil(2))
    }
}

/// The transformed weight `U = G g Gᵀ` of every pair, stored `[O, 16, C]`: the
/// product for position `ξ` reads `U_ξ` as an `[O, C]` matrix with row stride `16 C`.
#[derive(Debug, Clone)]
pub struct Transformed {
    u: Vec<f32>,
    c: usize,
    o: usize,
}

impl Drop for Transformed {
    fn drop(&mut self) {
        crate::host_pool::give(crate::HostBuffer::F32(std::mem::take(&mut self.u)));
    }
}

/// `G g Gᵀ` for the weight `w` (`[O, C, 3, 3]`), output channels in parallel, into a
/// buffer from the host pool (an error only when memory runs out).
///
/// # Panics
/// When `w` holds fewer than `9 O C` values.
pub fn transform_weight(s: &WinogradConv, w: &[f32]) -> Result<Transformed, crate::KernelError> {
    let (c, o) = (s.c, s.o);
    assert!(w.len() >= 9 * o * c, "the weight holds {} of {} values", w.len(), 9 * o * c);
    let mut u = crate::host_pool::take_f32(o * 16 * c, crate::host_pool::Fill::Overwritten, "a Winograd weight")?;
    u.par_chunks_mut(16 * c.max(1)).enumerate().for_each(|(oi, dst)| {
        for ci in 0..c {
            let g = &w[(oi * c + ci) * 9..][..9];
            // G g: 4 x 3
            let mut t = [[0.0f32; 3]; 4];
            for col in 0..3 {
                let (a0, a1, a2) = (g[col], g[3 + col], g[6 + col]);
                t[0][col] = a0;
                t[1][col] = 0.5 * (a0 + a1 + a2);
                t[2][col] = 0.5 * (a0 - a1 + a2);
                t[3][col] = a2;
            }
            // (G g) Gᵀ: 4 x 4
            for (k, row) in t.iter().enumerate() {
                let (b0, b1, b2) = (row[0], row[1], row[2]);
                let v = [b0, 0.5 * (b0 + b1 + b2), 0.5 * (b0 - b1 + b2), b2];
                for (l, &x) in v.iter().enumerate() {
                    dst[(4 * k + l) * c + ci] = x;
                }
            }
        }
    });
    Ok(Transformed { u, c, o })
}

thread_local! {
    /// Each thread's `V`, `M` and row scratch for its blocks.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[o, r, q] = Σ_{c, i, j < 3} w[o, c, i, j] xp[c, r + i, q + j]` for the valid
/// outputs `r < hp - 2`, `q < wp - 2` of each of `n` images; `xp` is `[n, C, hp,
/// wp]`, `y` is `[n, O, hp, wp]`, whose other positions are left as they are. With
/// `full`, the same sum with `xp[c, r + i - 2, q + j - 2]` (0 outside its `[hp - 2,
/// wp - 2]` corner) for every output of the grid.
///
/// # Panics
/// When the buffers are smaller than the sizes say, the grid is smaller than 3x3, or
/// `u` was transformed for other channel counts.
pub fn forward(s: &WinogradConv, u: &Transformed, n: usize, xp: &[f32], y: &mut [f32]) {
    let plane = s.hp * s.wp;
    assert!(s.hp >= 3 && s.wp >= 3, "the grid {}x{} is smaller than the kernel", s.hp, s.wp);
    assert!(
        xp.len() >= n * s.c * plane && y.len() >= n * s.o * plane,
        "buffers smaller than {n} images of {} planes",
        s.c.max(s.o)
    );
    assert!(u.c == s.c && u.o == s.o, "the weight was transformed for other sizes");
    let (th, tw) = s.tiles();
    // blocks of whole tile rows, at least TILES_PER_BLOCK tiles, evened out
    let blocks = th.div_ceil(TILES_PER_BLOCK.div_ceil(tw).clamp(1, th));
    let rows_per_block = th.div_ceil(blocks);
    // too few blocks for the threads (small grids): split the output channels too,
    // each part transforming its block's input again (linear in C, not C x O)
    let threads = rayon::current_num_threads().max(1);
    let units = n * blocks;
    let parts =
        if units >= 2 * threads { 1 } else { (2 * threads).div_ceil(units.max(1)).min(s.o.div_ceil(32)).max(1) };
    let per_part = s.o.div_ceil(parts);
    let y_addr = y.as_mut_ptr() as usize;
    (0..units * parts).into_par_iter().for_each(|task| {
        let (image, b, part) = (task / (blocks * parts), (task / parts) % blocks, task % parts);
        let rows = b * rows_per_block..((b + 1) * rows_per_block).min(th);
        let outs = part * per_part..((part + 1) * per_part).min(s.o);
        if outs.is_empty() || rows.is_empty() {
            return;
        }
        let xp = &xp[image * s.c * plane..(image + 1) * s.c * plane];
        let no = outs.len();
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let nt = rows.len() * tw;
            // V [16][C][nt], M [16][no][nt], and four padded rows plus the even and
            // odd halves of one
            let width = 2 * tw + 2;
            let need = 16 * nt * (s.c + no) + 6 * width;
            if scratch.len() < need {
                scratch.resize(need, 0.0);
            }
            let (v, rest) = scratch.split_at_mut(16 * s.c * nt);
            let (m, rows_buf) = rest.split_at_mut(16 * no * nt);
            input_tiles(s, xp, rows.clone(), v, rows_buf);
            for xi in 0..16 {
                // SAFETY: U_ξ's rows outs are [no, C] at (outs.start*16 + xi)*C with row
                // stride 16C inside u (O*16*C values); V_ξ [C, nt] and M_ξ [no, nt] are
                // contiguous slices of this thread's scratch.
                unsafe {
                    crate::extern_op::gemm_f32(
                        [no, nt, s.c],
                        (m.as_mut_ptr().add(xi * no * nt), 1, nt as isize),
                        (u.u.as_ptr().add((outs.start * 16 + xi) * s.c), 1, (16 * s.c) as isize),
                        (v.as_ptr().add(xi * s.c * nt), 1, nt as isize),
                    );
                }
            }
            // SAFETY: this task writes only output rows 2*rows.start..2*rows.end of the
            // planes outs of its image, which no other task writes; y holds n images
            // of O planes (asserted).
            let y =
                unsafe { std::slice::from_raw_parts_mut((y_addr as *mut f32).add(image * s.o * plane), s.o * plane) };
            output_tiles(s, m, rows, outs, y, rows_buf);
        });
    });
}

/// Whether the host has AVX2 and FMA (checked once): the transforms are then
/// compiled for it (eight lanes and its shuffles for the even and odd columns).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
}

/// [`transform_input`], compiled for AVX2 when the host has it.
fn input_tiles(s: &WinogradConv, xp: &[f32], rows: std::ops::Range<usize>, v: &mut [f32], buf: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the host has AVX2 and FMA (checked)
        return unsafe { wide::input(s, xp, rows, v, buf) };
    }
    transform_input(s, xp, rows, v, buf)
}

/// [`transform_output`], compiled for AVX2 when the host has it.
fn output_tiles(
    s: &WinogradConv,
    m: &[f32],
    rows: std::ops::Range<usize>,
    outs: std::ops::Range<usize>,
    y: &mut [f32],
    buf: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the host has AVX2 and FMA (checked)
        return unsafe { wide::output(s, m, rows, outs, y, buf) };
    }
    transform_output(s, m, rows, outs, y, buf)
}

/// [`transform_input`] and [`transform_output`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::*;

    /// # Safety
    /// The host must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input(
        s: &WinogradConv,
        xp: &[f32],
        rows: std::ops::Range<usize>,
        v: &mut [f32],
        buf: &mut [f32],
    ) {
        transform_input(s, xp, rows, v, buf)
    }

    /// # Safety
    /// The host must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output(
        s: &WinogradConv,
        m: &[f32],
        rows: std::ops::Range<usize>,
        outs: std::ops::Range<usize>,
        y: &mut [f32],
        buf: &mut [f32],
    ) {
        transform_output(s, m, rows, outs, y, buf)
    }
}

/// `V = Bᵀ d B` for the tiles of tile rows `rows`, into `v` (`[16][C][T]`, tile `t =
/// (row - rows.start) * tw + column`). Each channel's four input rows of a tile row
/// are first combined down the columns (contiguous) and then across, through the
/// even and odd columns of each combination. Positions outside the readable part of
/// the input ([`WinogradConv::readable`]) read 0.
#[inline(always)]
fn transform_input(s: &WinogradConv, xp: &[f32], rows: std::ops::Range<usize>, v: &mut [f32], buf: &mut [f32]) {
    let (_, tw) = s.tiles();
    let (in_rows, in_cols, shift) = s.readable();
    let nt = rows.len() * tw;
    let width = 2 * tw + 2;
    let plane = s.hp * s.wp;
    let (d, rest) = buf.split_at_mut(4 * width);
    let (even, odd) = rest.split_at_mut(width);
    for ci in 0..s.c {
        for (local, i) in rows.clone().enumerate() {
            for k in 0..4 {
                let dst = &mut d[k * width..(k + 1) * width];
                match (2 * i + k).checked_sub(shift).filter(|&r| r < in_rows) {
                    Some(r) => {
                        let n = in_cols.min(width - shift);
                        dst[..shift].fill(0.0);
                        dst[shift..shift + n].copy_from_slice(&xp[ci * plane + r * s.wp..][..n]);
                        dst[shift + n..].fill(0.0);
                    }
                    None => dst.fill(0.0),
                }
            }
            let (d0, d1, d2, d3) = (&d[..width], &d[width..2 * width], &d[2 * width..3 * width], &d[3 * width..]);
            // Bᵀ's rows: d0 - d2, d1 + d2, d2 - d1, d1 - d3 (a sign times a value is exact)
            let combos: [(&[f32], &[f32], f32); 4] = [(d0, d2, -1.0), (d1, d2, 1.0), (d2, d1, -1.0), (d1, d3, -1.0)];
            for (k, &(a, b, sign)) in combos.iter().enumerate() {
                // split into the even and odd columns
                for j in 0..=tw {
                    even[j] = a[2 * j] + sign * b[2 * j];
                    odd[j] = a[2 * j + 1] + sign * b[2 * j + 1];
                }
                // across: e[j] - e[j+1], o[j] + e[j+1], e[j+1] - o[j], o[j] - o[j+1]
                let at = |l: usize| ((4 * k + l) * s.c + ci) * nt + local * tw;
                for (j, x) in v[at(0)..at(0) + tw].iter_mut().enumerate() {
                    *x = even[j] - even[j + 1];
                }
                for (j, x) in v[at(1)..at(1) + tw].iter_mut().enumerate() {
                    *x = odd[j] + even[j + 1];
                }
                for (j, x) in v[at(2)..at(2) + tw].iter_mut().enumerate() {
                    *x = even[j + 1] - odd[j];
                }
                for (j, x) in v[at(3)..at(3) + tw].iter_mut().enumerate() {
                    *x = odd[j] - odd[j + 1];
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` for the tiles of tile rows `rows` and the output channels `outs` (`m`
/// is `[16][outs][T]`), written to the valid outputs of `y` (`[O, hp, wp]`).
#[inline(always)]
fn transform_output(
    s: &WinogradConv,
    m: &[f32],
    rows: std::ops::Range<usize>,
    outs: std::ops::Range<usize>,
    y: &mut [f32],
    buf: &mut [f32],
) {
    let (oh, ow) = s.valid();
    let (_, tw) = s.tiles();
    let nt = rows.len() * tw;
    let plane = s.hp * s.wp;
    let (s0, rest) = buf.split_at_mut(4 * tw);
    let (s1, _) = rest.split_at_mut(4 * tw);
    let no = outs.len();
    for (k, oi) in outs.enumerate() {
        for (local, i) in rows.clone().enumerate() {
            let at = |xi: usize| &m[(xi * no + k) * nt + local * tw..][..tw];
            // down the columns: s0 = m0 + m1 + m2, s1 = m1 - m2 - m3 (rows of the tile)
            for l in 0..4 {
                let (m0, m1, m2, m3) = (at(l), at(4 + l), at(8 + l), at(12 + l));
                let (a, b) = (&mut s0[l * tw..(l + 1) * tw], &mut s1[l * tw..(l + 1) * tw]);
                for j in 0..tw {
                    a[j] = m0[j] + m1[j] + m2[j];
                    b[j] = m1[j] - m2[j] - m3[j];
                }
            }
            for (half, sk) in [&*s0, &*s1].into_iter().enumerate() {
                let r = 2 * i + half;
                if r >= oh {
                    continue;
                }
                let row = &mut y[oi * plane + r * s.wp..][..ow];
                let (c0, c1, c2, c3) = (&sk[..tw], &sk[tw..2 * tw], &sk[2 * tw..3 * tw], &sk[3 * tw..]);
                let pairs = ow / 2;
                for j in 0..pairs {
                    row[2 * j] = c0[j] + c1[j] + c2[j];
                    row[2 * j + 1] = c1[j] - c2[j] - c3[j];
                }
                if ow % 2 == 1 {
                    row[ow - 1] = c0[pairs] + c1[pairs] + c2[pairs];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(s: &WinogradConv, xp: &[f32], w: &[f32]) -> Vec<f64> {
        let (oh, ow) = s.valid();
        let (in_rows, in_cols, shift) = s.readable();
        let plane = s.hp * s.wp;
        let mut y = vec![0.0f64; s.o * plane];
        for o in 0..s.o {
            for r in 0..oh {
                for q in 0..ow {
                    let mut acc = 0.0f64;
                    for c in 0..s.c {
                        for i in 0..3 {
                            for j in 0..3 {
                                let (Some(a), Some(b)) = ((r + i).checked_sub(shift), (q + j).checked_sub(shift))
                                else {
                                    continue;
                                };
                                if a < in_rows && b < in_cols {
                                    acc += f64::from(w[((o * s.c + c) * 3 + i) * 3 + j])
                                        * f64::from(xp[c * plane + a * s.wp + b]);
                                }
                            }
                        }
                    }
                    y[o * plane + r * s.wp + q] = acc;
                }
            }
        }
        y
    }

    /// Odd and even grids (tile rows and columns that overhang the valid corner),
    /// blocks of one and of several tile rows, output channels split across threads,
    /// batches of one to three images,
    /// channel counts that are not multiples of anything, the forward and the full
    /// correlation: every valid output within 1e-5 of the output's scale, the rest of
    /// the planes untouched, and in the full form the input past its corner (NaN
    /// here) never read.
    #[test]
    fn winograd_matches_the_definition() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let sizes = [(3, 2, 3, 3), (5, 7, 9, 12), (17, 9, 34, 34), (8, 33, 7, 300), (64, 16, 21, 19), (6, 70, 4, 5)];
        for (full, (c, o, hp, wp)) in [false, true].into_iter().flat_map(|f| sizes.map(|z| (f, z))) {
            let s = WinogradConv { c, o, hp, wp, full };
            let plane = hp * wp;
            let (in_rows, in_cols, _) = s.readable();
            // a batch of 1, 2 or 3 images
            let n = 1 + (c + o) % 3;
            let xp: Vec<f32> = (0..n * c * plane)
                .map(|p| if (p % plane) / wp < in_rows && p % wp < in_cols { rnd() } else { f32::NAN })
                .collect();
            let w: Vec<f32> = (0..o * c * 9).map(|_| rnd()).collect();
            let u = transform_weight(&s, &w).unwrap();
            let mut y = vec![f32::NAN; n * o * plane];
            forward(&s, &u, n, &xp, &mut y);
            let want: Vec<f64> =
                (0..n).flat_map(|i| definition(&s, &xp[i * c * plane..(i + 1) * c * plane], &w)).collect();
            let scale = want.iter().fold(0.0f64, |a, b| a.max(b.abs()));
            let (oh, ow) = s.valid();
            for (p, (&g, &w)) in y.iter().zip(&want).enumerate() {
                let (r, q) = ((p % plane) / wp, p % wp);
                if r < oh && q < ow {
                    assert!(
                        (f64::from(g) - w).abs() <= 1e-5 * scale,
                        "{c}->{o} on {hp}x{wp} (full {full}, {n} images): {p}: {g} vs {w}"
                    );
                } else {
                    assert!(g.is_nan(), "{c}->{o} on {hp}x{wp}: position {p} outside the valid corner was written");
                }
            }
        }
    }
}
