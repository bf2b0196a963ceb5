"""The project's datasets: one source class per dataset, a protocol -> ``Splits``, and ``make_loader``.

    source = make_source(cfg.dataset.source)  # RotMNIST, RotMNISTFromMNIST, RotMNISTMini, CIFAR10 or PCam
    splits = source.splits("clean")           # or "original" (docs/method.md#protocols)
    loader = make_loader(splits.train, batch_size=128, shuffle=True, seed=seed)

Every dataset yields ``(x float32 [C, H, W], y int)`` per item and ``(x [B, C, H, W], y int64 [B])`` from
``__getitems__``; anything wrong with the files on disk raises ``DataError``.
"""

from attentive_gcnn.data.arrays import PROTOCOLS, ArrayDataset, Splits, check_protocol, scalar_stats
from attentive_gcnn.data.cifar import CIFAR10, flip_crop, holdout_indices
from attentive_gcnn.data.errors import DataError
from attentive_gcnn.data.loader import SeededBatch, SeededBatchSampler, make_loader, pass_through
from attentive_gcnn.data.pcam import PCam, PCamSplit
from attentive_gcnn.data.rotation import rotate_images
from attentive_gcnn.data.rotmnist import RotMNIST, RotMNISTFromMNIST, RotMNISTMini


def make_source(cfg):
    """``hydra.utils.instantiate(cfg)`` for a dataset source, re-raising a ``DataError`` as itself (Hydra wraps
    exceptions of the constructor in ``InstantiationException``, with the original as ``__cause__``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(cfg)
    except InstantiationException as e:
        if isinstance(e.__cause__, DataError):
            raise e.__cause__ from None
        raise


__all__ = [
    "CIFAR10",
    "PROTOCOLS",
    "ArrayDataset",
    "DataError",
    "PCam",
    "PCamSplit",
    "RotMNIST",
    "RotMNISTFromMNIST",
    "RotMNISTMini",
    "SeededBatch",
    "SeededBatchSampler",
    "Splits",
    "check_protocol",
    "flip_crop",
    "holdout_indices",
    "make_loader",
    "make_source",
    "pass_through",
    "rotate_images",
    "scalar_stats",
]
