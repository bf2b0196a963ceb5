"""The lean alpha-F attention ``x' = x * (1 - a_C * a_X)``: nn's ``attend`` as one autograd node, few passes over ``x``.

The attention maps come from small tensors (statistics ``[B, Ci, n]`` and ``[B, n, X, Y]``) through the modules'
MLP and conv; everything of the size of ``x`` is done by a few passes, in forward and backward:

- channel statistics: spatial mean, and the spatial max with its arg-max (its gradient goes there only);
- spatial statistics of ``g = a_C * x``: ``mean_c g``, and ``max_c g`` with its arg-max c* (its gradient goes to
  ``x`` and ``a_C`` at c* only);
- the product ``x * (1 - a_C a_X)`` (``one_minus_product``; ``x * a_C a_X`` for ``product``), computed as the
  reference's ``x - a_X (a_C x)``: equal to float round-off.

The passes run as the fused kernels of ``csrc/feature_attend.cpp`` where the native kernels apply
(:func:`~attentive_gcnn.accel.native.native_kernels`: float CPU tensors), else as torch ops (:class:`TorchPasses`, any
device); the two agree to round-off. Under ``torch.compile`` the attention runs op by op (nn's ``attend``), which the
compiler fuses itself.
The small graphs from statistics to maps are differentiated with :func:`torch.autograd.grad` inside backward.
Shapes: ``x [B, Ci, n, X, Y]`` on G, ``[B, Ci, X, Y]`` on the plane (n = 1); inside, ``x`` is ``[B, Ci, n, P]``,
the channel map ``a [B, Ci, n]`` and the spatial map ``a_x [B, n, P]``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attentive_gcnn.accel.native import native_kernels
from attentive_gcnn.accel.precision import float32_backward, float32_forward
from attentive_gcnn.nn.attention.combine import COMBINES, attend


def lean_feature_attend(x: Tensor, channel: nn.Module | None, spatial: nn.Module | None, combine: str) -> Tensor:
    """``attend(x, channel, spatial, combine)`` for alpha-F modules (spatial attention on pooled channel statistics).

    Keeps the maps in the modules as their own ``forward`` would. Under ``torch.compile``: ``attend`` itself.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if channel is None and spatial is None:
        return x
    if torch.compiler.is_compiling():
        return attend(x, channel, spatial, combine)
    params = [p for m in (channel, spatial) if m is not None for p in m.parameters()]
    build_graph = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return FeatureAttend.apply(x, channel, spatial, combine == "product", build_graph, *params)


class TorchPasses:
    """The passes over ``x [B, C, n, P]`` in torch ops. ``a`` and ``a_x`` are None where that part is off."""

    @staticmethod
    def channel_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Spatial mean, max and arg-max, ``[B, C, n]`` each."""
        maximum, pos = x.max(dim=-1)
        return x.mean(dim=-1), maximum, pos

    @staticmethod
    def spatial_stats(x: Tensor, a: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Channel mean, max and arg-max of ``a x``, ``[B, n, P]`` each."""
        g = x if a is None else x * a[..., None]
        maximum, winner = g.max(dim=1)
        return g.sum(dim=1) / x.shape[1], maximum, winner

    @staticmethod
    def apply(x: Tensor, a: Tensor | None, a_x: Tensor | None, product: bool) -> Tensor:
        """``x - (a x) a_x``, or ``(a x) a_x`` with ``product``."""
        g = x if a is None else x * a[..., None]
        if a_x is not None:
            return g * a_x[:, None] if product else torch.addcmul(x, g, a_x[:, None], value=-1)
        return g if product else x - g

    @staticmethod
    def spatial_map_grad(grad: Tensor, x: Tensor, a: Tensor | None, sign: float) -> Tensor:
        """``sign * sum_c grad x a``, ``[B, n, P]``."""
        return sign * (grad * x if a is None else grad * x * a[..., None]).sum(dim=1)

    @staticmethod
    def backward_rest(grad, x, a, a_x, g_mean, g_max, winner, sign, product, need_x, need_a):
        """With ``g_c = sign grad a_x + g_mean / C + [c = winner] g_max`` (``sign grad`` without a spatial map):
        ``(g_c a + grad, or g_c a with product; sum_p g_c x)``, each None where not needed."""
        g_c = sign * grad * a_x[:, None] if a_x is not None else sign * grad
        if a_x is not None:
            g_c = g_c + g_mean[:, None] / x.shape[1]
            g_c.scatter_add_(1, winner[:, None], g_max[:, None])
        g_a = (g_c * x).sum(dim=-1) if need_a else None
        grad_x = None
        if need_x:
            grad_x = g_c if a is None else g_c * a[..., None]
            if not product:
                grad_x = grad_x.add_(grad)
        return grad_x, g_a

    @staticmethod
    def add_channel_stats_grad(grad_x: Tensor, g_avg: Tensor, g_max: Tensor, pos: Tensor) -> None:
        """``grad_x += g_avg / P`` and ``g_max`` at the spatial arg-max ``pos``, in place."""
        grad_x.add_(g_avg[..., None], alpha=1 / grad_x.shape[-1])
        grad_x.scatter_add_(-1, pos[..., None], g_max[..., None])


