#!/usr/bin/env python
"""Convert a checkpoint of the authors' code (dwromero/att_gconvs) into a checkpoint of this project.

    python scripts/import_authors_checkpoint.py SRC.pth --model p4cnn --out DST.ckpt [--force]

SRC is the authors' state dict (``saved/<run>/model.pth``); ``--model`` names this project's model config
(e.g. ``a_p4cnn`` for their ``att_p4cnn``; their ``f_att_p4m_densenet`` run is ``p4m_densenet``). DST is written
atomically and never replaces an existing file without ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from attentive_gcnn.checkpoint import model_payload, save_checkpoint
from attentive_gcnn.models import from_authors_checkpoint, model_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="the authors' checkpoint (a state dict .pth)")
    parser.add_argument("--model", required=True, choices=model_names(), metavar="NAME", help="model config name")
    parser.add_argument("--out", required=True, type=Path, help="where to write this project's checkpoint")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    if not args.src.is_file():
        parser.error(f"{args.src} does not exist")
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    try:
        model = from_authors_checkpoint(args.src, args.model)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, model_payload(args.model, model, source=str(args.src)), overwrite=args.force)
    print(f"wrote {args.out} ({args.model}, from {args.src})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
