//! Winograd F(2x2, 3x3) against the direct convolution on the 3x3 layers of VGG19
//! and the style networks (single image, forward). Medians of 7 runs after 2 warm-ups.
//!
//!     cargo run --release -p kernels --example conv_winograd_probe

use kernels::conv_direct::{forward, pack, DirectConv};
use kernels::conv_winograd::{self, WinogradConv};
mod probe;

use probe::med;
fn main() {
    for &(c, o, hp) in &[
        (32usize, 32usize, 130usize),
        (64, 64, 258),
        (64, 64, 130),
        (64, 128, 130),
        (128, 128, 130),
        (128, 256, 66),
        (256, 256, 66),
        (256, 512, 34),
        (512, 512, 34),
        (512, 512, 18),
    ] {
        let wp = hp;
        let plane = hp * wp;
        let shifts: Vec<usize> = (0..9).map(|t| (t / 3) * wp + t % 3).collect();
        let l = (hp - 3) * wp + wp - 2;
        let xp: Vec<f32> = (0..c * plane).map(|i| (i % 17) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..o * c * 9).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut y = vec![0.0f32; o * plane];
        let s = DirectConv { c, o, plane, l, shifts: &shifts };
        let packed = pack(&s, &w);
        let d = med(|| forward(&s, &packed, &xp, &mut y));
        let ws = WinogradConv { c, o, hp, wp, full: false };
        let mut y2 = vec![0.0f32; o * plane];
        let wt = med(|| {
            let u = conv_winograd::transform_weight(&ws, &w).unwrap();
            conv_winograd::forward(&ws, &u, 1, &xp, &mut y2)
        });
        let u = conv_winograd::transform_weight(&ws, &w).unwrap();
        let wf = med(|| conv_winograd::forward(&ws, &u, 1, &xp, &mut y2));
        let tr = med(|| drop(conv_winograd::transform_weight(&ws, &w).unwrap()));
        let flops = 2.0 * (o * c * 9 * (hp - 2) * (wp - 2)) as f64;
        println!(
            "c={c:3} o={o:3} grid={hp}^2: direct {d:7.2} ms ({:5.1} GF/s)  winograd {wt:7.2} ms ({:5.1} eff. GF/s), products and data transforms {wf:7.2}, weight transform {tr:5.2}",
            flops / d / 1e6,
            flops / wt / 1e6
        );
    }
}
