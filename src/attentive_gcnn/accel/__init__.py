"""Faster computations of the layers of :mod:`attentive_gcnn.nn`, and the rule for where the native kernels run.

:mod:`attentive_gcnn.nn` defines every layer by its straightforward computation, the ``reference``. This package
computes the same functions faster, and nn reaches it only through :func:`implementation`, which a layer calls once,
when it is built (or when its ``impl`` is changed), to choose the function its forward runs. A layer's ``impl`` is
one of :data:`IMPLS`:

- ``auto`` (the default): ``lean`` where the input is on a CPU, ``batched`` elsewhere (CUDA, ``meta``) and under
  ``torch.compile`` (which traces the batched form into one graph), chosen per call;
- ``lean``: the form shaped for CPUs (few passes over memory, native kernels);
- ``batched``: the form shaped for GPUs (few large ops, no host-device synchronisation, one graph under
  ``torch.compile``); for alpha-F and the small convs this is the reference's ops, for the full attention
  :mod:`~attentive_gcnn.accel.batched`;
- ``reference``: nn's own computation.

The modules:

- :mod:`~attentive_gcnn.accel.full`: the lean full attention, which never holds all of the intermediate responses;
- :mod:`~attentive_gcnn.accel.batched`: the batched full attention, over chunks sized by a memory budget;
- :mod:`~attentive_gcnn.accel.feature`: the lean alpha-F attention, one autograd node with few passes over its input;
- :mod:`~attentive_gcnn.accel.small_conv`: ``conv2d`` for convs with few channels (the attention maps' convs);
- :mod:`~attentive_gcnn.accel.native`: the native CPU kernels (``csrc/``) that those use, their loader, and
  :func:`~attentive_gcnn.accel.native.native_kernels`, the one rule that decides, per tensor, whether they run;
- :mod:`~attentive_gcnn.accel.allocator`: the memory allocator setting of the training and benchmark processes.
- :mod:`~attentive_gcnn.accel.precision`: under autocast (``amp=true``) every autograd Function here runs in
  float32 (``torch.amp.custom_fwd(cast_inputs=torch.float32)`` / ``custom_bwd`` for the CPU and CUDA both).

``python -m attentive_gcnn.accel`` builds the native kernels (``make install`` does).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

IMPLS = ("auto", "lean", "batched", "reference")  # how a layer is computed (see the module)

# computation -> impl -> (module, function); each takes the arguments of the reference it replaces. Missing: the
# reference's own ops are that form.
_FORMS = {
    "full_attention": {  # (layer, x), as nn's full_attention
        "lean": ("attentive_gcnn.accel.full", "lean_full_attention"),
        "batched": ("attentive_gcnn.accel.batched", "batched_full_attention"),
    },
    "feature_attention": {"lean": ("attentive_gcnn.accel.feature", "lean_feature_attend")},  # as nn's attend
    "conv2d": {"lean": ("attentive_gcnn.accel.small_conv", "small_conv2d")},  # as F.conv2d, for few channels
}


def implementation(computation: str, impl: str, reference: Callable) -> Callable:
    """The function that computes ``computation`` (a key of ``_FORMS``) for a layer built with ``impl`` (one of
    :data:`IMPLS`); it takes the reference's arguments and computes the same function (to round-off)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return _by_device(
            implementation(computation, "lean", reference), implementation(computation, "batched", reference)
        )
    form = _FORMS[computation].get(impl)
    if form is None:
        return reference
    return getattr(importlib.import_module(form[0]), form[1])


def _by_device(on_cpu: Callable, elsewhere: Callable) -> Callable:
    """``on_cpu`` where the first tensor argument is on a CPU and not under ``torch.compile``, else ``elsewhere``."""

    def compute(*args, **kwargs):
        x = next(a for a in args if isinstance(a, torch.Tensor))
        cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
        return (on_cpu if cpu else elsewhere)(*args, **kwargs)

    return compute
