//! Differential testing: thousands of random meta-op graphs evaluated on the
//! reference interpreter, fused and unfused on the compiled CPU backend, and fused on
//! the portable IR executor must agree. A failure prints the graph's seed and how it was built; rerun one graph
//! with `JIT_GRAPH_SEED=<seed>`.

use integration_tests::graphgen::{evaluate, evaluate_grads, random_graph};
use integration_tests::{assert_values_close, Rng};
use jit_core::{Backend, Flags};

const GRAPHS: u64 = 2000;
const GRAD_GRAPHS: u64 = 1000;

fn modes() -> [(&'static str, Flags); 4] {
    let f = |backend, fusion| Flags { backend, fusion, dump: false };
    [
        ("reference", f(Backend::Reference, false)),
        ("cpu fused", f(Backend::Cpu, true)),
        ("cpu unfused", f(Backend::Cpu, false)),
        ("interpreter fused", f(Backend::Interpreter, true)),
    ]
}

/// The modes to compare: the four CPU-side ones, and CUDA where a GPU is usable.
fn all_modes() -> Vec<(&'static str, Flags)> {
    let mut m = modes().to_vec();
    if kernels::cuda::runtime::runtime().is_ok() {
        m.push(("cuda fused", Flags { backend: Backend::Cuda, fusion: true, dump: false }));
        m.push(("cuda unfused", Flags { backend: Backend::Cuda, fusion: false, dump: false }));
    }
    m
}

fn check(seed: u64) {
    let modes = all_modes();
    let [(rn, rf), rest @ ..] = modes.as_slice() else { unreachable!("at least one mode") };
    let (rn, rf) = (*rn, *rf);
    let want = evaluate(seed, rf).unwrap_or_else(|e| panic!("graph seed {seed}: {rn} failed: {e}"));
    for &(name, f) in rest {
        let got = evaluate(seed, f).unwrap_or_else(|e| panic!("graph seed {seed}: {name} failed: {e}"));
        for (k, ((gs, g), (ws, w))) in got.iter().zip(&want).enumerate() {
            let ctx = || {
                let log = random_graph(seed).map(|g| g.log.join("\n  ")).unwrap_or_default();
                format!("graph seed {seed} (JIT_GRAPH_SEED={seed}), output {k}, {name} vs {rn}; graph:\n  {log}")
            };
            assert_eq!(gs, ws, "{}", ctx());
            if std::panic::catch_unwind(|| assert_values_close(g, w, 2e-4, 2e-5, "")).is_err() {
                assert_values_close(g, w, 2e-4, 2e-5, &ctx());
            }
        }
    }
}

#[test]
fn random_graphs_agree_across_backends_and_fusion() {
    if let Some(seed) = std::env::var("JIT_GRAPH_SEED").ok().and_then(|s| s.parse().ok()) {
        check(seed);
        return;
    }
    let names: Vec<&str> = all_modes().iter().map(|m| m.0).collect();
    println!("modes compared: {names:?}");
    let mut rng = Rng::fresh("random_graphs_agree_across_backends_and_fusion");
    let base = rng.next_u64();
    let graphs = std::env::var("JIT_DIFF_GRAPHS").ok().and_then(|s| s.parse().ok()).unwrap_or(GRAPHS);
    for i in 0..graphs {
        check(base.wrapping_add(i));
    }
}

fn check_grads(seed: u64) {
    let modes = all_modes();
    let [(rn, rf), rest @ ..] = modes.as_slice() else { unreachable!("at least one mode") };
    let (rn, rf) = (*rn, *rf);
    let want = evaluate_grads(seed, rf).unwrap_or_else(|e| panic!("graph seed {seed}: {rn} backward failed: {e}"));
    for &(name, f) in rest {
        let got = evaluate_grads(seed, f).unwrap_or_else(|e| panic!("graph seed {seed}: {name} backward failed: {e}"));
        assert_eq!(got.len(), want.len());
        for (k, ((gs, g), (ws, w))) in got.iter().zip(&want).enumerate() {
            let ctx = || {
                let log = random_graph(seed).map(|g| g.log.join("\n  ")).unwrap_or_default();
                format!(
                    "graph seed {seed} (JIT_GRAD_GRAPH_SEED={seed}), gradient of input {k}, {name} vs {rn}; graph:\n  {log}"
                )
            };
            assert_eq!(gs, ws, "{}", ctx());
            if std::panic::catch_unwind(|| assert_values_close(g, w, 1e-3, 1e-4, "")).is_err() {
                assert_values_close(g, w, 1e-3, 1e-4, &ctx());
            }
        }
    }
}

/// Backward graphs of random graphs (a weighted sum of the outputs as the loss) agree
/// between the reference interpreter and the fused and unfused compiled backends.
#[test]
fn random_backward_graphs_agree_across_backends_and_fusion() {
    if let Some(seed) = std::env::var("JIT_GRAD_GRAPH_SEED").ok().and_then(|s| s.parse().ok()) {
        check_grads(seed);
        return;
    }
    let mut rng = Rng::fresh("random_backward_graphs_agree_across_backends_and_fusion");
    let base = rng.next_u64();
    let graphs =
        std::env::var("JIT_DIFF_GRAPHS").ok().and_then(|s| s.parse::<u64>().ok()).map_or(GRAD_GRAPHS, |n| n / 5);
    for i in 0..graphs {
        check_grads(base.wrapping_add(i));
    }
}
