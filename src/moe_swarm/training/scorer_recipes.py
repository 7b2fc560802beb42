"""How each swarm scorer is built for training: the value head and the step checker.

A recipe is what ``cfg.module`` of ``moe-swarm-swarm-train`` instantiates (``conf/swarm_objective/``):
it holds the objective's hyper-parameters and, in :meth:`build`, loads the base checkpoint, makes the
scorer and its label source, and the :class:`~moe_swarm.training.scorer_module.ScorerModule` that trains
it. ``name`` is the summary's ``objective`` (the names of the two modules this replaced, kept so old
summaries and scripts read the same) and ``shown`` the metrics the console summary prints.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe_swarm.data.tasks import Task, task_from_spec
from moe_swarm.store.checkpoint import load_checkpoint
from moe_swarm.swarm import (
    StepChecker,
    StepSwarmConfig,
    SwarmConfig,
    TrunkStepChecker,
    ValueHead,
    step_swarm_state,
    swarm_state_dict,
)
from moe_swarm.training.answer_labels import AnswerLabels
from moe_swarm.training.scorer_module import ScorerModule
from moe_swarm.training.step_labels import StepLabels

CHECKER_KINDS = ("full", "trunk")  # a fine-tuned model copy + head | a head on the generator's states

# Rollouts keep every round of every problem: early exit would drop the later (harder) records.
DEFAULT_ROLLOUT_OVERRIDES = {"early_exit_share": 2.0}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def task_from(task: str | dict | None, checkpoint_task: dict | None, checkpoint: str) -> tuple[Task, dict]:
    """The reasoning task to train/evaluate on: ``task`` if given, else the checkpoint's own task."""
    spec = _plain(task) or checkpoint_task
    if not spec:
        raise ValueError(
            f"{checkpoint} names no reasoning task (it was not a task run); "
            "pass task=mul, task=package.module:Class or task={name: ..., kwargs: {...}}, "
            "or train with experiment=reasoning_swarm"
        )
    return task_from_spec(spec)  # a built-in name or a package.module:Class plug-in


class ValueHeadTraining:
    """The answer-level value head, from the swarm's own rollouts rewarded by exact match.

    ``checkpoint``: a training checkpoint of the backbone. ``swarm``: SwarmConfig fields (the Hydra
    ``swarm/`` preset); rollouts use it with ``rollout_overrides`` applied (default: no early exit),
    and it is saved with the head as the swarm state. ``task``: ``{name, kwargs}``, default the
    checkpoint's ``eval_task``. ``freeze_backbone=False`` trains the backbone too (value loss plus
    ``lm_coef`` x the LM loss of right rollouts). ``pos_weight`` up-weights correct records in the
    BCE (None = calibrated probabilities, what a weighted vote wants).
    """

    name = "SwarmValueModule"
    shown = ("val/value_loss", "val/value_auc", "val/majority", "val/value_weighted", "val/swarm")

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
        self.checkpoint, self.task = str(checkpoint), task
        self.swarm_cfg = SwarmConfig.from_dict(dict(_plain(swarm) or {}))
        overrides = (
            DEFAULT_ROLLOUT_OVERRIDES if rollout_overrides is None else dict(_plain(rollout_overrides))
        )
        self.rollout_cfg = self.swarm_cfg.replace(**overrides)
        if not freeze_backbone and self.rollout_cfg.inject_top_k > 0:
            raise ValueError(
                "freeze_backbone=false recomputes thoughts from tokens and cannot replay injected thought slots; "
                "set swarm.inject_top_k=0 or keep the backbone frozen"
            )
        self.hparams = {
            "freeze_backbone": freeze_backbone,
            "value_hidden": value_hidden,
            "lr": lr,
            "backbone_lr": backbone_lr,
            "weight_decay": weight_decay,
            "pos_weight": pos_weight,
            "lm_coef": lm_coef,
            "rollout_overrides": overrides,
        }

    def build(self) -> tuple[AnswerLabels, ScorerModule]:
        hp = self.hparams
        loaded = load_checkpoint(self.checkpoint)
        model, base_hparams = loaded.model, loaded.hparams
        task, task_spec = task_from(self.task, loaded.task, self.checkpoint)
        head = ValueHead(model.cfg.d_model, hp["value_hidden"])
        model.requires_grad_(not hp["freeze_backbone"])
        labels = AnswerLabels(
            model, head, task, self.rollout_cfg, recompute=not hp["freeze_backbone"], lm_coef=hp["lm_coef"]
        )
        hparams = {
            "checkpoint": self.checkpoint,
            "swarm": self.swarm_cfg.to_dict(),
            "task": task_spec,
            **hp,
            # what load_checkpoint / the sidecar / moe-swarm-eval read from a model checkpoint:
            "model": model.cfg.to_dict(),
            "eval_max_new_tokens": base_hparams.get("eval_max_new_tokens", self.swarm_cfg.max_new_tokens),
            "base_global_step": loaded.global_step,
        }
        module = ScorerModule(
            model,
            head,
            labels,
            scorer_name="value_head",
            head="",
            swarm_state=partial(swarm_state_dict, head, self.swarm_cfg),
            hparams=hparams,
        )
        return labels, module


