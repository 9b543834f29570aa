//! The compiled-kernel cache: a second run compiles nothing, a new size of the same
//! structure compiles nothing. (Its own test binary: the counters are process-wide.)

use jit_core::{cpu_cache_stats, with_flags, Backend, Flags};
use jit_ops::prelude::*;

fn workload(x: &Var, w: &Var) -> Var {
    // an element-wise chain, a padded view and a reduction with an epilogue
    let y = (x * 1.25 + 0.5).tanh().pad(&[1, 2], PadMode::Reflect).unwrap();
    let m = y.mean(&[-1], true).unwrap();
    (&y - &m) * w
}

#[test]
fn cache_hits_on_repeat_and_on_new_sizes() {
    let f = Flags { backend: Backend::Cpu, fusion: true, dump: false };
    with_flags(f, || {
        let run = |rows: usize, cols: usize| {
            let x = Var::randn(&[rows, cols], DType::F32).unwrap();
            let w = Var::randn(&[1, cols + 3], DType::F32).unwrap();
            realize(&[x.clone(), w.clone()]).unwrap();
            workload(&x, &w).to_vec::<f32>().unwrap()
        };
        let before = cpu_cache_stats();
        run(7, 9);
        let first = cpu_cache_stats();
        let compiled = first.misses - before.misses;
        assert!(compiled >= 2, "the workload needs at least two kernels, compiled {compiled}");
        run(7, 9);
        let second = cpu_cache_stats();
        assert_eq!(second.misses, first.misses, "a second run compiles nothing");
        assert!(second.hits >= first.hits + compiled);
        for (r, c) in [(5, 17), (33, 6), (64, 130)] {
            run(r, c);
        }
        let third = cpu_cache_stats();
        assert_eq!(third.misses, first.misses, "new sizes of the same structure compile nothing");
        assert!(third.to_string().contains("hits"));
    });
}
