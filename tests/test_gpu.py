"""On a CUDA device (every test here is marked ``gpu`` and skipped without one; ``make gpu-check`` runs them, see
docs/gpu.md):

- the attention layers' GPU forms compute the reference's function in float64: the batched full attention (in one
  chunk and in a chunk per output channel, and as ``auto`` chooses it) and alpha-F, with their maps and input and
  parameter gradients; the reference on CUDA equals the reference on the CPU;
- the rot-MNIST models on CUDA compute what they compute on the CPU (float64, the CPU's lean forms);
- every model takes a float32 training step, and one under float16 autocast with a gradient scaler, with finite
  gradients;
- p4cnn, fa_p4cnn and a_p4cnn compile without graph breaks, and a compiled training step agrees with the eager one.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attentive_gcnn.models import build, model_names
from attentive_gcnn.nn import AttGConv, FAttGConv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = "cuda"
F64_RTOL = 1e-10  # relative to max|expected|, as tests/conftest.py's float64 tolerance
MODEL_F64_RTOL = 1e-9  # a whole model's logits and gradients, CPU against CUDA
ROTMNIST_MODELS = ["p4cnn", "fa_p4cnn", "a_p4cnn"]
SCALER_TRIES = 8  # steps the gradient scaler may skip (halving its scale each time) before gradients must be finite
BATCH = 4


def rel_err(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max|got - expected| / max|expected| (on the CPU, in float64)."""
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    return float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


def assert_all_close(got: list[torch.Tensor], expected: list[torch.Tensor], rtol: float, what: str) -> None:
    assert len(got) == len(expected), what
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a.shape == b.shape, f"{what}: tensor {i} has shape {tuple(a.shape)}, expected {tuple(b.shape)}"
        err = rel_err(a, b)
        assert err < rtol, f"{what}: tensor {i} ({tuple(a.shape)}) is off by {err:.2e} (relative)"


def layer_results(layer, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """The layer's output, its attention maps, and the gradients of ``<y, g>`` for the input and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    maps = [m.attention_map for m in (layer.channel_attention, layer.spatial_attention) if m is not None]
    return [y, *maps, *torch.autograd.grad(y, [x, *layer.parameters()], g)]


def random_batch(model, n: int, device, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, *model.input_shape, device=device, dtype=dtype)
    return x, torch.randint(0, model.num_classes, (n,), device=device)


def logits_and_grads(model, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Training mode: the logits and the cross-entropy's gradient for every parameter."""
    model.train().zero_grad(set_to_none=True)
    logits = model(x)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), list(model.parameters()))
    return [logits, *grads]


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def missing_gradients(model) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, t in tensors.items() if not bool(torch.isfinite(t).all())]


# ------------------------------------------------------------------------------------ layers: GPU forms in float64
LAYERS = [
    pytest.param(AttGConv, {}, ["batched", "auto"], id="full"),
    pytest.param(AttGConv, {"memory_budget": 1}, ["batched"], id="full-chunk-per-channel"),
    pytest.param(AttGConv, {"stride": 2, "dilation": 2, "padding": 2}, ["batched"], id="full-strided-dilated"),
    pytest.param(FAttGConv, {}, ["batched", "auto"], id="alpha-F"),
]


@pytest.mark.parametrize(("cls", "kw", "impls"), LAYERS)
@pytest.mark.parametrize("lifting", [True, False], ids=["lifting", "group"])
@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_gpu_forms_of_the_attention_equal_the_reference_in_float64(cls, kw, impls, lifting, group):
    torch.manual_seed(0)
    ci, co, n_h = 4, 3, {"p4": 4, "p4m": 8}[group]
    cpu = cls(group, ci, co, 3, lifting=lifting, impl="reference", **{"padding": 1, **kw}).double()
    x = torch.randn(2, ci, 9, 9) if lifting else torch.randn(2, ci, n_h, 9, 9)
    x = x.double()
    with torch.no_grad():
        g = torch.randn_like(cpu(x))
    on_cpu = layer_results(cpu, x, g)

    def on_cuda(impl: str) -> list[torch.Tensor]:
        layer = copy.deepcopy(cpu).to(CUDA)
        layer.impl = impl
        return layer_results(layer, x.to(CUDA), g.to(CUDA))

    reference = on_cuda("reference")
    assert_all_close(reference, on_cpu, F64_RTOL, "the reference on CUDA against the CPU")
    for impl in impls:
        assert_all_close(on_cuda(impl), reference, F64_RTOL, f"impl={impl} against the reference on CUDA")


