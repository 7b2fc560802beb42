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
    """A batch a scorer learns from: its ``inputs``, their ``labels`` in {0, 1}, and which rows count
    for the loss (``loss_rows``, a bool mask; None = all)."""

    inputs: Any
    labels: Tensor
    loss_rows: Tensor | None = None


def labelled_loss(logits: Tensor, labels: Tensor, pos_weight: float | None = None) -> Tensor:
    """Mean binary cross-entropy of scorer logits against labels in [0, 1]; ``pos_weight`` > 1
    up-weights the positives (useful when right answers or steps are rare)."""
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=pw)
