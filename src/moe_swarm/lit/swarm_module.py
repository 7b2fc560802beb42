"""Train the swarm's value head from the swarm's own rollouts (exact-match reward) with Lightning.

Each training step runs the swarm (no gradient) on a batch of training problems, labels every
record of every round by exact match, and fits the value head to those labels with binary
cross-entropy. The backbone is frozen by default. Unfrozen, the thought vectors are recomputed with
gradient by one teacher-forced forward pass over prompt + generated tokens (under each agent's own
routing perturbation), so the value loss reaches the backbone, and ``lm_coef`` adds the LM loss of
the correct rollouts (rejection-sampling fine-tuning) to keep the backbone a good generator.

The module's checkpoints are ordinary model checkpoints plus a ``swarm_state`` entry: the backbone
sits under ``model.`` and ``hyper_parameters["model"]`` holds its config, so
``moe_swarm.checkpoint.load_checkpoint`` reads them and returns the swarm state in ``hparams``.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from torchmetrics.functional.classification import binary_auroc

from moe_swarm.atomic import atomic_torch_save
from moe_swarm.checkpoint import load_checkpoint
from moe_swarm.data.tasks import Problem, Task, get_task
from moe_swarm.data.tokenizer import ByteTokenizer
from moe_swarm.layout import RunLayout
from moe_swarm.model import MoETransformer, RoutingControl
from moe_swarm.swarm import (
    SWARM_STATE_KEY,
    Rollouts,
    StepChecker,
    StepRollouts,
    StepSwarm,
    StepSwarmConfig,
    SwarmConfig,
    SwarmSolver,
    ThoughtRecord,
    ValueHead,
    answer_outcomes,
    checker_loss,
    collect_rollouts,
    collect_step_rollouts,
    embedding_scale,
    encode_steps,
    normalise_thoughts,
    ranking_quality,
    save_swarm_state,
    step_swarm_state,
    value_loss,
)

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
# Rollouts keep every round of every problem: early exit would drop the later (harder) records.
DEFAULT_ROLLOUT_OVERRIDES = {"early_exit_share": 2.0}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def task_from(task: dict | None, checkpoint_task: dict | None, checkpoint: str) -> tuple[Task, dict]:
    """The reasoning task to train/evaluate on: ``task`` if given, else the checkpoint's own task."""
    spec = _plain(task) or checkpoint_task
    if not spec:
        raise ValueError(
            f"{checkpoint} names no reasoning task (it was not a task run); "
            "pass task={name: mul, kwargs: {digits_a: 3, digits_b: 2}} or train with experiment=reasoning_swarm"
        )
    spec = {"name": str(spec["name"]), "kwargs": dict(spec.get("kwargs") or {})}
    return get_task(spec["name"], **spec["kwargs"]), spec


def _list_collate(batch: list[Problem]) -> list[Problem]:
    return list(batch)


