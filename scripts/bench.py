#!/usr/bin/env python
"""Time a training step and an eval forward, and measure the peak memory, of some models (docs/performance.md).

    python scripts/bench.py p4cnn fa_p4cnn a_p4cnn                    # CPU, 2 threads, batch 128
    python scripts/bench.py plain_p4cnn p4cnn --batch-size 32 --device cuda
    python scripts/bench.py p4cnn a_p4_allcnnc --batch-size-for a_p4_allcnnc=16 --markdown results/bench.md
    python scripts/bench.py a_p4cnn --model-arg attention_impl=lean   # build() override for every model
    python scripts/bench.py a_p4cnn p4cnn --model-arg a_p4cnn:attention_impl=lean   # ... or for one model
    python scripts/bench.py a_p4cnn a_p4cnn@attention_impl=reference  # one model under two arguments
    python scripts/bench.py p4cnn fa_p4cnn --compile                  # under torch.compile

Prints ``name train_ms eval_ms peak_mb params``, one line per model (``NAME failed: reason`` where one fails),
then the ratios that have targets (docs/performance.md#targets), with PASS/FAIL, where the models they compare were
measured:
``fa_p4cnn / p4cnn`` train time <= 1.3, ``a_p4cnn / p4cnn`` <= 3, ``p4cnn / plain_p4cnn`` <= 1.15, the peak
memory of ``a_p4cnn`` over that of the straightforward full attention (``a_p4cnn@attention_impl=reference``)
<= 0.25, and the peak memory of ``a_p4_allcnnc`` at batch 16 <= 2048 MiB. ``plain_p4cnn`` is P4CNN's layer
sequence as plain conv2d layers with the expanded channel counts (C * |H|), no filter transform.
``NAME@KEY=VALUE[,KEY=VALUE...]`` measures model NAME built with those arguments, under that label.

A training step is forward, cross-entropy, backward and an Adam(lr=1e-3) step on random inputs and labels; times
are the median of --repeats steps after --warmup steps. Every model runs in a fresh process. Peak memory: on CUDA
``max_memory_allocated``; on CPU the growth of the peak RSS over the RSS just before the first forward.
``--markdown PATH`` also writes a report with the machine, the git revision and the command (never over an
existing file without --force). Exits 1 if a model failed, 2 on a usage error.
"""

from __future__ import annotations

import sys

from attentive_gcnn.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="scripts/bench.py", description=__doc__))
