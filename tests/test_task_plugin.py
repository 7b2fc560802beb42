"""Task families as plug-ins: ``task=package.module:Class`` loads a family defined only in this module, and
the same key drives base-model training, checker training, the swarm evaluation and the sidecar's loader."""

import json
import random
import re
from pathlib import Path

import pytest
from conftest import compose_cfg

from moe_swarm.data.tasks import (
    ANSWER_MARK,
    TASKS,
    Problem,
    Task,
    check_positive_int,
    get_task,
    load_task_class,
    task_from_spec,
)


class DigitSumTask(Task):
    """Sum ``n_digits`` single digits: ``"352+"`` -> steps ``"3+5=8"``, ``"8+2=10"``, answer ``"10"``."""

    name = "digitsum"

    def __init__(self, n_digits: int = 2, scratchpad: bool = False) -> None:
        check_positive_int("n_digits", n_digits, minimum=2)
        self.n_digits, self.scratchpad = n_digits, scratchpad

    def params(self) -> dict:
        return {"n_digits": self.n_digits, "scratchpad": self.scratchpad}

    def sample(self, rng: random.Random) -> Problem:
        digits = [rng.randint(0, 9) for _ in range(self.n_digits)]
        return Problem("".join(map(str, digits)) + "+", str(sum(digits)), f"{self.n_digits}d")

    def problem_key(self, problem: Problem) -> str:
        return problem.prompt

    def solution_steps(self, problem: Problem) -> list[str]:
        digits = [int(c) for c in problem.prompt[:-1]]
        steps, total = [], digits[0]
        for d in digits[1:]:
            steps.append(f"{total}+{d}={total + d}")
            total += d
        return [*steps, f"{ANSWER_MARK}{total}"]

    def prompt_pattern(self) -> str:
        return rf"[0-9]{{{self.n_digits}}}\+"


PLUGIN = f"{__name__}:DigitSumTask"


class NotATask:
    pass


class Unfinished(Task):
    name = "unfinished"


