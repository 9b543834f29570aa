#!/usr/bin/env python3
"""Side by side: the VGG19 convolution stack (conv1_1 .. relu5_1) forward, and
forward + backward (gradients of the input and of every weight and bias), in this
framework (target/release/vgg_bench) and in PyTorch, in one run. Prints a markdown
table of medians and ratios.

    cargo build --release -p benches --bin vgg_bench
    python3 benches/vgg_bench.py --sizes 256 512 --reps 5                 # CPU, same threads
    python3 benches/vgg_bench.py --device cuda --sizes 256 512 --reps 10  # GPU, TF32 off and on

On the GPU both sides run with TF32 off (PyTorch: `allow_tf32 = False` for matmul
and cuDNN; ours: the default) and with TF32 on (`allow_tf32 = True`;
`JIT_ALLOW_TF32=1`); cuDNN's heuristics choose the algorithms on both sides
(`cudnn.benchmark` stays False). Times include waiting for the GPU.

Needs `torch` importable (the CPU build is enough on the CPU; only for the
comparison).
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


def torch_times(size, reps, threads, device="cpu", tf32=False):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = False
    params = []
    for layer in CFG:
        if layer:
            i, o = layer
            params.append((torch.randn(o, i, 3, 3).mul_((2.0 / (9 * i)) ** 0.5).to(device).requires_grad_(),
                           torch.zeros(o, device=device).requires_grad_()))
    x = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

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
            sync()
            if rep > 0:
                ts.append((time.perf_counter() - t) * 1e3)
        out[name] = statistics.median(ts)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "vgg_bench"))
    a = ap.parse_args()
    threads = os.cpu_count()
    modes = [("f32", False)] if a.device == "cpu" else [("f32", False), ("tf32", True)]
    rows = []
    for size in a.sizes:
        for mode, tf32 in modes:
            env = dict(os.environ, JIT_ALLOW_TF32="1" if tf32 else "0")
            if a.device == "cuda":
                env["JIT_BACKEND"] = "cuda"
            res = subprocess.run([a.bin, "--size", str(size), "--reps", str(a.reps)], check=True,
                                 capture_output=True, text=True, env=env)
            ours = {j["pass"]: j["median_ms"] for j in map(json.loads, res.stdout.strip().splitlines())}
            theirs = torch_times(size, a.reps, threads, a.device, tf32)
            for p in ["forward", "forward+backward"]:
                rows.append((size, mode, p, ours[p], theirs[p]))
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"{threads} threads"
    print(f"VGG19 conv1_1..relu5_1, batch 1, {where}, torch {torch.__version__}, median of {a.reps}\n")
    print("| size | math | pass | ours (ms) | PyTorch (ms) | ours / PyTorch |")
    print("|---|---|---|---|---|---|")
    for size, mode, p, o, t in rows:
        digits = 0 if a.device == "cpu" else 2
        print(f"| {size}² | {mode} | {p} | {o:.{digits}f} | {t:.{digits}f} | {o / t:.2f}x |")


if __name__ == "__main__":
    main()
