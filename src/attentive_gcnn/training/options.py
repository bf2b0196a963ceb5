"""The entrypoint's option checks: every invalid or incompatible top-level option of ``configs/train.yaml``,
reported together as one :class:`ConfigError`.

They run twice: in the project's Hydra callback before Hydra creates the run directory (so that a refused command
leaves no directory behind), and in the entrypoint itself, which is also called without that callback (tests, the
submitit launchers' jobs).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from attentive_gcnn.data.arrays import PROTOCOLS
from attentive_gcnn.errors import ConfigError
from attentive_gcnn.values import is_int, is_number


def check_options(cfg: DictConfig) -> None:
    """Reject invalid or incompatible options before anything is loaded or trained."""
    problems = []
    if cfg.protocol not in PROTOCOLS:
        problems.append(f"protocol={cfg.protocol} is not one of {', '.join(PROTOCOLS)}")
    if cfg.eval_only and not cfg.ckpt_path:
        problems.append("eval_only=true needs ckpt_path=PATH (a checkpoint of this project)")
    if cfg.eval_only and cfg.ckpt_path and not Path(str(cfg.ckpt_path)).is_file():
        problems.append(f"checkpoint {cfg.ckpt_path} does not exist (ckpt_path)")
    if cfg.ckpt_path and not cfg.eval_only:
        problems.append("ckpt_path is only read with eval_only=true (to continue a run, use resume=true)")
    if cfg.resume not in (True, False, "auto"):
        problems.append(f"resume={cfg.resume} must be true, false or auto")
    if cfg.eval_only and cfg.resume:
        problems.append("eval_only=true and resume exclude each other")
    if not is_int(cfg.seed) or not 0 <= cfg.seed < 2**32:
        problems.append(f"seed={cfg.seed} must be an integer from 0 to 2**32 - 1")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not is_int(cfg.training[key]) or cfg.training[key] < 1:
            problems.append(f"training.{key}={cfg.training[key]} must be a positive integer")
    if not is_number(cfg.training.lr) or not cfg.training.lr > 0:
        problems.append(f"training.lr={cfg.training.lr} must be a positive number")
    if not is_number(cfg.training.get("weight_decay", 0)) or cfg.training.get("weight_decay", 0) < 0:
        problems.append(f"training.weight_decay={cfg.training.weight_decay} must be a non-negative number")
    if not is_int(cfg.num_workers) or cfg.num_workers < 0:
        problems.append(f"num_workers={cfg.num_workers} must be a non-negative integer")
    if cfg.progress not in ("auto", True, False):
        problems.append(f"progress={cfg.progress} must be auto, true or false")
    if cfg.get("compile", False) not in (True, False):
        problems.append(f"compile={cfg.compile} must be true or false")
    name = Path(str(cfg.name))
    if name.is_absolute() or ".." in name.parts or not name.parts:
        problems.append(f"name={cfg.name} must be a relative name without '..' (it names a folder in the output dir)")
    tta = cfg.get("eval_tta", 0)
    if not is_int(tta) or tta < 0 or tta == 1:
        problems.append(f"eval_tta={tta} must be 0 (off) or the number of rotations K >= 2 (an integer)")
    elif tta and not cfg.eval_only:
        problems.append(f"eval_tta={tta} is only used with eval_only=true (it averages a checkpoint's logits)")
    if problems:
        raise ConfigError("; ".join(problems))
