"""Start a training run from another run's weights: ``fit --init_from CKPT``.

Weights only: the checkpoint's parameters and buffers are copied into the freshly configured
module, nothing else (no optimiser state, epoch, step, learning-rate schedule or T: the new run's
config decides those). The two state dicts must match key by key and shape by shape; every
missing, unexpected or reshaped key is listed in one error unless it matches a pattern of
``--init_from_ignore`` (``fnmatch`` globs such as ``net.classifier.*``), in which case the key is
not loaded (a missing or reshaped one keeps its fresh initialisation). This is how the papers'
staged recipes run: SLTT's T = 1 stage then T = 6 stage, DSR's ANN then SNN.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lightning_snn.checkpoints import CheckpointError, read_checkpoint


@dataclass
class InitReport:
    """What ``--init_from`` did: keys loaded, and the ignored missing / unexpected / reshaped ones."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)

    def summary(self, path: str | Path) -> str:
        parts = [f"--init_from {path}: loaded {len(self.loaded)} tensors (weights only: optimiser, epoch and T "
                 "are this run's)"]
        for name, keys in (("missing, kept at initialisation", self.missing), ("unexpected, dropped", self.unexpected),
                           ("reshaped, kept at initialisation", self.reshaped)):
            if keys:
                parts.append(f"ignored {name}: {', '.join(keys)}")
        return "; ".join(parts)


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def init_weights(module: nn.Module, path: str | Path, ignore: Sequence[str] = ()) -> InitReport:
    """Copy the weights of checkpoint ``path`` into ``module`` (see the module docstring).
    Raises :class:`CheckpointError` listing every mismatch that ``ignore`` does not name."""
    ckpt = read_checkpoint(path)  # verified: a clear error for a missing / truncated file
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"--init_from {path} is not a Lightning checkpoint (no 'state_dict') "
                              "(valid: a .ckpt file written by fit)")
    own = module.state_dict()
    report = InitReport()
    bad: dict[str, list[str]] = {"missing": [], "unexpected": [], "reshaped": []}
    for key in own:
        if key not in state:
            (report.missing if _ignored(key, ignore) else bad["missing"]).append(key)
    for key, value in state.items():
        if key not in own:
            (report.unexpected if _ignored(key, ignore) else bad["unexpected"]).append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            if _ignored(key, ignore):
                report.reshaped.append(key)
            else:
                bad["reshaped"].append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
        elif not _ignored(key, ignore):
            report.loaded.append(key)
    if any(bad.values()):
        shown = "; ".join(f"{k} keys: {', '.join(v)}" for k, v in bad.items() if v)
        raise CheckpointError(f"--init_from {path} does not fit the configured model: {shown} (valid: the same "
                              "network, or name the keys in --init_from_ignore, e.g. --init_from_ignore "
                              "'[net.layers.2.*]')")
    with torch.no_grad():
        for key in report.loaded:
            own[key].copy_(state[key].to(own[key].dtype))  # state_dict tensors share the module's storage
    return report
