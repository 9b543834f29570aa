#!/usr/bin/env bash
# Rehearses scripts/gpu-check.sh without a GPU: builds the integration-test binaries
# and the MLP example in release mode, builds the emulated CUDA device
# (tests/emu/fake_cuda.cpp: the driver, NVRTC, cuBLAS and cuDNN answered on the host,
# kernels compiled by g++) and runs gpu-check.sh's suites with every kernel on the
# CUDA backend, on that device. What this checks: the CUDA runtime, allocator,
# copies, launches, disk cache and library calls as the GPU session runs them; not
# the device's speed, its own math functions or races between threads (a block's
# threads run as fibers on one OS thread, switching at barriers).
#
#   bash scripts/emulated-gpu-check.sh            # BUDGET_S (default 3600) bounds the run
# Logs: target/emulated-gpu-check/logs. Needs g++ (or $CXX).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$PWD/target/emulated-gpu-check
rm -rf "$work"
mkdir -p "$work/bin" "$work/tmp"
bins=$(bash scripts/test-executables.sh)
cargo build --release -p jit-ops --example mlp
for b in $bins; do ln -s "$b" "$work/bin/$(basename "$b" | sed 's/-[0-9a-f]*$//')"; done
ln -s "$PWD/target/release/examples/mlp" "$work/bin/mlp-example"
cp scripts/gpu-check.sh "$work/bin/"
lib=$(cargo run --release -q -p integration-tests --example fake_device -- "$work/lib")
echo "emulated device in $lib"
LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" JEMU_TMPDIR="$work/tmp" JIT_FIXTURES_DIR="$PWD/tests/fixtures" \
    LOGS="$work/logs" BUDGET_S=${BUDGET_S:-3600} SUITE_CAP_S=${SUITE_CAP_S:-900} JIT_DIFF_GRAPHS=${JIT_DIFF_GRAPHS:-100} bash "$work/bin/gpu-check.sh"
