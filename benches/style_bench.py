#!/usr/bin/env python3
"""Side by side: the style networks in this framework (target/release/style_bench)
and in PyTorch, same work, same machine, one run. Prints a markdown table of
medians and ratios, plus PyTorch's peak GPU memory on CUDA.

Workloads (see benches/src/bin/style_bench.rs): the AdaIN network (content and
style S x S, batch 1), one AdaIN training step (batch B of S x S crops, decoder
gradients, Adam), one Gatys iteration (S x S, Adam on the image), the SANet and
MCCNet networks (content and style S x S, batch 1; the modules as the reference
repositories define them, as in scripts/make_style_fixtures.py).

    cargo build --release -p benches --bin style_bench
    python3 benches/style_bench.py --device cpu --size 256 --batch 2 --reps 3
    # on a GPU machine (ours with JIT_BACKEND=cuda; both f32 with TF32 off, then TF32,
    # then f16 under autocast with a GradScaler for the training steps):
    python3 benches/style_bench.py --device cuda --size 512 --batch 8 --train-size 256

Needs `torch` importable.
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad():
    return nn.ReflectionPad2d((1, 1, 1, 1))


def vgg19():
    layers = [nn.Conv2d(3, 3, (1, 1))]
    blocks = [(3, 64, 2), (64, 128, 2), (128, 256, 4), (256, 512, 4), (512, 512, 4)]
    for b, (i, o, n) in enumerate(blocks):
        for c in range(n):
            layers += [pad(), nn.Conv2d(i if c == 0 else o, o, (3, 3)), nn.ReLU()]
        if b + 1 < len(blocks):
            layers.append(nn.MaxPool2d((2, 2), (2, 2), (0, 0), ceil_mode=True))
    return nn.Sequential(*layers)


def decoder():
    L = []

    def conv(i, o):
        L.extend([pad(), nn.Conv2d(i, o, (3, 3)), nn.ReLU()])

    conv(512, 256)
    L.append(nn.Upsample(scale_factor=2, mode="nearest"))
    for _ in range(3):
        conv(256, 256)
    conv(256, 128)
    L.append(nn.Upsample(scale_factor=2, mode="nearest"))
    conv(128, 128)
    conv(128, 64)
    L.append(nn.Upsample(scale_factor=2, mode="nearest"))
    conv(64, 64)
    L.extend([pad(), nn.Conv2d(64, 3, (3, 3))])
    return nn.Sequential(*L)


def calc_mean_std(f, eps=1e-5):
    n, c = f.shape[:2]
    var = f.view(n, c, -1).var(dim=2) + eps
    return f.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def adain(c, s):
    sm, ss = calc_mean_std(s)
    cm, cs = calc_mean_std(c)
    return (c - cm) / cs * ss + sm


def normal(f):
    m, s = calc_mean_std(f)
    return (f - m) / s


class SANet(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f, self.g, self.h, self.out_conv = (nn.Conv2d(d, d, (1, 1)) for _ in range(4))

    def forward(self, content, style):
        b, c, h, w = content.shape
        q = self.f(normal(content)).view(b, c, h * w).permute(0, 2, 1)
        k = self.g(normal(style)).flatten(2)
        attn = torch.softmax(torch.bmm(q, k), dim=-1)
        o = torch.bmm(self.h(style).flatten(2), attn.permute(0, 2, 1))
        return self.out_conv(o.view(b, c, h, w)) + content


class Transform(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.sanet4_1, self.sanet5_1 = SANet(d), SANet(d)
        self.merge_conv = nn.Conv2d(d, d, (3, 3))

    def forward(self, c4, s4, c5, s5):
        x = self.sanet4_1(c4, s4) + F.interpolate(self.sanet5_1(c5, s5), scale_factor=2, mode="nearest")
        return self.merge_conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))


class MCC(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f, self.g, self.out_conv = (nn.Conv2d(d, d, (1, 1)) for _ in range(3))
        self.fc = nn.Linear(d, d)

    def forward(self, content, style):
        f = self.f(normal(content))
        b, c, h, w = style.shape
        g = self.g(normal(style)).view(-1, 1, h * w)
        g_sum = g.view(b, c, h * w).sum(-1)
        fc_s = self.fc(torch.bmm(g, g.permute(0, 2, 1)).view(b, c) / g_sum).view(b, c, 1, 1)
        return content + self.out_conv(f * fc_s)


def torch_times(a, dev, mode):
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    torch.manual_seed(0)
    vgg, dec = vgg19().to(dev), decoder().to(dev)
    for p in vgg.parameters():
        p.requires_grad_(False)
    layers = list(vgg.children())
    enc = [nn.Sequential(*layers[x:y]) for x, y in [(0, 4), (4, 11), (11, 18), (18, 31), (31, 44)]]
    relu4_2 = nn.Sequential(*layers[31:34])
    # f16 and bf16 run under autocast; f16 steps go through a GradScaler (bf16 has
    # f32's range and needs none), as ours do
    half = mode in ("f16", "bf16")
    hdt = torch.bfloat16 if mode == "bf16" else torch.float16

    def feats(x, n):
        out = [x]
        for e in enc[:n]:
            out.append(e(out[-1]))
        return out[1:]

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def bench(fn):
        ts = []
        for rep in range(a.reps + 1):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if rep > 0:
                ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    out = {}

    def want(w):
        return not a.only or w in a.only.split(",")

    mse = nn.MSELoss()
    S, B, T = a.size, a.batch, a.train_size or a.size
    c1, s1 = torch.rand(1, 3, S, S, device=dev), torch.rand(1, 3, S, S, device=dev)

    def net():
        with torch.no_grad(), torch.autocast(dev, dtype=hdt, enabled=half):
            cf = feats(c1, 4)[3]
            return dec(adain(cf, feats(s1, 4)[3]))

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if want("adain"):
        out["adain"] = (bench(net), torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None)

    cb, sb = torch.rand(B, 3, T, T, device=dev), torch.rand(B, 3, T, T, device=dev)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-4)
    # f16 training is autocast + GradScaler (disabled: a plain step), as ours is
    scaler = torch.amp.GradScaler(dev, enabled=mode == "f16")

    def train_step():
        with torch.autocast(dev, dtype=hdt, enabled=half):
            sf = feats(sb, 4)
            cf = feats(cb, 4)[3]
            t = adain(cf, sf[3])
            g = dec(t)
            gf = feats(g, 4)
            loss = mse(gf[3], t)
            for x, y in zip(gf, sf):
                xm, xs = calc_mean_std(x)
                ym, ys = calc_mean_std(y)
                loss = loss + 10.0 * (mse(xm, ym) + mse(xs, ys))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if want("adain-train"):
        out["adain-train"] = (bench(train_step), torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None)

    with torch.no_grad():
        ct = relu4_2(feats(c1, 4)[3])
        grams = []
        for f in feats(s1, 5):
            n, c, h, w = f.shape
            ff = f.view(n, c, h * w)
            grams.append(torch.bmm(ff, ff.transpose(1, 2)) / (c * h * w))
    img = c1.clone().requires_grad_(True)
    gopt = torch.optim.Adam([img], lr=0.02)
    gscaler = torch.amp.GradScaler(dev, enabled=mode == "f16")

    def gatys_step():
        with torch.autocast(dev, dtype=hdt, enabled=half):
            fs = feats(img, 5)
            loss = mse(relu4_2(fs[3]), ct)
            for f, g in zip(fs, grams):
                n, c, h, w = f.shape
                ff = f.view(n, c, h * w)
                loss = loss + 1e4 * mse(torch.bmm(ff, ff.transpose(1, 2)) / (c * h * w), g)
            loss = loss + 1e-3 * (((img[:, :, 1:] - img[:, :, :-1]) ** 2).sum() + ((img[:, :, :, 1:] - img[:, :, :, :-1]) ** 2).sum())
        gopt.zero_grad()
        gscaler.scale(loss).backward()
        gscaler.step(gopt)
        gscaler.update()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if want("gatys"):
        out["gatys"] = (bench(gatys_step), torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None)

    tra, mcc = Transform(512).to(dev), MCC(512).to(dev)

    def sanet():
        with torch.no_grad(), torch.autocast(dev, dtype=hdt, enabled=half):
            c, s = feats(c1, 5), feats(s1, 5)
            return dec(tra(c[3], s[3], c[4], s[4]))

    def mccnet():
        with torch.no_grad(), torch.autocast(dev, dtype=hdt, enabled=half):
            return dec(mcc(feats(c1, 4)[3], feats(s1, 4)[3]))

    for name, fn in [("sanet", sanet), ("mccnet", mccnet)]:
        if not want(name):
            continue
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        out[name] = (bench(fn), torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None)
    return out


def ours(a, workload, size, batch, mode="f32"):
    env = dict(os.environ)
    if a.device == "cuda":
        env["JIT_BACKEND"] = "cuda"
    env["JIT_ALLOW_TF32"] = "1" if mode == "tf32" else "0"
    precision = mode if mode in ("f16", "bf16") else "f32"
    r = subprocess.run(
        [a.bin, "--workload", workload, "--size", str(size), "--batch", str(batch), "--reps", str(a.reps),
         "--precision", precision],
        check=True, capture_output=True, text=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train-size", type=int, default=0, help="crop size of the training step (default: --size)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--modes", default="", help="comma-separated among f32, tf32, f16, bf16 "
                    "(default: f32 on cpu; f32,tf32,f16 on cuda)")
    ap.add_argument("--only", default="", help="comma-separated workloads among adain, adain-train, gatys, "
                    "sanet, mccnet (default: all)")
    ap.add_argument("--bin", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "style_bench"))
    a = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    T = a.train_size or a.size
    modes = a.modes.split(",") if a.modes else (["f32"] if a.device == "cpu" else ["f32", "tf32", "f16"])
    theirs = {m: torch_times(a, a.device, m) for m in modes}
    name = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {threads} threads"
    print(f"{name}, torch {torch.__version__}, median of {a.reps} after one warm-up\n")
    head = ("| workload | size | batch | " + " | ".join(f"ours {m} (ms)" for m in modes) + " | "
            + " | ".join(f"PyTorch {m} (ms)" for m in modes) + " | "
            + " | ".join(f"ours / PyTorch {m}" for m in modes))
    print(head + " | kernels per step (f32) |")
    print("|" + "---|" * (head.count("|") + 1))
    peaks = {}
    for w, size, batch in [("adain", a.size, 1), ("adain-train", T, a.batch), ("gatys", a.size, 1),
                           ("sanet", a.size, 1), ("mccnet", a.size, 1)]:
        if a.only and w not in a.only.split(","):
            continue
        mine = {m: ours(a, w, size, batch, m) for m in modes}
        peaks[w] = mine["f32"].get("peak_gpu_mib")
        cells = " | ".join(f"{mine[m]['median_ms']:.1f}" for m in modes)
        cells += " | " + " | ".join(f"{theirs[m][w][0]:.1f}" for m in modes)
        cells += " | " + " | ".join(f"{mine[m]['median_ms'] / theirs[m][w][0]:.2f}" for m in modes)
        print(f"| {w} | {size} | {batch} | {cells} | {mine['f32']['kernels_per_step']} |")
    if a.device == "cuda":
        print("\nPeak GPU memory, f32 (MiB, ours / PyTorch's max_memory_allocated): " + ", ".join(
            f"{w} {peaks[w] if peaks[w] is not None else float('nan'):.0f} / {theirs['f32'][w][1]:.0f}"
            for w in ["adain", "adain-train", "gatys", "sanet", "mccnet"] if w in peaks))


if __name__ == "__main__":
    main()
