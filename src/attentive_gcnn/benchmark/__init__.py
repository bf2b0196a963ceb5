"""Cost of the models: a training step, an eval forward and the peak memory (``docs/performance.md``).

``scripts/bench.py`` is the command line (:mod:`.cli`). Every model is measured in a fresh worker process
(:mod:`.worker`, ``python -m attentive_gcnn.benchmark.worker``), so that the CPU peak resident memory, and a CUDA
out-of-memory, belong to that model alone.

- ``selection``: which models (configs, ``NAME@KEY=VALUE`` variants, the baseline ``plain_p4cnn``), under which
  build() arguments and batch sizes;
- ``timing``: the measurement of one model in this process;
- ``worker``: one model measured in a fresh process, and the rounds combined;
- ``targets``: the ratios and memory bounds with a target, and their PASS/FAIL rows;
- ``report``: the printed lines and the Markdown report (machine, commit, command, table);
- ``cli``: the options of ``scripts/bench.py``.
"""
