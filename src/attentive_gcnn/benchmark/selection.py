"""Which models the benchmark measures, under which ``build()`` arguments and batch sizes.

Besides the model configs there is one pseudo-model, ``plain_p4cnn`` (:class:`attentive_gcnn.models.PlainP4CNN`):
P4CNN's layer sequence as ordinary ``nn.Conv2d`` layers with the expanded channel counts (``C * |H|``), no filter
transform: the floor of the filter-transform G-conv. ``NAME@KEY=VALUE[,KEY=VALUE...]`` is model NAME under other
``build()`` arguments, measured under that label.
"""

from __future__ import annotations

from torch import nn

PLAIN = "plain_p4cnn"


def bench_model_names() -> list[str]:
    """Every name the bench accepts: the model configs and the pseudo-model ``plain_p4cnn``."""
    from attentive_gcnn.models import model_names

    return [*model_names(), PLAIN]


def build_bench_model(name: str, **overrides) -> tuple[nn.Module, list[str]]:
    """The model NAME (a config, or ``plain_p4cnn``) and the overrides it ignored (only ``plain_p4cnn`` ignores any:
    it takes ``channels``, ``group_order`` and ``dropout``; attention arguments mean nothing to it)."""
    if name == PLAIN:
        from attentive_gcnn.models import PlainP4CNN

        accepted = {"channels", "group_order", "dropout"}
        ignored = sorted(set(overrides) - accepted)
        return PlainP4CNN(**{k: v for k, v in overrides.items() if k in accepted}), ignored
    from attentive_gcnn.models import build

    return build(name, **overrides), []


def split_variant(token: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME@KEY=VALUE[,KEY=VALUE...]`` (a model under other build() arguments, measured under that
    label) -> (model name, overrides)."""
    name, at, spec = token.partition("@")
    overrides = {}
    for item in spec.split(",") if at else []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"model {token!r}: expected NAME@KEY=VALUE[,KEY=VALUE...]")
        overrides[key] = parse_value(value)
    return name, overrides


def parse_value(text: str):
    """A ``--model-arg`` value: int, float, bool (true/false), None (none/null), else the string itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_args(items: list[str], names: list[str]) -> dict[str, dict]:
    """``KEY=VALUE`` (every model) or ``NAME:KEY=VALUE`` (model NAME only) -> ``{name: {key: value}}``."""
    per_model: dict[str, dict] = {n: {} for n in names}
    for item in items:
        target, sep, assignment = item.partition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        key, eq, value = assignment.partition("=")
        if not eq or not key:
            raise ValueError(f"--model-arg {item!r}: expected KEY=VALUE or NAME:KEY=VALUE")
        if sep and target not in per_model:
            raise ValueError(f"--model-arg {item!r}: {target!r} is not one of the models being measured")
        for name in [target] if sep else names:
            per_model[name][key] = parse_value(value)
    return per_model


def parse_batch_sizes(items: list[str], names: list[str], default: int) -> dict[str, int]:
    """``NAME=B`` items -> the batch size of every model (``default`` where none is given)."""
    sizes = dict.fromkeys(names, default)
    for item in items:
        name, eq, value = item.rpartition("=")  # a variant's label holds "=" itself
        if not eq or name not in sizes:
            raise ValueError(f"--batch-size-for {item!r}: expected NAME=B with NAME one of the models being measured")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise ValueError(f"--batch-size-for {item!r}: {value!r} is not an integer") from None
        if sizes[name] < 1:
            raise ValueError(f"--batch-size-for {item!r}: the batch size must be positive")
    return sizes
