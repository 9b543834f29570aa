#!/usr/bin/env python3
"""Generate tests/fixtures/onnx_models.safetensors with onnxruntime (CPU).

Inputs are small uint8 images (derived from assets/astronaut.jpg) so that the
committed file stays small; the tests rebuild the same f32 inputs exactly
(u8 / 255, nearest upsampling by whole factors, reflect padding).

    pip install --target /tmp/ortpy onnxruntime numpy pillow safetensors
    python3 scripts/fetch_models.py
    PYTHONPATH=/tmp/ortpy python3 scripts/make_onnx_fixtures.py [--models DIR]
"""
import argparse
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).parent))
from fetch_models import default_dest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def session(path, optimized):
    o = ort.SessionOptions()
    o.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    o.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def u8_image(size, box):
    im = Image.open(ROOT / "assets" / "astronaut.jpg").convert("RGB").crop(box).resize(size, Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)  # [h, w, 3]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=Path, default=default_dest())
    args = ap.parse_args()
    out = {}
    ms = args.models / "multistyle26.onnx"
    sess = session(ms, True)
    # 1) 64x64, style 7
    img = u8_image((64, 64), (96, 32, 416, 352))
    x = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    w = np.zeros(26, np.float32)
    w[7] = 1.0
    out["ms64_image_u8"] = img
    out["ms64_weights"] = w
    out["ms64_out"] = sess.run(None, {"image": x, "style_weights": w})[0]
    # 2) 50x70 (needs reflect padding to 52x72), blend 3:0.5,12:0.3,20:0.2
    img = u8_image((70, 50), (0, 100, 512, 466))
    w = np.zeros(26, np.float32)
    w[3], w[12], w[20] = 0.5, 0.3, 0.2
    a = img.astype(np.float32) / 255.0
    h, wd = a.shape[:2]
    a = np.pad(a, ((0, (-h) % 4), (0, (-wd) % 4), (0, 0)), mode="reflect")
    x = np.ascontiguousarray(a.transpose(2, 0, 1)[None])
    y = sess.run(None, {"image": x, "style_weights": w})[0][:, :, :h, :wd]
    out["ms50x70_image_u8"] = img
    out["ms50x70_weights"] = w
    out["ms50x70_out"] = np.ascontiguousarray(y)
    # 3) arbitrary style: predictor at 256 (input 128x128 u8 upsampled x2 nearest)
    style = u8_image((128, 128), (0, 0, 512, 512))
    s = np.repeat(np.repeat(style, 2, axis=0), 2, axis=1).astype(np.float32)[None] / 255.0
    out["ap_style_u8"] = style
    for opt, tag in ((False, "plain"), (True, "fused")):
        out[f"ap_vec_{tag}"] = session(args.models / "arbitrary_predict.onnx", opt).run(None, {"style_image": s})[0]
    # 4) transform at 384 (content 96x96 u8 upsampled x4), style vector from (3) plain
    content = u8_image((96, 96), (64, 0, 448, 384))
    cx = np.repeat(np.repeat(content, 4, axis=0), 4, axis=1).astype(np.float32)[None] / 255.0
    out["at_content_u8"] = content
    vec = out["ap_vec_plain"]
    for opt, tag in ((False, "plain"), (True, "fused")):
        t = session(args.models / "arbitrary_transform.onnx", opt)
        names = [i.name for i in t.get_inputs()]
        y = t.run(None, {names[0]: cx, names[1]: vec})[0]
        out[f"at_out_{tag}_sub8"] = np.ascontiguousarray(y[:, ::8, ::8, :])
        out[f"at_out_{tag}_mean"] = np.array([y.mean()], np.float32)
    dest = ROOT / "tests" / "fixtures" / "onnx_models.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, str(dest))
    print(f"wrote {dest} ({os.path.getsize(dest)} bytes) with onnxruntime {ort.__version__}")
    d = out["ap_vec_plain"] - out["ap_vec_fused"]
    print("predictor plain vs fused max abs diff", np.abs(d).max())


if __name__ == "__main__":
    main()
