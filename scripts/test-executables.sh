#!/usr/bin/env bash
# Builds the integration-test binaries in release mode and prints their paths, one
# per line (used by pack-gpu-check.sh and emulated-gpu-check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -p integration-tests --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])'
