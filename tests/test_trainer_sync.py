"""The trainer's two ways of catching a non-finite loss (attentive_gcnn.training.loop): the per-step mode checks
every loss on the host; the deferred mode skips a non-finite step on the device and checks every N steps, with no
host sync in between. Tiny linear models on random batches, on the CPU; fused optimizers as on CUDA."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from attentive_gcnn.config_dir import CONFIG_DIR
from attentive_gcnn.errors import NonFiniteLossError
from attentive_gcnn.training.loop import Trainer, build_optimizer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # build_optimizer only reads the device's type
NAN = float("nan")
FUSED_ADAM = functools.partial(torch.optim.Adam, lr=0.05, fused=True)
PLAIN_ADAM = functools.partial(torch.optim.Adam, lr=0.05)  # the for-loop kernel on a CPU
# The ops by which the host reads a device value, i.e. waits for the device.
SYNCS = {"_local_scalar_dense", "is_nonzero", "item", "nonzero"}


def batches(n: int, poison=(), seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of inputs [8, 6] and labels [8] (3 classes); a NaN input at the steps in ``poison`` (from 1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for step in range(1, n + 1):
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        if step in poison:
            x[0, 0] = NAN
        out.append((x, y))
    return out


def trainer(check_every: int | None = None, optimizer=FUSED_ADAM) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    return Trainer(model, optimizer(model.parameters()), CPU, check_every=check_every)


def weights(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def watched(t: Trainer, data, seen: list):
    """``data``, appending the weights before each step to ``seen``."""
    for batch in data:
        seen.append(weights(t))
        yield batch


# ------------------------------------------------------------------------------------------- the deferred mode
def test_the_deferred_mode_skips_exactly_the_non_finite_step_and_names_it_at_the_next_check():
    t, seen = trainer(check_every=4), []
    message = r"the training loss is nan at epoch 1, step 6 \(1 of steps 1 to 8 non-finite, their updates skipped\)"
    with pytest.raises(NonFiniteLossError, match=message):
        t.train_epoch(watched(t, batches(12, poison={6}), seen), epoch=1)
    after = weights(t)
    assert len(seen) == 8  # raised at the check after step 8: not at step 6, not at the end of the epoch
    assert same(seen[5], seen[6])  # step 6 left the weights as they were
    assert not same(seen[6], seen[7]) and not same(seen[7], after)  # steps 7 and 8 trained on
    assert all(s["step"].item() == 7 for s in t.optimizer.state.values())  # 8 steps, 1 skipped: Adam's count

    # bit for bit the per-step mode on the 7 finite batches: the skipped step left no trace in the Adam state
    reference = trainer(check_every=None)
    reference.train_epoch([b for step, b in enumerate(batches(8), start=1) if step != 6], epoch=1)
    assert same(weights(reference), after)
    for p, q in zip(t.model.parameters(), reference.model.parameters(), strict=True):
        mine, theirs = t.optimizer.state[p], reference.optimizer.state[q]
        assert all(torch.equal(mine[k], theirs[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_the_deferred_mode_trains_as_the_per_step_mode_when_every_step_is_finite():
    data = batches(10)
    deferred, per_step = trainer(check_every=3), trainer(check_every=None, optimizer=PLAIN_ADAM)
    for epoch in (1, 2):
        assert deferred.train_epoch(data, epoch) == pytest.approx(per_step.train_epoch(data, epoch), rel=1e-6)
    for a, b in zip(weights(deferred), weights(per_step), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # fused and for-loop Adam differ in round-off
    assert deferred.scaler.get_scale() == 1.0  # pinned: the numbers are those of no scaler


def test_a_non_finite_gradient_under_a_finite_loss_is_skipped_and_reported():
    t, calls = trainer(check_every=100), []

    def poison_second(grad):
        calls.append(1)
        return grad * NAN if len(calls) == 2 else grad

    t.model.weight.register_hook(poison_second)
    with pytest.raises(NonFiniteLossError, match=r"a gradient is non-finite \(loss \d\.\d+\) at epoch 3, step 2 \("):
        t.train_epoch(batches(3), epoch=3)
    assert all(s["step"].item() == 2 for s in t.optimizer.state.values())


class Masked(nn.Module):
    """A linear layer [B, 6] -> [B, 3] plus a constant mask [3]: a -inf class makes the loss of its samples infinite
    while every gradient stays finite."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.register_buffer("mask", torch.zeros(3))

    def forward(self, x):
        return self.linear(x) + self.mask


def test_an_infinite_loss_with_finite_gradients_is_skipped_too():
    torch.manual_seed(0)
    model = Masked()
    t, seen = Trainer(model, FUSED_ADAM(model.parameters()), CPU, check_every=100), []

    def masked_at_step_2(data):
        for step, (x, y) in enumerate(watched(t, data, seen), start=1):
            model.mask.zero_()[y[0]] = -torch.inf if step == 2 else 0.0
            yield x, y

    with pytest.raises(NonFiniteLossError, match=r"the training loss is inf at epoch 1, step 2 \(1 of steps 1 to 4"):
        t.train_epoch(masked_at_step_2(batches(4)), epoch=1)
    assert same(seen[1], seen[2]) and not same(seen[2], seen[3])  # the scaler saw finite gradients, yet skipped
    assert all(s["step"].item() == 3 for s in t.optimizer.state.values())


def test_a_skipped_first_step_leaves_a_fresh_optimizer():
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, fused=True)
    t = trainer(check_every=10, optimizer=sgd)
    with pytest.raises(NonFiniteLossError, match="step 1 "):
        t.train_epoch(batches(1, poison={1}), epoch=1)
    assert not t.optimizer.state  # fused SGD would have kept momentum buffers of uninitialised memory
    data = batches(4, seed=1)
    t.train_epoch(data, epoch=2)
    reference = trainer(check_every=None, optimizer=sgd)
    reference.train_epoch(data, epoch=1)
    assert same(weights(t), weights(reference))


