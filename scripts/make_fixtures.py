#!/usr/bin/env python3
"""Generates tests/fixtures/heavy_ops.safetensors with PyTorch (CPU, f32, TF32 off).

Each case stores its inputs, the output, a random upstream gradient `gy` and the
gradients of every differentiable input under `<case>.<name>`. The options of each
case are written out in tests/tests/heavy_ops_parity.rs, which reads this file.

Run once (needs torch; the file is committed):
    python3 scripts/make_fixtures.py
"""

import json
import os
import struct

import torch
import torch.nn.functional as F

torch.manual_seed(20261122)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

tensors = {}


def put(name, t):
    tensors[name] = t.detach().contiguous().clone()


def case(name, fn, inputs, grad=True):
    """fn(*inputs) -> output; inputs: dict of name -> tensor (float ones get grads)."""
    leaves = {}
    for k, v in inputs.items():
        if v.is_floating_point() and grad:
            v = v.clone().requires_grad_(True)
        leaves[k] = v
        put(f"{name}.{k}", v)
    y = fn(**leaves)
    put(f"{name}.y", y)
    if not grad:
        return
    gy = torch.randn_like(y)
    put(f"{name}.gy", gy)
    diff = [k for k, v in leaves.items() if v.requires_grad]
    gs = torch.autograd.grad(y, [leaves[k] for k in diff], gy, allow_unused=True)
    for k, g in zip(diff, gs):
        put(f"{name}.d{k}", g if g is not None else torch.zeros_like(leaves[k]))


r = torch.randn

# convolutions
case("conv_basic", lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=1), dict(x=r(2, 3, 7, 9), w=r(4, 3, 3, 3), b=r(4)))
case(
    "conv_groups",
    lambda x, w: F.conv2d(x, w, None, stride=2, padding=(1, 0), dilation=(2, 1), groups=2),
    dict(x=r(1, 4, 9, 8), w=r(6, 2, 3, 2)),
)
case(
    "conv_reflect",
    lambda x, w, b: F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), w, b),
    dict(x=r(1, 3, 6, 7), w=r(5, 3, 3, 3), b=r(5)),
)
case("conv_wide", lambda x, w, b: F.conv2d(x, w, b, padding=1), dict(x=r(2, 16, 6, 7), w=r(8, 16, 3, 3), b=r(8)))
case(
    "conv_wide_dil",
    lambda x, w: F.conv2d(x, w, None, padding=(2, 1), dilation=(2, 1)),
    dict(x=r(1, 24, 7, 5), w=r(5, 24, 3, 2)),
)
case("conv_1x1", lambda x, w, b: F.conv2d(x, w, b), dict(x=r(2, 5, 4, 3), w=r(3, 5, 1, 1), b=r(3)))
case(
    "convt_basic",
    lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
    dict(x=r(2, 4, 5, 6), w=r(4, 3, 3, 3), b=r(3)),
)
case(
    "convt_groups",
    lambda x, w: F.conv_transpose2d(x, w, None, stride=1, groups=2, dilation=2),
    dict(x=r(1, 4, 4, 5), w=r(4, 2, 3, 2)),
)

# pooling (relu'd inputs: ties inside windows, as after a ReLU)
case("maxpool_ceil", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), dict(x=F.relu(r(2, 3, 9, 8))))
case("maxpool_2", lambda x: F.max_pool2d(x, 2, 2), dict(x=F.relu(r(1, 2, 6, 7))))
case("maxpool_dil", lambda x: F.max_pool2d(x, 3, 1, 0, dilation=2), dict(x=r(1, 2, 8, 9)))
case(
    "avgpool_pad",
    lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True),
    dict(x=r(2, 3, 8, 7)),
)
case(
    "avgpool_nopad",
    lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
    dict(x=r(2, 3, 8, 7)),
)
case("adaptive", lambda x: F.adaptive_avg_pool2d(x, (3, 4)), dict(x=r(2, 3, 7, 10)))

