"""One LightningModule that trains any swarm :class:`~moe_swarm.swarm.scorer.Scorer` (the answer-level
value head, the step checker) from a pluggable :class:`LabelSource`.

The label source turns a datamodule batch into labelled scorer inputs (answer-level rollouts rewarded
by the task's answer check: :mod:`moe_swarm.training.answer_labels`; step-level rollouts labelled by the
step oracle: :mod:`moe_swarm.training.step_labels`) and keeps its own statistics and validation metrics.
This module does what is common: the binary cross-entropy of the scorer's logits (plus whatever loss
the source adds), ``train/loss`` and ``val/<loss_name>_loss``, two learning rates (the scorer's head;
any trainable backbone) and the swarm state in every checkpoint.

The checkpoints are model checkpoints: the generator sits under ``model.`` and
``hyper_parameters["model"]`` holds its config, so ``moe_swarm.store.checkpoint.load_checkpoint`` reads
them; the scorer sits under its own name (``value_head.``, ``checker.``), the swarm state under
``swarm_state``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from moe_swarm.model import MoETransformer
from moe_swarm.swarm import SWARM_STATE_KEY
from moe_swarm.swarm.scorer import Labelled, Scorer, group_ranking_loss, labelled_loss


@dataclass
class ScorerBatch:
    """A datamodule batch as the scorer sees it: the ``labelled`` rows, the batch size to log, a loss
    to add to the scorer's (training only), and what the label source needs back for its statistics."""

    labelled: Labelled
    batch_size: int
    extra_loss: Tensor | None = None
    context: Any = None


class LabelSource(Protocol):
    """Where a scorer's labels come from, and what is measured on them."""

    loss_name: str  # the validation loss is logged as val/<loss_name>_loss
    metrics: nn.ModuleDict  # validation metrics, registered on the module so they move with it

    def train_batch(self, batch: Any, device: torch.device) -> ScorerBatch: ...

    def train_stats(self, batch: ScorerBatch, logits: Tensor, loss: Tensor) -> dict[str, Tensor]:
        """What to log besides ``train/loss``: ``logits`` and the scorer ``loss`` are detached."""
        ...

    def val_batch(self, batch: Any, device: torch.device) -> ScorerBatch: ...

    def update_validation(self, batch: ScorerBatch, logits: Tensor) -> None: ...

    def end_validation(self) -> dict[str, Tensor] | None:
        """The epoch's metrics (then reset), or None when there is nothing to report."""
        ...


class ScorerModule(L.LightningModule):
    """Trains ``scorer`` on the labels of ``labels``; ``model`` is the generator the labels come from.

    ``head``: the submodule of the scorer (``""``: all of it) trained at ``hparams["lr"]``; every other trainable parameter
    (an unfrozen backbone, the checker's own copy of it) at ``hparams["backbone_lr"]``. ``hparams``
    are saved in the checkpoints (they hold ``model``, the generator's config, ``rank_weight`` (a
    within-group ranking loss for label sources that give groups), and ``pos_weight``,
    ``weight_decay``). ``swarm_state`` gives the swarm state saved with every checkpoint.
    """

    def __init__(
        self,
        model: MoETransformer,
        scorer: Scorer,
        labels: LabelSource,
        *,
        scorer_name: str,
        head: str,
        swarm_state: Callable[[], dict],
        hparams: dict[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        self.scorer_name = scorer_name
        self.add_module(scorer_name, scorer)  # its checkpoint keys: value_head.*, checker.*
        self.head = head
        self.labels = labels
        self.swarm_state = swarm_state
        self.save_hyperparameters(hparams)
        self.val_loss = MeanMetric()
        self.val_metrics = labels.metrics

    @property
    def scorer(self) -> Scorer:
        return getattr(self, self.scorer_name)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Lists of Problems (text) stay where they are: the swarm encodes on the model's device."""
        if isinstance(batch, list):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_fit_start(self) -> None:
        """The generator only generates (eval mode: no dropout, no router jitter); the scorer trains."""
        self.model.eval()
        self.scorer.train()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.model.eval()  # Lightning puts the whole module in train mode every epoch
        item = self.labels.train_batch(batch, self.device)
        logits = self.scorer.logits(item.labelled.inputs)
        lab = item.labelled
        scorer_loss = labelled_loss(logits, lab.labels, self.hparams.pos_weight, lab.weights)
        loss = scorer_loss if item.extra_loss is None else scorer_loss + item.extra_loss
        rank_weight = float(self.hparams.get("rank_weight") or 0.0)
        if rank_weight > 0 and lab.groups is not None:
            rank = group_ranking_loss(logits, lab.labels, lab.groups, lab.weights)
            if rank is not None:
                loss = loss + rank_weight * rank
                self.log("train/rank_loss", rank.detach(), batch_size=item.batch_size)
        with torch.no_grad():
            stats = self.labels.train_stats(item, logits.detach(), scorer_loss.detach())
        self.log_dict(stats, prog_bar=False, batch_size=item.batch_size)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=item.batch_size)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        item = self.labels.val_batch(batch, self.device)
        labelled = item.labelled
        logits = self.scorer.logits(labelled.inputs)
        rows = labelled.loss_rows
        if rows is None:
            self.val_loss.update(labelled_loss(logits, labelled.labels), weight=labelled.labels.numel())
        elif bool(rows.any()):
            self.val_loss.update(labelled_loss(logits[rows], labelled.labels[rows]), weight=int(rows.sum()))
        self.labels.update_validation(item, logits)

    def on_validation_epoch_end(self) -> None:
        metrics = self.labels.end_validation()
        if metrics is None:
            return
        out = {f"val/{self.labels.loss_name}_loss": self.val_loss.compute(), **metrics}
        self.val_loss.reset()
        self.log_dict(out, prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = list(self.scorer.get_submodule(self.head).parameters())
        groups = [{"params": head, "lr": self.hparams.lr}]
        in_head = {id(p) for p in head}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_head]
        if rest:
            groups.append({"params": rest, "lr": self.hparams.backbone_lr})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SWARM_STATE_KEY] = self.swarm_state()