class StepCheckerTraining:
    """The step checker on oracle-labelled step proposals: ``kind="full"`` (``moe_swarm.swarm.StepChecker``:
    a fine-tuned copy of the backbone + a head) or ``kind="trunk"`` (``TrunkStepChecker``: a head on the
    frozen generator's own hidden states, which the swarm reads from decoding at no forward pass). The generator itself stays frozen and is saved unchanged under
    ``model.`` (so the checkpoint is a model checkpoint), the checker under ``checker.``; the swarm
    state written with it carries the checker (``step_checker``) and the step-swarm config ``steps``.
    """

    name = "StepCheckerModule"
    shown = (
        "val/checker_loss",
        "val/checker_auc_within",
        "val/checker_auc_vote_wrong",
        "val/logprob_auc_within",
        "val/logprob_auc_vote_wrong",
    )

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
        kind: str = "full",
        rank_weight: float = 0.0,
    ) -> None:
        if kind not in CHECKER_KINDS:
            raise ValueError(f"module.kind must be one of {CHECKER_KINDS}, got {kind!r}")
        if not isinstance(rank_weight, (int, float)) or not rank_weight >= 0:
            raise ValueError(
                f"module.rank_weight must be a number >= 0 (0: no ranking loss), got {rank_weight!r}"
            )
        self.checkpoint, self.task, self.steps = str(checkpoint), task, steps
        self.hparams = {
            "kind": kind,
            "hidden": hidden,
            "lr": lr,
            "backbone_lr": backbone_lr,
            "weight_decay": weight_decay,
            "pos_weight": pos_weight,
            "rank_weight": float(rank_weight),
        }

    def build(self) -> tuple[StepLabels, ScorerModule]:
        loaded = load_checkpoint(self.checkpoint)
        task, task_spec = task_from(self.task, loaded.task, self.checkpoint)
        if not task.scratchpad:
            raise ValueError(
                f"the step checker needs a task with a scratchpad (steps to check), got {task_spec}; train the "
                "base model with experiment=reasoning_steps (task_kwargs.scratchpad=true)"
            )
        model = loaded.model.requires_grad_(False)
        if self.hparams["kind"] == "trunk":  # a head on the frozen generator's own states: no copy
            checker = TrunkStepChecker(model.cfg.d_model, self.hparams["hidden"]).bind(model)
        else:
            checker = StepChecker(copy.deepcopy(loaded.model).requires_grad_(True), self.hparams["hidden"])
        steps_cfg = StepSwarmConfig.from_dict(dict(_plain(self.steps) or {}))
        labels = StepLabels(model, task, checker=checker)
        hparams = {
            "checkpoint": self.checkpoint,
            "task": task_spec,
            "steps": steps_cfg.to_dict(),
            **self.hparams,
            "model": loaded.model.cfg.to_dict(),
            "eval_max_new_tokens": loaded.hparams.get("eval_max_new_tokens"),
            "base_global_step": loaded.global_step,
        }
        module = ScorerModule(
            model,
            checker,
            labels,
            scorer_name="checker",
            head="head",
            swarm_state=partial(step_swarm_state, checker, steps_cfg),
            hparams=hparams,
        )
        return labels, module
