#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver, CUDA 13 NVRTC on the loader path), from
# the unpacked bins.tar.xz: runs the numeric test suites with every kernel on the
# CUDA backend, the differential test across reference / CPU / CUDA, and the MLP
# example, and prints a summary table. Logs go to $LOGS (default ./gpu-check-logs).
set -u
cd "$(dirname "$0")"
logs=${LOGS:-gpu-check-logs}
mkdir -p "$logs"
printf '%-16s %-6s %s\n' suite status result
fail=0
for t in elementwise reductions shape_ops activations meta_ops fusion mlp transcendentals memory properties errors differential gradients autograd optim training; do
    [ -x "./$t" ] || continue
    JIT_BACKEND=cuda JIT_DIFF_GRAPHS=${JIT_DIFF_GRAPHS:-500} timeout 900 "./$t" --test-threads=8 --nocapture >"$logs/$t.log" 2>&1
    rc=$?
    res=$(grep -E '^test result' "$logs/$t.log" | tail -1)
    [ $rc -eq 0 ] && st=ok || { st=FAIL; fail=1; }
    printf '%-16s %-6s %s\n' "$t" "$st" "${res:-rc=$rc}"
done
JIT_BACKEND=cuda ./mlp-example >"$logs/mlp-example.log" 2>&1 && st=ok || { st=FAIL; fail=1; }
printf '%-16s %-6s %s\n' mlp-example "$st" "$(grep -E '^(OK|error)' "$logs/mlp-example.log" | head -1)"
exit $fail
