"""The ``Scorer`` interface: what the swarm scores with and one trainer trains.

A scorer maps its inputs to the logit of P(correct): the answer-level value head
(:class:`~moe_swarm.swarm.value.ValueHead`, inputs: thought vectors) and the step checker
(:class:`~moe_swarm.swarm.checker.StepChecker`, inputs: tokenised step proposals, a dict of
``idx``/``mask``/``starts``/``ends``). Both are trained the same way: binary cross-entropy of their
logits against labels in {0, 1} (:func:`labelled_loss`); only where the labels come from differs
(exact-match rewards of answers, or the task's step oracle). A scorer saves itself as plain data
(``state()``, read back with ``from_state``) so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@runtime_checkable
class Scorer(Protocol):
    """An ``nn.Module`` that scores inputs: logits of P(correct), one per row."""

    def logits(self, inputs: Any) -> Tensor:
        """``(R,)`` logits for the ``R`` rows of ``inputs``."""
        ...

    def config(self) -> dict:
        """The constructor's arguments, as plain data."""
        ...

    def state(self) -> dict:
        """Config and weights as plain data (tensors on the CPU), for checkpoints."""
        ...

    @classmethod
    def from_state(cls, state: dict, map_location: str | torch.device = "cpu") -> Scorer:
        """The scorer ``state()`` describes, in eval mode."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


@dataclass
class Labelled:
    """A batch a scorer learns from: its ``inputs``, their ``labels`` in {0, 1}, which rows count
    for the loss (``loss_rows``, a bool mask; None = all) and how much each row counts in training
    (``weights``, >= 0; None = all alike), and the vote group of each row (``groups``; None = no
    groups), which a within-group ranking loss (:func:`group_ranking_loss`) reads."""

    inputs: Any
    labels: Tensor
    loss_rows: Tensor | None = None
    weights: Tensor | None = None
    groups: Tensor | None = None


def labelled_loss(
    logits: Tensor, labels: Tensor, pos_weight: float | None = None, weights: Tensor | None = None
) -> Tensor:
    """Binary cross-entropy of scorer logits against labels in [0, 1]: the mean, or with ``weights``
    (one per row) the weighted mean; ``pos_weight`` > 1 up-weights the positives (useful when right
    answers or steps are rare)."""
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    if weights is None:
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=pw)
    w = weights.to(device=logits.device, dtype=logits.dtype)
    per_row = F.binary_cross_entropy_with_logits(
        logits, labels.to(logits.dtype), pos_weight=pw, reduction="none"
    )
    return (per_row * w).sum() / w.sum().clamp_min(1e-12)


def group_ranking_loss(
    logits: Tensor, labels: Tensor, groups: Tensor, weights: Tensor | None = None
) -> Tensor | None:
    """Mean pairwise logistic loss ``softplus(s_wrong - s_right)`` over the (right, wrong) pairs of rows
    in the same group (pair weight: the product of the rows' ``weights``): what a vote among one step's
    proposals needs, which the per-row cross-entropy learns only through calibration. None when the
    batch holds no such pair."""
    right = labels > 0.5
    g = groups.to(logits.device)
    pairs = (g[:, None] == g[None, :]) & right.to(logits.device)[:, None] & ~right.to(logits.device)[None, :]
    if not bool(pairs.any()):
        return None
    w = pairs.to(logits.dtype)
    if weights is not None:
        rw = weights.to(device=logits.device, dtype=logits.dtype)
        w = w * rw[:, None] * rw[None, :]
    margin = F.softplus(logits[None, :] - logits[:, None])  # [i, j]: s_j - s_i, i right and j wrong
    return (margin * w).sum() / w.sum().clamp_min(1e-12)
