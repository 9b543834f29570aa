#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver, CUDA 13 NVRTC on the loader path), from
# the unpacked bins.tar.xz: runs the numeric test suites with every kernel on the
# CUDA backend, the differential test across reference / CPU / CUDA, and the MLP
# example, and prints a summary table. Fixture files come from $JIT_FIXTURES_DIR
# (gpu-session.sh points it at the checkout's tests/fixtures). Logs go to $LOGS (default ./gpu-check-logs).
# The kernel cache's disk level goes to a fresh $JIT_CACHE_DIR; the first suite is
# run again at the end with that cache warm (its time is printed beside).
# BUDGET_S (default 1800) bounds the whole run: suites run in order of how much
# they cover, each with the time left (at most SUITE_CAP_S, default 300 s), and the
# ones that no longer fit are listed as skipped, so that a short device lease still
# gets a table. The pretrained-model suites (onnx_models, style_models) find the
# models in $STYLIZE_MODELS (gpu-session.sh: the carried .device-bin/models).
set -u
cd "$(dirname "$0")"
logs=${LOGS:-gpu-check-logs}
mkdir -p "$logs"
export JIT_CACHE_DIR=${JIT_CACHE_DIR:-$(mktemp -d)/kernels}
budget=${BUDGET_S:-1800}
cap=${SUITE_CAP_S:-300}
began=$(date +%s)
printf '%-16s %-6s %s\n' suite status result
fail=0
# NAME or NAME:FILTER (only the tests whose names contain FILTER)
suites="elementwise heavy_ops_parity:cuda amp fold conv_paths linalg fusion reductions shape_ops indexing scan sort differential gradients layers activations meta_ops mlp transcendentals memory properties errors autograd optim training kernel_cache cuda_disk_cache onnx_import onnx_models style_models"
for entry in $suites elementwise; do
    t=${entry%%:*}
    filter=""
    [ "$entry" != "$t" ] && filter=${entry#*:}
    [ -x "./$t" ] || continue
    [ -f "$logs/$t.log" ] && t_log="$logs/$t.warm.log" || t_log="$logs/$t.log"
    left=$((budget - ($(date +%s) - began)))
    if [ "$left" -lt 20 ]; then
        printf '%-16s %-6s %s\n' "$t" skip "out of time (BUDGET_S=$budget)"
        continue
    fi
    start=$(date +%s%N)
    JIT_BACKEND=cuda JIT_DIFF_GRAPHS=${JIT_DIFF_GRAPHS:-500} timeout $((left < cap ? left : cap)) "./$t" $filter --test-threads=8 --nocapture >"$t_log" 2>&1
    rc=$?
    secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN{print (b-a)/1e9}')
    res=$(grep -E '^test result' "$t_log" | tail -1)
    [ $rc -eq 0 ] && st=ok || { st=FAIL; fail=1; }
    printf '%-16s %-6s %s (%.1f s%s)\n' "$t" "$st" "${res:-rc=$rc}" "$secs" "$([ "$t_log" != "$logs/$t.log" ] && echo ', warm disk cache')"
done
JIT_BACKEND=cuda ./mlp-example >"$logs/mlp-example.log" 2>&1 && st=ok || { st=FAIL; fail=1; }
printf '%-16s %-6s %s\n' mlp-example "$st" "$(grep -E '^(OK|error)' "$logs/mlp-example.log" | head -1)"
exit $fail
