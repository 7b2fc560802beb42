"""The run template (``Run(cfg).execute(objective)``) and the scorer-training pieces it runs:
the ``Scorer`` interface, ``ScorerModule``'s parameter groups, datamodules that take a label source."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MODEL, compose_cfg

from moe_swarm.data.tasks import get_task
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.store.layout import RunLayout
from moe_swarm.store.run_lock import RunLock, RunLockError
from moe_swarm.swarm import StepChecker, StepRollouts, SwarmConfig, ValueHead, swarm_state_dict
from moe_swarm.swarm.checker import checker_loss
from moe_swarm.swarm.scorer import Scorer, labelled_loss
from moe_swarm.swarm.value import value_loss
from moe_swarm.training.lm_objective import LanguageModelObjective
from moe_swarm.training.run import Run
from moe_swarm.training.scorer_data import ProblemDataModule, StepRolloutDataModule
from moe_swarm.training.scorer_recipes import StepCheckerTraining, ValueHeadTraining


class RecordingObjective(LanguageModelObjective):
    """The LM objective, noting when the template calls it and what it sees then."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def build(self, cfg):
        with pytest.raises(RunLockError):  # the template holds the run directory while building
            RunLock(RunLayout(cfg.run_dir).lock, "intruder").acquire()
        self.calls.append(("build", torch.rand(1).item()))
        return super().build(cfg)

    def report(self, cfg, layout, outcome):
        self.calls.append(("report", outcome.status, outcome.trainer.global_step))
        return {**super().report(cfg, layout, outcome), "recorded": True}

    def show(self, summary):
        self.calls.append(("show", summary["recorded"]))


def test_the_template_runs_any_objective_and_owns_id_lock_seed_and_summary(tmp_path):
    args = [*TINY_MODEL, "run_id=tmpl", "trainer.max_steps=2", "trainer.val_check_interval=2", "seed=7"]
    objective = RecordingObjective()
    summary = Run(compose_cfg("train", args, tmp_path)).execute(objective)
    torch.manual_seed(7)
    seeded = torch.rand(1).item()
    assert objective.calls == [("build", seeded), ("report", "succeeded", 2), ("show", True)]
    assert summary["recorded"] is True and summary["status"] == "succeeded" and summary["global_step"] == 2
    assert json.loads((tmp_path / "tmpl" / "summary.json").read_text()) == summary
    assert summary["params"]["total"] > 0  # the objective's own report

    again = RecordingObjective()
    assert Run(compose_cfg("train", args, tmp_path)).execute(again) == summary  # finished: nothing built
    assert again.calls == []


def _tiny_model() -> MoETransformer:
    cfg = TransformerConfig(
        d_model=16, n_layers=1, n_heads=2, max_seq_len=32, moe=MoEConfig(num_experts=2, d_ff=16)
    )
    return MoETransformer(cfg)


def test_value_head_and_step_checker_are_scorers_that_save_themselves_as_plain_data():
    torch.manual_seed(0)
    head, checker = ValueHead(16, 8), StepChecker(_tiny_model(), hidden=8)
    assert isinstance(head, Scorer) and isinstance(checker, Scorer)
    back = ValueHead.from_state(head.state())
    thoughts = torch.randn(5, 16)
    torch.testing.assert_close(back.logits(thoughts), head.logits(thoughts))
    assert set(head.state()) == set(swarm_state_dict(head, SwarmConfig())["value_head"])
    checker_back = StepChecker.from_state(checker.state())
    assert checker_back.config() == checker.config() == {"model": checker.model.cfg.to_dict(), "hidden": 8}

    labels = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    torch.testing.assert_close(
        labelled_loss(head.logits(thoughts), labels, 2.0), value_loss(head, thoughts, labels, 2.0)
    )
    logits = torch.randn(5)
    torch.testing.assert_close(labelled_loss(logits, labels), checker_loss(logits, labels))


def test_scorer_module_trains_the_head_at_lr_and_only_trainable_backbones_at_backbone_lr(tiny_mul_base_ckpt):
    _, frozen = ValueHeadTraining(str(tiny_mul_base_ckpt), SwarmConfig().to_dict(), lr=0.1).build()
    (group,) = frozen.configure_optimizers().param_groups
    assert group["lr"] == 0.1 and {id(p) for p in group["params"]} == {
        id(p) for p in frozen.value_head.parameters()
    }

    _, unfrozen = ValueHeadTraining(
        str(tiny_mul_base_ckpt), SwarmConfig().to_dict(), freeze_backbone=False, backbone_lr=0.01
    ).build()
    head, backbone = unfrozen.configure_optimizers().param_groups
    assert backbone["lr"] == 0.01 and len(backbone["params"]) == len(list(unfrozen.model.parameters()))

    scratchpad = {"name": "mul", "kwargs": {"digits_a": 1, "digits_b": 1, "scratchpad": True}}
    labels, checker = StepCheckerTraining(str(tiny_mul_base_ckpt), task=scratchpad, hidden=8).build()
    head, backbone = checker.configure_optimizers().param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in checker.checker.head.parameters()}
    assert {id(p) for p in backbone["params"]} == {id(p) for p in checker.checker.model.parameters()}
    assert labels.model is checker.model and not any(p.requires_grad for p in checker.model.parameters())
    assert {k.split(".")[0] for k in checker.state_dict()} == {"model", "checker"}  # the old checkpoint keys
    assert {k.split(".")[0] for k in frozen.state_dict()} == {"model", "value_head"}


def test_scorer_datamodules_serve_what_a_plain_label_source_gives_them():
    task = get_task("mul", digits_a=1, digits_b=1)
    problems = ProblemDataModule(SimpleNamespace(task=task), n_train=6, n_val=2, batch_size=3)
    (batch, *_) = problems.train_dataloader()
    assert len(batch) == 3 and all(p in task.generate("train", 6, seed=0) for p in batch)

    rollouts = StepRollouts(
        labels=torch.tensor([1.0, 0.0, 0.0, 1.0]),
        groups=torch.tensor([0, 0, 1, 1]),
        vote_wrong=torch.zeros(4, dtype=torch.bool),
        logprobs=torch.zeros(4),
        prefix_ok=torch.tensor([True, True, False, True]),
    )

    class Source:  # what StepLabels offers the datamodule: rollouts, and rows encoded for the checker
        def __init__(self) -> None:
            self.collected: list = []

        def collect(self, rollout, sizes, seed):
            self.collected.append((rollout.num_agents, sizes, seed))
            return {"train": rollouts, "val": rollouts}

        def encode_rows(self, ro, rows, weights=None):
            return rows

    source = Source()
    steps = StepRolloutDataModule(
        source, n_train=5, n_val=3, batch_size=8, seed=4, rollout={"num_agents": 2, "wave_agents": 2}
    )
    assert sorted(next(iter(steps.train_dataloader()))) == [0, 1, 3]  # after a right prefix only
    assert next(iter(steps.val_dataloader())) == [0, 1, 2, 3]
    assert source.collected == [(2, {"train": 5, "val": 3}, 4)]  # rolled out once