def test_the_loader_builds_a_plugin_with_its_arguments_and_the_oracle_works():
    task, spec = task_from_spec({"name": PLUGIN, "kwargs": {"n_digits": 3, "scratchpad": True}})
    assert isinstance(task, DigitSumTask) and spec == {
        "name": PLUGIN,
        "kwargs": {"n_digits": 3, "scratchpad": True},
    }
    assert PLUGIN not in TASKS  # nothing was registered: the path alone finds it
    train, test = task.generate("train", 200, seed=0), task.generate("test", 20, seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in test}  # the base class's disjoint splits
    p = train[0]
    steps = task.solution_steps(p)
    assert p.completion == "\n".join(steps[:-1]) + "\n" + steps[-1]
    assert task.next_step(p, []) == steps[0] and task.next_step(p, ["0+0=99"]) is None
    assert task.score(p.completion, p.answer) and not task.score("=" + p.answer + "1", p.answer)
    task.check_prompt("123+")
    with pytest.raises(ValueError, match="not a 'digitsum' prompt"):
        task.check_prompt("12+")
    assert task_from_spec(PLUGIN)[0].n_digits == 2  # a bare name: the class's defaults


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("no_such_module_xyz:Task", {}, "cannot import module 'no_such_module_xyz'"),
        (f"{__name__}:Missing", {}, "has no attribute 'Missing'"),
        (f"{__name__}:NotATask", {}, "not a subclass"),
        (f"{__name__}:Unfinished", {}, "does not implement"),
        (PLUGIN, {"digits": 3}, r"unknown arguments \['digits'\]"),
        ("mull", {}, "package.module:Class"),
        (":X", {}, "must be 'package.module:Class'"),
    ],
)
def test_a_bad_plugin_is_a_value_error_that_says_what_is_wrong(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_task(name, **kwargs)


def test_builtin_names_still_load_and_the_split_did_not_change_problems():
    mul = get_task("mul", digits_a=4, digits_b=1, scratchpad=True)
    first = mul.generate("test", 3, seed=0)
    assert [p.prompt for p in first] == [
        p.prompt for p in get_task("mul", digits_a=4, digits_b=1).generate("test", 3)
    ]
    assert load_task_class("chase") is TASKS["chase"]
    chase = get_task("chase", scratchpad=True)
    for p in chase.generate("val", 50, seed=1):
        steps = chase.solution_steps(p)
        assert len(steps) - 1 == int(p.difficulty.removesuffix("hop")) and steps[-1] == "=" + p.answer
        chase.check_prompt(p.prompt)
        assert re.fullmatch(r"([a-z]>[a-z]\n)+=[a-z]", p.completion)


# ------------------------------------------------------------------------------ end to end, tiny
TINY_PLUGIN_BASE = [
    "experiment=reasoning_steps_task",
    f"data.task={PLUGIN}",
    "data.task_kwargs={n_digits: 2, scratchpad: true}",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.moe.d_ff=32",
    "model.moe.num_experts=4",
    "model.max_seq_len=32",
    "data.n_train=40",
    "data.n_val=4",
    "data.n_test=4",
    "data.batch_size=32",
    "module.eval_problems=4",
    "module.eval_max_new_tokens=12",
    "module.optimizer.lr=0.01",
    "module.scheduler.warmup_steps=5",
    "trainer.max_steps=40",
    "trainer.val_check_interval=40",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "validate_before_fit=false",
    "logger=csv",
    "run_id=plugin-base",
]


@pytest.fixture(scope="module")
def plugin_runs(tmp_path_factory) -> dict:
    from moe_swarm.cli.swarm_train import swarm_train
    from moe_swarm.cli.train import train

    runs = tmp_path_factory.mktemp("plugin")
    base = train(compose_cfg("train", TINY_PLUGIN_BASE, runs))
    checker = swarm_train(
        compose_cfg(
            "swarm_train",
            [
                f"checkpoint={base['checkpoint']}",
                "swarm_objective=step_checker",
                "run_id=plugin-checker",
                "data.n_train=8",
                "data.n_val=4",
                "data.batch_size=16",
                "data.rollout.num_agents=2",
                "data.rollout.wave_agents=2",
                "data.rollout.max_step_tokens=8",
                "trainer.max_steps=4",
                "trainer.val_check_interval=4",
                "trainer.enable_progress_bar=false",
                "validate_before_fit=false",
            ],
            runs,
        )
    )
    return {"base": base, "checker": checker, "runs": runs}


def test_plugin_trains_a_base_model_and_a_checker_and_both_record_the_key(plugin_runs):
    from moe_swarm.store.checkpoint import load_checkpoint

    base, checker = plugin_runs["base"], plugin_runs["checker"]
    assert base["status"] == "succeeded" and checker["status"] == "succeeded"
    spec = {"name": PLUGIN, "kwargs": {"n_digits": 2, "scratchpad": True}}
    assert load_checkpoint(base["checkpoint"]).task == spec
    assert load_checkpoint(checker["checkpoint"]).task == spec
    assert "val/em" in base["metrics"] and "val/checker_auc_within" in checker["metrics"]


def test_plugin_swarm_eval_and_the_sidecar_loader_use_the_same_key(plugin_runs, tmp_path):
    from moe_swarm.cli.swarm_eval import run_eval
    from moe_swarm.control.models import read_model

    ckpt = plugin_runs["checker"]["checkpoint"]
    out = tmp_path / "eval"
    args = [
        f"checkpoint={ckpt}",
        "mode=steps",
        "n_test=4",
        "step_level.agents=[2]",
        "step_level.max_new_tokens=12",
        "step_level.ablation_votes=[]",
        "step_level.selector=null",
        "steps.wave_agents=2",
        "steps.max_step_tokens=8",
        "bootstrap.samples=50",
        f"out_dir={out}",
    ]
    report = run_eval(compose_cfg("swarm_eval", args, tmp_path))
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"]["name"] == PLUGIN and report["n_test"] == 4
    row = next(iter(saved["step_level"]["buckets"].values()))["grid"][0]
    assert 0.0 <= row["step_swarm"] <= 1.0 and row["forward_passes"] > 0
    loaded = read_model(Path(ckpt), "plugin", "cpu")  # the sidecar's loader
    assert isinstance(loaded.task_obj, DigitSumTask) and loaded.task == PLUGIN
    assert loaded.task_obj.scratchpad is True and loaded.canonical("3+4=7\n=7") == "7"
