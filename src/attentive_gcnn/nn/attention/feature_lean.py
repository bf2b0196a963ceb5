"""The alpha-F attention ``x' = x * (1 - a_C * a_X)`` as one autograd node, with few passes over ``x``.

The attention maps come from small tensors (statistics ``[B, Ci, n]`` and ``[B, n, X, Y]``) through the modules'
MLP and conv; everything of the size of ``x`` is done here by hand, in forward and backward:

- channel statistics: spatial mean, and the spatial max with its arg-max (its gradient goes there only);
- spatial statistics of ``g = a_C * x`` (computed once, and reused for the output): ``mean_c g``, and ``max_c g``
  with its arg-max c* (its gradient goes to ``x`` and ``a_C`` at c* only);
- the product ``x * (1 - a_C a_X)`` (``one_minus_product``; ``x * a_C a_X`` for ``product``), algebraically the
  reference's ``x - a_X (a_C x)``: equal to float round-off.

The small graphs from statistics to maps are differentiated with :func:`torch.autograd.grad` inside backward.
Shapes: ``x [B, Ci, n, X, Y]`` on G, ``[B, Ci, X, Y]`` on the plane (n = 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attentive_gcnn.nn.attention.combine import COMBINES


def lean_feature_attend(x: Tensor, channel: nn.Module | None, spatial: nn.Module | None, combine: str) -> Tensor:
    """``attend(x, channel, spatial, combine)`` for alpha-F modules (spatial attention on pooled channel statistics).

    Keeps the maps in the modules as their own ``forward`` would.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if channel is None and spatial is None:
        return x
    params = [p for m in (channel, spatial) if m is not None for p in m.parameters()]
    build_graph = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))
    return FeatureAttend.apply(x, channel, spatial, combine == "product", build_graph, *params)


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
    def forward(ctx, x, channel, spatial, product: bool, build_graph: bool, *params):
        on_plane = x.dim() == 4
        b, ci = x.shape[:2]
        xg = x.reshape(b, ci, -1, x.shape[-2] * x.shape[-1])  # [B, Ci, n, P]
        n, hw = xg.shape[2], x.shape[-2:]
        a = a_x = pos = winner = None
        if channel is not None:
            s_max, pos = xg.max(dim=-1) if build_graph else (xg.amax(dim=-1), None)  # arg-max for backward only
            ctx.channel = _Graph(channel.from_stats, [xg.mean(dim=-1), s_max], build_graph)
            a = ctx.channel.value  # [B, Ci, n]
            channel.keep(a.squeeze(2)[..., None, None] if on_plane else a[..., None, None])
        g = xg if a is None else xg * a[..., None]  # a_C x
        if spatial is not None:
            max_c, winner = g.max(dim=1) if build_graph else (g.amax(dim=1), None)  # [B, n, P]

            def spatial_map(mean: Tensor, maximum: Tensor) -> Tensor:
                z = torch.stack((mean, maximum), dim=1).view(b, 2, n, *hw)
                return spatial.from_stats(z.squeeze(2) if on_plane else z)

            ctx.spatial = _Graph(spatial_map, [g.sum(dim=1) / ci, max_c], build_graph)
            spatial.keep(ctx.spatial.value)
            a_x = ctx.spatial.value.reshape(b, n, -1)[:, None]  # [B, 1, n, P]
            out = g * a_x if product else torch.addcmul(xg, g, a_x, value=-1)
        else:
            out = g if product else xg - g
        ctx.save_for_backward(x, a, a_x, pos, winner)
        ctx.product, ctx.params = product, params
        ctx.has = (channel is not None, spatial is not None)
        return out.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, a, a_x, pos, winner = ctx.saved_tensors
        has_channel, has_spatial = ctx.has
        b, ci = x.shape[:2]
        xg = x.reshape(b, ci, -1, x.shape[-2] * x.shape[-1])
        g = grad.reshape(xg.shape)
        sign = 1.0 if ctx.product else -1.0
        params = list(ctx.params)
        param_grads: list[Tensor | None] = [None] * len(params)

        def add(grads: list[Tensor | None]) -> None:
            for i, gp in enumerate(grads):
                if gp is not None:
                    param_grads[i] = gp if param_grads[i] is None else param_grads[i] + gp

        need_x = ctx.needs_input_grad[0]
        # the weighting: out = x -/+ (a_C x) a_X, so d/dx = g (1 -/+ a_C a_X) and d/d(a_C x) = -/+ g a_X
        g_ax = g_a = grad_x = None
        g_g = sign * g * a_x if has_spatial else sign * g  # gradient reaching a_C x
        if has_spatial:
            g_ax = sign * (g * xg if a is None else g * xg * a[..., None]).sum(dim=1)  # [B, n, P]
            (g_mean, g_max), grads = ctx.spatial.grad(g_ax.view_as(ctx.spatial.out), params)
            add(grads)
            g_mean, g_max = g_mean.reshape(winner.shape), g_max.reshape(winner.shape)
            g_g = g_g + g_mean[:, None] / ci  # mean_c (a_C x)
            g_g.scatter_add_(1, winner[:, None], g_max[:, None])  # max_c (a_C x), at its arg-max only
        if has_channel:
            g_a = (g_g * xg).sum(dim=-1)
            (g_avg, g_smax), grads = ctx.channel.grad(g_a, params)
            add(grads)
        if need_x:
            through_g = g_g if a is None else g_g * a[..., None]
            grad_x = through_g if ctx.product else through_g.add_(g)  # product: x reaches out through a_C x only
            if has_channel:
                grad_x.add_(g_avg[..., None], alpha=1 / xg.shape[-1])
                grad_x.scatter_add_(-1, pos[..., None], g_smax[..., None])
        return (grad_x.view_as(x) if need_x else None), None, None, None, None, *param_grads
