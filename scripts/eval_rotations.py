#!/usr/bin/env python
"""Test accuracy of checkpoints as a function of a rotation of the input by a continuous angle.

    python scripts/eval_rotations.py CKPT [CKPT ...] [--dataset rotmnist_mini] [--data-dir DIR] [--split test]
        [--angles 0:360:15] [--limit N] [--batch-size 500] [--device auto] [--out results/figures/rotations]
        [--tta K] [--force]

Writes OUT.csv (checkpoint, model, tta, angle_deg, accuracy, n) and OUT.png (accuracy against angle, one line per
checkpoint, labelled by model name, or by model and run directory when two checkpoints share a model). ``tta`` is
the number of rotations whose logits are averaged: 1 for the model itself, K for its test-time augmentation.

--tta K (K >= 2) also evaluates every planar (Z2) checkpoint (``group: z2`` in its net config) wrapped in
attentive_gcnn.rotations.RotationTTA: the logits averaged over the input rotated by 360 i / K degrees,
i = 0 .. K-1. It is drawn as a dashed line of the model's colour, labelled e.g. "z2cnn + TTA 4", and has rows of
its own in OUT.csv (same checkpoint and model, tta = K). With K a multiple of 4 these rotations include the exact
rot90s, so the augmented model scores identically at 0/90/180/270 degrees. Group (p4, p4m) checkpoints are not
augmented: they are invariant to rot90 already, so TTA over K = 4 rotations would give the same model.

Every image of the split (the first N with --limit) is rotated counter-clockwise about its centre. Multiples of
90 degrees use torch.rot90 (exact), so a p4 model scores identically at 0/90/180/270 degrees; other angles rotate
the de-normalised image bilinearly with zero fill (the MNIST-rot background; black corners on CIFAR-10/PCam) and
normalise it again. A Z2 model varies at every angle; a p4 model is periodic with period 90 degrees, and the
dips between multiples of 90 show the interpolation and the corners that no 90-degree symmetry covers. ANGLES is
START:STOP:STEP (STOP excluded) or a list A,B,C. On CUDA, TF32 is switched off.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import Counter
from pathlib import Path

import torch

from attentive_gcnn.errors import UserError
from attentive_gcnn.rotations import RotationTTA
from attentive_gcnn.training.runlog import write_atomic
from attentive_gcnn.viz import (
    accuracy_vs_angle,
    dataset_names,
    load_model_checkpoint,
    load_split,
    parse_angles,
    prepare_output,
    report_user_errors,
    save_figure,
)
from attentive_gcnn.viz.common import SPLITS, check_model_fits, pyplot

COLUMNS = ("checkpoint", "model", "tta", "angle_deg", "accuracy", "n")
PLAIN = 1  # the tta column of the model itself: its logits on one rotation, the identity


def labels_for(paths: list[Path], models: list[str]) -> list[str]:
    """The model name; with the parent (run) directory when two checkpoints share a model; else the path."""
    shared = Counter(models)
    labels = [f"{m} ({p.resolve().parent.name})" if shared[m] > 1 else m for p, m in zip(paths, models, strict=True)]
    repeated = Counter(labels)
    return [f"{m} ({p})" if repeated[lab] > 1 else lab for p, m, lab in zip(paths, models, labels, strict=True)]


def tta_label(label: str, k: int) -> str:
    """The line label of a checkpoint's K-rotation test-time augmentation: ``z2cnn`` -> ``z2cnn + TTA 4``."""
    return label if k == PLAIN else f"{label} + TTA {k}"


