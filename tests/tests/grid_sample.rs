//! `grid_sample` and `affine_grid` beyond the PyTorch fixtures (`heavy_ops_parity.rs`)
//! and the finite differences (`gradients.rs`), on every backend fused and unfused:
//! the identity transform reproduces its input, grid points that are NaN or infinite
//! read zeros, pixels beyond 2^24 are addressed exactly, and bad arguments are errors.

use integration_tests::{assert_values_close, every_backend, Rng};
use jit_core::with_flags;
use jit_ops::prelude::*;

fn msg<T: std::fmt::Debug>(r: Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn the_identity_transform_reproduces_the_input() {
    let mut rng = Rng::fresh("grid_sample_identity");
    let x = rng.nd(&[2, 3, 5, 7], -1.0, 1.0);
    let theta: Vec<f32> = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0].repeat(2);
    for flags in every_backend() {
        with_flags(flags, || {
            let xv = x.var(DType::F32);
            let t = Var::from_vec(theta.clone(), &[2, 2, 3]).unwrap();
            for align_corners in [false, true] {
                let grid = affine_grid(&t, [2, 3, 5, 7], align_corners).unwrap();
                for padding in [GridPadding::Zeros, GridPadding::Border, GridPadding::Reflection] {
                    for mode in [GridMode::Bilinear, GridMode::Nearest] {
                        let y = grid_sample(&xv, &grid, mode, padding, align_corners).unwrap();
                        let ctx = format!("{flags:?} {mode:?} {padding:?} align_corners={align_corners}");
                        assert_values_close(&y.to_vec_f64().unwrap(), &xv.to_vec_f64().unwrap(), 1e-6, 1e-6, &ctx);
                    }
                }
            }
        });
    }
}

#[test]
fn nan_and_infinite_grid_points_read_zeros() {
    let g = [f32::NAN, 0.0, 0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, 0.0];
    for flags in every_backend() {
        with_flags(flags, || {
            let x = Var::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[1, 1, 2, 2]).unwrap();
            let grid = Var::from_vec(g.to_vec(), &[1, 1, 4, 2]).unwrap();
            for mode in [GridMode::Bilinear, GridMode::Nearest] {
                let y = grid_sample(&x, &grid, mode, GridPadding::Zeros, true).unwrap();
                // the last point is the centre, pixel coordinates (0.5, 0.5): the mean of
                // the four pixels (bilinear), or pixel (0, 0) (nearest: 0.5 rounds to even)
                let centre = if mode == GridMode::Bilinear { 2.5 } else { 1.0 };
                assert_eq!(y.to_vec::<f32>().unwrap(), vec![0.0, 0.0, 0.0, centre], "{flags:?} {mode:?}");
            }
        });
    }
}

#[test]
fn pixels_beyond_two_to_the_24_are_addressed_exactly() {
    // 4100 x 4100 = 16,810,000 pixels: the flat index of the last ones is odd and
    // above 2^24, where an f32 index would round to a neighbour
    let (h, w) = (4100usize, 4100usize);
    let x = Var::index(&[1, 1, h, w], 3, DType::F32).unwrap(); // each pixel holds its column
    let grid = Var::from_vec(vec![1.0f32, 1.0, 0.99975, 1.0], &[1, 1, 2, 2]).unwrap();
    let y = grid_sample(&x, &grid, GridMode::Nearest, GridPadding::Zeros, true).unwrap();
    // x = 1 is column 4099; x = 0.99975 is column 4098.4875 -> 4098
    assert_eq!(y.to_vec::<f32>().unwrap(), vec![4099.0, 4098.0]);
}

#[test]
fn bad_arguments_are_errors() {
    let x = Var::zeros(&[2, 3, 4, 5], DType::F32);
    assert_eq!(
        msg(grid_sample(&x, &Var::zeros(&[1, 4, 5, 2], DType::F32), GridMode::Bilinear, GridPadding::Zeros, false)),
        "grid_sample: expected an input [N, C, H, W] and a grid [N, Ho, Wo, 2] with the same N, got [2, 3, 4, 5] and [1, 4, 5, 2]"
    );
    assert_eq!(
        msg(grid_sample(&x, &Var::zeros(&[2, 4, 5, 3], DType::F32), GridMode::Bilinear, GridPadding::Zeros, false)),
        "grid_sample: expected an input [N, C, H, W] and a grid [N, Ho, Wo, 2] with the same N, got [2, 3, 4, 5] and [2, 4, 5, 3]"
    );
    assert_eq!(
        msg(grid_sample(&x, &Var::zeros(&[2, 4, 5, 2], DType::F64), GridMode::Nearest, GridPadding::Border, true)),
        "grid_sample: input and grid must have the same dtype, got f32 and f64"
    );
    assert_eq!(
        msg(grid_sample(
            &x.cast(DType::I32),
            &Var::zeros(&[2, 4, 5, 2], DType::I32),
            GridMode::Nearest,
            GridPadding::Zeros,
            true
        )),
        "grid_sample: input must be floating point, got i32 (cast it first)"
    );
    assert_eq!(
        msg(grid_sample(
            &Var::zeros(&[2, 3, 0, 5], DType::F32),
            &Var::zeros(&[2, 4, 5, 2], DType::F32),
            GridMode::Bilinear,
            GridPadding::Zeros,
            false
        )),
        "grid_sample: the input [2, 3, 0, 5] has no pixels to sample"
    );
    assert_eq!(
        msg(affine_grid(&Var::zeros(&[2, 3, 3], DType::F32), [2, 3, 4, 5], false)),
        "affine_grid: theta must be [N, 2, 3] with N = 2 for size [2, 3, 4, 5], got [2, 3, 3]"
    );
}
