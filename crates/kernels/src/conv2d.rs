//! The convolution as one library call per pass ([`ExternOp::Conv2d`]), with
//! PyTorch's `conv2d` geometry: stride, zero padding, dilation and groups on an
//! unpadded NCHW input. On the CUDA backend cuDNN runs it (`cuda::dnn`); elsewhere
//! (the CPU backend running a graph built for CUDA, the reference backend, or a
//! shape cuDNN declines) the loops below do, accumulating in f64 and rounding once,
//! in parallel over output planes.
//!
//! [`ExternOp::Conv2d`]: crate::ExternOp::Conv2d

use crate::extern_op::ConvPass;
use rayon::prelude::*;

/// The geometry of one convolution, fixed when the graph is built. The input's
/// height and width are part of it because the data gradient cannot recover them
/// from the output's size when the stride is larger than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dSpec {
    /// Height and width of the (unpadded) input.
    pub input: [usize; 2],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Zero padding on each side.
    pub padding: [usize; 2],
    /// Spacing of the kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

/// The channel counts of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dDims {
    /// Batch.
    pub n: usize,
    /// Input channels (all groups).
    pub c: usize,
    /// Output channels (all groups).
    pub o: usize,
}

impl Conv2dSpec {
    /// The output's height and width, or why the kernel does not fit.
    pub fn out(&self) -> Result<[usize; 2], String> {
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.kernel.contains(&0) || self.groups == 0 {
            return Err(format!(
                "stride {:?}, dilation {:?}, kernel {:?} and groups {} must be positive",
                self.stride, self.dilation, self.kernel, self.groups
            ));
        }
        let mut out = [0; 2];
        for (d, o) in out.iter_mut().enumerate() {
            let span = self.dilation[d] * (self.kernel[d] - 1) + 1;
            let padded = self.input[d] + 2 * self.padding[d];
            if padded < span {
                return Err(format!(
                    "the input {:?} padded by {:?} is smaller than the dilated kernel {:?}",
                    self.input, self.padding, span
                ));
            }
            *o = (padded - span) / self.stride[d] + 1;
        }
        Ok(out)
    }

    /// Checks the two inputs of `pass` against the geometry and returns the channel
    /// counts: `Forward (x [N, C, H, W], w [O, C/g, kh, kw])`, `BackwardData (dy [N, O,
    /// OH, OW], w)`, `BackwardFilter (dy, x)`.
    pub fn dims(&self, pass: ConvPass, a: &[usize], b: &[usize]) -> Result<Conv2dDims, String> {
        let four = |s: &[usize]| -> Result<[usize; 4], String> {
            s.try_into().map_err(|_| format!("needs 4-d inputs, got {s:?}"))
        };
        let (a, b) = (four(a)?, four(b)?);
        let [oh, ow] = self.out()?;
        let g = self.groups;
        let weight = |w: [usize; 4], o: usize, c: usize| -> Result<(), String> {
            if w != [o, c / g, self.kernel[0], self.kernel[1]] || !c.is_multiple_of(g) || !o.is_multiple_of(g) {
                return Err(format!(
                    "weight {w:?} does not fit {c} input and {o} output channels in {g} groups with kernel {:?}",
                    self.kernel
                ));
            }
            Ok(())
        };
        let image = |x: [usize; 4]| -> Result<(), String> {
            if [x[2], x[3]] != self.input {
                return Err(format!("input {x:?} is not {:?} high and wide", self.input));
            }
            Ok(())
        };
        let grad = |dy: [usize; 4]| -> Result<(), String> {
            if [dy[2], dy[3]] != [oh, ow] {
                return Err(format!("output gradient {dy:?} is not {oh}x{ow}"));
            }
            Ok(())
        };
        let dims = match pass {
            ConvPass::Forward => {
                image(a)?;
                let d = Conv2dDims { n: a[0], c: a[1], o: b[0] };
                weight(b, d.o, d.c)?;
                d
            }
            ConvPass::BackwardData => {
                grad(a)?;
                let d = Conv2dDims { n: a[0], c: b[1] * g, o: a[1] };
                weight(b, d.o, d.c)?;
                d
            }
            ConvPass::BackwardFilter => {
                grad(a)?;
                image(b)?;
                if a[0] != b[0] {
                    return Err(format!("output gradient {a:?} and input {b:?} have different batches"));
                }
                let d = Conv2dDims { n: a[0], c: b[1], o: a[1] };
                if !d.c.is_multiple_of(g) || !d.o.is_multiple_of(g) {
                    return Err(format!("{g} groups do not divide {} input and {} output channels", d.c, d.o));
                }
                d
            }
        };
        Ok(dims)
    }