class ProblemDataModule(L.LightningDataModule):
    """Batches of task ``Problem``s (plain lists): the swarm encodes prompts itself.

    ``train`` problems feed the rollouts the value head learns from; a fixed ``val`` subset measures
    it. Both are generated from ``seed`` and are disjoint by the task's split hashing.
    """

    def __init__(
        self,
        module: SwarmValueModule,
        n_train: int = 4096,
        n_val: int = 128,
        batch_size: int = 16,
        val_batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("n_train", n_train),
            ("n_val", n_val),
            ("batch_size", batch_size),
            ("val_batch_size", val_batch_size),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.task = module.task
        self.n_train, self.n_val = n_train, n_val
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.seed = seed
        self.problems: dict[str, list[Problem]] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.problems:
            self.problems = {
                "train": self.task.generate("train", self.n_train, seed=self.seed),
                "val": self.task.generate("val", self.n_val, seed=self.seed),
            }

    def train_dataloader(self) -> DataLoader:
        self.setup()
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.problems["train"],
            batch_size=self.batch_size,
            shuffle=True,
            generator=gen,
            collate_fn=_list_collate,
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(
            self.problems["val"], batch_size=self.val_batch_size, shuffle=False, collate_fn=_list_collate
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


class SwarmValueModule(L.LightningModule):
    """Trains a :class:`~moe_swarm.swarm.ValueHead` (and, unfrozen, the backbone) from swarm rollouts.

    ``checkpoint``: a training checkpoint of the backbone. ``swarm``: SwarmConfig fields (the Hydra
    ``swarm/`` preset); rollouts use it with ``rollout_overrides`` applied (default: no early exit),
    and it is saved with the head as the swarm state. ``task``: ``{name, kwargs}``, default the
    checkpoint's ``eval_task``. ``pos_weight`` up-weights correct records in the BCE (None = calibrated
    probabilities, what a weighted vote wants).
    """

    def __init__(
        self,
        checkpoint: str,
        swarm: dict | DictConfig,
        task: dict | DictConfig | None = None,
        freeze_backbone: bool = True,
        value_hidden: int = 64,
        lr: float = 3e-3,
        backbone_lr: float = 1e-4,
        weight_decay: float = 0.0,
        pos_weight: float | None = None,
        lm_coef: float = 1.0,
        rollout_overrides: dict | DictConfig | None = None,
    ) -> None:
        super().__init__()
        swarm = dict(_plain(swarm) or {})
        self.swarm_cfg = SwarmConfig.from_dict(swarm)
        overrides = (
            DEFAULT_ROLLOUT_OVERRIDES if rollout_overrides is None else dict(_plain(rollout_overrides))
        )
        self.rollout_cfg = self.swarm_cfg.replace(**overrides)
        if not freeze_backbone and self.rollout_cfg.inject_top_k > 0:
            raise ValueError(
                "freeze_backbone=false recomputes thoughts from tokens and cannot replay injected thought slots; "
                "set swarm.inject_top_k=0 or keep the backbone frozen"
            )
        loaded = load_checkpoint(checkpoint)
        model, base_hparams = loaded.model, loaded.hparams
        self.task, task_spec = task_from(task, loaded.task, checkpoint)
        self.model = model
        self.value_head = ValueHead(model.cfg.d_model, value_hidden)
        self.tokenizer = ByteTokenizer()
        self.model.requires_grad_(not freeze_backbone)
        self.save_hyperparameters(
            {
                "checkpoint": str(checkpoint),
                "swarm": self.swarm_cfg.to_dict(),
                "task": task_spec,
                "freeze_backbone": freeze_backbone,
                "value_hidden": value_hidden,
                "lr": lr,
                "backbone_lr": backbone_lr,
                "weight_decay": weight_decay,
                "pos_weight": pos_weight,
                "lm_coef": lm_coef,
                "rollout_overrides": overrides,
                # what load_checkpoint / the sidecar / moe-swarm-eval read from a model checkpoint:
                "model": model.cfg.to_dict(),
                "eval_max_new_tokens": base_hparams.get("eval_max_new_tokens", self.swarm_cfg.max_new_tokens),
                "base_global_step": loaded.global_step,
            }
        )
        self.val_loss = MeanMetric()
        self.val_auroc = BinaryAUROC()
        self.val_acc = BinaryAccuracy()
        self.val_classes = [0, 0]  # (wrong, right) records seen this validation: AUROC needs both
        self.val_outcomes = torch.nn.ModuleDict({k: MeanMetric() for k in VAL_OUTCOMES})

    @property
    def backbone_trainable(self) -> bool:
        return not self.hparams.freeze_backbone

    # ---- rollouts ---------------------------------------------------------------------------
    def solver(self) -> TokenKeepingSolver:
        head = self.value_head if self.rollout_cfg.score in ("value", "both") else None
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

    def thoughts_for_loss(self, ro: Rollouts, solver: TokenKeepingSolver, problems: list[Problem]) -> tuple:
        """The thought vectors the value loss sees, and the LM loss on correct records (0 when frozen)."""
        dev = self.device
        if not self.backbone_trainable:
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
        if bool(correct.any()) and self.hparams.lm_coef > 0:
            lg, tg = logits[correct].float(), targets[correct]
            lm = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1), ignore_index=-100)
        return thoughts, lm

    def transfer_batch_to_device(
        self, batch: list[Problem], device: torch.device, dataloader_idx: int
    ) -> list:
        """Batches are lists of Problems (text): nothing to move, the solver encodes on the model's device."""
        return batch

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch: list[Problem], batch_idx: int) -> Tensor:
        ro, solver = self.rollouts(batch)
        thoughts, lm = self.thoughts_for_loss(ro, solver, batch)
        rewards = ro.rewards.to(self.device)
        loss_v = value_loss(self.value_head, thoughts, rewards, self.hparams.pos_weight)
        loss = loss_v + self.hparams.lm_coef * lm
        n = len(batch)
        with torch.no_grad():
            prob = torch.sigmoid(self.value_head(thoughts.detach()))
            stats = {
                "value/loss": loss_v.detach(),
                "value/acc": ((prob > 0.5).float() == rewards).float().mean(),
                "value/base_rate": rewards.mean(),
                "train/swarm": torch.tensor(
                    sum(self.task.score(r.answer, p.answer) for r, p in zip(ro.results, batch)) / n
                ),
                "train/coverage": torch.tensor(self._coverage(ro)),
                "train/forward_passes": torch.tensor(
                    sum(r.forward_passes for r in ro.results) / n, dtype=torch.float
                ),
            }
            if 0.0 < float(rewards.mean()) < 1.0:  # AUROC is undefined with one class
                stats["value/auc"] = binary_auroc(prob, rewards.long())
            if self.backbone_trainable:
                stats["train/lm_loss"] = lm.detach()
        self.log_dict(stats, prog_bar=False, batch_size=n)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n)
        return loss

    @staticmethod
    def _coverage(ro: Rollouts) -> float:
        """Share of problems with a right record in any round (``coverage`` in moe_swarm.swarm.outcomes)."""
        hits = torch.zeros(int(ro.group_ids.max()) + 1).scatter_reduce_(0, ro.group_ids, ro.rewards, "amax")
        return float(hits.mean())

    # ---- validation -------------------------------------------------------------------------
    def validation_step(self, batch: list[Problem], batch_idx: int) -> None:
        ro, _ = self.rollouts(batch)
        thoughts, rewards = ro.thoughts.to(self.device), ro.rewards.to(self.device)
        with torch.no_grad():
            logits = self.value_head(thoughts)
            self.val_loss.update(F.binary_cross_entropy_with_logits(logits, rewards), weight=rewards.numel())
            prob = torch.sigmoid(logits)
        self.val_auroc.update(prob, rewards.long())
        self.val_acc.update(prob, rewards.long())
        right = int(rewards.sum())
        self.val_classes[0] += rewards.numel() - right
        self.val_classes[1] += right
        value = prob.cpu().tolist()
        offset = 0
        for res, problem in zip(ro.results, batch):
            v = value[offset : offset + len(res.records)]
            offset += len(res.records)
            outcome = answer_outcomes(res, problem.answer, self.task, value=v)
            for name in VAL_OUTCOMES:
                self.val_outcomes[name].update(torch.tensor(outcome[name], device=self.device))

    def on_validation_epoch_end(self) -> None:
        out = {"val/value_loss": self.val_loss.compute(), "val/value_acc": self.val_acc.compute()}
        self.val_loss.reset()
        self.val_acc.reset()
        if min(self.val_classes) > 0:
            out["val/value_auc"] = self.val_auroc.compute()
        self.val_auroc.reset()
        self.val_classes = [0, 0]
        for name, metric in self.val_outcomes.items():
            out[f"val/{name}"] = metric.compute()
            metric.reset()
        self.log_dict(out, prog_bar=False)

    # ---- optimisation and state ------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": list(self.value_head.parameters()), "lr": self.hparams.lr}]
        backbone = [p for p in self.model.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": self.hparams.backbone_lr})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_swarm_state(checkpoint, self.value_head, self.swarm_cfg)


# ---------------------------------------------------------------------------------- step checker
class StepRolloutDataModule(L.LightningDataModule):
    """Labelled step proposals from the base model's own step-swarm rollouts (train problems for training,
    val problems for validation), labelled by the task's exact step oracle.

    Rollouts run once in ``setup`` with the frozen generator: every agent proposes every step
    (``rollout`` = StepSwarmConfig fields; early commit and backtracking off by default, so each group
    holds all ``num_agents`` proposals), the trajectory follows the plurality winner.
    """

    def __init__(
        self,
        module: StepCheckerModule,
        n_train: int = 512,
        n_val: int = 128,
        batch_size: int = 64,
        seed: int = 0,
        rollout: dict | DictConfig | None = None,
    ) -> None:
        super().__init__()
        for name, value in [("n_train", n_train), ("n_val", n_val), ("batch_size", batch_size)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.module, self.n_train, self.n_val, self.batch_size, self.seed = (
            module,
            n_train,
            n_val,
            batch_size,
            seed,
        )
        defaults = {"num_agents": 8, "wave_agents": 8, "commit_share": 2.0, "max_backtracks": 0}
        self.rollout_cfg = StepSwarmConfig.from_dict({**defaults, **dict(_plain(rollout) or {})})
        self.rollouts: dict[str, StepRollouts] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.rollouts:
            return
        task, model = self.module.task, self.module.model
        model.eval()
        swarm = StepSwarm(model, self.rollout_cfg, self.module.tokenizer, task)
        with torch.no_grad():
            for split, n in (("train", self.n_train), ("val", self.n_val)):
                self.rollouts[split] = collect_step_rollouts(
                    swarm, task.generate(split, n, seed=self.seed), task
                )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        ro = self.rollouts[split]
        gen = torch.Generator().manual_seed(self.seed)
        # train on proposals made after a right prefix: the oracle labels everything after a wrong step
        # wrong, which would teach the checker to spot wrong prefixes instead of ranking proposals
        rows = ro.prefix_ok.nonzero().squeeze(1).tolist() if split == "train" else list(range(len(ro)))
        return DataLoader(
            rows,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=gen,
            collate_fn=lambda rows: self.module.encode_rows(ro, rows),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)


class StepCheckerModule(L.LightningModule):
    """Trains the step checker (``moe_swarm.swarm.StepChecker``: a copy of the backbone + a head) on
    oracle-labelled step proposals. The generator itself stays frozen and is saved unchanged under
    ``model.`` (so the checkpoint is a model checkpoint), the checker under ``checker.``; the swarm
    state written with it carries the checker (``step_checker``) and the step-swarm config.

    Validation reports, on val problems: ``val/checker_loss`` (proposals after a right prefix); ``val/checker_auc_within`` (mean AUROC
    among the proposals of one step of one problem: what a checker-weighted vote needs) and
    ``val/checker_auc_vote_wrong`` (the same over groups whose plurality winner is wrong while a right
    proposal is present); the likelihood's ``val/logprob_auc_within`` / ``val/logprob_auc_vote_wrong``
    as the baseline scorer.
    """

    def __init__(
        self,
        checkpoint: str,
        task: dict | DictConfig | None = None,
        steps: dict | DictConfig | None = None,
        hidden: int = 128,
        lr: float = 3e-3,
        backbone_lr: float = 1e-3,
        weight_decay: float = 0.0,
        pos_weight: float | None = None,
    ) -> None:
        super().__init__()
        loaded = load_checkpoint(checkpoint)
        self.task, task_spec = task_from(task, loaded.task, checkpoint)
        if not self.task.scratchpad:
            raise ValueError(
                f"the step checker needs a task with a scratchpad (steps to check), got {task_spec}; train the "
                "base model with experiment=reasoning_steps (task_kwargs.scratchpad=true)"
            )
        self.model = loaded.model.requires_grad_(False)
        self.checker = StepChecker(copy.deepcopy(loaded.model).requires_grad_(True), hidden)
        self.steps_cfg = StepSwarmConfig.from_dict(dict(_plain(steps) or {}))
        self.tokenizer = ByteTokenizer()
        self.save_hyperparameters(
            {
                "checkpoint": str(checkpoint),
                "task": task_spec,
                "steps": self.steps_cfg.to_dict(),
                "hidden": hidden,
                "lr": lr,
                "backbone_lr": backbone_lr,
                "weight_decay": weight_decay,
                "pos_weight": pos_weight,
                "model": loaded.model.cfg.to_dict(),
                "eval_max_new_tokens": loaded.hparams.get("eval_max_new_tokens"),
                "base_global_step": loaded.global_step,
            }
        )
        self.val_loss = MeanMetric()
        self._val: list[tuple] = []

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

    def on_fit_start(self) -> None:
        """The generator only produced the rollouts and stays in eval mode; the checker trains."""
        self.model.eval()
        self.checker.train()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self.model.eval()
        logits = self.checker.score_sequences(batch["idx"], batch["mask"], batch["starts"], batch["ends"])
        loss = checker_loss(logits, batch["labels"], self.hparams.pos_weight)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=logits.shape[0])
        self.log("train/checker_base_rate", batch["labels"].float().mean(), batch_size=logits.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        logits = self.checker.score_sequences(batch["idx"], batch["mask"], batch["starts"], batch["ends"])
        ok = batch["prefix_ok"]
        if bool(ok.any()):  # the loss it is trained on: proposals after a right prefix
            self.val_loss.update(checker_loss(logits[ok], batch["labels"][ok]), weight=int(ok.sum()))
        self._val.append(
            (
                torch.sigmoid(logits).float().cpu(),
                batch["labels"].cpu(),
                batch["groups"].cpu(),
                batch["vote_wrong"].cpu(),
                batch["logprobs"].cpu(),
            )
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        prob, labels, groups, wrong, logprob = (torch.cat(x) for x in zip(*self._val))
        self._val = []
        right = (labels > 0.5).tolist()
        out = {"val/checker_loss": self.val_loss.compute()}
        self.val_loss.reset()
        for name, score in (("checker", prob), ("logprob", logprob)):
            r = ranking_quality(score.tolist(), right, groups.tolist(), wrong.tolist())
            out[f"val/{name}_auc_within"] = torch.tensor(r["auc_within"])
            out[f"val/{name}_auc_vote_wrong"] = torch.tensor(r["auc_vote_wrong"])
            out["val/groups_mixed"] = torch.tensor(float(r["groups"]))
            out["val/groups_vote_wrong"] = torch.tensor(float(r["groups_vote_wrong"]))
        self.log_dict(out, prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [
            {"params": list(self.checker.head.parameters()), "lr": self.hparams.lr},
            {"params": list(self.checker.model.parameters()), "lr": self.hparams.backbone_lr},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[SWARM_STATE_KEY] = step_swarm_state(self.checker, self.steps_cfg)


# ---------------------------------------------------------------------------------- run outputs
def write_swarm_checkpoint(
    source: str | Path, base_checkpoint: str | Path, out: Path, extra_hparams: dict
) -> dict:
    """One model checkpoint holding the weights of ``source`` (a swarm-training checkpoint), the base
    run's hyper-parameters (task, run config) and ``swarm_state``; returns the swarm state."""
    from moe_swarm.checkpoint import load_model, save_model_checkpoint

    model, hp = load_model(source)
    state = hp.get("swarm_state")
    if not isinstance(state, dict):
        raise ValueError(f"{source} holds no swarm state; it was not written by moe-swarm-swarm-train")
    _, base_hp = load_model(base_checkpoint)
    base_hp.pop("swarm_state", None)
    base_hp["global_step"] = hp.get("base_global_step", base_hp.get("global_step"))
    base_hp["swarm_train"] = extra_hparams
    save_model_checkpoint(out, model, base_hp, extra={"swarm_state": state})
    return state


def swarm_fields(cfg: DictConfig, layout: RunLayout, o: Any) -> dict[str, Any]:
    """Summary fields of a scorer run; on rank 0 also writes swarm.ckpt and swarm_state.pt."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt_cb = next((c for c in o.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.monitor), None)
    best = (ckpt_cb.best_model_path or None) if ckpt_cb else None
    last = layout.existing_last_checkpoint()
    source = best or (str(last) if last else None)
    fields: dict[str, Any] = {
        "base_checkpoint": str(cfg.checkpoint),
        "checkpoint": None,
        "swarm_state": None,
        "lightning_checkpoint": str(last) if last else None,
        "head_from": source,
        "task": o.module.hparams.task,
        "objective": str(cfg.module._target_).rsplit(".", 1)[-1],
        "swarm": o.module.hparams.get("swarm") or o.module.hparams.get("steps"),
        "freeze_backbone": o.module.hparams.get("freeze_backbone"),  # value head only
    }
    if o.trainer.is_global_zero and source is not None:
        extra = {
            "run_id": cfg.run_id,
            "source": source,
            "module": OmegaConf.to_container(cfg.module, resolve=True),
        }
        state = write_swarm_checkpoint(source, cfg.checkpoint, layout.swarm_checkpoint, extra)
        atomic_torch_save(state, layout.swarm_state)
        fields["checkpoint"] = str(layout.swarm_checkpoint)
        fields["swarm_state"] = str(layout.swarm_state)
    return fields


def print_summary(s: dict[str, Any]) -> None:
    def metric(name: str) -> str:
        a, b = s["metrics_start"].get(name), s["metrics"].get(name)
        fa = "-" if a is None else f"{a:.4f}"
        fb = "-" if b is None else f"{b:.4f}"
        return f"{fa} -> {fb}"

    if s["objective"] == "StepCheckerModule":
        shown = ["val/checker_loss", "val/checker_auc_within", "val/checker_auc_vote_wrong"]
        shown += ["val/logprob_auc_within", "val/logprob_auc_vote_wrong"]
    else:
        shown = ["val/value_loss", "val/value_auc", "val/majority", "val/value_weighted", "val/swarm"]
    lines = [
        "",
        f"== {s['objective']} {s['run_id']}: {s['status']} after {s['global_step']} steps ({s['wall_seconds']} s)",
        *(f"   {name} {metric(name)}" for name in shown),
        f"   checkpoint (model + swarm state): {s['checkpoint']}",
        f"   summary: {s['run_dir']}/summary.json",
        "",
    ]
    print("\n".join(lines), flush=True)
