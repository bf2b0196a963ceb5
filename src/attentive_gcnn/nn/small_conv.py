"""``F.conv2d`` for convs with few input channels (attention maps, the lifting conv), with a faster backward on
the CPU.

On the CPU, oneDNN's input gradient of such convs is slow. :func:`small_conv2d` computes it where it is fast:

- few input taps (``Ci * k * k <= FOLD_TAPS``, e.g. a lifting conv on a grey image): one matmul of the output
  gradient with the weight, then ``F.fold`` (col2im), several times faster than oneDNN here;
- few input channels (``Ci <= CHANNELS_LAST_CHANNELS``, e.g. ``[B, 8, X, Y] -> [B, 4, X, Y]``, 7x7): oneDNN in
  channels-last memory format, several times faster than in the default format;
- otherwise as ``F.conv2d``'s own backward.

The weight gradient is oneDNN's, in the default format (where it is fastest). Same values as ``F.conv2d`` to
round-off; elsewhere (CUDA, under ``torch.compile``, without grad mode) it is ``F.conv2d`` itself. No groups;
first-order gradients only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FOLD_TAPS = 32
CHANNELS_LAST_CHANNELS = 16


def small_conv2d(x: Tensor, weight: Tensor, bias=None, stride: int = 1, padding: int = 0, dilation: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)``, ``[B, Ci, X, Y] -> [B, Co, X', Y']``."""
    if bias is not None or x.device.type != "cpu" or torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    return _SmallConv2d.apply(x, weight, stride, padding, dilation)


def input_grad(grad: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int, dilation: int) -> Tensor:
    """The gradient of ``F.conv2d(x, weight, ...)`` with respect to ``x``, by the fastest route for its shape."""
    co, ci, k, _ = weight.shape
    if ci * k * k <= FOLD_TAPS:
        cols = torch.matmul(weight.reshape(co, -1).t(), grad.reshape(grad.shape[0], co, -1))  # [B, Ci*k*k, L]
        return F.fold(cols, x.shape[-2:], k, dilation=dilation, padding=padding, stride=stride)
    last = torch.channels_last if ci <= CHANNELS_LAST_CHANNELS else torch.contiguous_format
    conf = ([stride] * 2, [padding] * 2, [dilation] * 2)
    g = torch.ops.aten.convolution_backward(
        grad.contiguous(memory_format=last), x.contiguous(memory_format=last), weight, None, *conf,
        False, [0, 0], 1, [True, False, False],
    )[0]  # fmt: skip
    return g.contiguous()


class _SmallConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        grad = grad.contiguous()
        grad_x = input_grad(grad, x, weight, stride, padding, dilation) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            conf = ([stride] * 2, [padding] * 2, [dilation] * 2)
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, *conf, False, [0, 0], 1, [False, True, False]
            )[1]
        return grad_x, grad_w, None, None, None