# resizing
case("bilinear", lambda x: F.interpolate(x, size=(11, 7), mode="bilinear", align_corners=False), dict(x=r(1, 2, 5, 4)))
case("bilinear_ac", lambda x: F.interpolate(x, size=(9, 3), mode="bilinear", align_corners=True), dict(x=r(1, 2, 5, 4)))
case(
    "bilinear_x2",
    lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
    dict(x=r(2, 1, 3, 5)),
)
case("nearest", lambda x: F.interpolate(x, size=(7, 5), mode="nearest"), dict(x=r(1, 2, 3, 4)))

# normalisation
rm, rv = r(3), torch.rand(3) + 0.5
put("bn_train.rm0", rm)
put("bn_train.rv0", rv)
rm_t, rv_t = rm.clone(), rv.clone()
case(
    "bn_train",
    lambda x, w, b: F.batch_norm(x, rm_t, rv_t, w, b, training=True, momentum=0.1, eps=1e-5),
    dict(x=r(4, 3, 5, 6), w=r(3), b=r(3)),
)
put("bn_train.rm1", rm_t)
put("bn_train.rv1", rv_t)
rm_e, rv_e = r(3), torch.rand(3) + 0.5
put("bn_eval.rm", rm_e)
put("bn_eval.rv", rv_e)
case(
    "bn_eval",
    lambda x, w, b: F.batch_norm(x, rm_e, rv_e, w, b, training=False, eps=1e-5),
    dict(x=r(2, 3, 4, 5), w=r(3), b=r(3)),
)
case("inorm", lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-5), dict(x=r(2, 3, 5, 7), w=r(3), b=r(3)))
case("lnorm", lambda x, w, b: F.layer_norm(x, (4, 5), w, b, eps=1e-5), dict(x=r(3, 4, 5), w=r(4, 5), b=r(4, 5)))
case("gnorm", lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-5), dict(x=r(2, 6, 3, 4), w=r(6), b=r(6)))

# losses
case("mse", lambda x, t: F.mse_loss(x, t), dict(x=r(3, 4, 5), t=r(3, 4, 5)))
case("l1", lambda x, t: F.l1_loss(x, t, reduction="sum"), dict(x=r(3, 4, 5), t=r(3, 4, 5)))
case("smoothl1", lambda x, t: F.smooth_l1_loss(x, t, beta=0.5), dict(x=r(3, 4, 5), t=r(3, 4, 5)))
target = torch.randint(0, 4, (5,))
target[2] = -100
case("ce", lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), dict(x=r(5, 4), t=target))
case("ce_spatial", lambda x, t: F.cross_entropy(x, t), dict(x=r(2, 3, 4, 5), t=torch.randint(0, 3, (2, 4, 5))))
case("nll", lambda x, t: F.nll_loss(F.log_softmax(x, 1), t, reduction="sum"), dict(x=r(5, 4), t=torch.randint(0, 4, (5,))))

