"""The precision of the package's autograd Functions under autocast: float32.

Every ``torch.autograd.Function`` of :mod:`attentive_gcnn.accel` decorates its ``forward`` with
:func:`float32_forward` and its ``backward`` with :func:`float32_backward`. Under autocast (``amp=true``), forward then
receives its floating-point tensor arguments cast to float32 (float64 ones stay as they are) and runs with autocast
off, and backward runs with autocast off too: inside, every tensor has one dtype, as the fused CPU kernels (float32
and float64 only) and the hand-written backward passes need. The Functions' outputs are float32, which the ops after
them accept (autocast casts their inputs, and type promotion mixes them with float16/bfloat16 tensors); autograd
casts each returned gradient to its input's dtype. Outside autocast both decorators do nothing.

They are ``torch.amp.custom_fwd(device_type=..., cast_inputs=torch.float32)`` and ``torch.amp.custom_bwd`` applied
for each device type in :data:`AUTOCAST_DEVICES`: each acts only where autocast is on for its device type and casts
only tensors on that device, so the same Function is right on the CPU (bfloat16 or float16 autocast) and on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

AUTOCAST_DEVICES = ("cpu", "cuda")


def float32_forward(forward: Callable) -> Callable:
    """``forward`` of a Function, run in float32 with autocast off wherever autocast is on (see the module)."""
    for device_type in AUTOCAST_DEVICES:
        forward = torch.amp.custom_fwd(forward, device_type=device_type, cast_inputs=torch.float32)
    return forward


def float32_backward(backward: Callable) -> Callable:
    """``backward`` of a Function whose forward is :func:`float32_forward`: with autocast off, as that forward."""
    for device_type in AUTOCAST_DEVICES:
        backward = torch.amp.custom_bwd(backward, device_type=device_type)
    return backward
