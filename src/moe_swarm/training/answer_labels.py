"""Answer-level labels for the value head: the swarm's own rollouts, every record rewarded by the
task's answer check (exact match).

Each batch of problems is rolled out by the swarm (no gradient); every record of every round is
labelled by exact match, and its thought vector is what the value head scores. With the backbone
frozen the decoded thoughts are used as they are. Unfrozen, they are recomputed with gradient by one
teacher-forced forward pass over prompt + generated tokens (under each agent's own routing
perturbation, :func:`recompute_thoughts`), so the value loss reaches the backbone, and ``lm_coef``
adds the LM loss of the right rollouts (rejection-sampling fine-tuning) to keep it a good generator.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchmetrics.functional.classification import binary_auroc

from moe_swarm.data.tasks import Problem, Task
from moe_swarm.data.tokenizer import ByteTokenizer
from moe_swarm.model import MoETransformer, RoutingControl
from moe_swarm.swarm import (
    Rollouts,
    SwarmConfig,
    SwarmSolver,
    ThoughtRecord,
    ValueHead,
    answer_outcomes,
    collect_rollouts,
    embedding_scale,
    normalise_thoughts,
)
from moe_swarm.swarm.scorer import Labelled
from moe_swarm.training.scorer_module import ScorerBatch

# Answer-level outcomes logged as val/<name> (names from moe_swarm.swarm.outcomes).
VAL_OUTCOMES = (
    "single_agent",
    "majority",
    "score_weighted",
    "value_weighted",
    "best_of_n_value",
    "pass_at_n",
    "coverage",
    "swarm",
)


class TokenKeepingSolver(SwarmSolver):
    """A SwarmSolver that also keeps each record's generated token ids (EOS included).

    Records carry decoded text only; recomputing a thought with gradient needs the exact tokens.
    ``tokens[(problem, round, agent)]`` is the row's ids.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: dict[tuple[Hashable, int, int], list[int]] = {}

    def make_records(self, props, scores, keys, rnd, counts) -> list[ThoughtRecord]:
        records = super().make_records(props, scores, keys, rnd, counts)
        rows, lengths = props.tokens.tolist(), props.lengths.tolist()
        for rec, row, n in zip(records, rows, lengths):
            self.tokens[(rec.problem, rec.round, rec.agent)] = row[:n]
        return records


