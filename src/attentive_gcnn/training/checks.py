"""Whether a model fits a dataset: the check that training, ``eval_only`` and the figure scripts make before use."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from attentive_gcnn.errors import ConfigError
from attentive_gcnn.models.registry import model_config, model_names


def check_fits(model: torch.nn.Module, model_name: str, source, dataset: DictConfig) -> None:
    """The model's input shape and number of classes must be the dataset's (``dataset``: its config node)."""
    want = (tuple(model.input_shape), model.num_classes)
    have = (tuple(source.input_shape), source.num_classes)
    if want != have:
        fitting = [n for n in model_names() if model_config(n).dataset == dataset.get("family")]
        hint = f"; models for this dataset: {', '.join(fitting)}" if fitting else ""
        raise ConfigError(
            f"model {model_name} takes {'x'.join(map(str, want[0]))} inputs with {want[1]} classes, but dataset "
            f"{dataset.name} gives {'x'.join(map(str, have[0]))} with {have[1]} classes{hint}"
        )
