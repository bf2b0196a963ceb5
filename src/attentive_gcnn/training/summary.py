"""``summary.json``: what a finished training run, or an ``eval_only`` evaluation, reports about itself.

Both are built by :func:`run_summary`, in this order: ``status``, ``mode``, what was run (``about``), the test
accuracy, error (%) and loss, the mode's own numbers (``details``), the normalisation, the wall time, the
provenance (:func:`attentive_gcnn.training.provenance.provenance`) and the resolved config.
"""

from __future__ import annotations

from pathlib import Path

import torch

from attentive_gcnn.training.provenance import provenance
from attentive_gcnn.training.rundir import SUMMARY
from attentive_gcnn.training.runlog import write_json


def error_percent(accuracy: float) -> float:
    """The error in percent of an accuracy given as a fraction."""
    return 100 * (1 - accuracy)


def run_summary(
    mode: str,
    about: dict,
    test_loss: float,
    test_accuracy: float,
    details: dict,
    normalization: dict,
    wall_time_s: float,
    device: torch.device,
    config: dict,
) -> dict:
    """The summary of a run in ``mode`` (``train`` or ``eval``) that tested at ``test_loss``, ``test_accuracy``."""
    return {
        "status": "complete",
        "mode": mode,
        **about,
        "test_accuracy": test_accuracy,
        "test_error": error_percent(test_accuracy),
        "test_loss": test_loss,
        **details,
        "normalization": normalization,
        "wall_time_s": wall_time_s,
        **provenance(device),
        "config": config,
    }


def write_summary(run_dir: Path, summary: dict) -> Path:
    """Write ``summary`` to ``run_dir/summary.json`` atomically (it marks the run as finished)."""
    return write_json(run_dir / SUMMARY, summary)
