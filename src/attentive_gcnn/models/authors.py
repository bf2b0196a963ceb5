"""Load checkpoints of the authors' code (``dwromero/att_gconvs``) into this project's models.

Their state dicts use the same key names as this project for the models they released (``c1.weight``,
``c2.channel_attention.weight_fc1``, ``block_layers.0.conv.weight``, ...), with a ``module.`` prefix when
trained under ``nn.DataParallel``. Shapes differ only by singleton axes: the Z2 models here are group models
on the trivial group, so a planar weight ``[Co, Ci, k, k]`` becomes ``[Co, Ci, 1, k, k]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from attentive_gcnn.models.registry import build


def convert_state_dict(theirs: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the authors' state dict onto ``model``'s keys and shapes; raise ``ValueError`` on any mismatch."""
    theirs = {k.removeprefix("module."): v for k, v in theirs.items()}
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: missing {missing[:6]}"
            f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
            " (is it a checkpoint of another model? note: the authors' 'f_att_p4m_densenet' run is p4m_densenet)"
        )
    converted = {}
    for key, target in ours.items():
        value = theirs[key]
        if value.numel() != target.numel() or [s for s in value.shape if s != 1] != [s for s in target.shape if s != 1]:
            raise ValueError(f"{key}: checkpoint shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
        converted[key] = value.reshape(target.shape).to(target.dtype)
    return converted


def from_authors_checkpoint(path: str | Path, name: str) -> nn.Module:
    """This project's model ``name`` carrying the weights of an authors' checkpoint (a state dict ``.pth``)."""
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(theirs, dict) or not all(isinstance(v, torch.Tensor) for v in theirs.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    model = build(name)
    model.load_state_dict(convert_state_dict(theirs, model))
    return model