    /// The shape `pass` produces from inputs of shapes `a` and `b`.
    pub fn out_shape(&self, pass: ConvPass, a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
        let d = self.dims(pass, a, b)?;
        let [oh, ow] = self.out()?;
        let [h, w] = self.input;
        Ok(match pass {
            ConvPass::Forward => vec![d.n, d.o, oh, ow],
            ConvPass::BackwardData => vec![d.n, d.c, h, w],
            ConvPass::BackwardFilter => vec![d.o, d.c / self.groups, self.kernel[0], self.kernel[1]],
        })
    }

    /// Input row or column read by output position `pos` through tap `tap` along
    /// `axis`, if it is inside the input.
    fn source(&self, axis: usize, pos: usize, tap: usize) -> Option<usize> {
        (pos * self.stride[axis] + tap * self.dilation[axis])
            .checked_sub(self.padding[axis])
            .filter(|&i| i < self.input[axis])
    }

    /// Output position that reads input `i` through tap `tap` along `axis`, if any.
    fn target(&self, axis: usize, i: usize, tap: usize, out: usize) -> Option<usize> {
        let t = (i + self.padding[axis]).checked_sub(tap * self.dilation[axis])?;
        (t % self.stride[axis] == 0).then(|| t / self.stride[axis]).filter(|&p| p < out)
    }
}

