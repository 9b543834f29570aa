#!/usr/bin/env bash
# One call on a lent GPU machine (no Rust toolchain, no network), from the
# repository root with .device-bin carried (made here by scripts/pack-gpu-check.sh):
#
#   device run, carry [".device-bin"]:  OUT=$OUT BUDGET_S=480 bash scripts/gpu-session.sh
#
# Within BUDGET_S seconds (default 480): the numeric suites on the CUDA backend
# (gpu-check.sh, half the budget), then the GPU benchmarks, each bounded by the time
# left: stylize at 1024² with CUDA, the VGG19 stack against PyTorch with TF32 off
# and on (benches/vgg_bench.py --device cuda), the style networks against PyTorch
# (benches/style_bench.py --device cuda), and the jit-bench quick suite against
# PyTorch (benches/jit_bench.py --device cuda --quick). Everything is written under
# $OUT (default ./gpu-session-out): gpu-check.txt and its logs, stylize-1024.json,
# vgg-bench.txt, style-bench.txt, jit-bench/ (table, JSON, CSV, chart), nvidia-smi.txt.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/gpu-session-out}
budget=${BUDGET_S:-480}
began=$(date +%s)
left() { echo $((budget - ($(date +%s) - began))); }
mkdir -p "$out"
bins=$(mktemp -d)
tar -C "$bins" -xJf "$root/.device-bin/bins.tar.xz" || { echo "no .device-bin/bins.tar.xz: run scripts/pack-gpu-check.sh and carry .device-bin"; exit 2; }
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STYLIZE_MODELS="$root/.device-bin/models"
export JIT_FIXTURES_DIR="$root/tests/fixtures"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1
echo "== suites (CUDA backend)"
(cd "$bins" && LOGS="$out/gpu-check-logs" BUDGET_S=$((budget / 2)) JIT_DIFF_GRAPHS=${JIT_DIFF_GRAPHS:-150} ./gpu-check.sh) | tee "$out/gpu-check.txt"
run() { # name seconds-cap command...
    local name=$1 cap=$2 t
    shift 2
    t=$(left)
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 15 ]; then
        echo "== $name: skipped, out of time" | tee -a "$out/skipped.txt"
        return
    fi
    echo "== $name (at most $t s)"
    timeout "$t" "$@"
    echo "   exit $?"
}
cd "$root"
run stylize-1024 90 bash -c "JIT_BACKEND=cuda '$bins/stylize_bench' 1024 10 >'$out/stylize-1024.json' 2>'$out/stylize-1024.err'; rc=\$?; cat '$out/stylize-1024.json'; tail -3 '$out/stylize-1024.err'; exit \$rc"
run vgg-bench 75 bash -c "python3 benches/vgg_bench.py --device cuda --sizes 256 512 --reps 10 --bin '$bins/vgg_bench' >'$out/vgg-bench.txt' 2>&1; rc=\$?; tail -12 '$out/vgg-bench.txt'; exit \$rc"
run style-bench 150 bash -c "python3 benches/style_bench.py --device cuda --size 512 --batch 8 --train-size 256 --reps 3 --bin '$bins/style_bench' >'$out/style-bench.txt' 2>&1; rc=\$?; tail -12 '$out/style-bench.txt'; exit \$rc"
run jit-bench 150 bash -c "python3 benches/jit_bench.py --device cuda --quick --bin '$bins/jit_bench' --out '$out/jit-bench' >'$out/jit-bench.txt' 2>&1; rc=\$?; tail -30 '$out/jit-bench.txt'; exit \$rc"
echo "== done in $(( $(date +%s) - began )) s; results under $out"
