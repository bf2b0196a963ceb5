"""Faster computations of the layers of :mod:`attentive_gcnn.nn`, and the rule for where the native kernels run.

:mod:`attentive_gcnn.nn` defines every layer by its straightforward computation, the ``reference``. This package
computes the same functions faster (``lean``, the default), and nn reaches it only through :func:`implementation`,
which a layer calls once, when it is built (or when its ``impl`` is changed), to choose the function its forward
runs:

- :mod:`~attentive_gcnn.accel.full`: the lean full attention, which never holds all of the intermediate responses;
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

IMPLS = ("lean", "reference")  # how a layer is computed: the accelerated form (default) or the straightforward one

# computation -> (module, function) of its lean form; each takes the arguments of the reference it replaces
_LEAN = {
    "full_attention": ("attentive_gcnn.accel.full", "lean_full_attention"),  # (layer, x), as nn's full_attention
    "feature_attention": ("attentive_gcnn.accel.feature", "lean_feature_attend"),  # as nn's attend
    "conv2d": ("attentive_gcnn.accel.small_conv", "small_conv2d"),  # as F.conv2d, for convs with few channels
}


def implementation(computation: str, impl: str, reference: Callable) -> Callable:
    """The function that computes ``computation`` (a key of ``_LEAN``) for a layer built with ``impl``:
    ``reference`` itself for ``"reference"``, else its lean form here, which takes the same arguments and computes
    the same function (to round-off)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return reference
    module, name = _LEAN[computation]
    return getattr(importlib.import_module(module), name)
