"""``torch.compile`` traces the models' GPU path (the default ``auto`` under the compiler: the batched full
attention, alpha-F as op-by-op attention) into one graph, without graph breaks, and a compiled step trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attentive_gcnn.models import build

MODELS = ["p4cnn", "fa_p4cnn", "a_p4cnn", "romhog_p4cnn"]  # every layer kind of every model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", MODELS)
def test_no_graph_breaks(name):
    model = build(name).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 1, 28, 28))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def test_no_graph_breaks_when_the_full_attention_works_in_chunks():
    model = build("a_p4cnn", attention_memory_gib=0.01).train()  # c2..c6 in five chunks, recomputed
    explanation = torch._dynamo.explain(model)(torch.randn(2, 1, 28, 28))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]


@pytest.mark.slow  # `make test-full` (keeps `make test` within its time budget)
def test_a_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    model = build("a_p4cnn", attention_impl="batched").double()
    x, y = torch.randn(3, 1, 28, 28, dtype=torch.float64), torch.tensor([1, 2, 3])
    model.eval()  # no dropout: the two runs see the same function
    eager_grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled_grads = torch.autograd.grad(F.cross_entropy(compiled(x), y), list(model.parameters()))
    for a, b in zip(eager_grads, compiled_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
