"""Step-level labels for the step checker: the frozen generator's own step-swarm rollouts, every
proposed step labelled by the task's exact step oracle (a :class:`~moe_swarm.training.scorer_module.LabelSource`).

The rollouts run once (:meth:`StepLabels.collect`, called by the datamodule's ``setup``); batches are
rows of them encoded as ``[BOS] + context + step`` (:meth:`StepLabels.encode_rows`). Validation
reports, on val problems: ``val/checker_loss`` (proposals after a right prefix: what the checker is
trained on); ``val/checker_auc_within`` (mean AUROC among the proposals of one step of one problem:
what a checker-weighted vote needs) and ``val/checker_auc_vote_wrong`` (the same over groups whose
plurality winner is wrong while a right proposal is present); the likelihood's
``val/logprob_auc_within`` / ``val/logprob_auc_vote_wrong`` as the baseline scorer.

On-policy rounds (``StepRolloutDataModule(rounds=...)``): :meth:`StepLabels.collect_round` rolls the swarm
out again *with the checker being trained* choosing the trajectory, so the checker learns from the
prefixes its own picks lead to; ``history`` records, per round, how the checker that collected it ranked
the new proposals (before it trained on them) and its validation ranking at the round's end.
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
    encode_steps,
    ranking_quality,
)
from moe_swarm.swarm.rollouts import label_step_rollouts
from moe_swarm.swarm.scorer import Labelled, Scorer
from moe_swarm.training.scorer_module import ScorerBatch


class StepLabels:
    """Oracle-labelled step proposals of ``model`` (the frozen generator) on problems of ``task``."""

    loss_name = "checker"

    def __init__(self, model: MoETransformer, task: Task, checker: Scorer | None = None) -> None:
        self.model, self.task, self.checker = model, task, checker
        self.tokenizer = ByteTokenizer()
        self.metrics = nn.ModuleDict()  # the ranking metrics are computed from the collected scores
        self._val: list[tuple] = []
        self.round: int | None = None  # the collection round being trained on (None: before the fit)
        self.history: list[dict] = []  # per round: what was collected, and the validation at its end

    def collect(self, rollout: StepSwarmConfig, sizes: dict[str, int], seed: int) -> dict[str, StepRollouts]:
        """Roll out ``sizes[split]`` problems of each split (every agent proposes every step; the
        trajectory follows the plurality winner) with the generator in eval mode: round 0."""
        self.model.eval()
        swarm = StepSwarm(self.model, rollout, self.tokenizer, self.task)
        return {split: self._roll_out(swarm, split, n, seed, round_=0) for split, n in sizes.items()}

    def collect_round(self, rollout: StepSwarmConfig, n: int, seed: int, round_: int) -> StepRollouts:
        """Roll out ``n`` train problems (drawn with ``seed``) with the checker being trained voting by
        ``rollout.vote`` (it picks the trajectory; every agent still proposes every step), label every
        proposal with the oracle, and record how that checker ranked them in ``history``."""
        if self.checker is None:
            raise ValueError("on-policy rounds need the checker being trained (StepLabels(checker=...))")
        was_training = self.checker.training
        self.model.eval()
        self.checker.eval()
        try:
            swarm = StepSwarm(self.model, rollout, self.tokenizer, self.task, checker=self.checker)
            return self._roll_out(swarm, "train", n, seed, round_)
        finally:
            self.checker.train(was_training)

    def _roll_out(self, swarm: StepSwarm, split: str, n: int, seed: int, round_: int) -> StepRollouts:
        """``n`` problems of ``split`` (drawn with ``seed``) solved by ``swarm``, every proposal labelled by
        the oracle; a train collection is recorded in ``history`` as round ``round_``."""
        problems = self.task.generate(split, n, seed=seed)
        with torch.no_grad():
            results = swarm.solve([p.prompt for p in problems])
        ro = label_step_rollouts(problems, results, self.task)
        if split == "train":
            self._record(round_, seed, swarm.cfg.vote, problems, results, ro)
        return ro

    def _record(self, round_: int, seed: int, vote: str, problems, results, ro: StepRollouts) -> None:
        right = (ro.labels > 0.5).tolist()
        rq = {
            "auc_within": None,
            "auc_vote_wrong": None,
            "groups_vote_wrong": len(set(ro.groups[ro.vote_wrong].tolist())),
        }
        if len(ro) and not bool(torch.isnan(ro.checker).any()):  # a checker scored every proposal
            rq = ranking_quality(ro.checker.tolist(), right, ro.groups.tolist(), ro.vote_wrong.tolist())
        em = [self.task.score(r.answer, p.answer) for p, r in zip(problems, results, strict=True)]
        self.history.append(
            {
                "round": round_,
                "problems": len(problems),
                "seed": seed,
                "vote": vote,
                "swarm_em": sum(em) / len(em),
                "proposals": len(ro),
                "after_right_prefix": int(ro.prefix_ok.sum()),
                "hard_negatives": int(ro.hard_negative.sum()),
                "checker_scored": int((~torch.isnan(ro.checker)).sum()),
                # how the checker that chose the trajectory ranked these proposals, before training on them
                "collector_auc_within": rq["auc_within"],
                "collector_auc_vote_wrong": rq["auc_vote_wrong"],
                "groups_vote_wrong": rq["groups_vote_wrong"],
            }
        )

    def encode_rows(
        self, ro: StepRollouts, rows: list[int], weights: Tensor | None = None
    ) -> dict[str, Tensor]:
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
            **({} if weights is None else {"weights": weights[rows]}),
        }

    def train_batch(self, batch: dict[str, Tensor], device: torch.device) -> ScorerBatch:
        return ScorerBatch(
            Labelled(batch, batch["labels"], weights=batch.get("weights"), groups=batch["groups"]),
            len(batch["labels"]),
        )

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
        if self.round is not None:  # the last validation of a round is that round's result
            entry = next((h for h in self.history if h["round"] == self.round), None)
            if entry is not None:
                entry["val_auc_within"] = float(out["val/checker_auc_within"])
                entry["val_auc_vote_wrong"] = float(out["val/checker_auc_vote_wrong"])
        return out
