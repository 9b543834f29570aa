//! Row groups: consecutive fused kernels that share rows (softmax's maximum,
//! exponential, sum and division; a norm's statistics and its output) run a block of
//! rows at a time through all of them on the CPU backend. They must give the same
//! bits as the kernels run one after the other, on awkward shapes and on every axis,
//! with intermediates requested or not, and they must form where they pay.

use integration_tests::Rng;
use jit_core::{row_groups_run, with_flags, with_row_groups, Backend, Flags};
use jit_ops::prelude::*;

const FUSED: Flags = Flags { backend: Backend::Cpu, fusion: true, dump: false };

fn random(rng: &mut Rng, shape: &[usize], scale: f64) -> Var {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform(-scale, scale) as f32).collect();
    Var::from_vec(data, shape).expect("input")
}

/// The rows a group needs at least: two per thread of the pool (rayon's default
/// size, or `RAYON_NUM_THREADS`).
fn min_rows() -> usize {
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    2 * threads
}

/// Runs `f` with row groups on and off (fused CPU backend both times) and requires
/// bit-identical results; returns how many groups the run with them on formed.
fn same_bits(what: &str, f: &dyn Fn() -> Vec<Var>) -> u64 {
    let run = |on: bool| {
        with_flags(FUSED, || {
            with_row_groups(on, || {
                let before = row_groups_run();
                let outs = f();
                jit_core::realize(&outs).expect("realize");
                let bits: Vec<Vec<u32>> = outs
                    .iter()
                    .map(|v| v.to_vec::<f32>().expect("values").into_iter().map(f32::to_bits).collect())
                    .collect();
                (bits, row_groups_run() - before)
            })
        })
    };
    let (grouped, groups) = run(true);
    let (alone, none) = run(false);
    assert_eq!(none, 0, "{what}: a group ran with row groups off");
    for (k, (g, a)) in grouped.iter().zip(&alone).enumerate() {
        assert_eq!(g.len(), a.len(), "{what}: output {k}");
        if let Some(i) = (0..g.len()).find(|&i| g[i] != a[i]) {
            panic!(
                "{what}: output {k} differs at {i}: {} grouped, {} alone",
                f32::from_bits(g[i]),
                f32::from_bits(a[i])
            );
        }
    }
    groups
}

#[test]
fn softmax_and_log_softmax_match_bit_for_bit_on_awkward_shapes() {
    let mut rng = Rng::fresh("softmax_and_log_softmax_match_bit_for_bit_on_awkward_shapes");
    let rows = [1usize, 3, 4, 7, 64, 129, 1000];
    let cols = [1usize, 2, 5, 17, 129, 1000, 4099];
    for _ in 0..12 {
        let shape = [rows[rng.below(rows.len())], cols[rng.below(cols.len())]];
        let x = random(&mut rng, &shape, 8.0);
        let formed = same_bits(&format!("softmax {shape:?}"), &|| vec![x.softmax(-1).expect("softmax")]);
        assert_eq!(formed, u64::from(shape[0] >= min_rows()), "row groups formed for softmax {shape:?}");
        let formed = same_bits(&format!("log_softmax {shape:?}"), &|| vec![x.log_softmax(-1).expect("log_softmax")]);
        assert_eq!(formed, u64::from(shape[0] >= min_rows()), "row groups formed for log_softmax {shape:?}");
    }
    // over a middle axis: rows are the leading dim, each a [b, c] block
    for _ in 0..4 {
        let shape = [[5usize, 9, 64][rng.below(3)], 1 + rng.below(40), 1 + rng.below(70)];
        let x = random(&mut rng, &shape, 4.0);
        same_bits(&format!("softmax dim 1 {shape:?}"), &|| vec![x.softmax(1).expect("softmax")]);
        same_bits(&format!("softmax dim 0 {shape:?}"), &|| vec![x.softmax(0).expect("softmax")]);
    }
}

