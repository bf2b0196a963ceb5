"""Writers of tiny, format-exact copies of each dataset on disk, for tests (the trainer's tests use them too).

Each ``write_*(data_dir, ...)`` creates the dataset under ``data_dir`` in the layout the real one has (so a config
with ``paths.data_dir=data_dir`` finds it) and returns a ``Written``: the dataset's directory, the overrides its
config needs (``Written.overrides``, to merge into ``dataset.source``) and the arrays written (images as the loader
returns them before normalisation).
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Written:
    root: Path  # the directory the dataset's files are in
    sizes: dict  # the `sizes` override for the dataset config
    arrays: dict = field(default_factory=dict)  # split -> (images, labels int64)
    extra: dict = field(default_factory=dict)  # other overrides the config needs (CIFAR: a small val_size)

    @property
    def overrides(self) -> dict:
        """Everything to merge into ``dataset.source`` so that the config loads these files."""
        return {"sizes": dict(self.sizes), **self.extra}


def _labels(rng: np.random.Generator, n: int, classes: int = 10) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def write_amat(data_dir, n_train_valid: int = 12, n_test: int = 10, n_valid: int = 2, seed: int = 0) -> Written:
    """``mnist_rotation_new/mnist_all_rotation_normalized_float_{train_valid,test}.amat``: rows of 784 pixels
    (multiples of 1/256, exact in text) then the label, ``%.9e`` separated by spaces. Arrays are float32
    [N, 1, 28, 28] (row-major) for train, valid, train_all and test."""
    root = Path(data_dir) / "mnist_rotation_new"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, n, name in (("train_valid", n_train_valid, "train_valid"), ("test", n_test, "test")):
        pixels = rng.integers(0, 257, size=(n, 784)) / 256
        labels = _labels(rng, n)
        rows = np.concatenate([pixels, labels[:, None].astype(np.float64)], axis=1)
        np.savetxt(root / f"mnist_all_rotation_normalized_float_{name}.amat", rows, fmt="%.9e", delimiter="   ")
        arrays[part] = (pixels.astype(np.float32).reshape(n, 1, 28, 28), labels)
    n_train = n_train_valid - n_valid
    x, y = arrays.pop("train_valid")
    arrays |= {"train": (x[:n_train], y[:n_train]), "valid": (x[n_train:], y[n_train:]), "train_all": (x, y)}
    return Written(root, {"train": n_train, "valid": n_valid, "test": n_test}, arrays)


def write_rotmnist_npz(
    data_dir, n_train: int = 10, n_valid: int = 2, n_test: int = 10, flat: bool = False, seed: int = 0
) -> Written:
    """Cohen's layout ``mnist_rotation_new/{train,valid,train_all,test}.npz``: ``data`` float32 [N, 1, 28, 28]
    (or [N, 784] if ``flat``) and ``labels`` int64 [N]; train_all = train then valid."""
    root = Path(data_dir) / "mnist_rotation_new"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        arrays[split] = (rng.random((n, 1, 28, 28), dtype=np.float32), _labels(rng, n))
    arrays["train_all"] = tuple(np.concatenate([a, b]) for a, b in zip(arrays["train"], arrays["valid"], strict=True))
    for split, (x, y) in arrays.items():
        np.savez(root / f"{split}.npz", data=x.reshape(len(x), 784) if flat else x, labels=y)
    return Written(root, {"train": n_train, "valid": n_valid, "test": n_test}, arrays)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_raw(data_dir, n_train: int = 40, n_test: int = 20, gz: bool = False, seed: int = 0) -> Written:
    """torchvision's ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (IDX, big-endian header), plain
    or only ``.gz``. ``arrays`` holds the raw ``train`` and ``test`` digits (uint8 [N, 28, 28]) and the ``pool``;
    ``sizes`` uses 60 % of the pool for train, 10 % valid and 20 % test."""
    root = Path(data_dir) / "MNIST" / "raw"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), _labels(rng, n)
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            path, data = root / f"{prefix}-{kind}-ubyte", _idx_bytes(array)
            if gz:
                path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
            else:
                path.write_bytes(data)
        arrays[split] = (x, y)
    arrays["pool"] = tuple(np.concatenate([a, b]) for a, b in zip(arrays["train"], arrays["test"], strict=True))
    total = n_train + n_test
    return Written(root, {"train": total * 6 // 10, "valid": total // 10, "test": total * 2 // 10}, arrays)


def write_cifar10(data_dir, n_per_batch: int = 6, n_test: int = 8, seed: int = 0) -> Written:
    """``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``: pickled dicts with ``data`` uint8
    [N, 3072] (channel-major rows) and ``labels`` (list of int). Arrays: uint8 [N, 3, 32, 32]."""
    root = Path(data_dir) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = {}
    for name, n in [*((f"data_batch_{i}", n_per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data, labels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), _labels(rng, n)
        batch = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": data,
            "filenames": [f"{i}.png" for i in range(n)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        parts[name] = (data.reshape(n, 3, 32, 32), labels)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    with open(root / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    train = tuple(np.concatenate(p) for p in zip(*(parts[f"data_batch_{i}"] for i in range(1, 6)), strict=True))
    arrays = {"train": train, "test": parts["test_batch"]}
    return Written(root, {"train": 5 * n_per_batch, "test": n_test}, arrays, {"val_size": n_per_batch})


def write_pcam(data_dir, n_train: int = 12, n_valid: int = 6, n_test: int = 6, seed: int = 0) -> Written:
    """``pcam/camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``: ``x`` uint8 [N, 96, 96, 3], ``y`` uint8
    [N, 1, 1, 1] in {0, 1}. Arrays: uint8 [N, 96, 96, 3] and int64 labels."""
    import h5py

    root = Path(data_dir) / "pcam"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        x, y = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8), _labels(rng, n, 2)
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_x.h5", "w") as f:
            f.create_dataset("x", data=x, chunks=(1, 96, 96, 3))
        with h5py.File(root / f"camelyonpatch_level_2_split_{split}_y.h5", "w") as f:
            f.create_dataset("y", data=y.astype(np.uint8).reshape(n, 1, 1, 1))
        arrays[split] = (x, y)
    return Written(root, {"train": n_train, "valid": n_valid, "test": n_test}, arrays)
