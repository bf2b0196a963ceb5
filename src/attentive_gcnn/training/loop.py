"""The training and evaluation loops: one epoch of SGD steps, one pass of evaluation."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from attentive_gcnn.errors import NonFiniteLossError
from attentive_gcnn.training.distributed import max_over_ranks, sum_over_ranks

CHECK_EVERY = 50
"""Steps between the deferred mode's host checks where ``train.py`` uses it (on CUDA): one device sync each."""

FUSED = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
"""Optimizers built with ``fused=True`` on CUDA: their fused kernels read the gradient scaler's inf flag on the
device (``_step_supports_amp_scaling``) in every supported torch. Others that accept ``fused`` are left alone
(Adagrad's fused kernel is CPU-only in some torch versions)."""
KERNEL_KEYS = ("fused", "foreach")  # an optimizer's choice of kernels: this run's, never a checkpoint's


def build_optimizer(
    make: Callable[..., torch.optim.Optimizer], params: Iterable, device: torch.device
) -> torch.optim.Optimizer:
    """``make(params)``, fused on CUDA where ``make`` is an optimizer of :data:`FUSED` (or a partial of one, as
    Hydra's ``_partial_: true`` gives) and its config chooses neither ``fused`` nor ``foreach``.

    A fused optimizer lets :class:`Trainer`'s deferred mode skip a non-finite step without a host sync.
    """
    cls = make.func if isinstance(make, functools.partial) else make
    chosen = make.keywords if isinstance(make, functools.partial) else {}
    fuse = device.type == "cuda" and isinstance(cls, type) and issubclass(cls, FUSED)
    return make(params, fused=True) if fuse and not {"fused", "foreach"} & set(chosen) else make(params)


