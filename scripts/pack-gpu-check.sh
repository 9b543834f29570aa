#!/usr/bin/env bash
# Builds the integration-test binaries and the MLP example in release mode, strips
# them and packs them into .device-bin/bins.tar.xz (git-ignored), ready to be copied
# to a GPU machine that has no Rust toolchain. Run scripts/gpu-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
bins=$(cargo test --release -p integration-tests --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
cargo build --release -p jit-ops --example mlp
stage=$(mktemp -d)
for b in $bins; do cp "$b" "$stage/$(basename "$b" | sed 's/-[0-9a-f]*$//')"; done
cp target/release/examples/mlp "$stage/mlp-example"
strip "$stage"/*
cp scripts/gpu-check.sh "$stage/"
mkdir -p .device-bin
tar -C "$stage" -cJf .device-bin/bins.tar.xz .
rm -rf "$stage"
ls -la .device-bin/bins.tar.xz
