#!/usr/bin/env python3
"""Generates tests/fixtures/amp.safetensors with PyTorch on the CPU: what
`torch.autocast("cpu", dtype=...)` makes of convolutions, linear layers, matrix
products and an MSE loss, and a `torch.amp.GradScaler` run
with one overflowing step. (PyTorch's CPU autocast keeps softmax, the norms and the
normalisations in the input's dtype, where its CUDA autocast, which jit-ops follows
on every device, runs them in f32; the two lists agree on the cases here. Its CPU cosine similarity returns f32 but
differs from the f32 computation on the rounded input by 1% in bf16, so it is not a
case here.)
tests/tests/amp.rs reads it and repeats the options of each case.

Run once (needs torch and safetensors; the file is committed):
    python3 scripts/make_amp_fixtures.py
"""

import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(20261202)
out = {}
r = torch.randn

# autocast: operator outputs in the lower dtype, for bf16 and f16
x, w, b = r(2, 3, 9, 7), r(5, 3, 3, 3), r(5)
a, m = r(5, 13), r(13, 6)
lw, lb = r(7, 13), r(7)
s, st = r(4, 11) * 30, r(4, 11)
out.update({"conv.x": x, "conv.w": w, "conv.b": b, "mm.a": a, "mm.b": m, "lin.w": lw, "lin.b": lb, "sm.x": s, "sm.t": st})
for name, dt in [("bf16", torch.bfloat16), ("f16", torch.float16)]:
    with torch.autocast("cpu", dtype=dt):
        y = F.conv2d(x, w, b, stride=2, padding=1)
        assert y.dtype == dt, (name, y.dtype)
        out[f"{name}.conv.y"] = y
        out[f"{name}.mm.y"] = a @ m
        out[f"{name}.lin.y"] = F.linear(a, lw, lb)
        # a half-precision input to the loss comes out f32
        mse = F.mse_loss(s.to(dt), st)
        assert mse.dtype == torch.float32, mse.dtype
        out[f"{name}.mse.y"] = mse

# GradScaler: Linear(4, 3) in f32, SGD with momentum, 7 steps; the input of step 3
# holds an infinity (so the scaled gradients do), that step is skipped and the scale
# backs off; growth every 2 clean steps.
lin = torch.nn.Linear(4, 3)
out["gs.w0"] = lin.weight.detach().clone()
out["gs.b0"] = lin.bias.detach().clone()
opt = torch.optim.SGD(lin.parameters(), lr=0.05, momentum=0.9)
scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2)
xs = r(7, 5, 4)
xs[3, 1, 2] = float("inf")
ts = r(7, 5, 3)
out["gs.xs"] = xs
out["gs.ts"] = ts
scales, losses = [], []
for t in range(7):
    opt.zero_grad()
    loss = F.mse_loss(lin(xs[t]), ts[t])
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    scales.append(scaler.get_scale())
    losses.append(loss.item())
out["gs.scales"] = torch.tensor(scales, dtype=torch.float64)
out["gs.w"] = lin.weight.detach().clone()
out["gs.b"] = lin.bias.detach().clone()
print("scales", scales)

path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "amp.safetensors")
save_file({k: v.contiguous() for k, v in out.items()}, path, metadata={"torch": torch.__version__})
print("wrote", path, os.path.getsize(path), "bytes")
