"""Every model trains a step on the ``meta`` device (shapes only: what runs on CUDA, checked without a GPU) with no
host-device sync, and the step counter counts launches, syncs and memory as documented."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attentive_gcnn.benchmark.launches import StepCounter, count_training_step
from attentive_gcnn.models import build, model_names


@pytest.mark.parametrize("name", model_names())
def test_every_model_trains_a_step_on_meta_without_syncs(name):
    result = count_training_step(build(name), batch_size=4)
    assert result["error"] is None
    assert result["syncs"] == 0, result["sync_ops"]
    assert result["launches"] > 0 and result["peak_bytes"] > 0


def test_counter_counts_kernels_not_views():
    x = torch.empty(4, 6, device="meta")
    with StepCounter("meta") as counter:
        y = torch.relu(x).view(6, 4).t()  # one kernel, two views
        (y + 1).sum()  # two kernels
    assert counter.launches == {"relu": 1, "add": 1, "sum": 1} and not counter.syncs


def test_counter_finds_syncs():
    x = torch.randn(4, 6)
    with StepCounter("cpu") as counter:
        x[x > 0]  # boolean mask: a nonzero on the device
        x.sum().item()
        x.nonzero()
    assert set(counter.syncs) >= {"index", "_local_scalar_dense", "nonzero"}
    with StepCounter("meta") as counter:
        torch.empty(3, device="meta") + torch.tensor([1.0, 2.0, 3.0]).to("meta")  # host to device copy
    assert counter.syncs == {"_to_copy": 1}


def test_counter_tracks_peak_memory():
    x = torch.empty(1024, device="meta")  # 4 KiB, before: not counted
    with StepCounter("meta") as counter:
        y = x * 2  # 4 KiB
        z = y * 2  # 8 KiB alive
        del y
        w = z + 1  # still 8 KiB alive
        del z, w
    assert counter.peak_bytes == 8192 and counter.live == 0


class Syncs(nn.Module):
    input_shape, num_classes = (3,), 2

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x[x.abs() > 0].view(-1, 3))


def test_a_model_that_syncs_fails_the_count():
    result = count_training_step(Syncs(), batch_size=2)
    assert result["syncs"] >= 1 and result["error"]