#[test]
fn norms_match_bit_for_bit() {
    let mut rng = Rng::fresh("norms_match_bit_for_bit");
    for _ in 0..6 {
        let (n, c) = (1 + rng.below(9), [1usize, 3, 8, 64][rng.below(4)]);
        let (h, w) = (1 + rng.below(40), 2 + rng.below(40));
        let x = random(&mut rng, &[n, c, h, w], 3.0);
        let wt = random(&mut rng, &[c], 1.0);
        let b = random(&mut rng, &[c], 1.0);
        let formed = same_bits(&format!("instance_norm {:?}", x.shape()), &|| {
            vec![instance_norm(&x, None, Some(&wt), Some(&b), true, 1e-5).expect("instance_norm")]
        });
        if n * c >= min_rows() {
            assert!(formed >= 1, "instance norm {:?} formed no row group", x.shape());
        }
        let lw = random(&mut rng, &[h, w], 1.0);
        let lb = random(&mut rng, &[h, w], 1.0);
        same_bits(&format!("layer_norm {:?}", x.shape()), &|| {
            vec![layer_norm(&x, &[h, w], Some(&lw), Some(&lb), 1e-5).expect("layer_norm")]
        });
        let groups = [1usize, c].into_iter().filter(|g| c % g == 0).max().unwrap_or(1);
        same_bits(&format!("group_norm {:?} / {groups}", x.shape()), &|| {
            vec![group_norm(&x, groups, Some(&wt), Some(&b), 1e-5).expect("group_norm")]
        });
        let style_shape = [1, c, 1 + rng.below(30), 2 + rng.below(30)];
        let s = random(&mut rng, &style_shape, 2.0);
        same_bits(&format!("adain {:?} with style {:?}", x.shape(), s.shape()), &|| {
            vec![style_models::adain::adain(&x, &s).expect("adain")]
        });
    }
}

#[test]
fn requested_intermediates_and_gradients_match() {
    let mut rng = Rng::fresh("requested_intermediates_and_gradients_match");
    let x = random(&mut rng, &[300, 77], 5.0);
    // the row maximum and the row sum are requested along with the output: they come
    // back whole while the exponential stays in the blocks
    let groups = same_bits("softmax with its statistics", &|| {
        let m = x.max(&[-1], true).expect("max");
        let e = x.try_sub(&m).expect("sub").exp();
        let s = e.sum(&[-1], true).expect("sum");
        let y = e.try_mul(s.recip()).expect("mul");
        vec![y, m, s]
    });
    assert!(groups >= 1, "softmax with its statistics formed no row group");
    // a training step's gradient of a log-softmax loss
    let w = random(&mut rng, &[300, 77], 1.0);
    same_bits("gradient of a log-softmax loss", &|| {
        let p = Var::from_vec(x.to_vec::<f32>().expect("x"), x.shape())
            .expect("param")
            .requires_grad_(true)
            .expect("requires_grad");
        let loss = p.log_softmax(-1).expect("ls").try_mul(&w).expect("mul").sum(&[0, 1], false).expect("sum");
        jit_core::grad(&loss, &[p]).expect("grad")
    });
}

#[test]
fn groups_form_on_wide_rows_and_not_when_unfused() {
    let mut rng = Rng::fresh("groups_form_on_wide_rows_and_not_when_unfused");
    let x = random(&mut rng, &[4096, 96], 6.0);
    let formed = same_bits("softmax [4096, 96]", &|| vec![x.softmax(-1).expect("softmax")]);
    assert_eq!(formed, 1, "softmax's four kernels should run as one row group");
    let feat = random(&mut rng, &[4, 1024, 5, 7], 2.0);
    let formed = same_bits("instance norm [4, 1024, 5, 7]", &|| {
        vec![instance_norm(&feat, None, None, None, true, 1e-5).expect("instance_norm")]
    });
    assert!(formed >= 1, "instance norm formed no row group");
    // the unfused baseline runs every meta-op alone
    let before = row_groups_run();
    with_flags(Flags { fusion: false, ..FUSED }, || with_row_groups(true, || x.softmax(-1).expect("s").sync()))
        .expect("unfused softmax");
    assert_eq!(row_groups_run(), before, "a row group ran with fusion off");
}
