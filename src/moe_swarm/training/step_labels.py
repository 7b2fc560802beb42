"""Step-level labels for the step checker: the frozen generator's own step-swarm rollouts, every
proposed step labelled by the task's exact step oracle (a :class:`~moe_swarm.training.scorer_module.LabelSource`).

The rollouts run once (:meth:`StepLabels.collect`, called by the datamodule's ``setup``); batches are
rows of them encoded as ``[BOS] + context + step`` (:meth:`StepLabels.encode_rows`). Validation
reports, on val problems: ``val/checker_loss`` (proposals after a right prefix: what the checker is
trained on); ``val/checker_auc_within`` (mean AUROC among the proposals of one step of one problem:
what a checker-weighted vote needs) and ``val/checker_auc_vote_wrong`` (the same over groups whose
plurality winner is wrong while a right proposal is present); the likelihood's
``val/logprob_auc_within`` / ``val/logprob_auc_vote_wrong`` as the baseline scorer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from moe_swarm.data.tasks import Task
from moe_swarm.data.tokenizer import ByteTokenizer
from moe_swarm.model import MoETransformer
from moe_swarm.swarm import (
    StepRollouts,
    StepSwarm,
    StepSwarmConfig,
    collect_step_rollouts,
    encode_steps,
    ranking_quality,
)
from moe_swarm.swarm.scorer import Labelled
from moe_swarm.training.scorer_module import ScorerBatch


class StepLabels:
    """Oracle-labelled step proposals of ``model`` (the frozen generator) on problems of ``task``."""

    loss_name = "checker"

    def __init__(self, model: MoETransformer, task: Task) -> None:
        self.model, self.task = model, task
        self.tokenizer = ByteTokenizer()
        self.metrics = nn.ModuleDict()  # the ranking metrics are computed from the collected scores
        self._val: list[tuple] = []

    def collect(self, rollout: StepSwarmConfig, sizes: dict[str, int], seed: int) -> dict[str, StepRollouts]:
        """Roll out ``sizes[split]`` problems of each split (every agent proposes every step; the
        trajectory follows the plurality winner) with the generator in eval mode."""
        self.model.eval()
        swarm = StepSwarm(self.model, rollout, self.tokenizer, self.task)
        out = {}
        with torch.no_grad():
            for split, n in sizes.items():
                out[split] = collect_step_rollouts(swarm, self.task.generate(split, n, seed=seed), self.task)
        return out

    def encode_rows(self, ro: StepRollouts, rows: list[int]) -> dict[str, Tensor]:
        idx, mask, starts, ends = encode_steps(
            self.tokenizer,
            [ro.contexts[i] for i in rows],
            [ro.steps[i] for i in rows],
            [ro.answer_lines[i] for i in rows],
            self.model.cfg.max_seq_len,
        )
        return {
            "idx": idx,
            "mask": mask,
            "starts": starts,
            "ends": ends,
            "labels": ro.labels[rows],
            "groups": ro.groups[rows],
            "vote_wrong": ro.vote_wrong[rows],
            "logprobs": ro.logprobs[rows],
            "prefix_ok": ro.prefix_ok[rows],
        }

    def train_batch(self, batch: dict[str, Tensor], device: torch.device) -> ScorerBatch:
        return ScorerBatch(Labelled(batch, batch["labels"]), len(batch["labels"]))

    def train_stats(self, batch: ScorerBatch, logits: Tensor, loss: Tensor) -> dict[str, Tensor]:
        return {"train/checker_base_rate": batch.labelled.labels.float().mean()}

    def val_batch(self, batch: dict[str, Tensor], device: torch.device) -> ScorerBatch:
        # the loss it is trained on: proposals after a right prefix
        return ScorerBatch(
            Labelled(batch, batch["labels"], loss_rows=batch["prefix_ok"]), len(batch["labels"])
        )

    def update_validation(self, batch: ScorerBatch, logits: Tensor) -> None:
        rows = batch.labelled.inputs
        self._val.append(
            (
                torch.sigmoid(logits).float().cpu(),
                rows["labels"].cpu(),
                rows["groups"].cpu(),
                rows["vote_wrong"].cpu(),
                rows["logprobs"].cpu(),
            )
        )

    def end_validation(self) -> dict[str, Tensor] | None:
        if not self._val:
            return None
        prob, labels, groups, wrong, logprob = (torch.cat(x) for x in zip(*self._val))
        self._val = []
        right = (labels > 0.5).tolist()
        out = {}
        for name, score in (("checker", prob), ("logprob", logprob)):
            r = ranking_quality(score.tolist(), right, groups.tolist(), wrong.tolist())
            out[f"val/{name}_auc_within"] = torch.tensor(r["auc_within"])
            out[f"val/{name}_auc_vote_wrong"] = torch.tensor(r["auc_vote_wrong"])
            out["val/groups_mixed"] = torch.tensor(float(r["groups"]))
            out["val/groups_vote_wrong"] = torch.tensor(float(r["groups_vote_wrong"]))
        return out
