#!/usr/bin/env python
"""Print the parameter count of every model config: ``NAME PARAMS`` per line, or a Markdown table.

    python scripts/count_params.py                 # one line per model
    python scripts/count_params.py --markdown      # table with the paper name and the expected count
    python scripts/count_params.py p4cnn a_p4cnn   # only these

Exits non-zero if a count differs from the config's expected ``params`` (docs/method.md#architectures).
"""

from __future__ import annotations

import argparse
import sys

from attentive_gcnn.models import build, count_parameters, model_config, model_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="model config names (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    datasets = ["rotmnist", "cifar10", "pcam"]  # the order of the paper's tables
    names = args.models or sorted(model_names(), key=lambda n: (datasets.index(model_config(n).dataset), n))
    unknown = sorted(set(names) - set(model_names()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(model_names())}")

    if args.markdown:
        print("| config | paper name | dataset | group | attention | parameters | expected | |")
        print("|---|---|---|---|---|---:|---:|---|")
    mismatches = 0
    for name in names:
        cfg = model_config(name)
        count, expected = count_parameters(build(name)), cfg.params
        mismatches += count != expected
        if args.markdown:
            mark = "✓" if count == expected else "✗"
            print(
                f"| `{name}` | {cfg.paper_name} | {cfg.dataset} | {cfg.net.group} | {cfg.net.attention} "
                f"| {count:,} | {expected:,} | {mark} |"
            )
        else:
            print(f"{name} {count}")
    if mismatches:
        print(f"{mismatches} model(s) differ from the expected count", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
