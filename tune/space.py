"""Search spaces: YAML files mapping dotted config keys to distributions, and back to CLI overrides.

A space file maps an option of the command line (``model.neuron.threshold``, ``model.T``,
``model.lr``, ``data.batch_size``...) to one distribution::

    model.neuron.threshold: {uniform: [0.5, 2.0]}
    model.lr: {loguniform: [1.0e-4, 1.0e-2]}
    model.T: {choice: [2, 4, 8]}
    model.neuron.leak: {grid: [0.9, 1.0]}      # every value, num_samples times each
    model.optimizer: adamw                     # a constant

Distributions: ``uniform``, ``loguniform``, ``quniform [lo, hi, q]``, ``randint [lo, hi)``,
``choice``, ``grid``. A trial's config is the flat ``{dotted key: value}`` dict Tune samples, turned
into ``--key=value`` overrides by :func:`to_overrides`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune

from lightning_snn.yamlfile import EmptyYamlError, load_yaml

_FLOAT_PAIRS = {"uniform": tune.uniform, "loguniform": tune.loguniform}


def _domain(key: str, spec: Any) -> Any:
    try:
        return _make_domain(key, spec)
    except (TypeError, ValueError) as e:
        if str(e).startswith("space key"):
            raise
        raise ValueError(f"space key {key!r}: {spec} is not a valid distribution ({e}); valid: "
                         "uniform/loguniform [lo, hi], quniform [lo, hi, q], randint [lo, hi), "
                         "choice / grid [values]") from e


def _make_domain(key: str, spec: Any) -> Any:
    if not isinstance(spec, dict):
        return spec  # constant
    if len(spec) != 1:
        raise ValueError(f"space key {key!r}: give exactly one distribution, got {sorted(spec)}")
    (kind, arg), = spec.items()
    if kind in _FLOAT_PAIRS:
        lo, hi = (float(v) for v in arg)
        return _FLOAT_PAIRS[kind](lo, hi)
    if kind == "quniform":
        lo, hi, q = (float(v) for v in arg)
        return tune.quniform(lo, hi, q)
    if kind == "randint":
        lo, hi = (int(v) for v in arg)
        return tune.randint(lo, hi)
    if kind == "choice":
        return tune.choice(list(arg))
    if kind == "grid":
        return tune.grid_search(list(arg))
    raise ValueError(
        f"space key {key!r}: unknown distribution {kind!r}; valid: "
        "uniform, loguniform, quniform, randint, choice, grid"
    )


def load_space(path: str | Path) -> dict[str, Any]:
    """Read a space file into a Tune ``param_space`` (flat dict keyed by dotted config keys)."""
    try:  # strict: a key twice, a tab, not UTF-8 -> one line naming the file and the line
        raw = load_yaml(path)
    except EmptyYamlError:
        raw = None
    if not raw or not isinstance(raw, dict):
        raise ValueError(f"{path}: {'an empty' if not raw else 'not a'} search space (valid: a mapping of "
                         "dotted config keys to distributions, e.g. `model.neuron.threshold: {uniform: [0.5, 2.0]}`)")
    for key in raw:
        if key.split(".")[0] not in {"model", "data", "trainer", "seed_everything"}:
            raise ValueError(f"{path}: {key!r} is not a config option (model.*, data.*, trainer.*)")
    return {key: _domain(key, spec) for key, spec in raw.items()}


def _plain(value: Any) -> Any:
    """numpy scalars (Tune samples them) -> Python scalars, recursively."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_overrides(config: dict[str, Any]) -> list[str]:
    """Trial config -> ``--key=value`` command-line overrides (values as JSON, which is YAML)."""
    out = []
    for key, value in sorted(config.items()):
        value = _plain(value)
        text = value if isinstance(value, str) else json.dumps(value)
        out.append(f"--{key}={text}")
    return out
