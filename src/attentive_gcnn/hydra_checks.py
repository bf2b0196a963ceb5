"""A Hydra callback that checks the output directory before Hydra creates it, so that an unwritable
``hydra.run.dir`` (or ``hydra.sweep.dir``) gives one clear line instead of a traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from attentive_gcnn.errors import ConfigError
from attentive_gcnn.training.rundir import ensure_writable


def check_writable(path: str | Path, key: str) -> None:
    """Create ``path`` if needed and write a probe file into it; otherwise print why and exit with status 2
    (Hydra turns exceptions raised in callbacks into warnings, so this exits itself)."""
    try:
        ensure_writable(path, what="output directory", setting=f"{key}=...")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class CheckOutputDir(Callback):
    """``hydra.callbacks.check_output_dir``: the writability check, on run and on multirun start."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(OmegaConf.select(config, "hydra.run.dir"), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        check_writable(OmegaConf.select(config, "hydra.sweep.dir"), "hydra.sweep.dir")