/// Runs `pass` on f64 data (inputs as [`Conv2dSpec::dims`] describes them), each
/// output element a sum in f64. Parallel over output planes.
pub fn run_f64(spec: &Conv2dSpec, pass: ConvPass, d: Conv2dDims, a: &[f64], b: &[f64]) -> Result<Vec<f64>, String> {
    let [h, w] = spec.input;
    let [kh, kw] = spec.kernel;
    let [oh, ow] = spec.out()?;
    let g = spec.groups;
    let (cg, og) = (d.c / g, d.o / g);
    let x_len = d.n * d.c * h * w;
    let w_len = d.o * cg * kh * kw;
    let y_len = d.n * d.o * oh * ow;
    let (need_a, need_b, out_len) = match pass {
        ConvPass::Forward => (x_len, w_len, y_len),
        ConvPass::BackwardData => (y_len, w_len, x_len),
        ConvPass::BackwardFilter => (y_len, x_len, w_len),
    };
    if a.len() != need_a || b.len() != need_b {
        return Err(format!(
            "inputs of {} and {} elements where {need_a} and {need_b} were expected",
            a.len(),
            b.len()
        ));
    }
    let mut out = vec![0.0; out_len];
    match pass {
        ConvPass::Forward => {
            let (x, wt) = (a, b);
            out.par_chunks_mut((oh * ow).max(1)).enumerate().for_each(|(plane, dst)| {
                let (ni, o) = (plane / d.o, plane % d.o);
                let group = o / og;
                for ci in 0..cg {
                    let xc = &x[(ni * d.c + group * cg + ci) * h * w..][..h * w];
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let wv = wt[((o * cg + ci) * kh + ki) * kw + kj];
                            for u in 0..oh {
                                let Some(r) = spec.source(0, u, ki) else { continue };
                                for v in 0..ow {
                                    if let Some(s) = spec.source(1, v, kj) {
                                        dst[u * ow + v] += wv * xc[r * w + s];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
        ConvPass::BackwardData => {
            let (dy, wt) = (a, b);
            out.par_chunks_mut((h * w).max(1)).enumerate().for_each(|(plane, dst)| {
                let (ni, c) = (plane / d.c, plane % d.c);
                let (group, ci) = (c / cg, c % cg);
                for o in group * og..(group + 1) * og {
                    let dyo = &dy[(ni * d.o + o) * oh * ow..][..oh * ow];
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let wv = wt[((o * cg + ci) * kh + ki) * kw + kj];
                            for r in 0..h {
                                let Some(u) = spec.target(0, r, ki, oh) else { continue };
                                for s in 0..w {
                                    if let Some(v) = spec.target(1, s, kj, ow) {
                                        dst[r * w + s] += wv * dyo[u * ow + v];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        }
        ConvPass::BackwardFilter => {
            let (dy, x) = (a, b);
            out.par_chunks_mut((cg * kh * kw).max(1)).enumerate().for_each(|(o, dst)| {
                let group = o / og;
                for ci in 0..cg {
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let mut acc = 0.0;
                            for ni in 0..d.n {
                                let xc = &x[(ni * d.c + group * cg + ci) * h * w..][..h * w];
                                let dyo = &dy[(ni * d.o + o) * oh * ow..][..oh * ow];
                                for u in 0..oh {
                                    let Some(r) = spec.source(0, u, ki) else { continue };
                                    for v in 0..ow {
                                        if let Some(s) = spec.source(1, v, kj) {
                                            acc += dyo[u * ow + v] * xc[r * w + s];
                                        }
                                    }
                                }
                            }
                            dst[(ci * kh + ki) * kw + kj] = acc;
                        }
                    }
                }
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        input: [usize; 2],
        kernel: [usize; 2],
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Conv2dSpec {
        Conv2dSpec { input, kernel, stride: [stride; 2], padding: [padding; 2], dilation: [dilation; 2], groups }
    }

    /// A small deterministic pseudo-random sequence (no test-crate dependency here).
    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// The two gradient passes are the adjoints of the forward pass:
    /// `<dy, conv(x, w)> = <conv_bd(dy, w), x> = <conv_bf(dy, x), w>`, for strides,
    /// dilation, padding and groups together.
    #[test]
    fn gradient_passes_are_adjoints_of_the_forward_pass() {
        for (k, s) in [
            spec([7, 9], [3, 3], 1, 1, 1, 1),
            spec([8, 7], [3, 2], 2, 1, 1, 2),
            spec([9, 10], [3, 3], 3, 2, 2, 3),
            spec([5, 6], [1, 1], 2, 0, 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let d = Conv2dDims { n: 2, c: 6, o: 3 * s.groups };
            let [h, w] = s.input;
            let [oh, ow] = s.out().unwrap();
            let x = values(d.n * d.c * h * w, 1 + k as u64);
            let wt = values(d.o * d.c / s.groups * s.kernel[0] * s.kernel[1], 11 + k as u64);
            let dy = values(d.n * d.o * oh * ow, 21 + k as u64);
            let y = run_f64(&s, ConvPass::Forward, d, &x, &wt).unwrap();
            let dx = run_f64(&s, ConvPass::BackwardData, d, &dy, &wt).unwrap();
            let dw = run_f64(&s, ConvPass::BackwardFilter, d, &dy, &x).unwrap();
            let (lhs, via_x, via_w) = (dot(&dy, &y), dot(&dx, &x), dot(&dw, &wt));
            assert!((lhs - via_x).abs() < 1e-9 * lhs.abs().max(1.0), "{s:?}: {lhs} vs {via_x}");
            assert!((lhs - via_w).abs() < 1e-9 * lhs.abs().max(1.0), "{s:?}: {lhs} vs {via_w}");
        }
    }

    /// One output by hand: a 2x2 kernel, stride 2, padding 1 on a 3x3 input.
    #[test]
    fn forward_matches_a_hand_computed_output() {
        let s = spec([3, 3], [2, 2], 2, 1, 1, 1);
        assert_eq!(s.out().unwrap(), [2, 2]);
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let w = vec![1.0, 2.0, 3.0, 4.0];
        let y = run_f64(&s, ConvPass::Forward, Conv2dDims { n: 1, c: 1, o: 1 }, &x, &w).unwrap();
        // top-left window covers (-1,-1)..(0,0): only x[0,0] = 1 under w[1,1] = 4
        // bottom-right covers (1,1)..(2,2): 5*1 + 6*2 + 8*3 + 9*4
        assert_eq!(y, vec![4.0, 2.0 * 3.0 + 3.0 * 4.0, 4.0 * 2.0 + 7.0 * 4.0, 5.0 + 12.0 + 24.0 + 36.0]);
    }

    #[test]
    fn mismatched_shapes_are_explained() {
        let s = spec([8, 8], [3, 3], 1, 1, 1, 2);
        let e = s.dims(ConvPass::Forward, &[1, 4, 8, 8], &[6, 4, 3, 3]).unwrap_err();
        assert!(e.contains("does not fit 4 input and 6 output channels in 2 groups"), "{e}");
        let e = s.dims(ConvPass::Forward, &[1, 4, 9, 8], &[6, 2, 3, 3]).unwrap_err();
        assert!(e.contains("not [8, 8] high and wide"), "{e}");
        let e = s.dims(ConvPass::BackwardData, &[1, 6, 7, 8], &[6, 2, 3, 3]).unwrap_err();
        assert!(e.contains("not 8x8"), "{e}");
        let e = s.dims(ConvPass::BackwardFilter, &[2, 6, 8, 8], &[1, 4, 8, 8]).unwrap_err();
        assert!(e.contains("different batches"), "{e}");
        let e = spec([2, 2], [5, 5], 1, 1, 1, 1).out().unwrap_err();
        assert!(e.contains("smaller than the dilated kernel"), "{e}");
        assert_eq!(s.out_shape(ConvPass::BackwardFilter, &[1, 6, 8, 8], &[1, 4, 8, 8]).unwrap(), vec![6, 2, 3, 3]);
        let short = run_f64(&s, ConvPass::Forward, Conv2dDims { n: 1, c: 4, o: 6 }, &[0.0; 3], &[0.0; 108]);
        assert!(short.unwrap_err().contains("inputs of 3 and 108 elements"));
    }
}
