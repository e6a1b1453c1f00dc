"""The training loss of a spiking network: one definition for training and evaluation, for
whole-sequence and online strategies alike.

With per-step outputs ``o[t]`` (``[T, B, classes]``), labels ``y`` and the term

    l(o, y) = (1 - mse_weight) CE(o, y) + mse_weight MSE(o, c(y))

(``mse_weight`` is OTTT's and SLTT's ``loss_lambda``; 0 is plain cross-entropy; the MSE is the mean
over all entries) with the target ``c(y)`` = ``onehot(y)`` (``mse_target: one_hot``, OTTT's) or
a tensor filled with one number (``mse_target: 1.0``: SLTT's default ``loss_means``, a regulariser
pulling every score toward 1) the loss is

    L = l(mean_t o[t], y)                  time-mean (``per_step = False``)
    L = sum_t l(o[t], y) / T               mean of per-step losses (``per_step = True``)

An online strategy back-propagates ``L[t] = l(o[t], y) / T`` at each step (:meth:`SpikingLoss.step`),
whose sum is the per-step form: it can only train on that one, and says so
(``GradientStrategy.per_step_loss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor


class LossUser(Protocol):
    """What the loss needs of a gradient strategy (:class:`~lightning_snn.strategies.base.GradientStrategy`
    has both): its name, for errors, and the loss form it trains on (``True``: per-step, ``False``:
    time-mean, ``None``: either). A protocol, so this module does not import the strategies, which
    import it for their default loss."""

    name: str
    per_step_loss: bool | None


# a number or "one_hot" (str, not a Literal: a bad word reaches the check below, which names it)
MSETarget = Union[float, str]


@dataclass
class LossConfig:
    """Args:
        per_step: mean of the per-step losses (``true``) or the loss of the time-averaged output
            (``false``); ``null`` takes what the strategy trains on (the time-mean for
            whole-sequence strategies, per-step for online ones).
        mse_weight: weight lambda of the MSE term, in [0, 1] (OTTT's / SLTT's ``loss_lambda``).
        mse_target: the MSE term's target: ``one_hot`` (the label, OTTT's) or a number ``c``
            (every score pulled toward ``c``; SLTT's default ``loss_means`` is 1.0).
    """

    per_step: bool | None = None
    mse_weight: float = 0.0
    mse_target: MSETarget = "one_hot"

    def __post_init__(self) -> None:
        if not 0.0 <= self.mse_weight <= 1.0:
            raise ValueError(f"loss mse_weight must be in [0, 1], got {self.mse_weight}")
        t = self.mse_target
        if t != "one_hot" and (isinstance(t, bool) or not isinstance(t, (int, float))
                               or not math.isfinite(t)):
            raise ValueError(f"loss mse_target must be 'one_hot' or a finite number (e.g. 1.0), "
                             f"got {t!r}")


class SpikingLoss:
    """The loss ``L`` of the module docstring, resolved for one strategy."""

    def __init__(self, per_step: bool = False, mse_weight: float = 0.0,
                 mse_target: MSETarget = "one_hot") -> None:
        LossConfig(per_step, mse_weight, mse_target)  # validates
        self.per_step, self.mse_weight = per_step, mse_weight
        self.mse_target = mse_target if mse_target == "one_hot" else float(mse_target)

    @classmethod
    def for_strategy(cls, strategy: LossUser, config: LossConfig | None = None) -> "SpikingLoss":
        """The loss ``config`` asks for, with ``per_step`` defaulting to what ``strategy`` trains
        on; a clear error when the strategy cannot honour it."""
        config = config or LossConfig()
        needs = strategy.per_step_loss
        if config.per_step is not None and needs is not None and config.per_step != needs:
            raise ValueError(
                f"strategy {strategy.name!r} trains on the "
                f"{'mean of per-step losses' if needs else 'loss of the time-averaged output'} and "
                f"cannot honour loss.per_step={config.per_step}; leave it unset (null) or set {needs}"
            )
        per_step = config.per_step if config.per_step is not None else bool(needs)
        return cls(per_step, config.mse_weight, config.mse_target)

    def term(self, out: Tensor, y: Tensor) -> Tensor:
        """l(o, y) = (1 - lambda) CE(o, y) + lambda MSE(o, c(y)) for scores ``[B, classes]``."""
        loss = F.cross_entropy(out, y)
        if self.mse_weight > 0:
            if self.mse_target == "one_hot":
                target = F.one_hot(y, out.shape[-1]).to(out.dtype)
            else:
                target = torch.full_like(out, self.mse_target)
            loss = (1.0 - self.mse_weight) * loss + self.mse_weight * F.mse_loss(out, target)
        return loss

    def __call__(self, out: Tensor, y: Tensor) -> Tensor:
        """``L`` of per-step outputs ``[T, B, classes]``."""
        if self.per_step:
            return sum(self.term(o, y) for o in out) / out.shape[0]  # type: ignore[return-value]
        return self.term(out.mean(0), y)

    def step(self, out: Tensor, y: Tensor, T: int) -> Tensor:
        """``L[t] = l(o[t], y) / T``: an online strategy's loss at one step (their sum is ``L``)."""
        if not self.per_step:
            raise ValueError("the time-mean loss is not a sum of per-step losses; an online "
                             "strategy needs per_step=True")
        return self.term(out, y) / T

    def __repr__(self) -> str:
        return (f"SpikingLoss(per_step={self.per_step}, mse_weight={self.mse_weight}, "
                f"mse_target={self.mse_target!r})")