# sliding windows (added after the cases above, so that their random inputs stay as
# they were)
case(
    "unfold",
    lambda x: F.unfold(x, kernel_size=(3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
    dict(x=r(2, 3, 7, 6)),
)
case("unfold_3d", lambda x: F.unfold(x, kernel_size=2, stride=2), dict(x=r(2, 5, 7)))
case(
    "fold",
    lambda c: F.fold(c, output_size=(7, 6), kernel_size=(3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1)),
    dict(c=r(2, 18, 16)),
)
case("fold_overlap", lambda c: F.fold(c, output_size=(5, 4), kernel_size=3, padding=1), dict(c=r(1, 18, 20)))
case("pixel_shuffle", lambda x: F.pixel_shuffle(x, 3), dict(x=r(2, 18, 3, 2)))
case("pixel_unshuffle", lambda x: F.pixel_unshuffle(x, 2), dict(x=r(1, 3, 4, 6)))

# activations, norms and similarities (appended, as above)
case("elu", lambda x: F.elu(x, alpha=0.7), dict(x=r(3, 4, 5) * 3))
case("softplus", lambda x: F.softplus(x, beta=2.0, threshold=5.0), dict(x=r(3, 4, 5) * 3))
case("hardswish", lambda x: F.hardswish(x), dict(x=r(3, 4, 5) * 3))
case("mish", lambda x: F.mish(x), dict(x=r(3, 4, 5) * 3))
case("logsumexp", lambda x: torch.logsumexp(x, dim=(0, 2)), dict(x=r(3, 4, 5) * 3))
case("norm2", lambda x: torch.linalg.vector_norm(x, 2, dim=1, keepdim=True), dict(x=r(3, 4, 5)))
case("norm3", lambda x: torch.linalg.vector_norm(x, 3, dim=(0, 2)), dict(x=r(3, 4, 5)))
case("normalize", lambda x: F.normalize(x, p=2.0, dim=1), dict(x=r(2, 6, 3, 4)))
case("cosine", lambda a, b: F.cosine_similarity(a, b, dim=1), dict(a=r(2, 6, 3, 4), b=r(1, 6, 3, 4)))

# binary and divergence losses, huber, lerp (appended, as above, and from their own
# seed, so that the random inputs of the files below stay as they were); weights that
# PyTorch does not differentiate are stored beside the case and captured by its function
rng_state = torch.get_rng_state()
torch.manual_seed(20261203)
p_bce = torch.rand(3, 4, 5) * 0.96 + 0.02
w_bce = torch.rand(4, 5) + 0.5
put("bce.w", w_bce)
case("bce", lambda p, t: F.binary_cross_entropy(p, t, weight=w_bce), dict(p=p_bce, t=torch.rand(3, 4, 5)))
w_bcel, pw_bcel = torch.rand(3, 1, 5) + 0.5, torch.rand(5) + 0.5
put("bce_logits.w", w_bcel)
put("bce_logits.pw", pw_bcel)
case(
    "bce_logits",
    lambda x, t: F.binary_cross_entropy_with_logits(x, t, weight=w_bcel, pos_weight=pw_bcel, reduction="sum"),
    dict(x=r(3, 4, 5) * 4, t=torch.rand(3, 4, 5)),
)
t_kl = F.softmax(r(3, 4, 5), dim=1)
t_kl[0, :, 0] = torch.tensor([0.0, 0.5, 0.25, 0.25])  # a zero target: its term and gradients are 0
case("kl", lambda x, t: F.kl_div(x, t, reduction="batchmean"), dict(x=F.log_softmax(r(3, 4, 5), dim=1), t=t_kl))
case(
    "kl_log",
    lambda x, t: F.kl_div(x, t, reduction="sum", log_target=True),
    dict(x=F.log_softmax(r(3, 4, 5), dim=1), t=F.log_softmax(r(3, 4, 5), dim=1)),
)
case("huber", lambda x, t: F.huber_loss(x, t, delta=0.7), dict(x=r(3, 4, 5), t=r(3, 4, 5)))
case("lerp", lambda a, b, w: torch.lerp(a, b, w), dict(a=r(3, 4, 5), b=r(3, 4, 5), w=torch.rand(4, 1) * 3 - 1))
case("lerp_scalar", lambda a, b: torch.lerp(a, b, 0.75), dict(a=r(3, 4, 5), b=r(3, 4, 5)))
torch.set_rng_state(rng_state)

# grid_sample and affine_grid (appended from their own seed, as the block above);
# grid points out to 1.3 (or 2.2) read outside the input
rng_state = torch.get_rng_state()
torch.manual_seed(20261204)


def grid(scale=1.3):
    return (torch.rand(2, 4, 6, 2) * 2 - 1) * scale


for name, mode, pad, ac, sc in [
    ("gs_zeros", "bilinear", "zeros", False, 1.3),
    ("gs_border_ac", "bilinear", "border", True, 1.3),
    ("gs_reflect", "bilinear", "reflection", False, 2.2),
    ("gs_reflect_ac", "bilinear", "reflection", True, 2.2),
    ("gs_nearest", "nearest", "zeros", False, 1.3),
    ("gs_nearest_reflect_ac", "nearest", "reflection", True, 2.2),
]:
    case(
        name,
        lambda x, g, mode=mode, pad=pad, ac=ac: F.grid_sample(x, g, mode=mode, padding_mode=pad, align_corners=ac),
        dict(x=r(2, 3, 5, 7), g=grid(sc)),
    )
case("affine", lambda t: F.affine_grid(t, [2, 3, 5, 7], align_corners=False), dict(t=r(2, 2, 3)))
case("affine_ac", lambda t: F.affine_grid(t, [2, 3, 4, 1], align_corners=True), dict(t=r(2, 2, 3)))
torch.set_rng_state(rng_state)


def write_safetensors(path, named):
    dt = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16", torch.float64: "F64"}
    header, blobs, off = {}, [], 0
    for k in sorted(named):
        t = named[k]
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.float16 else t.numpy().tobytes()
        header[k] = {"dtype": dt[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"generator": f"scripts/make_fixtures.py, torch {torch.__version__}"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def save(name, named):
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_safetensors(out, named)
    print(f"wrote {len(named)} tensors to {os.path.normpath(out)} ({os.path.getsize(out)} bytes)")


save("heavy_ops.safetensors", tensors)

# A network of every layer (tests/tests/layers.rs builds the same one): its state
# dict under PyTorch's names, an input, the output in eval mode, and the output of
# features[:3] (Sequential slicing).
nn = torch.nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReflectionPad2d((1, 1, 1, 1)), nn.Conv2d(3, 8, 3), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
            nn.MaxPool2d(2, 2, ceil_mode=True),
            nn.Conv2d(8, 16, 3, padding=1), nn.InstanceNorm2d(16, affine=True), nn.Tanh(),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1), nn.GroupNorm(2, 8), nn.Sigmoid(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.ZeroPad2d((1, 0, 0, 1)), nn.AvgPool2d(3, 2, 1),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(), nn.Linear(32, 10), nn.Dropout(0.5),
                                  nn.LayerNorm(10))

    def forward(self, x):
        return self.head(self.features(x))


net = Net()
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            m.weight.normal_(1.0, 0.2)
            m.bias.normal_(0.0, 0.2)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.num_batches_tracked.fill_(7)
net.eval()
layer = {f"state.{k}": v for k, v in net.state_dict().items()}
x = torch.randn(2, 3, 11, 9)
with torch.no_grad():
    layer["x"] = x
    layer["y"] = net(x)
    layer["y_slice"] = net.features[:3](x)
save("layers.safetensors", {k: v.detach().contiguous() for k, v in layer.items()})

# PyTorch checkpoints for the .pth reader (tests/tests/pth.rs): several dtypes, a
# nested dict, a shared storage, a non-contiguous tensor, a scalar, and the legacy
# (non-zip) format. `pth_expected.safetensors` holds the same tensors contiguous.
base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
shared = torch.randn(2, 5)
ckpt = {
    "state_dict": {
        "conv.weight": torch.randn(4, 3, 3, 3),
        "conv.bias": torch.randn(4).half(),
        "bn.running_mean": torch.randn(4).bfloat16(),
        "bn.num_batches_tracked": torch.tensor(11, dtype=torch.int64),
        "emb.index": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "row0": shared[0],
        "row1": shared[1],
        "transposed": base.t(),
        "double": torch.randn(3, dtype=torch.float64),
    },
    "epoch": 3,
    "name": "test",
    "lr": 0.5,
}
fix = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
torch.save(ckpt, os.path.join(fix, "checkpoint.pth"))
torch.save({"w": torch.ones(2)}, os.path.join(fix, "legacy.pth"), _use_new_zipfile_serialization=False)
save("pth_expected.safetensors", {f"state_dict.{k}": v.contiguous().float() if v.dtype == torch.bfloat16 else v.contiguous()
                                  for k, v in ckpt["state_dict"].items()})