# ------------------------------------------------------------------------------------------------- host syncs
class SyncLog(TorchDispatchMode):
    """Appends the name of every op in :data:`SYNCS` to ``log``."""

    def __init__(self, log: list):
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCS:
            self.log.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def syncs_per_step(t: Trainer, data, monkeypatch) -> tuple[list[list[str]], list[list[str]]]:
    """One epoch under :class:`SyncLog`: the syncs of each step outside the checks, and those of each check."""
    log, original = [], Trainer._check

    def logged_check(self, epoch, step):
        log.append("check")
        try:
            original(self, epoch, step)
        finally:
            log.append("done")

    def steps():
        for batch in data:
            log.append("step")
            yield batch
        log.append("end")  # then the final check and the epoch's means

    monkeypatch.setattr(Trainer, "_check", logged_check)
    with SyncLog(log):
        t.train_epoch(steps(), epoch=1)
    per_step, checks, where, ended = [], [], None, False
    for entry in log:
        if entry == "step":
            per_step.append(where := [])
        elif entry == "check":
            checks.append(where := [])
        elif entry in ("done", "end"):
            ended |= entry == "end"
            where = None if ended else per_step[-1]  # after the end: the epoch's means, not a step
        elif where is not None:
            where.append(entry)
    return per_step, checks


def test_the_deferred_mode_waits_on_the_device_only_at_its_checks(monkeypatch):
    per_step, checks = syncs_per_step(trainer(check_every=4), batches(10), monkeypatch)
    assert len(per_step) == 10 and len(checks) == 3  # after steps 4 and 8, and at the end of the epoch
    assert all(checks), checks  # each check reads the record: one sync
    assert per_step[0], "a fresh optimizer's first step reads the scaler's flag once"
    assert per_step[1:] == [[]] * 9, per_step


def test_the_per_step_mode_waits_on_the_device_every_step(monkeypatch):  # the negative control
    per_step, checks = syncs_per_step(trainer(check_every=None), batches(10), monkeypatch)
    assert len(per_step) == 10 and not checks
    assert all(per_step), per_step


# ------------------------------------------------------------------------------------- checkpoints, optimizers
def test_scaler_states_load_between_disabled_and_enabled_scalers():
    deferred, per_step = trainer(check_every=5), trainer(check_every=None)
    deferred.train_epoch(batches(2), epoch=1)
    with pytest.raises(RuntimeError, match="empty"):
        deferred.scaler.load_state_dict({})  # what torch does with the state of a disabled scaler (a CPU run)
    deferred.load_scaler_state({})
    deferred.load_scaler_state(None)  # a checkpoint without one
    per_step.load_scaler_state(deferred.scaler.state_dict())  # the reverse: nothing to load
    assert deferred.scaler.get_scale() == 1.0 and per_step.scaler.state_dict() == {}
    deferred.train_epoch(batches(2), epoch=2)


def test_an_optimizer_state_from_another_device_keeps_this_optimizers_kernels():
    cpu_run = trainer(check_every=None, optimizer=PLAIN_ADAM)  # what a CPU run saves: fused=None
    cpu_run.train_epoch(batches(2), epoch=1)
    state = copy.deepcopy(cpu_run.optimizer.state_dict())  # as from a file: no tensor shared with cpu_run
    plain = trainer(check_every=5)
    plain.optimizer.load_state_dict(copy.deepcopy(state))
    with pytest.raises(AssertionError, match="found_inf"):  # torch's own load makes the fused optimizer unfused
        plain.train_epoch(batches(2), epoch=2)
    t = trainer(check_every=5)
    t.model.load_state_dict(cpu_run.model.state_dict())
    t.load_optimizer_state(state)
    assert t.optimizer.param_groups[0]["fused"] is True
    assert all(s["step"].dtype == torch.float32 for s in t.optimizer.state.values())
    t.train_epoch(batches(2), epoch=2)
    cpu_run.train_epoch(batches(2), epoch=2)
    for a, b in zip(weights(t), weights(cpu_run), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_build_optimizer_fuses_adam_adamw_and_sgd_on_cuda_only():
    params = list(nn.Linear(2, 2).parameters())
    for make in (
        functools.partial(torch.optim.Adam, lr=1e-3),
        functools.partial(torch.optim.AdamW, lr=1e-3),
        functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
        torch.optim.SGD,
    ):
        assert build_optimizer(make, params, CUDA).param_groups[0]["fused"] is True
        assert not build_optimizer(make, params, CPU).param_groups[0]["fused"]
    chosen = functools.partial(torch.optim.Adam, lr=1e-3, foreach=False)  # the config chose the kernels
    assert not build_optimizer(chosen, params, CUDA).param_groups[0]["fused"]
    adagrad = functools.partial(torch.optim.Adagrad, lr=0.1)  # fused, but CPU-only in some torch versions
    assert not build_optimizer(adagrad, params, CUDA).param_groups[0]["fused"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "training").glob("*.yaml")))
def test_every_training_recipe_is_fused_on_cuda(name):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"training={name}"])
    optimizer = build_optimizer(instantiate(cfg.training.optimizer), nn.Linear(2, 2).parameters(), CUDA)
    assert optimizer.param_groups[0]["fused"] is True and optimizer._step_supports_amp_scaling


def test_check_every_must_be_a_positive_integer():
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="check_every"):
            trainer(check_every=bad)
