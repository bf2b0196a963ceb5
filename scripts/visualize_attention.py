#!/usr/bin/env python
"""Draw the spatial attention maps of a checkpoint, combined over layers (as in the paper's Fig. 7 and 8).

    python scripts/visualize_attention.py CKPT [--dataset rotmnist_mini] [--data-dir DIR] [--split test]
        [--index 0 1 2] [--out results/figures/attention_<model>.png] [--skip-lifting] [--layers c2 c3] [--force]

For each chosen image x and its rotation rot90(x) the model runs in eval mode (one row per image).

alpha-F models (fa_*) and RomHog: every layer's spatial attention map (on that layer's input) is upsampled to the
input size and the maps are multiplied into m [B, 1, |H|, X, Y]. A panel shows the image, the heat map sum_h m
over it, and one arrow field per orientation h (length proportional to m[h]; p4: h = 0, 1, 2, 3 point up, left,
down, right). p4m models get one panel per half (rotations, then rotations followed by the mirror, whose arrows
are mirrored too).

Full attention (a_*, spatial-only a_sp_*): each conv's map alpha^X_o(x, h, h~) [B, Co, |H|, 1, |H_in|, X', Y']
(on the conv's output grid; the lifting conv has no h~ axis) is averaged over the output channels o, upsampled
to the input size, and the maps of all convs (or of --layers) are multiplied into M [B, |H|, |H|, X, Y] (the
lifting map broadcast over h~). Two panels per image: the image with the heat map and arrows of mean_h~ M, as
above, and the |H| x |H| grid of maps M[h, h~] (rows: output orientation h, columns: input orientation h~) over
copies of the image. Rotating the input rotates every map and moves the grid one step down and right
(cyclically), since the attention depends on h and h~ through the group action only. Channel-only full
attention (a_ch_*) has no spatial map and is refused, as are plain models.

Heat maps and arrows share one scale per row. The title reports how well the map of rot90(x) equals the
transformed map of x (rot90 in the plane, orientation axes shifted as the group prescribes: for p4 a roll by +1,
of both h and h~ for full attention), as the relative error max|a - b| / max|b|: float32 round-off (~1e-7) for
an equivariant model; the wrong shift (a roll by -1) is given as a control.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from attentive_gcnn.errors import UserError
from attentive_gcnn.viz import (
    combined_full_attention,
    combined_spatial_attention,
    dataset_names,
    denormalize,
    full_spatial_attention_modules,
    load_model_checkpoint,
    load_split,
    model_group,
    orientation_vectors,
    prepare_output,
    report_user_errors,
    rotation_errors,
    save_figure,
    spatial_map_kind,
)
from attentive_gcnn.viz.common import SPLITS, check_model_fits, pyplot

MAX_ARROWS = 14  # arrows per side of a panel at most (larger inputs are subsampled)
# colour and name of an arrow by its direction (d_row, d_col)
ARROW_COLORS = {(-1, 0): "tab:cyan", (0, -1): "tab:green", (1, 0): "tab:orange", (0, 1): "tab:pink"}
ARROW_NAMES = {(-1, 0): "up", (0, -1): "left", (1, 0): "down", (0, 1): "right"}


def image_for_display(x: torch.Tensor, normalization: dict) -> np.ndarray:
    """``[C, H, W]`` normalised -> ``[H, W]`` (one channel) or ``[H, W, 3]`` in [0, 1]."""
    img = denormalize(x.detach().float().cpu(), normalization).clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def arrow_positions(size: int) -> np.ndarray:
    """At most about MAX_ARROWS evenly spaced pixel positions in ``0..size-1``, symmetric about the centre (so that
    the arrow grid maps onto itself under rot90 and flips)."""
    step = max(1, math.ceil(size / MAX_ARROWS))
    if step % 2 == 0 and size % 2 == 0:  # an even step cannot centre an even-sized grid
        step += 1
    offset = next(o for o in range(step) if (size - 1 - 2 * o) % step == 0)
    return np.arange(offset, size - offset, step)


def draw_panel(ax, image: np.ndarray, m: np.ndarray, vectors: np.ndarray, scale: tuple[float, ...], title: str):
    """Image, heat map ``m.sum(0)`` and one arrow field per orientation; ``m [n, X, Y]``, ``vectors [n, 2]``.

    ``scale = (heat_min, heat_max, arrow_max)``: the heat map's colour range; an arrow of value arrow_max
    is 0.9 arrow spacings long.
    """
    heat_min, heat_max, vmax = scale
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    ax.imshow(m.sum(0), cmap="inferno", alpha=0.55, vmin=heat_min, vmax=heat_max, interpolation="bilinear")
    pos = arrow_positions(m.shape[-1])
    rows, cols = np.meshgrid(pos, pos, indexing="ij")
    step = pos[1] - pos[0] if len(pos) > 1 else 1
    for t, (d_row, d_col) in enumerate(vectors.tolist()):
        length = m[t][np.ix_(pos, pos)] / vmax * 0.9 * step
        ax.quiver(
            cols,
            rows,
            d_col * length,
            d_row * length,
            angles="xy",
            scale_units="xy",
            scale=1,
            color=ARROW_COLORS[(d_row, d_col)],
            width=0.007,
            headwidth=3,
            headlength=3,
        )
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def attention_figure(
    images: list[np.ndarray], m: torch.Tensor, m_rot: torch.Tensor, group, titles: list[str], suptitle: str
):
    """The figure: per row an image and its rotation, each followed by its attention panel(s).

    ``images``: 2 per row (x, rot90 x) for display; ``m``, ``m_rot`` ``[B, 1, |H|, X, Y]``; ``titles``: one per
    row. p4m gets one attention panel per half of H (m = +1, m = -1).
    """
    n = group.order
    halves = 2 if n == 8 else 1
    per_half = n // halves
    vectors = orientation_vectors(group).numpy()
    cols = 2 * (1 + halves)
    fig, axes = pyplot().subplots(
        len(m), cols, figsize=(2.2 * cols, 2.3 * len(m) + 0.8), squeeze=False, layout="constrained"
    )
    for b in range(len(m)):
        pair = torch.stack((m[b, 0], m_rot[b, 0])).unflatten(1, (halves, per_half))  # [2, halves, n/halves, X, Y]
        heat = pair.sum(2)  # one scale per row: heat-map range, largest arrow
        scale = (float(heat.min()), max(float(heat.max()), float(heat.min()) + 1e-12), max(float(pair.max()), 1e-12))
        for j, label in enumerate(("x", "rot90(x)")):
            image, base = images[2 * b + j], j * (1 + halves)
            ax = axes[b, base]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            ax.set_title(f"{label} ({titles[b]})", fontsize=8)
            ax.set_axis_off()
            for a in range(halves):
                half = "" if halves == 1 else (", m=+1" if a == 0 else ", m=-1 (mirrored)")
                draw_panel(
                    axes[b, base + 1 + a],
                    image,
                    pair[j, a].double().numpy(),
                    vectors[a * per_half : (a + 1) * per_half],
                    scale,
                    f"attention, {label}{half}",
                )
    arrows = ", ".join(f"{h}: {ARROW_NAMES[tuple(v)]}" for h, v in enumerate(vectors.tolist()))
    fig.suptitle(suptitle, fontsize=9)
    fig.supxlabel(f"heat map: sum over h of m; arrows per orientation h ({arrows}), length ~ m[h]", fontsize=8)
    return fig


def orientation_mosaic(tiles: np.ndarray, gap: int, fill: float) -> np.ndarray:
    """``tiles [n, n_in, X, Y, ...]`` -> one image with tile (i, j) at row i, column j, ``gap`` pixels of ``fill``
    between tiles: ``[n X + (n - 1) gap, n_in Y + (n_in - 1) gap, ...]``."""
    n, n_in, x, y = tiles.shape[:4]
    out = np.full((n * (x + gap) - gap, n_in * (y + gap) - gap, *tiles.shape[4:]), fill, dtype=float)
    for i in range(n):
        for j in range(n_in):
            out[i * (x + gap) : i * (x + gap) + x, j * (y + gap) : j * (y + gap) + y] = tiles[i, j]
    return out


def draw_grid(ax, image: np.ndarray, grid: np.ndarray, scale: tuple[float, float], title: str):
    """The ``|H| x |H_in|`` maps ``grid [n, n_in, X, Y]`` as one mosaic over copies of ``image``; ``scale``: the
    heat maps' colour range. Rows: output orientation h, columns: input orientation h~."""
    n, n_in, x, y = grid.shape
    gap = max(1, x // 14)
    copies = np.broadcast_to(image, (n, n_in, *image.shape))
    gray = "gray" if image.ndim == 2 else None
    ax.imshow(orientation_mosaic(copies, gap, 1.0), cmap=gray, vmin=0, vmax=1, interpolation="nearest")
    heat = np.ma.masked_invalid(orientation_mosaic(grid, gap, np.nan))
    ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=scale[0], vmax=scale[1], interpolation="nearest")
    ax.set_xticks([j * (y + gap) + (y - 1) / 2 for j in range(n_in)], [str(j) for j in range(n_in)], fontsize=7)
    ax.set_yticks([i * (x + gap) + (x - 1) / 2 for i in range(n)], [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("input orientation h~", fontsize=7)
    ax.set_ylabel("output orientation h", fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=8)


def full_attention_figure(
    images: list[np.ndarray], m: torch.Tensor, m_rot: torch.Tensor, group, titles: list[str], suptitle: str
):
    """The figure for full attention: per row an image and its rotation, each followed by the heat map and arrows
    of ``mean_h~ M`` (less its minimum over the row, for contrast) and by the grid of ``M[h, h~]``.

    ``images``: 2 per row (x, rot90 x) for display; ``m``, ``m_rot`` ``[B, |H|, |H|, X, Y]``
    (:func:`~attentive_gcnn.viz.combined_full_attention`); ``titles``: one per row.
    """
    vectors = orientation_vectors(group).numpy()
    fig, axes = pyplot().subplots(
        len(m), 6, figsize=(15, 2.9 * len(m) + 0.8), squeeze=False, layout="constrained",
        gridspec_kw={"width_ratios": [1, 1, 1.5] * 2},
    )  # fmt: skip
    for b in range(len(m)):
        pair = torch.stack((m[b], m_rot[b])).double()  # [2, |H|, |H|, X, Y]
        mean = pair.mean(2)  # [2, |H|, X, Y]: over the input orientations h~
        mean = mean - mean.min()  # contrast: products of sigmoids over layers vary little about their level
        heat = mean.sum(1)  # one scale per row and kind of panel
        scale = (float(heat.min()), max(float(heat.max()), float(heat.min()) + 1e-12), max(float(mean.max()), 1e-12))
        grid_scale = (float(pair.min()), max(float(pair.max()), float(pair.min()) + 1e-12))
        for j, label in enumerate(("x", "rot90(x)")):
            image, base = images[2 * b + j], 3 * j
            ax = axes[b, base]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
            ax.set_title(f"{label} ({titles[b]})", fontsize=8)
            ax.set_axis_off()
            draw_panel(axes[b, base + 1], image, mean[j].numpy(), vectors, scale, f"mean over h~, {label}")
            grid_title = f"M[h, h~], {label}: {grid_scale[0]:.2g} to {grid_scale[1]:.2g}"
            draw_grid(axes[b, base + 2], image, pair[j].numpy(), grid_scale, grid_title)
    arrows = ", ".join(f"{h}: {ARROW_NAMES[tuple(v)]}" for h, v in enumerate(vectors.tolist()))
    fig.suptitle(suptitle, fontsize=9)
    fig.supxlabel(
        "M: product over layers of the spatial attention averaged over output channels. Heat map: sum over h of "
        f"mean_h~ M; arrows per output orientation h ({arrows}), length ~ mean_h~ M[h] above its minimum in the "
        "row. Grid: M[h, h~]",
        fontsize=8,
    )
    return fig


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt", type=Path, help="a checkpoint of this project (alpha-F or full-attention model)")
    parser.add_argument("--dataset", default="rotmnist_mini", choices=dataset_names(), help="dataset config")
    parser.add_argument("--data-dir", type=Path, help="paths.data_dir (default: $AGCNN_DATA_DIR or ./data)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split of the clean protocol")
    parser.add_argument("--index", type=int, nargs="+", default=[0, 1, 2], help="images of the split (rows)")
    parser.add_argument("--out", type=Path, help="PNG (default results/figures/attention_<model>.png)")
    parser.add_argument("--skip-lifting", action="store_true", help="leave the first layer's map out")
    parser.add_argument("--layers", nargs="+", help="full attention: the convs whose maps to multiply (default all)")
    parser.add_argument("--force", action="store_true", help="replace the PNG if it exists")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out is not None and args.out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out} must end in .png")
    model, ckpt = load_model_checkpoint(args.ckpt)
    name = ckpt["model"]
    try:
        kind, group = spatial_map_kind(model), model_group(model)
    except ValueError as e:
        raise UserError(f"{name}: {e}") from None
    if args.layers:
        if kind != "full":
            raise UserError(f"{name}: --layers applies to full-attention models (a_*) only")
        convs = [n for n, _ in full_spatial_attention_modules(model)]
        unknown = [n for n in args.layers if n not in convs]
        if unknown:
            raise UserError(f"{name}: --layers {unknown}: no full spatial attention there; choose from {convs}")
    out = args.out or Path("results/figures") / f"attention_{name}.png"
    prepare_output([out], args.force)
    data = load_split(args.dataset, args.split, args.data_dir)
    check_model_fits(model, name, data)
    bad = [i for i in args.index if not 0 <= i < len(data.dataset)]
    if bad:
        raise UserError(f"--index {bad} out of range: the {args.split} split has {len(data.dataset)} images")

    x, y = data.dataset.__getitems__(args.index)
    x_rot = torch.rot90(x, 1, dims=(-2, -1))
    if kind == "full":
        try:
            m, m_rot = (combined_full_attention(model, t, args.layers, args.skip_lifting) for t in (x, x_rot))
        except ValueError as e:
            raise UserError(f"{name}: {e}") from None
        h_dims, shift = (1, 2), "both orientation axes rolled"
        layers = ", ".join(args.layers) if args.layers else "all layers"
        what, draw = f"full spatial attention, product over {layers}", full_attention_figure
    else:
        m = combined_spatial_attention(model, x, args.skip_lifting)
        m_rot = combined_spatial_attention(model, x_rot, args.skip_lifting)
        h_dims, shift = (2,), "orientation shift"
        what, draw = "combined spatial attention", attention_figure
    errors = [rotation_errors(group, m[b : b + 1], m_rot[b : b + 1], h_dims) for b in range(len(x))]
    error, control = max(e for e, _ in errors), min(c for _, c in errors)
    for i, (e, c) in zip(args.index, errors, strict=True):
        print(f"image {i}: map(rot90 x) vs L_r map(x): relative error {e:.2e} (wrong orientation shift: {c:.2e})")

    images = [image_for_display(t, data.normalization) for b in range(len(x)) for t in (x[b], x_rot[b])]
    titles = [f"{args.split} #{i}, label {int(label)}" for i, label in zip(args.index, y, strict=True)]
    suptitle = (
        f"{name} ({args.ckpt.name}), {args.dataset} {args.split}: {what}"
        f"{' without the first layer' if args.skip_lifting else ''}\n"
        f"map(rot90 x) vs rot90 + {shift} of map(x): rel. error {error:.1e} (wrong shift: {control:.2g})"
    )
    save_figure(draw(images, m, m_rot, group, titles, suptitle), out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
