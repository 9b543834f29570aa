//! Timing shared by the probes (a folder without `main.rs`, so not an example).

use std::time::Instant;

/// Milliseconds of `f`: the median of 7 runs after 2 warm-ups.
pub fn med(mut f: impl FnMut()) -> f64 {
    for _ in 0..2 {
        f();
    }
    let mut ts = vec![];
    for _ in 0..7 {
        let t = Instant::now();
        f();
        ts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[3]
}
