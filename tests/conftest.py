"""Shared test helpers: dtypes with their tolerances, seeded inputs."""

from __future__ import annotations

import pytest
import torch

from attentive_gcnn.groups import P4, P4M

# Relative tolerance (to max|y|) per dtype: float64 shows exactness, float32 allows round-off.
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
# A broken case must be off by at least this much (negative controls).
BROKEN = 1e-2

GROUPS = [pytest.param(P4, id="p4"), pytest.param(P4M, id="p4m")]
DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max())


def authors_release_dir():
    """``../shared/authors_release`` beside the checkout (or $AUTHORS_RELEASE_DIR); None where absent."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("AUTHORS_RELEASE_DIR", Path(__file__).resolve().parents[2] / "shared/authors_release"))
    return path if (path / "reference_outputs.npz").is_file() else None


needs_authors_release = pytest.mark.skipif(
    authors_release_dir() is None, reason="the authors' release (../shared/authors_release) is not available"
)