def recompute_thoughts(
    model: MoETransformer,
    prompt_ids: Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]],
    records: Sequence[ThoughtRecord],
    mode: str,
    pad_id: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forced thought vectors (with gradient) for records whose rows were decoded by ``generate``.

    Row i reads ``prompt_ids[i] + generated[i][:-1]``; its thought is the final hidden state at the
    position that produced the last generated token (``mode="last"``) or the mean over the positions
    that produced the generated tokens (``"mean"``), rescaled like the solver's. Each row runs under its
    agent's routing perturbation, so without parameter changes this equals the decoded thought.
    Returns ``(thoughts (R, d), logits (R, T, V), targets (R, T))`` with targets -100 off the answer.
    """
    if not records:
        raise ValueError("recompute_thoughts needs at least one record")
    dev = next(model.parameters()).device
    inputs, targets, spans = [], [], []
    for prompt, gen in zip(prompt_ids, generated):
        if len(gen) < 1:
            raise ValueError("every record must have generated at least one token")
        p = len(prompt)
        inputs.append(list(prompt) + list(gen[:-1]))
        targets.append([-100] * (p - 1) + list(gen))
        spans.append((p - 1, p + len(gen) - 2))
    width = max(len(x) for x in inputs)
    idx = torch.full((len(inputs), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(inputs), width), -100, dtype=torch.long)
    mask = torch.zeros(len(inputs), width, dtype=torch.bool)
    for i, (x, t) in enumerate(zip(inputs, targets)):
        idx[i, : len(x)] = torch.tensor(x)
        tgt[i, : len(t)] = torch.tensor(t)
        mask[i, : len(x)] = True
    specs = [r.spec for r in records]
    routing = None
    if any(s is not None and (s.routing_noise > 0 or s.top_k is not None) for s in specs):
        noise = torch.tensor([s.routing_noise if s else 0.0 for s in specs], dtype=torch.float32, device=dev)
        seed = torch.tensor([s.seed if s else 0 for s in specs], dtype=torch.long, device=dev)
        k = torch.tensor(
            [(s.top_k or model.cfg.moe.router.top_k) if s else model.cfg.moe.router.top_k for s in specs],
            device=dev,
        )
        routing = RoutingControl(noise, seed, k)
    out = model(idx.to(dev), pad_mask=mask.to(dev), routing=routing)
    hidden = out.hidden.float()
    first = torch.tensor([a for a, _ in spans], device=dev)
    last = torch.tensor([b for _, b in spans], device=dev)
    if mode == "last":
        thought = hidden[torch.arange(hidden.shape[0], device=dev), last]
    else:
        pos = torch.arange(width, device=dev)[None]
        sel = ((pos >= first[:, None]) & (pos <= last[:, None])).float()
        thought = (hidden * sel[..., None]).sum(1) / sel.sum(1, keepdim=True)
    return normalise_thoughts(thought, embedding_scale(model)), out.logits, tgt.to(dev)


class AnswerLabels:
    """Rollouts of the swarm on problems, labelled by exact match (a :class:`~moe_swarm.training.scorer_module.LabelSource`).

    ``rollout_cfg``: the swarm config of the rollouts. ``recompute``: the backbone trains, so thoughts
    are recomputed with gradient (and ``lm_coef`` x the LM loss of right records is added).
    """

    loss_name = "value"

    def __init__(
        self,
        model: MoETransformer,
        head: ValueHead,
        task: Task,
        rollout_cfg: SwarmConfig,
        *,
        recompute: bool,
        lm_coef: float,
    ) -> None:
        self.model, self.head, self.task, self.rollout_cfg = model, head, task, rollout_cfg
        self.recompute, self.lm_coef = recompute, lm_coef
        self.tokenizer = ByteTokenizer()
        self.metrics = nn.ModuleDict(
            {
                "auroc": BinaryAUROC(),
                "acc": BinaryAccuracy(),
                "outcomes": nn.ModuleDict({k: MeanMetric() for k in VAL_OUTCOMES}),
            }
        )
        self.classes = [0, 0]  # (wrong, right) records seen this validation: AUROC needs both

    # ---- rollouts ---------------------------------------------------------------------------
    def solver(self) -> TokenKeepingSolver:
        head = self.head if self.rollout_cfg.score in ("value", "both") else None
        return TokenKeepingSolver(
            self.model, self.rollout_cfg, self.tokenizer, canonical=self.task.canonical, value_head=head
        )

    def rollouts(self, problems: list[Problem]) -> tuple[Rollouts, TokenKeepingSolver]:
        """Run the swarm on ``problems`` with the backbone in eval mode (no dropout, no router jitter)."""
        self.model.eval()
        solver = self.solver()
        with torch.no_grad():
            ro = collect_rollouts(solver, problems, self.task)
        return ro, solver

    def thoughts_for_loss(
        self, ro: Rollouts, solver: TokenKeepingSolver, problems: list[Problem], dev: torch.device
    ) -> tuple[Tensor, Tensor]:
        """The thought vectors the value loss sees, and the LM loss on correct records (0 when frozen)."""
        if not self.recompute:
            return ro.thoughts.to(dev), torch.zeros((), device=dev)
        ids = solver.encode([p.prompt for p in problems])
        records = [rec for res in ro.results for rec in res.records]
        prompts = [ids[int(g)] for g in ro.group_ids]
        generated = [solver.tokens[(rec.problem, rec.round, rec.agent)] for rec in records]
        thoughts, logits, targets = recompute_thoughts(
            self.model, prompts, generated, records, self.rollout_cfg.thought, self.tokenizer.PAD
        )
        correct = ro.rewards.to(dev) > 0.5
        lm = torch.zeros((), device=dev)
        if bool(correct.any()) and self.lm_coef > 0:
            lg, tg = logits[correct].float(), targets[correct]
            lm = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=-100)
        return thoughts, lm

    # ---- training ---------------------------------------------------------------------------
    def train_batch(self, batch: list[Problem], device: torch.device) -> ScorerBatch:
        ro, solver = self.rollouts(batch)
        thoughts, lm = self.thoughts_for_loss(ro, solver, batch, device)
        labelled = Labelled(thoughts, ro.rewards.to(device))
        return ScorerBatch(labelled, len(batch), extra_loss=self.lm_coef * lm, context=(ro, batch, lm))

    def train_stats(self, batch: ScorerBatch, logits: Tensor, loss: Tensor) -> dict[str, Tensor]:
        ro, problems, lm = batch.context
        rewards, n = batch.labelled.labels, len(problems)
        prob = torch.sigmoid(logits)
        stats = {
            "value/loss": loss,
            "value/acc": ((prob > 0.5).float() == rewards).float().mean(),
            "value/base_rate": rewards.mean(),
            "train/swarm": torch.tensor(
                sum(self.task.score(r.answer, p.answer) for r, p in zip(ro.results, problems)) / n
            ),
            "train/coverage": torch.tensor(_coverage(ro)),
            "train/forward_passes": torch.tensor(
                sum(r.forward_passes for r in ro.results) / n, dtype=torch.float
            ),
        }
        if 0.0 < float(rewards.mean()) < 1.0:  # AUROC is undefined with one class
            stats["value/auc"] = binary_auroc(prob, rewards.long())
        if self.recompute:
            stats["train/lm_loss"] = lm.detach()
        return stats

    # ---- validation -------------------------------------------------------------------------
    def val_batch(self, batch: list[Problem], device: torch.device) -> ScorerBatch:
        ro, _ = self.rollouts(batch)
        labelled = Labelled(ro.thoughts.to(device), ro.rewards.to(device))
        return ScorerBatch(labelled, len(batch), context=(ro, batch))

    def update_validation(self, batch: ScorerBatch, logits: Tensor) -> None:
        ro, problems = batch.context
        rewards = batch.labelled.labels
        prob = torch.sigmoid(logits)
        self.metrics["auroc"].update(prob, rewards.long())
        self.metrics["acc"].update(prob, rewards.long())
        right = int(rewards.sum())
        self.classes[0] += rewards.numel() - right
        self.classes[1] += right
        value = prob.cpu().tolist()
        offset = 0
        for res, problem in zip(ro.results, problems):
            v = value[offset : offset + len(res.records)]
            offset += len(res.records)
            outcome = answer_outcomes(res, problem.answer, self.task, value=v)
            for name in VAL_OUTCOMES:
                self.metrics["outcomes"][name].update(torch.tensor(outcome[name], device=logits.device))

    def end_validation(self) -> dict[str, Tensor]:
        acc, auroc = self.metrics["acc"], self.metrics["auroc"]
        out = {"val/value_acc": acc.compute()}
        acc.reset()
        if min(self.classes) > 0:
            out["val/value_auc"] = auroc.compute()
        auroc.reset()
        self.classes = [0, 0]
        for name, metric in self.metrics["outcomes"].items():
            out[f"val/{name}"] = metric.compute()
            metric.reset()
        return out


def _coverage(ro: Rollouts) -> float:
    """Share of problems with a right record in any round (``coverage`` in moe_swarm.swarm.outcomes)."""
    hits = torch.zeros(int(ro.group_ids.max()) + 1).scatter_reduce_(0, ro.group_ids, ro.rewards, "amax")
    return float(hits.mean())
