#!/usr/bin/env python3
"""PyTorch side of `jit-bench`: runs the same workloads (benches/src/suite.rs) in
PyTorch eager and torch.compile on the same machine, writes their rows as JSON,
then runs our `jit_bench` with `--merge` so that one command prints the
side-by-side table and writes results.json / results.csv / chart.svg.

    cargo build --release -p benches --bin jit_bench
    python3 benches/jit_bench.py --device cpu            # add --quick for the small subset
    python3 benches/jit_bench.py --device cuda           # on a GPU machine

Needs `torch` importable. torch.compile needs a C++ compiler on the CPU (Triton on
CUDA); a workload it cannot compile is reported and left out.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def pad():
    return torch.nn.ReflectionPad2d((1, 1, 1, 1))


def vgg_to_relu4_1():
    nn = torch.nn
    layers = [nn.Conv2d(3, 3, 1)]
    for b, (i, o, n) in enumerate([(3, 64, 2), (64, 128, 2), (128, 256, 4), (256, 512, 1)]):
        for c in range(n):
            layers += [pad(), nn.Conv2d(i if c == 0 else o, o, 3), nn.ReLU()]
        if b < 3:
            layers.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
    return nn.Sequential(*layers)


def decoder():
    nn = torch.nn
    L = []

    def conv(i, o, relu=True):
        L.extend([pad(), nn.Conv2d(i, o, 3)] + ([nn.ReLU()] if relu else []))

    conv(512, 256)
    L.append(nn.Upsample(scale_factor=2))
    for _ in range(3):
        conv(256, 256)
    conv(256, 128)
    L.append(nn.Upsample(scale_factor=2))
    conv(128, 128)
    conv(128, 64)
    L.append(nn.Upsample(scale_factor=2))
    conv(64, 64)
    conv(64, 3, relu=False)
    return nn.Sequential(*L)


def stats(x):
    n, c = x.shape[:2]
    f = x.reshape(n, c, -1)
    return f.mean(2).view(n, c, 1, 1), (f.var(2) + 1e-5).sqrt().view(n, c, 1, 1)


def adain(c, s):
    cm, cs = stats(c)
    sm, ss = stats(s)
    return (c - cm) / cs * ss + sm


def chain(x, n):
    for i in range(n):
        k = i % 5
        x = x * 1.0001 if k == 0 else x + 0.25 if k == 1 else torch.clamp_min(x, -3.0) if k == 2 else x - 0.125 if k == 3 else torch.clamp_max(x, 5.0)
    return x


def workloads(quick, dev):
    r = lambda *s: torch.randn(*s, device=dev)
    W = {}
    n = 1 << 18 if quick else 16 << 20
    x = r(n)
    for k in (4, 10, 20):
        W[f"chain{k}"] = (lambda k=k: chain(x, k)), False
    shape = (2, 16, 32, 32) if quick else (8, 64, 128, 128)
    xb, wb, bb = r(*shape), r(1, shape[1], 1, 1), r(1, shape[1], 1, 1)
    W["broadcast"] = (lambda: torch.relu(xb * wb + bb)), False
    sm = r(256, 256) if quick else r(4096, 1024)
    W["softmax"] = (lambda: torch.softmax(sm, -1)), False
    W["log_softmax"] = (lambda: torch.log_softmax(sm, -1)), False
    W["gelu"] = (lambda: F.gelu(sm)), False
    W["tanh"] = (lambda: torch.tanh(sm)), False
    W["sin"] = (lambda: torch.sin(sm)), False
    sa = sm.abs()
    W["pow"] = (lambda: torch.pow(sa, 2.5)), False
    W["to_f16"] = (lambda: sm.to(torch.float16)), False
    W["to_bf16"] = (lambda: sm.to(torch.bfloat16)), False
    lw, lb = r(sm.shape[1]), r(sm.shape[1])
    W["layer_norm"] = (lambda: F.layer_norm(sm, (sm.shape[1],), lw, lb)), False
    xi = r(*shape)
    iw, ib = r(shape[1]), r(shape[1])
    W["instance_norm"] = (lambda: F.instance_norm(xi, weight=iw, bias=ib)), False
    ashape = (2, 32, 16, 16) if quick else (8, 512, 32, 32)
    ac, as_ = r(*ashape), r(*ashape)
    W["adain_op"] = (lambda: adain(ac, as_)), False
    m = 64 if quick else 256
    xr = r(m, m, m)
    for ax in range(3):
        W[f"reduce_axis{ax}"] = (lambda ax=ax: xr.sum(ax)), False
    c, h = (8, 32) if quick else (64, 128)
    xc = r(1, c, h, h)
    W["im2col"] = (lambda: F.unfold(xc, 3, padding=1)), False
    v, d, k = (5000, 64, 512) if quick else (50_000, 256, 8192)
    table, rows = r(v, d), torch.randint(0, v, (k,), device=dev)
    W["gather_rows"] = (lambda: table.index_select(0, rows)), False
    src = r(k, d)
    W["scatter_rows"] = (lambda: torch.zeros(v, d, device=dev).index_add(0, rows, src)), False
    srt = r(16, 256) if quick else r(256, 1024)
    W["sort_rows"] = (lambda: torch.sort(srt, dim=-1, stable=True)), False
    c, s = (16, 32) if quick else (64, 128)
    xv, wv, bv = r(1, c, s, s), r(c, c, 3, 3), r(c)
    W["conv_bias_relu"] = (lambda: torch.relu(F.conv2d(xv, wv, bv, padding=1))), False
    vgg, dec = vgg_to_relu4_1().to(dev), decoder().to(dev)
    for p in vgg.parameters():
        p.requires_grad_(False)
    s = 64 if quick else 256
    img = torch.rand(1, 3, s, s, device=dev)
    W["vgg19_encoder"] = (lambda: vgg(img)), True
    s = 32 if quick else 256
    c1, s1 = torch.rand(1, 3, s, s, device=dev), torch.rand(1, 3, s, s, device=dev)
    W["adain_net"] = (lambda: dec(adain(vgg(c1), vgg(s1)))), True
    b, s = (1, 32) if quick else (2, 128)
    cb, sb = torch.rand(b, 3, s, s, device=dev), torch.rand(b, 3, s, s, device=dev)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    enc = list(vgg.children())
    stages = [torch.nn.Sequential(*enc[a:z]) for a, z in [(0, 4), (4, 11), (11, 18), (18, 31)]]

    def feats(x):
        out = [x]
        for st in stages:
            out.append(st(out[-1]))
        return out[1:]

    def train_step():
        sf = feats(sb)
        t = adain(feats(cb)[3], sf[3])
        gf = feats(dec(t))
        loss = F.mse_loss(gf[3], t)
        for a_, b_ in zip(gf, sf):
            am, asd = stats(a_)
            bm, bsd = stats(b_)
            loss = loss + 10 * (F.mse_loss(am, bm) + F.mse_loss(asd, bsd))
        opt.zero_grad()
        loss.backward()
        opt.step()

    W["train_step"] = train_step, None
    return W


QUICK = {"chain10", "softmax", "adain_op", "reduce_axis1", "conv_bias_relu", "adain_net", "gather_rows"}


def time_it(fn, reps, dev):
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return statistics.median(ts), ts[0], ts[-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--only", default="", help="comma-separated workloads (all by default)")
    ap.add_argument("--out", default=os.path.join("target", "jit-bench"))
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "jit_bench"))
    a = ap.parse_args()
    reps = a.reps or (3 if a.quick else 7)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for name, (fn, net) in workloads(a.quick, a.device).items():
        if a.quick and name not in QUICK:
            continue
        if a.only and name not in a.only.split(","):
            continue
        impls = [("torch-eager", fn)]
        if not a.no_compile and net is not None:
            impls.append(("torch-compile", torch.compile(fn)))
        for imp, f in impls:
            try:
                ctx = torch.no_grad() if net is not None else torch.enable_grad()
                with ctx:
                    med, lo, hi = time_it(f, reps, a.device)
            except Exception as e:  # torch.compile without a working toolchain
                print(f"jit_bench.py: {name} {imp}: {type(e).__name__}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
                continue
            rows.append(dict(workload=name, impl=imp, device=a.device, size="same", reps=reps, median_ms=med, min_ms=lo,
                             max_ms=hi, kernels=None, bytes=None, flops=None, gbps=None, pct_copy=None, gflops=None,
                             compile_ms=None, cache_hits=None, cache_misses=None))
            print(f"jit_bench.py: {name} {imp}: {med:.3f} ms", file=sys.stderr)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "torch.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    cmd = [a.bin, "--device", a.device, "--reps", str(reps), "--out", a.out, "--merge", path] + (["--quick"] if a.quick else []) + (["--only", a.only] if a.only else [])
    sys.exit(subprocess.run(cmd).returncode)


if __name__ == "__main__":
    main()
