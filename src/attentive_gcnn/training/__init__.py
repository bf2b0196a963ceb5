"""What training needs beside its entrypoint (``attentive_gcnn.train``), one concern a module.

- ``device``: the ``device`` option and ``torch.compile`` (``pick_device``, ``compiled``);
- ``checks``: whether a model fits a dataset (``check_fits``);
- ``seeding``: ``seed_everything`` and the per-epoch seeds (``epoch_seed``);
- ``rundir``: the run directory's file names, its exclusive claim (``RunDirClaim``), its writability check and
  ``prepare_run_dir`` (continue, start over, or refuse);
- ``signals``: SIGINT and SIGTERM stop a run after its current file write (``stop_on_signals``, ``critical``);
- ``loop``: the training and evaluation loops (``Trainer``) and the optimizer's kernels (``build_optimizer``);
- ``runlog``: atomic writes, ``metrics.csv`` and strict JSON files;
- ``provenance``: git SHA, machine, command line and peak memory of a run;
- ``mirrors``: the ``logger`` options (none, Weights & Biases);
- ``summary``: ``summary.json`` of a training run and of an ``eval_only`` evaluation.
"""
