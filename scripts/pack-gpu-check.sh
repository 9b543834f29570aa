#!/usr/bin/env bash
# Builds the integration-test binaries, the MLP example and the bench programs
# (jit_bench, style_bench, stylize_bench, vgg_bench) in release mode, strips them and packs them
# into .device-bin/bins.tar.xz (git-ignored), and copies the pretrained style models
# into .device-bin/models (git-ignored, never committed; fetched first if needed),
# ready for a GPU machine that has no Rust toolchain and no network: run
# scripts/gpu-session.sh there (with `carry: [".device-bin"]`), or unpack the archive
# and run ./gpu-check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=$(bash scripts/test-executables.sh)
cargo build --release -p jit-ops --example mlp
cargo build --release -p benches --bin jit_bench --bin style_bench --bin stylize_bench --bin vgg_bench
stage=$(mktemp -d)
for b in $bins; do cp "$b" "$stage/$(basename "$b" | sed 's/-[0-9a-f]*$//')"; done
cp target/release/examples/mlp "$stage/mlp-example"
for b in jit_bench style_bench stylize_bench vgg_bench; do cp "target/release/$b" "$stage/"; done
strip "$stage"/*
cp scripts/gpu-check.sh "$stage/"
mkdir -p .device-bin
tar -C "$stage" -cJf .device-bin/bins.tar.xz .
rm -rf "$stage"
models=$(python3 -c 'import sys; sys.path.insert(0, "scripts"); from fetch_models import default_dest; print(default_dest())')
[ -f "$models/multistyle26.onnx" ] || python3 scripts/fetch_models.py
mkdir -p .device-bin/models
cp "$models"/*.onnx .device-bin/models/
ls -la .device-bin/bins.tar.xz .device-bin/models
