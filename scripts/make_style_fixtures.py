#!/usr/bin/env python3
"""Generates tests/fixtures/style_models.safetensors with PyTorch (CPU, f32).

The networks are written here as the reference repositories define them
(naoto0804/pytorch-AdaIN `net.py`/`function.py`, diyiiyiii/MCCNet `net.py`, the
SANet `Transform`), with the same layer positions and parameter names, so that
their state dicts are the reference checkpoints' layouts.

Weights are not stored (VGG19 alone is 80 MB): every parameter is filled by a
counter-based formula that tests/src/lib.rs (`formula_init`) computes bit for bit
in Rust: for parameter `name` and element `i`,
    z = splitmix64(fnv1a64(name) ^ splitmix64(i)),  u = z >> 40 (24 bits),
    value = f32((2u - 2^24) / 2^24 * bound),
with bound = sqrt(6 / fan_in) for weights and 0.1 for biases.

Stored: inputs, VGG19 features relu1_1..relu5_1, AdaIN outputs (single style,
interpolation with alpha), coral colour preservation, the MCC and SA modules'
outputs and their networks' outputs, the MCCNet and SANet training losses, one
AdaIN training step (losses, per-parameter gradient sums of squares and 32
sampled gradient entries each), one Gatys loss/gradient, one L-BFGS step (3 iterations) and
three Adam steps on the image; metadata holds the reference state-dict names and
shapes.

Run once (needs torch, numpy, safetensors; the file is committed):
    python3 scripts/make_style_fixtures.py
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.set_num_threads(2)

M64 = (1 << 64) - 1


def splitmix(z):
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(M64)
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(M64)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(M64)
    return z ^ (z >> np.uint64(31))


def fnv1a(name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return np.uint64(h)


def formula(name, shape):
    n = int(np.prod(shape)) if len(shape) else 1
    with np.errstate(over="ignore"):
        z = splitmix(fnv1a(name) ^ splitmix(np.arange(n, dtype=np.uint64)))
    u = (z >> np.uint64(40)).astype(np.int64)
    bound = math.sqrt(6.0 / int(np.prod(shape[1:]))) if len(shape) >= 2 else 0.1
    v = ((2 * u - (1 << 24)).astype(np.float64) / float(1 << 24) * bound).astype(np.float32)
    return torch.from_numpy(v.reshape(shape))


def formula_init(module):
    with torch.no_grad():
        for name, p in module.state_dict().items():
            p.copy_(formula(name, tuple(p.shape)))


def data(seed, shape):
    """Inputs in 0..1 from the same generator (stored anyway)."""
    return (formula(f"input{seed}", shape) / formula(f"input{seed}", shape).abs().max() * 0.5 + 0.5).contiguous()


# --- the reference definitions -------------------------------------------------


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


def calc_mean_std(feat, eps=1e-5):
    N, C = feat.size()[:2]
    var = feat.view(N, C, -1).var(dim=2) + eps
    return feat.view(N, C, -1).mean(dim=2).view(N, C, 1, 1), var.sqrt().view(N, C, 1, 1)


def adain(c, s):
    sm, ss = calc_mean_std(s)
    cm, cs = calc_mean_std(c)
    return (c - cm.expand(c.size())) / cs.expand(c.size()) * ss.expand(c.size()) + sm.expand(c.size())


def normal(feat):
    m, s = calc_mean_std(feat)
    return (feat - m.expand(feat.size())) / s.expand(feat.size())


def mat_sqrt(x):
    U, D, V = torch.svd(x)
    return torch.mm(torch.mm(U, D.pow(0.5).diag()), V.t())


def coral(source, target):
    def flat(f):
        ff = f.view(3, -1)
        return ff, ff.mean(dim=-1, keepdim=True), ff.std(dim=-1, keepdim=True)

    sf, sm, ss = flat(source)
    sn = (sf - sm.expand_as(sf)) / ss.expand_as(sf)
    s_cov = torch.mm(sn, sn.t()) + torch.eye(3)
    tf, tm, ts = flat(target)
    tn = (tf - tm.expand_as(tf)) / ts.expand_as(tf)
    t_cov = torch.mm(tn, tn.t()) + torch.eye(3)
    out = torch.mm(mat_sqrt(t_cov), torch.mm(torch.inverse(mat_sqrt(s_cov)), sn))
    return (out * ts.expand_as(sn) + tm.expand_as(sn)).view(source.size())


class MCCNet(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f = nn.Conv2d(d, d, (1, 1))
        self.g = nn.Conv2d(d, d, (1, 1))
        self.softmax = nn.Softmax(dim=-2)
        self.out_conv = nn.Conv2d(d, d, (1, 1))
        self.fc = nn.Linear(d, d)

    def forward(self, content_feat, style_feat):
        B, C, H, W = content_feat.size()
        F_ = self.f(normal(content_feat))
        B, C, H, W = style_feat.size()
        G = self.g(normal(style_feat)).view(-1, 1, H * W)
        G_sum = G.view(B, C, H * W).sum(-1)
        FC_S = torch.bmm(G, G.permute(0, 2, 1)).view(B, C) / G_sum
        FC_S = self.fc(FC_S).view(B, C, 1, 1)
        out = F_ * FC_S
        B, C, H, W = content_feat.size()
        out = self.out_conv(out.contiguous().view(B, -1, H, W))
        return content_feat + out


class MCC_Module(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.MCCN = MCCNet(d)

    def forward(self, cf, sf):
        return self.MCCN(cf[-2], sf[-2])


class SANet(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f = nn.Conv2d(d, d, (1, 1))
        self.g = nn.Conv2d(d, d, (1, 1))
        self.h = nn.Conv2d(d, d, (1, 1))
        self.sm = nn.Softmax(dim=-1)
        self.out_conv = nn.Conv2d(d, d, (1, 1))

    def forward(self, content, style):
        F_ = self.f(normal(content))
        G = self.g(normal(style))
        H = self.h(style)
        b, c, h, w = F_.size()
        F_ = F_.view(b, -1, w * h).permute(0, 2, 1)
        b, c, h, w = G.size()
        G = G.view(b, -1, w * h)
        S = self.sm(torch.bmm(F_, G))
        b, c, h, w = H.size()
        H = H.view(b, -1, w * h)
        O = torch.bmm(H, S.permute(0, 2, 1))
        b, c, h, w = content.size()
        O = self.out_conv(O.view(b, c, h, w))
        return O + content


class Transform(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.sanet4_1 = SANet(d)
        self.sanet5_1 = SANet(d)
        self.upsample5_1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge_conv_pad = nn.ReflectionPad2d((1, 1, 1, 1))
        self.merge_conv = nn.Conv2d(d, d, (3, 3))

    def forward(self, c4, s4, c5, s5):
        return self.merge_conv(self.merge_conv_pad(self.sanet4_1(c4, s4) + self.upsample5_1(self.sanet5_1(c5, s5))))


# --- the fixtures ---------------------------------------------------------------

vgg = vgg19()
dec = decoder()
mcc = MCC_Module(512)
tra = Transform(512)
for m in (vgg, dec, mcc, tra):
    formula_init(m)
    m.eval()
# The MCC block divides by the per-channel sum of g(normalised style), which is
# H*W*bias up to rounding; biases near zero make that ratio ill-conditioned in f32
# for any implementation (PyTorch f32 against f64: 2.6e-3). Shift them away from 0.
with torch.no_grad():
    mcc.MCCN.g.bias.add_(0.5)
layers = list(vgg.children())
enc = [nn.Sequential(*layers[a:b]) for a, b in [(0, 4), (4, 11), (11, 18), (18, 31), (31, 44)]]
relu4_2 = nn.Sequential(*layers[31:34])


def feats(x, n=5):
    out = [x]
    for e in enc[:n]:
        out.append(e(out[-1]))
    return out[1:]


T = {}


def put(name, t):
    T[name] = t.detach().float().contiguous().clone()


mse = nn.MSELoss()

content = data(1, (1, 3, 20, 28))
style = data(2, (1, 3, 24, 20))
style2 = data(3, (1, 3, 20, 20))
content16 = data(4, (1, 3, 32, 48))
style16 = data(5, (1, 3, 32, 32))
for k, v in dict(content=content, style=style, style2=style2, content16=content16, style16=style16).items():
    put(f"input.{k}", v)

with torch.no_grad():
    # VGG19 features at an odd size (20x28: relu5_1 is 2x2)
    for name, f in zip(["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"], feats(content)):
        put(f"vgg.{name}", f)
    put("vgg.relu4_2", relu4_2(feats(content, 4)[3]))

    # AdaIN: single style; interpolation of two styles with alpha
    cf = feats(content, 4)[3]
    put("adain.out", dec(adain(cf, feats(style, 4)[3])))
    base = 0.3 * adain(cf, feats(style, 4)[3]) + 0.7 * adain(cf, feats(style2, 4)[3])
    put("adain.mix_alpha", dec(0.6 * base + 0.4 * cf))
    put("coral.out", coral(style[0], content[0]))

    # MCC module at relu4_1 and the MCCNet output
    sf = feats(style, 5)
    put("mcc.module", mcc(feats(content, 5), sf))
    put("mcc.out", dec(mcc(feats(content, 5), sf)))

    # SANet at a multiple of 16
    c16 = feats(content16, 5)
    s16 = feats(style16, 5)
    put("sanet.transform", tra(c16[3], s16[3], c16[4], s16[4]))
    put("sanet.out", dec(tra(c16[3], s16[3], c16[4], s16[4])))

    # MCCNet training losses (noise given) and SANet training losses, batch 1 at 32x32
    c32 = content16[:, :, :, 8:40].contiguous()
    noise = formula("noise", (1, 3, 32, 32)) * 0.01
    put("input.noise", noise)

    def mcc_losses(content, style, noise):
        style_feats, content_feats = feats(style), feats(content)
        ics = dec(mcc(content_feats, style_feats))
        ics_feats = feats(ics)
        loss_c = mse(normal(ics_feats[-1]), normal(content_feats[-1])) + mse(normal(ics_feats[-2]), normal(content_feats[-2]))
        loss_s = sum(mse(*calc_mean_std(a)[0:1], *calc_mean_std(b)[0:1]) + mse(calc_mean_std(a)[1], calc_mean_std(b)[1]) for a, b in zip(ics_feats, style_feats))
        y = ics
        tv = torch.sum(torch.abs(y[:, :, :, :-1] - y[:, :, :, 1:])) + torch.sum(torch.abs(y[:, :, :-1, :] - y[:, :, 1:, :]))
        ics_n = dec(mcc(feats(content + noise), style_feats))
        loss_noise = mse(ics_n, ics)
        icc = dec(mcc(content_feats, content_feats))
        iss = dec(mcc(style_feats, style_feats))
        l1 = mse(icc, content) + mse(iss, style)
        icc_f, iss_f = feats(icc), feats(iss)
        l2 = sum(mse(icc_f[i], content_feats[i]) + mse(iss_f[i], style_feats[i]) for i in range(5))
        return dict(noise=loss_noise, content=loss_c, style=loss_s, identity1=l1, identity2=l2, tv=tv)

    for k, v in mcc_losses(c32, style16, noise).items():
        put(f"mcc.loss.{k}", v)

    def sa_losses(content, style):
        sf, cf = feats(style), feats(content)
        g = dec(tra(cf[3], sf[3], cf[4], sf[4]))
        gf = feats(g)
        loss_c = mse(normal(gf[-1]), normal(cf[-1])) + mse(normal(gf[-2]), normal(cf[-2]))
        loss_s = 0
        for a, b in zip(gf, sf):
            am, asd = calc_mean_std(a)
            bm, bsd = calc_mean_std(b)
            loss_s = loss_s + mse(am, bm) + mse(asd, bsd)
        icc = dec(tra(cf[3], cf[3], cf[4], cf[4]))
        iss = dec(tra(sf[3], sf[3], sf[4], sf[4]))
        l1 = mse(icc, content) + mse(iss, style)
        fcc, fss = feats(icc), feats(iss)
        l2 = sum(mse(fcc[i], cf[i]) + mse(fss[i], sf[i]) for i in range(5))
        return dict(content=loss_c, style=loss_s, identity1=l1, identity2=l2)

    for k, v in sa_losses(c32, style16).items():
        put(f"sanet.loss.{k}", v)

# AdaIN training step: batch 2 at 32x32, content weight 1, style weight 10
cb = torch.cat([content16[:, :, :, :32], content16[:, :, :, 16:48]]).contiguous()
sb = torch.cat([style16, style16.flip(3)]).contiguous()
put("train.content", cb)
put("train.style", sb)
style_feats = feats(sb, 4)
content_feat = feats(cb, 4)[3]
t = adain(content_feat, style_feats[-1])
g_t = dec(t)
g_feats = feats(g_t, 4)
loss_c = mse(g_feats[-1], t)
loss_s = 0
for a, b in zip(g_feats, style_feats):
    am, asd = calc_mean_std(a)
    bm, bsd = calc_mean_std(b)
    loss_s = loss_s + mse(am, bm) + mse(asd, bsd)
loss = loss_c + 10.0 * loss_s
put("train.loss_c", loss_c)
put("train.loss_s", loss_s)
put("train.loss", loss)
dec.zero_grad()
loss.backward()
for name, p in dec.named_parameters():
    g = p.grad.detach().flatten().double()
    put(f"train.grad.{name}.sumsq", (g * g).sum())
    idx = torch.linspace(0, g.numel() - 1, 32).long()
    put(f"train.grad.{name}.sample", g[idx])

# Gatys: loss and gradient at the content image; one L-BFGS step (max_iter 3);
# three Adam steps (lr 0.02)
cw, sw, tvw = 1.0, 1e4, 1e-3
with torch.no_grad():
    c_target = relu4_2(feats(content, 4)[3])
    grams = []
    for f in feats(style):
        n, c, h, w = f.shape
        ff = f.view(n, c, h * w)
        grams.append(torch.bmm(ff, ff.transpose(1, 2)) / (c * h * w))


def gatys_loss(img):
    fs = feats(img)
    lc = mse(relu4_2(fs[3]), c_target)
    ls = 0
    for f, g in zip(fs, grams):
        n, c, h, w = f.shape
        ff = f.view(n, c, h * w)
        ls = ls + mse(torch.bmm(ff, ff.transpose(1, 2)) / (c * h * w), g)
    tv = ((img[:, :, 1:] - img[:, :, :-1]) ** 2).sum() + ((img[:, :, :, 1:] - img[:, :, :, :-1]) ** 2).sum()
    tv = tv / img.shape[0]
    return cw * lc + sw * ls + tvw * tv, (lc, ls, tv)


img = content.clone().requires_grad_(True)
total, (lc, ls, tv) = gatys_loss(img)
total.backward()
put("gatys.loss", total)
put("gatys.content", lc)
put("gatys.style", ls)
put("gatys.tv", tv)
put("gatys.grad", img.grad)

img = content.clone().requires_grad_(True)
opt = torch.optim.LBFGS([img], max_iter=3)


def closure():
    opt.zero_grad()
    l, _ = gatys_loss(img)
    l.backward()
    return l


opt.step(closure)
put("gatys.lbfgs3", img)

img = content.clone().requires_grad_(True)
opt = torch.optim.Adam([img], lr=0.02)
for _ in range(3):
    opt.zero_grad()
    l, _ = gatys_loss(img)
    l.backward()
    opt.step()
put("gatys.adam3", img)


def layout(m):
    return [[k, list(v.shape)] for k, v in m.state_dict().items()]


meta = {
    "torch": torch.__version__,
    "vgg": json.dumps(layout(vgg)),
    "decoder": json.dumps(layout(dec)),
    "mcc_module": json.dumps(layout(mcc)),
    "transformer": json.dumps(layout(tra)),
}
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "style_models.safetensors")
save_file(T, out, metadata=meta)
print(f"wrote {len(T)} tensors to {os.path.normpath(out)} ({os.path.getsize(out)} bytes)")
