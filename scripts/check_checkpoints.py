#!/usr/bin/env python
"""Check the published pretrained models: checksums, test errors through ``eval_only``, and rotation invariance.

    python scripts/check_checkpoints.py [--dir results/checkpoints/mini] [--models p4cnn z2cnn ...]

For every ``<model>.ckpt`` listed in ``DIR/SHA256SUMS``:

1. its SHA-256 must be the listed one;
2. ``python -m attentive_gcnn.train eval_only=true experiment=<run> protocol=<run> ckpt_path=<ckpt>`` (the run it
   came from is recorded in the checkpoint) must give exactly the test error recorded there, i.e. the committed
   one;
3. for a p4 model, the logits of the first 64 test images must not change (float32 round-off) when the images
   are rotated by 90, 180 and 270 degrees; a Z2 model is only reported.

Prints one line per checkpoint and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from attentive_gcnn.checkpoint import load_model_checkpoint
from attentive_gcnn.errors import UserError
from attentive_gcnn.publish import SUMS, check_sums, read_sums
from attentive_gcnn.viz.common import load_split, report_user_errors

REPO = Path(__file__).resolve().parents[1]
INVARIANCE_RTOL = 1e-4  # relative to max |logit|, float32


def eval_only(ckpt: Path, run: dict, workdir: Path) -> dict:
    """The summary of the README's ``eval_only`` command on ``ckpt`` (run in a fresh process)."""
    run_dir = workdir / ckpt.stem
    cmd = [sys.executable, "-m", "attentive_gcnn.train", "eval_only=true", f"experiment={run['name']}"]
    cmd += [f"protocol={run['protocol']}", f"seed={run['seed']}", f"ckpt_path={ckpt.resolve()}", "progress=false"]
    cmd += [f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()] or ["(no error line)"]
        raise UserError(f"eval_only failed (exit {result.returncode}): {errors[-1].strip()}")
    return json.loads((run_dir / "summary.json").read_text())


def rotation_error(model: torch.nn.Module, x: torch.Tensor) -> float:
    """max over k = 1, 2, 3 of max|f(rot90^k x) - f(x)| / max|f(x)| (eval mode, no gradients)."""
    with torch.inference_mode():
        y = model(x)
        diffs = [(model(torch.rot90(x, k, dims=(-2, -1))) - y).abs().max() for k in (1, 2, 3)]
    return float(max(diffs) / y.abs().max())


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=REPO / "results/checkpoints/mini")
    parser.add_argument("--models", nargs="+", help="only these models (default: every listed checkpoint)")
    args = parser.parse_args(argv)
    if not (args.dir / SUMS).is_file():
        raise UserError(f"{args.dir / SUMS} does not exist")
    names = [name for _, name in read_sums(args.dir)]
    unknown = sorted(set(args.models or ()) - {Path(n).stem for n in names})
    if unknown:
        listed = ", ".join(Path(n).stem for n in names)
        raise UserError(f"no checkpoint of {', '.join(unknown)} in {args.dir / SUMS} (it lists {listed})")
    names = [n for n in names if not args.models or Path(n).stem in args.models]
    bad_sums, failures = set(check_sums(args.dir)), 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = args.dir / name
            if name in bad_sums:
                print(f"FAIL {name}: missing, or its SHA-256 differs from {SUMS}")
                failures += 1
                continue
            try:
                model, ckpt = load_model_checkpoint(path)
                run = ckpt["run"]
                summary = eval_only(path, run, Path(tmp))
            except (UserError, KeyError) as e:  # one unusable checkpoint fails its check; the others still run
                print(f"FAIL {name}: {e if isinstance(e, UserError) else f'no {e} recorded in the checkpoint'}")
                failures += 1
                continue
            same = summary["test_error"] == run["test_error"]
            data = load_split(summary["dataset"], "test", None)
            x, _ = data.dataset.__getitems__(list(range(64)))
            rot = rotation_error(model, x)
            p4 = ckpt["net"].get("group") == "p4"
            ok = same and (rot < INVARIANCE_RTOL or not p4)
            failures += not ok
            print(
                f"{'ok  ' if ok else 'FAIL'} {name}: test error {summary['test_error']:.4f} % "
                f"({'equal to' if same else 'differs from'} the recorded {run['test_error']:.4f} % of "
                f"{run['name']} {run['protocol']} seed {run['seed']} at {str(run['git_sha'])[:7]}); "
                f"logits under rot90: relative change {rot:.1e}" + ("" if p4 else " (planar model, not invariant)")
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
