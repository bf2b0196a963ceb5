"""What the figure scripts share: a checkpoint's model, a dataset split, (de)normalisation, output files, errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from attentive_gcnn.checkpoint import load_model_checkpoint  # noqa: F401 (re-exported for the scripts)
from attentive_gcnn.config_dir import CONFIG_DIR
from attentive_gcnn.errors import UserError
from attentive_gcnn.outputs import check_output, save_figure  # noqa: F401 (save_figure re-exported)
from attentive_gcnn.rotations import denormalize, normalize  # noqa: F401 (re-exported for the scripts)
from attentive_gcnn.training.checks import check_fits

SPLITS = ("train", "valid", "test")


def dataset_names() -> list[str]:
    """The dataset configs (``configs/dataset/NAME.yaml``), sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / "dataset").glob("*.yaml"))


@dataclass
class SplitData:
    """One split of a dataset: items ``(x float32 [C, H, W] normalised, y)`` and the normalisation used."""

    dataset: Dataset
    normalization: dict  # {"mean": [C or 1 floats], "std": [...]}
    name: str  # the dataset config name
    split: str
    source: object
    config: DictConfig  # the dataset config node


def load_split(
    dataset: str = "rotmnist_mini",
    split: str = "test",
    data_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> SplitData:
    """``split`` (train, valid or test) of the clean protocol (docs/method.md#protocols) of dataset config ``dataset``.

    ``data_dir`` sets ``paths.data_dir`` (default: the trainer's, ``$AGCNN_DATA_DIR`` or ``./data``);
    ``overrides`` are further Hydra overrides (e.g. ``dataset.source.sizes={train:30,test:8}``). Missing or
    broken data raise :class:`UserError` (``DataError``) with the command that fetches it.
    """
    from hydra import compose, initialize_config_dir

    from attentive_gcnn.data import make_source

    if dataset not in dataset_names():
        raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(dataset_names())}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={dataset}", *overrides])
    if data_dir is not None:  # set after composing: any path, no override grammar to escape
        cfg.paths.data_dir = str(Path(data_dir).resolve())
    source = make_source(cfg.dataset.source)
    splits = source.splits("clean")
    ds = {"train": splits.train, "valid": splits.select, "test": splits.test}[split]
    return SplitData(ds, dict(splits.normalization), dataset, split, source, cfg.dataset)


def check_model_fits(model: nn.Module, model_name: str, data: SplitData) -> None:
    """The model must take the dataset's input shape and classes (:class:`UserError` otherwise)."""
    check_fits(model, model_name, data.source, data.config)


def prepare_output(paths: Sequence[str | Path], force: bool) -> list[Path]:
    """Check the outputs before any work (see :func:`attentive_gcnn.outputs.check_output`); nothing is created
    here: :func:`attentive_gcnn.outputs.make_parent` makes the folder when the file is written."""
    return [check_output(p, force) for p in paths]


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report_user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a script's ``main``: a :class:`UserError` becomes one ``error:`` line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped
