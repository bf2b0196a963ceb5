"""``F.conv2d`` for convs with few channels (attention maps, the lifting conv), faster on the CPU.

Where the native kernels apply (:func:`~attentive_gcnn.accel.native.native_kernels`: float CPU tensors), stride-1
convs with few channels (``Ci * Co <= LANE_CHANNELS``, ``padding <= d (k - 1)``) run as the lane-tile kernels
``lane_conv_forward`` / ``lane_conv_backward`` (every vector lane one sample: no lane idles on small maps).
Otherwise, on the CPU, oneDNN's input gradient of such convs is slow, and :func:`small_conv2d` computes it where it
is fast:

- few input taps (``Ci * k * k <= FOLD_TAPS``, e.g. a lifting conv on a grey image): one matmul of the output
  gradient with the weight, then ``F.fold`` (col2im), faster than oneDNN's in isolated timings here;
- few input channels (``Ci <= CHANNELS_LAST_CHANNELS``, e.g. ``[B, 8, X, Y] -> [B, 4, X, Y]``, 7x7): oneDNN in
  channels-last memory format, several times faster than in the default format;
- otherwise as ``F.conv2d``'s own backward.

The weight gradient is oneDNN's, in the default format (where it is fastest). Same values as ``F.conv2d`` to
round-off; elsewhere (CUDA, under ``torch.compile``) it is ``F.conv2d`` itself. No groups; first-order gradients
only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attentive_gcnn.accel.native import native_kernels
from attentive_gcnn.accel.precision import float32_backward, float32_forward

FOLD_TAPS = 32
CHANNELS_LAST_CHANNELS = 16
LANE_CHANNELS = 256


def _lane_kernels(x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int):
    """The fused kernels if this conv runs as ``lane_conv_forward``, else None."""
    co, ci, k, _ = weight.shape
    if stride != 1 or not 0 <= padding <= dilation * (k - 1) or ci * co > LANE_CHANNELS or weight.dtype != x.dtype:
        return None
    return native_kernels(x)


def small_conv2d(x: Tensor, weight: Tensor, bias=None, stride: int = 1, padding: int = 0, dilation: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)``, ``[B, Ci, X, Y] -> [B, Co, X', Y']``."""
    if bias is not None or x.device.type != "cpu" or torch.compiler.is_compiling():
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    kernels = _lane_kernels(x, weight, stride, padding, dilation)
    if kernels is not None:
        if not torch.is_grad_enabled():
            return kernels.lane_conv_forward(x, weight, padding=padding, dilation=dilation)
        return _LaneConv2d.apply(x, weight, padding, dilation, kernels)
    if not torch.is_grad_enabled():
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    return _SmallConv2d.apply(x, weight, stride, padding, dilation)


class _LaneConv2d(torch.autograd.Function):
    """A stride-1 conv with few channels as the lane-tile kernels: ``(x, weight, padding, dilation, kernels)``."""

    @staticmethod
    @float32_forward
    def forward(ctx, x, weight, padding, dilation, kernels):
        ctx.save_for_backward(x, weight)
        ctx.conf, ctx.kernels = dict(padding=padding, dilation=dilation), kernels
        return kernels.lane_conv_forward(x, weight, **ctx.conf)

    @staticmethod
    @float32_backward
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x, grad_w = ctx.kernels.lane_conv_backward(grad, x, weight, **ctx.conf, need_x=need_x, need_w=need_w)
        return (grad_x if need_x else None), (grad_w if need_w else None), None, None, None


def _fold_input_grad(grad: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    co, _, k, _ = weight.shape
    cols = torch.matmul(weight.reshape(co, -1).t(), grad.reshape(grad.shape[0], co, -1))  # [B, Ci*k*k, L]
    return F.fold(cols, x.shape[-2:], k, dilation=dilation, padding=padding, stride=stride)


def conv2d_grads(grad: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int, need: tuple):
    """The gradients of ``F.conv2d(x, weight, None, stride, padding, dilation)`` with respect to ``x`` and
    ``weight`` (each None unless ``need`` asks for it), the input gradient by the fastest route for its shape."""
    co, ci, k, _ = weight.shape
    conf = ([stride] * 2, [padding] * 2, [dilation] * 2)
    backward = torch.ops.aten.convolution_backward
    grad_x = grad_w = None
    if need[0] and ci * k * k <= FOLD_TAPS:
        grad_x = _fold_input_grad(grad, x, weight, stride, padding, dilation)
    elif need[0] and ci <= CHANNELS_LAST_CHANNELS:
        last = torch.channels_last
        grad_x = backward(
            grad.contiguous(memory_format=last), x.contiguous(memory_format=last), weight, None, *conf,
            False, [0, 0], 1, [True, False, False],
        )[0].contiguous()  # fmt: skip
    rest = [need[0] and grad_x is None, bool(need[1])]  # what is left, in one call in the default format
    if any(rest):
        g_x, g_w, _ = backward(grad, x, weight, None, *conf, False, [0, 0], 1, [*rest, False])
        grad_x, grad_w = (g_x if rest[0] else grad_x), (g_w if rest[1] else None)
    return grad_x, grad_w


class _SmallConv2d(torch.autograd.Function):
    @staticmethod
    @float32_forward
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @staticmethod
    @float32_backward
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = conv2d_grads(grad.contiguous(), x, weight, *ctx.conf, tuple(ctx.needs_input_grad[:2]))
        return grad_x, grad_w, None, None, None
