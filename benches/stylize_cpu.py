#!/usr/bin/env python3
"""stylize (multistyle26 imported from ONNX, our CPU backend) against onnxruntime on
the same machine, same model, same 512x512 input, in one run. Prints medians and
the ratio. With ROUNDS > 1 the two alternate (ours, then onnxruntime, ROUNDS times)
and the medians are taken over every run of every round, so that a slow phase of a
shared machine hits both sides alike. Needs onnxruntime and numpy (pip install --target /tmp/ortpy onnxruntime
numpy) and a release build: cargo build --release -p benches --bin stylize_bench.

    PYTHONPATH=/tmp/ortpy python3 benches/stylize_cpu.py [SIZE] [RUNS] [ROUNDS]
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from fetch_models import default_dest  # noqa: E402

size = int(sys.argv[1]) if len(sys.argv) > 1 else 512
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 10
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
root = os.path.join(os.path.dirname(__file__), "..")

sess = ort.InferenceSession(str(default_dest() / "multistyle26.onnx"), providers=["CPUExecutionProvider"])
yy, xx = np.mgrid[0:size, 0:size]
img = np.stack([xx % 251, yy % 241, (xx ^ yy) % 256], -1).astype(np.float32) / 255.0
x = np.ascontiguousarray(img.transpose(2, 0, 1)[None])
w = np.zeros(26, np.float32)
w[7] = 1
sess.run(None, {"image": x, "style_weights": w})
ours_times, ort_times, first = [], [], []
for _ in range(rounds):
    ours = json.loads(
        subprocess.check_output([os.path.join(root, "target/release/stylize_bench"), str(size), str(runs)])
    )
    ours_times += ours["times_ms"]
    first.append(ours["first_run_ms"])
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x, "style_weights": w})
        ort_times.append((time.perf_counter() - t) * 1e3)


def med(v):
    v = sorted(v)
    return v[len(v) // 2]


ort_med, ours_med = med(ort_times), med(ours_times)
print(f"multistyle26 {size}x{size}, {os.cpu_count()} CPUs, median of {runs} runs x {rounds} alternating rounds")
print(f"  onnxruntime {ort.__version__}: {ort_med:8.1f} ms  (min {min(ort_times):.1f}, max {max(ort_times):.1f})")
print(
    f"  ours (stylize_bench):   {ours_med:8.1f} ms  (min {min(ours_times):.1f}, max {max(ours_times):.1f},"
    f" first run with compiles {med(first):.0f} ms)"
)
print(f"  ratio ours / onnxruntime: {ours_med / ort_med:.2f}x (of the minimums {min(ours_times) / min(ort_times):.2f}x)")
