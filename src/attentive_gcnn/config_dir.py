"""Where the repository's Hydra configs are: ``configs/`` of the checkout the package runs from.

The package is installed from a checkout in editable mode (``make install``), so ``configs/`` sits beside ``src/``.
The training entrypoint, the model registry, the figure scripts, ``scripts/reproduce.py`` and the tests read the
configs from :data:`CONFIG_DIR`.
"""

from __future__ import annotations

from pathlib import Path

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout: src/attentive_gcnn/ -> the repository's root
CONFIG_DIR = REPO_DIR / "configs"