@pytest.mark.parametrize("name", ROTMNIST_MODELS)
def test_rotmnist_models_on_cuda_equal_the_cpu_in_float64(name, monkeypatch):
    monkeypatch.setenv("ATTENTIVE_GCNN_NATIVE", "0")  # the CPU side in torch ops: no kernel build on the GPU box
    torch.manual_seed(0)
    model = build(name, dropout=0.0).double()  # training mode without dropout: the same function on both devices
    x, y = random_batch(model, BATCH, "cpu", torch.float64)
    on_cuda = logits_and_grads(copy.deepcopy(model).to(CUDA), x.to(CUDA), y.to(CUDA))
    assert_all_close(on_cuda, logits_and_grads(model, x, y), MODEL_F64_RTOL, f"{name} on CUDA against the CPU")


# --------------------------------------------------------------------------------------- every model's training step
@pytest.mark.parametrize("name", model_names())
def test_float32_training_step(name):
    torch.manual_seed(0)
    model = build(name).to(CUDA).train()
    x, y = random_batch(model, BATCH, CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    logits = model(x)
    assert logits.shape == (BATCH, model.num_classes) and logits.dtype == torch.float32
    loss = F.cross_entropy(logits, y)
    loss.backward()
    assert torch.isfinite(loss), float(loss)
    assert not missing_gradients(model), f"parameters without a gradient: {missing_gradients(model)}"
    assert not non_finite(gradients(model)), f"non-finite gradients: {non_finite(gradients(model))}"
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)), "nothing changed"


@pytest.mark.parametrize("name", model_names())
def test_float16_autocast_training_step_with_a_gradient_scaler(name):
    torch.manual_seed(0)
    model = build(name).to(CUDA).train()
    x, y = random_batch(model, BATCH, CUDA)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(CUDA)
    for _ in range(SCALER_TRIES):  # an overflow at the initial scale is the scaler's business: it halves the scale
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(CUDA, dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        assert torch.isfinite(loss), float(loss)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        bad = non_finite(gradients(model))
        scaler.step(optimizer)
        scaler.update()
        if not bad:
            break
    assert not bad, f"non-finite gradients down to scale {scaler.get_scale():g}: {bad}"
    assert not missing_gradients(model), f"parameters without a gradient: {missing_gradients(model)}"
    assert all(g.dtype == torch.float32 for g in gradients(model).values())
    assert not non_finite(dict(model.named_parameters())), "non-finite parameters after the step"


# -------------------------------------------------------------------------------------------------- torch.compile
@pytest.fixture
def fresh_dynamo_without_tf32():
    """A reset compiler cache, and float32 convs and matmuls without TF32 (eager and compiled then agree closely)."""
    torch._dynamo.reset()
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ROTMNIST_MODELS)
def test_compile_explain_finds_no_graph_breaks(name, fresh_dynamo_without_tf32):
    torch.manual_seed(0)
    model = build(name).to(CUDA).train()
    x, _ = random_batch(model, BATCH, CUDA)
    explained = torch._dynamo.explain(model)(x)
    reasons = "\n".join(str(r) for r in explained.break_reasons)
    assert explained.graph_break_count == 0, f"{explained.graph_break_count} graph break(s):\n{reasons}"


def two_steps(forward, parameters: list, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Two Adam steps of ``forward`` on one batch: the two losses and the first step's flattened gradient."""
    optimizer = torch.optim.Adam(parameters, lr=1e-3)
    losses, first_grad = [], None
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(x), y)
        loss.backward()
        losses.append(float(loss.detach()))
        if first_grad is None:
            first_grad = torch.cat([p.grad.flatten() for p in parameters])
        optimizer.step()
    return losses, first_grad


@pytest.mark.parametrize("name", ROTMNIST_MODELS)
def test_compiled_training_step_agrees_with_eager(name, fresh_dynamo_without_tf32):
    torch.manual_seed(0)
    eager = build(name, dropout=0.0).to(CUDA).train()  # compiled dropout draws other masks than eager dropout
    model = copy.deepcopy(eager)
    x, y = random_batch(eager, BATCH, CUDA)
    eager_losses, eager_grad = two_steps(eager, list(eager.parameters()), x, y)
    losses, grad = two_steps(torch.compile(model), list(model.parameters()), x, y)
    assert all(abs(loss) < float("inf") for loss in losses), losses
    assert not non_finite(dict(model.named_parameters())), "non-finite parameters after the compiled steps"
    assert abs(losses[0] - eager_losses[0]) <= 1e-3 * abs(eager_losses[0]), (losses, eager_losses)
    cosine = float(F.cosine_similarity(grad.double(), eager_grad.double(), dim=0))
    assert cosine > 0.999, f"compiled and eager gradients differ: cosine {cosine:.5f}"
