#!/usr/bin/env python
"""Download the datasets into one data directory (the trainer's ``paths.data_dir``), on a machine with internet.

    python scripts/download_data.py NAME [--root DIR] [--list] [--keep-archives]

NAME: rotmnist (MNIST-rot .amat files), mnist (MNIST raw files, for rotmnist_from_mnist), cifar10, pcam or all.
Layout under DIR (default ``data``): ``mnist_rotation_new/*.amat``, ``MNIST/raw/*``, ``cifar-10-batches-py/*``,
``pcam/*.h5``. Files already present are skipped, never overwritten. Checksums: MNIST and CIFAR-10 are checked
by torchvision (md5); PCam against the md5s of the Zenodo record's metadata; MNIST-rot has no published
checksum, so the sha256 of the zip is printed, unverified. ``--list`` prints the plan and downloads nothing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROTMNIST_URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
ROTMNIST_DIR = "mnist_rotation_new"
ROTMNIST_FILES = (
    "mnist_all_rotation_normalized_float_train_valid.amat",
    "mnist_all_rotation_normalized_float_test.amat",
)
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
PCAM_RECORD = "https://zenodo.org/api/records/2546921"
PCAM_DIR = "pcam"
PCAM_FILES = tuple(f"camelyonpatch_level_2_split_{s}_{k}.h5" for s in ("train", "valid", "test") for k in ("x", "y"))
NAMES = ("rotmnist", "mnist", "cifar10", "pcam")
TIMEOUT = 60


class FetchError(Exception):
    """A download, a checksum or an archive failed."""


def _present(directory: Path, names) -> list[str]:
    return [n for n in names if (directory / n).is_file()]


@dataclass(frozen=True)
class Source:
    """One dataset: its folder under the data directory, its files, where it comes from and how to fetch it."""

    folder: str
    files: tuple[str, ...]
    origin: str
    fetch: Callable[[Path, bool], None]


def plan(name: str, root: Path) -> list[str]:
    """Human-readable lines: what ``name`` would fetch, from where, to where, and what is already there."""
    source = SOURCES[name]
    target = root / source.folder
    have = _present(target, source.files)
    lines = [f"{name}: {source.origin}", f"  -> {target}/"]
    lines += [f"     {n}{'  (present, skipped)' if n in have else ''}" for n in source.files]
    return lines


def download(url: str, dest: Path, md5: str | None = None) -> str:
    """Stream ``url`` to ``dest`` (via ``dest.part``); check ``md5`` if given; return the sha256."""
    part = dest.with_name(dest.name + ".part")
    sha, md = hashlib.sha256(), hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(part, "wb") as out:
            total, done, shown = int(response.headers.get("Content-Length") or 0), 0, -1
            while block := response.read(1 << 20):
                out.write(block)
                sha.update(block)
                md.update(block)
                done += len(block)
                if total and (pct := 100 * done // total) // 10 != shown:
                    shown = pct // 10
                    print(f"  {dest.name}: {pct}% of {total / 1e6:.0f} MB", flush=True)
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        raise FetchError(f"download of {url} failed: {e}") from None
    if md5 is not None and md.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: md5 {md.hexdigest()} != expected {md5}; nothing kept")
    part.rename(dest)
    return sha.hexdigest()


def fetch_rotmnist(root: Path, keep: bool) -> None:
    target = root / ROTMNIST_DIR
    if len(_present(target, ROTMNIST_FILES)) == len(ROTMNIST_FILES):
        print(f"rotmnist: present in {target}, skipped")
        return
    target.mkdir(parents=True, exist_ok=True)
    archive = root / "mnist_rotation_new.zip"
    if not archive.is_file():
        sha = download(ROTMNIST_URL, archive)
        print(f"rotmnist: {archive.name} sha256 {sha} (no published checksum: not verified)")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = {Path(m).name: m for m in zf.namelist()}
            for name in ROTMNIST_FILES:
                if name not in members:
                    raise FetchError(f"{archive} has no {name} (has {', '.join(members)})")
                if not (target / name).exists():
                    part = target / f"{name}.part"
                    with zf.open(members[name]) as src, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    part.rename(target / name)
    except zipfile.BadZipFile as e:
        raise FetchError(f"{archive} is not a valid zip ({e}); delete it and retry") from None
    if not keep:
        archive.unlink()
    print(f"rotmnist: {target}")


def fetch_mnist(root: Path, keep: bool) -> None:
    import torchvision

    try:
        for train in (True, False):
            torchvision.datasets.MNIST(str(root), train=train, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise FetchError(f"mnist: torchvision download failed: {e}") from None
    print(f"mnist: {root / 'MNIST' / 'raw'}")


def fetch_cifar10(root: Path, keep: bool) -> None:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise FetchError(f"cifar10: torchvision download failed: {e}") from None
    print(f"cifar10: {root / 'cifar-10-batches-py'}")


def _zenodo_md5s() -> dict[str, tuple[str, str]]:
    """{file name: (url, md5)} from the Zenodo record's metadata."""
    try:
        with urllib.request.urlopen(PCAM_RECORD, timeout=TIMEOUT) as response:
            record = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchError(f"cannot read the Zenodo record {PCAM_RECORD}: {e}") from None
    out = {}
    for f in record.get("files", []):
        key = f.get("key") or f.get("filename")
        checksum = f.get("checksum", "")
        url = f.get("links", {}).get("self") or f"https://zenodo.org/records/2546921/files/{key}?download=1"
        if key and checksum.startswith("md5:"):
            out[key] = (url, checksum[4:])
    return out


