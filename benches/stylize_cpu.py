#!/usr/bin/env python3
"""stylize (multistyle26 imported from ONNX, our CPU backend) against onnxruntime on
the same machine, same model, same 512x512 input, in one run. Prints medians and
the ratio. Needs onnxruntime and numpy (pip install --target /tmp/ortpy onnxruntime
numpy) and a release build: cargo build --release -p benches --bin stylize_bench.

    PYTHONPATH=/tmp/ortpy python3 benches/stylize_cpu.py [SIZE] [RUNS]
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
root = os.path.join(os.path.dirname(__file__), "..")
ours = json.loads(subprocess.check_output([os.path.join(root, "target/release/stylize_bench"), str(size), str(runs)]))

sess = ort.InferenceSession(str(default_dest() / "multistyle26.onnx"), providers=["CPUExecutionProvider"])
yy, xx = np.mgrid[0:size, 0:size]
img = np.stack([xx % 251, yy % 241, (xx ^ yy) % 256], -1).astype(np.float32) / 255.0
x = np.ascontiguousarray(img.transpose(2, 0, 1)[None])
w = np.zeros(26, np.float32)
w[7] = 1
sess.run(None, {"image": x, "style_weights": w})
times = []
for _ in range(runs):
    t = time.perf_counter()
    sess.run(None, {"image": x, "style_weights": w})
    times.append((time.perf_counter() - t) * 1e3)
times.sort()
ort_med = times[len(times) // 2]
print(f"multistyle26 {size}x{size}, {os.cpu_count()} CPUs, median of {runs}")
print(f"  onnxruntime {ort.__version__}: {ort_med:8.1f} ms  (min {times[0]:.1f}, max {times[-1]:.1f})")
print(f"  ours (stylize_bench):   {ours['median_ms']:8.1f} ms  (min {ours['min_ms']:.1f}, max {ours['max_ms']:.1f}, first run with compiles {ours['first_run_ms']:.0f} ms)")
print(f"  ratio ours / onnxruntime: {ours['median_ms'] / ort_med:.2f}x")
