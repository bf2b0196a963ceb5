"""What a training step asks of a GPU, counted without one: kernel launches, host-device syncs and peak memory.

A training step (forward, cross-entropy, backward, Adam step with ``foreach`` kernels, as on CUDA) runs on the
``meta`` device, which computes shapes only, under a :class:`StepCounter`: a dispatch mode below autograd that sees
every aten op the step issues.

- **launches**: ops with a tensor on the device that compute something; views, aliases, allocations and
  detaches launch no kernel and are not counted;
- **syncs**: ops that make the host wait for the device on CUDA: reading a value (``item``, ``_local_scalar_dense``,
  ``is_nonzero``, ``equal``), outputs whose shape depends on the data (``nonzero``, boolean-mask indexing,
  ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``), and copies from host memory to
  the device. On ``meta`` most of these cannot run at all, so a model with one fails the count (reported as a
  sync) instead of hiding it;
- **peak memory**: the largest total of the device tensors alive at once (every op's new outputs, freed when the
  tensor is), the model, its gradients and the optimizer state included.

The counts do not depend on the machine's noise: they are what the step would issue on a GPU where the batched
attention plans with the ``meta`` budget (:mod:`attentive_gcnn.accel.batched`).
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

NO_KERNEL = {
    aten.detach.default,
    aten.alias.default,
    aten.empty.memory_format,
    aten.empty_strided.default,
    aten.empty_like.default,
    aten.new_empty.default,
    aten.new_empty_strided.default,
    aten.lift_fresh.default,
}
DATA_DEPENDENT = {
    aten._local_scalar_dense.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.nonzero_static.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}


def _tensors(args, kwargs) -> list[torch.Tensor]:
    return [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]


class StepCounter(TorchDispatchMode):
    """Counts the launches and syncs of the ops issued for ``device`` while active, and tracks its live bytes.

    ``launches`` and ``syncs`` are Counters by op name; ``peak_bytes`` the largest live total of device tensors
    created while active, over ``base_bytes`` (what existed before, e.g. the model).
    """

    def __init__(self, device: str = "meta", base_bytes: int = 0):
        super().__init__()
        self.device = device
        self.launches: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.live = self.peak_bytes = base_bytes

    def _is_sync(self, func, args, kwargs, tensors) -> bool:
        if func in (aten._to_copy.default, aten.copy_.default):  # host memory to the device
            devices = {t.device.type for t in tensors}
            target = kwargs.get("device")
            return "cpu" in devices and (self.device in devices or getattr(target, "type", target) == self.device)
        if not any(t.device.type == self.device for t in tensors):  # host work (e.g. the optimizer's step counts)
            return False
        if func in DATA_DEPENDENT and not (func is aten.repeat_interleave.Tensor and kwargs.get("output_size")):
            return True
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            return any(i is not None and i.dtype == torch.bool for i in indices)
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = _tensors(args, kwargs)
        on_device = any(t.device.type == self.device for t in tensors) or str(kwargs.get("device", "")).startswith(
            self.device
        )
        name = str(func.overloadpacket.__name__)
        if self._is_sync(func, args, kwargs, tensors):
            self.syncs[name] += 1
        elif on_device and func not in NO_KERNEL and not func.is_view:
            self.launches[name] += 1
        out = func(*args, **kwargs)
        if not func.is_view and not name.endswith("_") and func._overloadname != "out":
            for t in _tensors(out, {}):
                if t.device.type == self.device and t._base is None:
                    self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        size = t.untyped_storage().nbytes()
        self.live += size
        self.peak_bytes = max(self.peak_bytes, self.live)
        weakref.finalize(t, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size


def count_training_step(model: torch.nn.Module, batch_size: int, steps: int = 2) -> dict:
    """Launches, syncs and peak bytes of the last of ``steps`` training steps of ``model`` (moved to ``meta``) at
    ``batch_size``, on random inputs of its input shape; the first steps create the optimizer state. A step that
    fails on ``meta`` (an op that needs the data) is reported with ``error`` and counts as a sync."""
    model = model.to("meta").train()
    x = torch.empty(batch_size, *model.input_shape, device="meta")
    y = torch.zeros(batch_size, dtype=torch.long, device="meta")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    try:
        for _ in range(steps - 1):
            step()
        state = sum(
            t.untyped_storage().nbytes()
            for s in optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor) and t.device.type == "meta"
        )
        params = sum(p.untyped_storage().nbytes() for p in model.parameters())
        counter = StepCounter("meta", base_bytes=params + state + x.untyped_storage().nbytes())
        with counter:
            step()
    except (NotImplementedError, RuntimeError) as error:
        return dict(launches=None, syncs=1, sync_ops={}, peak_bytes=None, error=str(error).splitlines()[0])
    return dict(
        launches=sum(counter.launches.values()),
        syncs=sum(counter.syncs.values()),
        sync_ops=dict(counter.syncs),
        peak_bytes=counter.peak_bytes,
        error=None,
    )
