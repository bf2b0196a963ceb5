"""This project's checkpoint format: a model's config and weights (plus, for training, its state).

A checkpoint is a ``torch.save`` dict with ``format`` (``"attentive_gcnn/1"``), ``model`` (the config name),
``net`` (the ``net`` node that rebuilds it), ``state_dict``, and optional extra entries (``source``, ``epoch``,
optimizer state, ...). Writes are atomic (a temporary file renamed into place), so a killed write never leaves
a half-written checkpoint, and existing files are only replaced when asked to. Each checkpoint also holds
``sha256``, a digest of everything else in it, which loading verifies: a damaged file is an error, never silently
used (checkpoints written before the digest existed load without the check).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from attentive_gcnn.errors import UserError
from attentive_gcnn.models.registry import build_from_config, model_config
from attentive_gcnn.training.runlog import atomic_path

FORMAT = "attentive_gcnn/1"


def save_checkpoint(path: str | Path, payload: dict, overwrite: bool = False) -> Path:
    """Write ``payload`` atomically to ``path``; refuse to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save({**content, "sha256": digest(content)}, tmp)
    return path


def digest(content) -> str:
    """SHA-256 of ``content`` (nested dicts, lists, tensors and plain values): tensors by dtype, shape and bytes."""
    h = hashlib.sha256()

    def feed(obj) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.flatten().view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(b"{")
            for key in sorted(obj, key=repr):
                h.update(repr(key).encode())
                feed(obj[key])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for item in obj:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    feed(content)
    return h.hexdigest()


def model_payload(name: str, model: nn.Module, **extra) -> dict:
    """The checkpoint entries that describe ``model`` (built from config ``name``)."""
    net = OmegaConf.to_container(model_config(name).net, resolve=True)
    return {"model": name, "net": net, "state_dict": model.state_dict(), **extra}


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint of this project, with a clear error for anything else."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this project (format {FORMAT!r})")
    stored = ckpt.pop("sha256", None)
    if stored is not None and digest(ckpt) != stored:
        raise ValueError(f"{path} is damaged: its contents do not match the checksum stored in it")
    return ckpt


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the model stored in a checkpoint, with its weights (in eval mode)."""
    return load_model_checkpoint(path)[0]


def load_model_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model of a checkpoint of this project with its weights, in eval mode, and the checkpoint dict.

    A missing file, one that is not a checkpoint of this project, or one whose network description or weights do
    not make a model raises :class:`UserError`.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ckpt = load_checkpoint(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    net, weights = ckpt.get("net"), ckpt.get("state_dict")
    try:
        model = build_from_config(OmegaConf.create(net))
        if not isinstance(model, nn.Module):
            raise TypeError(f"its 'net' builds a {type(model).__name__}, not a torch module")
        model.load_state_dict(weights)
    except Exception as e:  # a bad 'net' fails in OmegaConf or Hydra, bad weights in load_state_dict
        detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise UserError(f"checkpoint {path} does not hold a usable model ({type(e).__name__}: {detail})") from None
    return model.eval(), ckpt