def fetch_pcam(root: Path, keep: bool) -> None:
    target = root / PCAM_DIR
    todo = [n for n in PCAM_FILES if not (target / n).is_file()]
    if not todo:
        print(f"pcam: present in {target}, skipped")
        return
    target.mkdir(parents=True, exist_ok=True)
    files = _zenodo_md5s()
    for name in todo:
        archive = target / f"{name}.gz"
        if f"{name}.gz" not in files:
            raise FetchError(f"the Zenodo record lists no {name}.gz")
        url, md5 = files[f"{name}.gz"]
        if not archive.is_file():
            download(url, archive, md5)
            print(f"pcam: {archive.name} md5 {md5} verified")
        part = target / f"{name}.part"
        try:
            with gzip.open(archive, "rb") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError) as e:
            part.unlink(missing_ok=True)
            raise FetchError(f"cannot decompress {archive} ({e}); delete it and retry") from None
        part.rename(target / name)
        if not keep:
            archive.unlink()
    print(f"pcam: {target}")


SOURCES = {
    "rotmnist": Source(ROTMNIST_DIR, ROTMNIST_FILES, ROTMNIST_URL, fetch_rotmnist),
    "mnist": Source("MNIST/raw", MNIST_FILES, "torchvision.datasets.MNIST(download=True)", fetch_mnist),
    "cifar10": Source("cifar-10-batches-py", CIFAR_FILES, "torchvision.datasets.CIFAR10(download=True)", fetch_cifar10),
    "pcam": Source(PCAM_DIR, PCAM_FILES, f"{PCAM_RECORD} (*.h5.gz, decompressed)", fetch_pcam),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=(*NAMES, "all"), help="dataset to fetch")
    parser.add_argument("--root", type=Path, default=Path("data"), help="data directory (default: data)")
    parser.add_argument("--list", "--dry-run", dest="list", action="store_true", help="print the plan only")
    parser.add_argument("--keep-archives", action="store_true", help="keep the .zip/.gz after extracting")
    args = parser.parse_args(argv)
    names = NAMES if args.name == "all" else (args.name,)
    root = args.root.resolve()
    if args.list:
        for name in names:
            print("\n".join(plan(name, root)))
        return 0
    root.mkdir(parents=True, exist_ok=True)
    try:
        for name in names:
            SOURCES[name].fetch(root, args.keep_archives)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"done; use: python -m attentive_gcnn.train paths.data_dir={root}  (or export AGCNN_DATA_DIR={root})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