class Trainer:
    """Fits ``model`` with ``optimizer`` under cross-entropy, on ``device``; optional mixed precision.

    ``amp``: autocast to bfloat16 on a CPU, to float16 with a gradient scaler on CUDA. ``progress``: show a tqdm
    bar per epoch. Losses and accuracies are averaged over samples.

    ``check_every`` chooses how a non-finite loss is caught (``docs/training.md#non-finite-losses``):

    - ``None`` (per-step mode): the host checks every loss before its update, a device sync per step; free on a CPU.
    - ``N`` (deferred mode): a step whose loss or gradients hold an inf or NaN is skipped on the device by the
      gradient scaler (pinned at scale 1 without float16) and recorded there; the host checks the record every
      ``N`` steps and at the end of the epoch (:meth:`_check`). No sync in between with a fused optimizer
      (:func:`build_optimizer`); any other optimizer makes the scaler sync once per step to skip.

    ``world`` > 1 (data parallelism, :mod:`attentive_gcnn.training.distributed`): ``model`` is this rank's DDP
    module and the loaders yield this rank's slices; each step's objective is the slice's summed loss times
    ``world`` over the whole batch's size (so DDP's average is the one-process gradient), the deferred mode is
    used (every rank skips and reports the same steps), metrics are summed over the ranks, and evaluation runs
    ``eval_model`` (the plain module) on each rank's slices.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: bool = False,
        progress: bool = False,
        check_every: int | None = None,
        world: int = 1,
        eval_model: nn.Module | None = None,
    ):
        if world > 1 and check_every is None:
            check_every = CHECK_EVERY  # a per-step check on one rank would leave the others waiting
        if check_every is not None and not (type(check_every) is int and check_every >= 1):  # bool is no int here
            raise ValueError(f"check_every={check_every!r} must be None (check every step) or a positive integer")
        self.model, self.optimizer, self.device, self.progress = model, optimizer, device, progress
        self.amp, self.check_every, self.world = amp, check_every, world
        self.eval_model = model if eval_model is None else eval_model
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaling = amp and device.type == "cuda"  # float16 gradients need a dynamic loss scale
        self.deferred = check_every is not None
        # The deferred mode needs the scaler's on-device skip even without float16: a scale pinned at 1 by
        # update(1.0) after every step (GradScaler rejects growth/backoff factors of 1): the numbers of no scaler.
        self.scaler = torch.amp.GradScaler(
            device.type, **({} if self.scaling else {"init_scale": 1.0}), enabled=self.scaling or self.deferred
        )
        self._new_scale = None if self.scaling else 1.0  # update(): the dynamic scale, or the pinned 1
        self._fused = getattr(optimizer, "_step_supports_amp_scaling", False)  # takes the inf flag in its kernel
        self.loss_fn = nn.CrossEntropyLoss()

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self, loader, desc: str):
        return tqdm(loader, desc=desc, leave=False, disable=not self.progress, dynamic_ncols=True)

    # checkpoints ----------------------------------------------------------------------------------------------
    def load_optimizer_state(self, state: dict) -> None:
        """``optimizer.load_state_dict(state)`` keeping this optimizer's kernels (``fused``, ``foreach``).

        A checkpoint saved on another device names its own, and torch would take them: a fused optimizer left
        with ``fused=None`` rejects the scaler's inf flag, and its ``step`` counts would stay on the wrong device.
        """
        groups, ours = state["param_groups"], self.optimizer.param_groups
        if len(groups) == len(ours):  # otherwise torch's own error
            kernels = [{k: g[k] for k in KERNEL_KEYS if k in g} for g in ours]
            groups = [{**saved, **mine} for saved, mine in zip(groups, kernels, strict=True)]
        self.optimizer.load_state_dict({**state, "param_groups": groups})

    def load_scaler_state(self, state: dict | None) -> None:
        """Restore a checkpoint's ``scaler.state_dict()`` where it and this trainer hold a dynamic float16 scale.

        Anything else keeps this trainer's scaler: ``{}`` (saved by a disabled scaler, e.g. a CPU run), or a
        state loaded into a disabled or pinned (scale 1) scaler.
        """
        if state and self.scaling:
            self.scaler.load_state_dict(state)

    # training -------------------------------------------------------------------------------------------------
    def train_epoch(self, loader, epoch: int) -> tuple[float, float]:
        """One pass over ``loader`` ([B, C, H, W] inputs, [B] labels): mean loss and accuracy.

        Raises NonFiniteLossError naming the epoch and step of a NaN or infinite loss: in the per-step mode as
        soon as it occurs, before that step updates the weights; in the deferred mode at the next check, the
        update of every non-finite step before it having been skipped.
        """
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count, step = 0, 0
        totals = loader.batch_sampler.totals() if self.world > 1 else None
        if self.deferred:
            self._clear_record()
        for step, (x, y) in enumerate(self._batches(loader, f"epoch {epoch}"), start=1):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(x)
                if totals is None:
                    loss = self.loss_fn(logits.float(), y)
                    summed = loss.detach() * len(y)
                else:  # this rank's share of the whole batch's mean loss, times world (DDP averages)
                    summed = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
                    loss, summed = summed * (self.world / totals[step - 1]), summed.detach()
            if not self.deferred and not torch.isfinite(loss):
                raise NonFiniteLossError(f"the training loss is {loss.item()} at epoch {epoch}, step {step}")
            self._update(loss, step)
            loss_sum += summed
            correct += (logits.detach().argmax(1) == y).sum()
            count += len(y)
            if self.deferred and step % self.check_every == 0:
                self._check(epoch, step)
        if self.deferred:
            self._check(epoch, step)
        return self._means(loss_sum, correct, count)

    def _means(self, loss_sum: torch.Tensor, correct: torch.Tensor, count: int) -> tuple[float, float]:
        """Mean loss and accuracy from the sums of this process (of all ranks, in data parallelism)."""
        if self.world > 1:
            sums = torch.stack(
                [
                    loss_sum,
                    correct.to(torch.float64),
                    torch.tensor(float(count), device=self.device, dtype=torch.float64),
                ]
            )
            loss_sum, correct, count = sum_over_ranks(sums).tolist()
        return float(loss_sum) / max(count, 1), int(correct) / max(count, 1)

    def _update(self, loss: torch.Tensor, step: int) -> None:
        """Backward of the [] loss and one optimizer step through the scaler; no host sync in the deferred mode.

        The deferred mode folds a non-finite loss into the scaler's inf flag, so that the step is skipped
        whenever the loss or a gradient is non-finite, and records the step.
        """
        # A fused optimizer creates its state in its first step even when the flag skips that step, and fused SGD
        # leaves its momentum buffers uninitialised then: until a first step is applied, read the flag (a sync)
        # and start again from an empty state after a skip.
        fresh = self._fused and self.scaler.is_enabled() and not self.optimizer.state
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.deferred:
            self.scaler.unscale_(self.optimizer)
            loss_bad = ~torch.isfinite(loss.detach())
            found = self._found_inf()
            found.masked_fill_(loss_bad, 1.0)  # stays 0.0 or 1.0: the fused kernels skip on exactly 1
            if self.world > 1:  # every rank skips and records the same steps
                flags = max_over_ranks(torch.stack([found, loss_bad.float()]))
                found.copy_(flags[0])
                loss_bad = flags[1] > 0
            self._record(step, loss, loss_bad if self.scaling else found > 0)  # float16 overflow is routine
        self.scaler.step(self.optimizer)
        if fresh and self._found_inf().item():
            self.optimizer.state.clear()
        self.scaler.update(self._new_scale)

    def _found_inf(self) -> torch.Tensor:
        """The scaler's flag for this step (float32 [], 1.0: a gradient holds an inf or NaN), before update().

        Read through GradScaler's private ``_found_inf_per_device`` (in every torch since 1.6); one device.
        """
        (found,) = self.scaler._found_inf_per_device(self.optimizer).values()
        return found

    def _clear_record(self) -> None:
        zeros = functools.partial(torch.zeros, (), device=self.device)
        self._bad_steps, self._first_bad = zeros(dtype=torch.int64), zeros(dtype=torch.int64)  # 0: none yet
        self._first_bad_loss = zeros(dtype=torch.float32)

    def _record(self, step: int, loss: torch.Tensor, bad: torch.Tensor) -> None:
        """Count a non-finite step (``bad``: bool []) and keep the first one's number and loss, on the device."""
        first = bad & (self._first_bad == 0)
        self._first_bad = torch.where(first, step, self._first_bad)
        self._first_bad_loss = torch.where(first, loss.detach().float(), self._first_bad_loss)
        self._bad_steps += bad

    def _check(self, epoch: int, step: int) -> None:
        """The deferred mode's host check, one sync: raise if a step of this epoch up to ``step`` was non-finite."""
        bad = int(self._bad_steps)
        if not bad:
            return
        first, loss = int(self._first_bad), float(self._first_bad_loss)
        what = f"a gradient is non-finite (loss {loss:.4g})" if math.isfinite(loss) else f"the training loss is {loss}"
        raise NonFiniteLossError(
            f"{what} at epoch {epoch}, step {first} ({bad} of steps 1 to {step} non-finite, their updates skipped)"
        )

    # evaluation -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, loader, desc: str = "eval") -> tuple[float, float]:
        """Mean loss and accuracy of the model in eval mode over ``loader`` (over all ranks' slices)."""
        self.eval_model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        for x, y in self._batches(loader, desc):
            if not len(y):  # a rank's empty slice of a batch smaller than the number of ranks
                continue
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.eval_model(x).float()
            loss_sum += self.loss_fn(logits, y) * len(y)
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
        return self._means(loss_sum, correct, count)
