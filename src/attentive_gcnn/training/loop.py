"""The training and evaluation loops: one epoch of SGD steps, one pass of evaluation."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from tqdm import tqdm

from attentive_gcnn.errors import NonFiniteLossError


class Trainer:
    """Fits ``model`` with ``optimizer`` under cross-entropy, on ``device``; optional mixed precision.

    ``amp``: autocast to bfloat16 on a CPU, to float16 with a gradient scaler on CUDA. ``progress``: show a tqdm
    bar per epoch. Losses and accuracies are averaged over samples.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        amp: bool = False,
        progress: bool = False,
    ):
        self.model, self.optimizer, self.device, self.progress = model, optimizer, device, progress
        self.amp = amp
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
        self.loss_fn = nn.CrossEntropyLoss()

    def _autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _batches(self, loader, desc: str):
        return tqdm(loader, desc=desc, leave=False, disable=not self.progress, dynamic_ncols=True)

    def train_epoch(self, loader, epoch: int) -> tuple[float, float]:
        """One pass over ``loader`` ([B, C, H, W] inputs, [B] labels): mean loss and accuracy.

        Raises NonFiniteLossError (naming the epoch and step) as soon as a loss is NaN or infinite, before that
        step updates the weights.
        """
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        for step, (x, y) in enumerate(self._batches(loader, f"epoch {epoch}"), start=1):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(x)
                loss = self.loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"the training loss is {loss.item()} at epoch {epoch}, step {step}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            count += len(y)
        return float(loss_sum) / max(count, 1), int(correct) / max(count, 1)

    @torch.no_grad()
    def evaluate(self, loader, desc: str = "eval") -> tuple[float, float]:
        """Mean loss and accuracy of the model in eval mode over ``loader``."""
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        count = 0
        for x, y in self._batches(loader, desc):
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.model(x).float()
            loss_sum += self.loss_fn(logits, y) * len(y)
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
        return float(loss_sum) / max(count, 1), int(correct) / max(count, 1)