def passes_for(x: Tensor):
    """The fused kernels (the compiled module: :class:`TorchPasses`' functions, for contiguous inputs) where the native
    kernels apply to ``x``, else :class:`TorchPasses`."""
    kernels = native_kernels(x, "feature_attend")
    return TorchPasses() if kernels is None else kernels


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


class _Graph:
    """A small differentiable map from detached leaves, built under grad mode (or not at all)."""

    def __init__(self, fn, leaves: list[Tensor], build: bool):
        self.leaves = [t.detach().requires_grad_(build) for t in leaves]
        with torch.set_grad_enabled(build):
            self.out = fn(*self.leaves)
        self.value = self.out.detach()

    def grad(self, grad_out: Tensor, params: list[Tensor]) -> tuple[list[Tensor], list[Tensor | None]]:
        """Gradients of the leaves and of those ``params`` that require them (None for the others)."""
        wanted = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(self.out, [*self.leaves, *wanted], grad_out, retain_graph=True, allow_unused=True)
        leaf_grads = [torch.zeros_like(t) if g is None else g for t, g in zip(self.leaves, grads, strict=False)]
        by_param = dict(zip(map(id, wanted), grads[len(self.leaves) :], strict=True))
        return leaf_grads, [by_param.get(id(p)) for p in params]


class FeatureAttend(torch.autograd.Function):
    """See :func:`lean_feature_attend`. Inputs: ``x``, the channel and spatial modules (or None), ``product``,
    ``build_graph``, then the modules' parameters (so that autograd routes their gradients here)."""

    @staticmethod
    @float32_forward
    def forward(ctx, x, channel, spatial, product: bool, build_graph: bool, *params):
        on_plane = x.dim() == 4
        b, ci = x.shape[:2]
        xg = x.reshape(b, ci, -1, x.shape[-2] * x.shape[-1]).contiguous()  # [B, Ci, n, P]
        n, hw = xg.shape[2], x.shape[-2:]
        passes = passes_for(xg)
        a = a_x = pos = winner = None
        if channel is not None:
            s_avg, s_max, pos = passes.channel_stats(xg)
            ctx.channel = _Graph(channel.from_stats, [s_avg, s_max], build_graph)
            a = ctx.channel.value.contiguous()  # [B, Ci, n]
            channel.keep(a.squeeze(2)[..., None, None] if on_plane else a[..., None, None])
        if spatial is not None:
            mean_c, max_c, winner = passes.spatial_stats(xg, a)  # [B, n, P]

            def spatial_map(mean: Tensor, maximum: Tensor) -> Tensor:
                z = torch.stack((mean, maximum), dim=1).view(b, 2, n, *hw)
                return spatial.from_stats(z.squeeze(2) if on_plane else z)

            ctx.spatial = _Graph(spatial_map, [mean_c, max_c], build_graph)
            spatial.keep(ctx.spatial.value)
            a_x = ctx.spatial.value.reshape(b, n, -1).contiguous()
        out = passes.apply(xg, a, a_x, product)
        ctx.save_for_backward(x, a, a_x, pos, winner)
        ctx.product, ctx.params, ctx.passes = product, params, passes
        return out.view_as(x)

    @staticmethod
    @float32_backward
    def backward(ctx, grad: Tensor):
        x, a, a_x, pos, winner = ctx.saved_tensors
        passes = ctx.passes
        b, ci = x.shape[:2]
        xg = x.reshape(b, ci, -1, x.shape[-2] * x.shape[-1]).contiguous()
        g = grad.reshape(xg.shape).contiguous()
        sign = 1.0 if ctx.product else -1.0
        params = list(ctx.params)
        param_grads: list[Tensor | None] = [None] * len(params)

        def add(grads: list[Tensor | None]) -> None:
            for i, gp in enumerate(grads):
                if gp is not None:
                    param_grads[i] = gp if param_grads[i] is None else param_grads[i] + gp

        need_x = ctx.needs_input_grad[0]
        g_mean = g_max = None
        if a_x is not None:  # out = x -/+ (a_C x) a_X: the gradient reaching a_X, then the spatial statistics
            g_ax = passes.spatial_map_grad(g, xg, a, sign)
            (g_mean, g_max), grads = ctx.spatial.grad(g_ax.view_as(ctx.spatial.out), params)
            add(grads)
            g_mean, g_max = _contiguous(g_mean.reshape(winner.shape)), _contiguous(g_max.reshape(winner.shape))
        grad_x, g_a = passes.backward_rest(
            g, xg, a, a_x, g_mean, g_max, winner, sign=sign, product=ctx.product, need_x=need_x, need_a=a is not None
        )
        if a is not None:
            (g_avg, g_smax), grads = ctx.channel.grad(g_a, params)
            add(grads)
            if need_x:
                passes.add_channel_stats_grad(grad_x, g_avg.contiguous(), g_smax.contiguous(), pos)
        return (grad_x.view_as(x) if need_x else None), None, None, None, None, *param_grads
