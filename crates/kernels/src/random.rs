//! Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011).
//!
//! Element `k` of a random leaf with key `seed` is a pure function of `(seed, k)`, so
//! every backend (and every split of the work across threads or blocks) produces the
//! same numbers.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox-4x32 with 10 rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    [c0, c1, c2, c3]
}

/// The four 32-bit words for element `k` of the stream keyed by `seed`.
pub fn words(seed: u64, k: u64) -> [u32; 4] {
    philox4x32_10([k as u32, (k >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])
}

/// A 32-bit word mapped to `[0, 1)` with 24 bits, exactly representable in f32.
pub fn unit_open_high(w: u32) -> f64 {
    f64::from(w >> 8) * (1.0 / 16_777_216.0)
}

/// A 32-bit word mapped to `(0, 1]` with 24 bits.
pub fn unit_open_low(w: u32) -> f64 {
    f64::from((w >> 8) + 1) * (1.0 / 16_777_216.0)
}

/// Uniform sample on `[0, 1)` for element `k`.
pub fn uniform(seed: u64, k: u64) -> f64 {
    unit_open_high(words(seed, k)[0])
}

/// Standard normal sample for element `k` (Box-Muller on the first two words).
pub fn normal(seed: u64, k: u64) -> f64 {
    let w = words(seed, k);
    let u1 = unit_open_low(w[0]);
    let u2 = unit_open_high(w[1]);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Known-answer vectors of the Random123 distribution (philox4x32, 10 rounds).
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(
            philox4x32_10([0xffff_ffff; 4], [0xffff_ffff; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn moments_are_right() {
        let n = 20_000u64;
        let u: Vec<f64> = (0..n).map(|k| uniform(7, k)).collect();
        let mean = u.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let z: Vec<f64> = (0..n).map(|k| normal(7, k)).collect();
        let m = z.iter().sum::<f64>() / n as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        assert!(m.abs() < 0.03 && (v - 1.0).abs() < 0.05, "normal mean {m} var {v}");
        assert_ne!(uniform(7, 0), uniform(8, 0));
    }
}
