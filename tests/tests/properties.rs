//! Property tests: broadcasting rules, composition of reindex-based views, and
//! reductions over random axis sets.

use integration_tests::Nd;
use jit_core::broadcast_shapes;
use jit_ops::prelude::*;
use proptest::prelude::*;

fn shape_strategy(max_rank: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![Just(1usize), 0usize..6], 0..=max_rank)
}

/// Integer-valued data so that sums are exact in any order.
fn int_nd(shape: &[usize], seed: u64) -> Nd {
    let mut s = seed;
    Nd::from_fn(shape, |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % 19) as f64 - 9.0
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Two shapes broadcast iff every trailing-aligned pair is equal or has a 1, and
    /// the result takes the non-1 size; values follow NumPy's index rule.
    #[test]
    fn broadcasting_rules(a in shape_strategy(4), b in shape_strategy(4), seed in any::<u64>()) {
        let n = a.len().max(b.len());
        let get = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
        let compatible = (0..n).all(|i| { let (x, y) = (get(&a, i), get(&b, i)); x == y || x == 1 || y == 1 });
        let r = broadcast_shapes("add", &a, &b);
        prop_assert_eq!(r.is_ok(), compatible);
        prop_assert_eq!(broadcast_shapes("add", &b, &a).is_ok(), compatible, "symmetric");
        if let Ok(shape) = r {
            let want_shape: Vec<usize> = (0..n).map(|i| if get(&a, i) == 1 { get(&b, i) } else { get(&a, i) }).collect();
            prop_assert_eq!(&shape, &want_shape);
            let (x, y) = (int_nd(&a, seed), int_nd(&b, seed ^ 1));
            let got = (x.var(DType::F64) * y.var(DType::F64) - x.var(DType::F64)).to_vec_f64().unwrap();
            let want = Nd::from_fn(&shape, |i| x.at_broadcast(i) * y.at_broadcast(i) - x.at_broadcast(i));
            prop_assert_eq!(got, want.data);
        } else {
            let err = x_var(&a).try_add(x_var(&b)).unwrap_err().to_string();
            prop_assert!(err.contains("cannot be broadcast together"), "{}", err);
        }
    }

    /// A random chain of views (permute, strided slice, flip, constant pad) computes
    /// the same values as composing the index maps by hand.
    #[test]
    fn reindex_composition(shape in prop::collection::vec(1usize..6, 1..4),
                           ops in prop::collection::vec((0u8..4, any::<u64>()), 1..6),
                           seed in any::<u64>()) {
        let x = int_nd(&shape, seed);
        let mut v = x.var(DType::F64);
        // expected: a function from output index to source (None = padded)
        type Map = Box<dyn Fn(&[usize]) -> Option<Vec<usize>>>;
        let mut map: Map = Box::new(|i: &[usize]| Some(i.to_vec()));
        let mut cur = shape.clone();
        for (kind, r) in ops {
            let d = (r % cur.len() as u64) as usize;
            let prev = map;
            match kind {
                0 => {
                    // swap d with the last dim
                    let last = cur.len() - 1;
                    v = v.transpose(d as isize, -1).unwrap();
                    cur.swap(d, last);
                    map = Box::new(move |i: &[usize]| { let mut j = i.to_vec(); j.swap(d, last); prev(&j) });
                }
                1 => {
                    let n = cur[d];
                    let start = (r >> 8) as usize % n;
                    let step = 1 + (r >> 16) as usize % 3;
                    v = v.slice(d as isize, start as isize, None, step).unwrap();
                    cur[d] = (n - start).div_ceil(step);
                    map = Box::new(move |i: &[usize]| { let mut j = i.to_vec(); j[d] = start + i[d] * step; prev(&j) });
                }
                2 => {
                    let n = cur[d];
                    v = v.flip(&[d as isize]).unwrap();
                    map = Box::new(move |i: &[usize]| { let mut j = i.to_vec(); j[d] = n - 1 - i[d]; prev(&j) });
                }
                _ => {
                    // constant-pad the last dim by (lo, hi)
                    let last = cur.len() - 1;
                    let (lo, hi) = ((r >> 8) as usize % 3, (r >> 16) as usize % 3);
                    let n = cur[last];
                    v = v.pad(&[lo, hi], PadMode::Constant(100.0)).unwrap();
                    cur[last] = n + lo + hi;
                    map = Box::new(move |i: &[usize]| {
                        let k = i[last] as isize - lo as isize;
                        if k < 0 || k >= n as isize { return None; }
                        let mut j = i.to_vec(); j[last] = k as usize; prev(&j)
                    });
                }
            }
        }
        prop_assert_eq!(v.shape(), &cur[..]);
        let want = Nd::from_fn(&cur, |i| map(i).map_or(100.0, |s| x.at(&s)));
        prop_assert_eq!(v.to_vec_f64().unwrap(), want.data);
    }

    /// Reducing over a set of axes equals reducing one axis at a time, and the grand
    /// total is preserved; max over a set is at least every element it covers.
    #[test]
    fn reductions_over_axis_sets(shape in prop::collection::vec(1usize..5, 1..5), mask in any::<u8>(), seed in any::<u64>()) {
        let mut axes: Vec<isize> = (0..shape.len()).filter(|d| mask >> d & 1 == 1).map(|d| d as isize).collect();
        if axes.is_empty() {
            // an empty list reduces every dim, as torch.sum(x, dim=[]) does
            axes = (0..shape.len() as isize).collect();
        }
        let x = int_nd(&shape, seed).var(DType::F64);
        let all = x.sum(&axes, false).unwrap();
        let mut one_by_one = x.clone();
        for &a in axes.iter().rev() {
            one_by_one = one_by_one.sum(&[a], false).unwrap();
        }
        prop_assert_eq!(all.shape(), one_by_one.shape());
        prop_assert_eq!(all.to_vec_f64().unwrap(), one_by_one.to_vec_f64().unwrap());
        prop_assert_eq!(all.sum_all().unwrap().item::<f64>().unwrap(), x.sum_all().unwrap().item::<f64>().unwrap());
        let kept = x.sum(&axes, true).unwrap();
        prop_assert_eq!(kept.ndim(), shape.len());
        let m = x.max(&axes, true).unwrap();
        let ok = x.le(&m).unwrap().cast(DType::I64).min(&[], false).unwrap().item::<i64>().unwrap();
        prop_assert_eq!(ok, 1);
        let mean = x.mean(&axes, false).unwrap().to_vec_f64().unwrap();
        let n: usize = axes.iter().map(|&a| shape[a as usize]).product();
        let sums = all.to_vec_f64().unwrap();
        for (mv, sv) in mean.iter().zip(&sums) {
            prop_assert!((mv - sv / n as f64).abs() < 1e-12);
        }
    }
}

fn x_var(shape: &[usize]) -> Var {
    Var::zeros(shape, DType::F64)
}
