#!/usr/bin/env python3
"""Side by side on the CPU: the VGG19 convolution stack (conv1_1 .. relu5_1) forward,
and forward + backward (gradients of the input and of every weight and bias), in
this framework (target/release/vgg_bench) and in PyTorch, in one run, same thread
count. Prints a markdown table of medians and ratios.

    cargo build --release -p benches --bin vgg_bench
    python3 benches/vgg_cpu.py --sizes 256 512 --reps 5

Needs `torch` importable (the CPU build is enough; only for the comparison).
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

CFG = [(3, 64), (64, 64), None, (64, 128), (128, 128), None, (128, 256), (256, 256), (256, 256), (256, 256), None,
       (256, 512), (512, 512), (512, 512), (512, 512), None, (512, 512)]


def torch_times(size, reps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    params = []
    for layer in CFG:
        if layer:
            i, o = layer
            params.append((torch.randn(o, i, 3, 3).mul_((2.0 / (9 * i)) ** 0.5).requires_grad_(),
                           torch.zeros(o).requires_grad_()))
    x = torch.randn(1, 3, size, size, requires_grad=True)

    def forward():
        h, p = x, iter(params)
        for layer in CFG:
            if layer:
                w, b = next(p)
                h = F.relu(F.conv2d(h, w, b, padding=1))
            else:
                h = F.max_pool2d(h, 2)
        return h

    flat = [t for wb in params for t in wb] + [x]
    out = {}
    for name in ["forward", "forward+backward"]:
        ts = []
        for rep in range(reps + 1):
            t = time.perf_counter()
            if name == "forward":
                with torch.no_grad():
                    forward()
            else:
                torch.autograd.grad(forward().mean(), flat)
            if rep > 0:
                ts.append((time.perf_counter() - t) * 1e3)
        out[name] = statistics.median(ts)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vgg_bench"))
    a = ap.parse_args()
    threads = os.cpu_count()
    rows = []
    for size in a.sizes:
        res = subprocess.run([a.bin, "--size", str(size), "--reps", str(a.reps)], check=True, capture_output=True, text=True)
        ours = {j["pass"]: j["median_ms"] for j in map(json.loads, res.stdout.split("\n")[:-1])}
        theirs = torch_times(size, a.reps, threads)
        for p in ["forward", "forward+backward"]:
            rows.append((size, p, ours[p], theirs[p]))
    print(f"VGG19 conv1_1..relu5_1, batch 1, f32, {threads} threads, torch {torch.__version__}, median of {a.reps}\n")
    print("| size | pass | ours (ms) | PyTorch (ms) | ours / PyTorch |")
    print("|---|---|---|---|---|")
    for size, p, o, t in rows:
        print(f"| {size}² | {p} | {o:.0f} | {t:.0f} | {o / t:.2f}x |")


if __name__ == "__main__":
    main()