def plot(rows: list[dict], labels: dict[str, str], title: str, path: Path) -> None:
    """Accuracy (%) against angle, one line per checkpoint and TTA (dashed, the checkpoint's colour), guides at
    multiples of 90 degrees."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    colors = {}
    for ckpt, label in labels.items():
        for k in sorted({r["tta"] for r in rows if r["checkpoint"] == ckpt}):
            mine = [r for r in rows if r["checkpoint"] == ckpt and r["tta"] == k]
            style = dict(ls="--", marker="s", ms=2.5) if k != PLAIN else dict(marker="o", ms=3)
            if ckpt in colors:
                style["color"] = colors[ckpt]
            (line,) = ax.plot(
                [r["angle_deg"] for r in mine], [100 * r["accuracy"] for r in mine], label=tta_label(label, k), **style
            )
            colors.setdefault(ckpt, line.get_color())
    angles = [r["angle_deg"] for r in rows]
    lo, hi = min(angles), max(angles)
    for k in range(int(lo // 90), int(hi // 90) + 1):
        if lo <= 90 * k <= hi:
            ax.axvline(90 * k, color="gray", lw=0.8, ls="--", zorder=0)
    if hi - lo <= 720:
        ax.set_xticks(range(int(lo // 45) * 45, int(hi) + 1, 45))
    ax.set_xlabel("input rotation (degrees, counter-clockwise)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def report(label: str, results: list[tuple[float, float, int]]) -> None:
    """One line: mean and worst accuracy over the angles, and the accuracies at multiples of 90 degrees."""
    accs = {a: acc for a, acc, _ in results}
    quarter = [f"{100 * accs[a]:.2f}" for a in (0.0, 90.0, 180.0, 270.0) if a in accs]
    worst = min(results, key=lambda r: r[1])
    print(
        f"{label}: mean {100 * sum(accs.values()) / len(accs):.2f} %, worst {100 * worst[1]:.2f} % "
        f"at {worst[0]:g} deg" + (f", at 0/90/180/270 deg: {' / '.join(quarter)} %" if quarter else "")
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", type=Path, nargs="+", metavar="CKPT", help="checkpoints of this project")
    parser.add_argument("--dataset", default="rotmnist_mini", choices=dataset_names(), help="dataset config")
    parser.add_argument("--data-dir", type=Path, help="paths.data_dir (default: $AGCNN_DATA_DIR or ./data)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="split of the clean protocol")
    parser.add_argument("--angles", default="0:360:15", help="START:STOP:STEP (STOP excluded) or A,B,C degrees")
    parser.add_argument("--limit", type=int, help="evaluate the first N images of the split only")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--out", type=Path, default=Path("results/figures/rotations"), help="writes OUT.csv, OUT.png")
    parser.add_argument(
        "--tta",
        type=int,
        metavar="K",
        help="also evaluate each Z2 checkpoint with its logits averaged over K >= 2 rotations",
    )
    parser.add_argument("--force", action="store_true", help="replace OUT.csv and OUT.png if they exist")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    from attentive_gcnn.training.device import pick_device

    args = parse_args(argv)
    try:
        angles = parse_angles(args.angles)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.limit is not None and args.limit < 1 or args.batch_size < 1:
        raise UserError("--limit and --batch-size must be positive")
    if args.tta is not None and args.tta < 2:
        raise UserError(f"--tta must be an integer K >= 2 (the number of rotations averaged over), not {args.tta}")
    if len(set(map(str, args.ckpts))) < len(args.ckpts):
        raise UserError("a checkpoint is given twice")
    out = args.out.with_suffix("") if args.out.suffix in (".csv", ".png") else args.out
    csv_path, png_path = prepare_output([f"{out}.csv", f"{out}.png"], args.force)
    device = pick_device(args.device)
    if device.type == "cuda":  # TF32 convolutions would blur the exact 90-degree symmetry
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    loaded = [load_model_checkpoint(p) for p in args.ckpts]
    data = load_split(args.dataset, args.split, args.data_dir)
    for model, ckpt in loaded:
        check_model_fits(model, ckpt["model"], data)

    names = [ckpt["model"] for _, ckpt in loaded]
    labels = dict(zip(map(str, args.ckpts), labels_for(args.ckpts, names), strict=True))
    groups = [ckpt["net"].get("group") for _, ckpt in loaded]
    planar = [group == "z2" for group in groups]
    if args.tta is not None and not all(planar):
        skipped = [f"{labels[str(p)]} ({g})" for p, g, z2 in zip(args.ckpts, groups, planar, strict=True) if not z2]
        print(f"--tta {args.tta} augments planar (z2) checkpoints only, not: {', '.join(skipped)}")
    rows = []
    for path, (model, ckpt), z2 in zip(args.ckpts, loaded, planar, strict=True):
        variants = [(PLAIN, model)]
        if args.tta is not None and z2:
            variants.append((args.tta, RotationTTA(model, args.tta, data.normalization)))
        for k, net in variants:
            results = accuracy_vs_angle(
                net, data.dataset, data.normalization, angles, args.batch_size, args.limit, device
            )
            rows += [
                dict(checkpoint=str(path), model=ckpt["model"], tta=k, angle_deg=a, accuracy=acc, n=n)
                for a, acc, n in results
            ]
            report(tta_label(labels[str(path)], k), results)

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({**r, "angle_deg": f"{r['angle_deg']:g}"} for r in rows)
    n = rows[0]["n"]
    plot(rows, labels, f"{args.dataset} {args.split} ({n} images), rotated inputs", png_path)  # then the CSV
    write_atomic(csv_path, table.getvalue())
    print(f"wrote {csv_path}\nwrote {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
