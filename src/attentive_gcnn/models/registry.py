"""Model configs (``configs/model/NAME.yaml``) and the one way to build them: ``build(name, **overrides)``.

A model config is in Hydra's global package: its defaults list picks the model's training recipe
(``override /training: ...``) and its ``model`` node holds ``net`` (what is instantiated) and metadata.
"""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from attentive_gcnn.config_dir import CONFIG_DIR

MODEL_DIR = CONFIG_DIR / "model"


def model_names() -> list[str]:
    """Every model config name, sorted."""
    if not MODEL_DIR.is_dir():
        raise FileNotFoundError(
            f"model configs not found at {MODEL_DIR}: install the package from a checkout in editable mode "
            "(`make install`, i.e. `pip install -e .`) so that the repository's configs/ sits beside src/"
        )
    return sorted(p.stem for p in MODEL_DIR.glob("*.yaml"))


def model_config(name: str) -> DictConfig:
    """The ``model`` node of ``configs/model/NAME.yaml``: ``net`` and metadata (paper name, dataset, params)."""
    path = MODEL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return OmegaConf.load(path).model


def build_from_config(net: DictConfig | dict, **overrides) -> nn.Module:
    """Instantiate a model from a ``net`` node (``_target_`` plus arguments), with keyword overrides."""
    cfg = OmegaConf.merge(net, overrides) if overrides else net
    try:
        return instantiate(cfg, _convert_="all")
    except InstantiationException as e:  # surface the model's own error (bad group, attention, ...)
        if isinstance(e.__cause__, (ValueError, TypeError)):
            raise e.__cause__ from None
        raise


def build(name: str, **overrides) -> nn.Module:
    """The module that ``configs/model/NAME.yaml`` describes; ``overrides`` replace arguments of its ``net``."""
    return build_from_config(model_config(name).net, **overrides)
