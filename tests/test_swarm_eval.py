"""Swarm evaluation: paired bootstrap CIs, and moe-swarm-swarm-eval end to end on a real tiny checkpoint."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, run_entry_point

from moe_swarm.cli.swarm_eval import run_eval
from moe_swarm.cli.swarm_train import swarm_train
from moe_swarm.config import config_dir
from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.swarm import (
    ANSWER_OUTCOMES,
    greedy,
    holm_adjust,
    paired_bootstrap_ci,
    ranking_auc,
    two_level_bootstrap_ci,
)

CONF = config_dir()
# 1x1 multiplication has only 4 test items; the train split (37 items) gives a usable number of problems.
TINY_EVAL = [
    "split=train",
    "n_test=12",
    "grid.agents=[1,4]",
    "grid.rounds=[0,1]",
    "swarm.max_new_tokens=4",
    "bootstrap.samples=300",
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_mul_base_ckpt) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs")
    base = tiny_mul_base_ckpt
    head = swarm_train(
        compose_cfg(
            "swarm_train",
            [
                f"checkpoint={base}",
                "run_id=head",
                "data.n_train=30",
                "data.n_val=4",
                "data.batch_size=30",
                "data.val_batch_size=4",
                "swarm.num_agents=8",
                "swarm.rounds=0",
                "swarm.max_new_tokens=4",
                "module.lr=0.03",
                "trainer.max_steps=40",
                "trainer.val_check_interval=40",
                "trainer.enable_progress_bar=false",
                "validate_before_fit=false",
            ],
            runs,
        )
    )
    return {"base": base, "swarm": Path(head["checkpoint"]), "state": Path(head["swarm_state"])}


# ------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_of_identical_arms_is_zero_and_contains_zero():
    a = [1.0, 0.0, 1.0, 1.0, 0.0] * 40
    ci = paired_bootstrap_ci(a, list(a), samples=500)
    assert ci["diff"] == 0.0 and ci["low"] <= 0.0 <= ci["high"]
    assert ci["n"] == 200 and ci["level"] == 0.95


def test_bootstrap_separates_a_clearly_better_arm_and_not_two_equal_noisy_ones():
    g = torch.Generator().manual_seed(0)
    worse = (torch.rand(400, generator=g) < 0.3).float().tolist()
    better = [1.0 if (w or u < 0.5) else 0.0 for w, u in zip(worse, torch.rand(400, generator=g).tolist())]
    ci = paired_bootstrap_ci(better, worse, samples=1000, seed=1)
    assert ci["low"] > 0.2 and ci["low"] <= ci["diff"] <= ci["high"]
    flipped = paired_bootstrap_ci(worse, better, samples=1000, seed=1)
    assert flipped["high"] < 0 and flipped["diff"] == pytest.approx(-ci["diff"])
    x = (torch.rand(400, generator=g) < 0.5).float().tolist()
    y = (torch.rand(400, generator=g) < 0.5).float().tolist()
    same_rate = paired_bootstrap_ci(x, y, samples=1000)
    assert same_rate["low"] < 0 < same_rate["high"]


def test_bootstrap_interval_widens_with_the_level_and_rejects_bad_input():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(300, generator=g).tolist()
    b = torch.rand(300, generator=g).tolist()
    narrow = paired_bootstrap_ci(a, b, samples=2000, level=0.5)
    wide = paired_bootstrap_ci(a, b, samples=2000, level=0.99)
    assert wide["high"] - wide["low"] > narrow["high"] - narrow["low"] > 0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ci([1.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_ci([], [])
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap_ci([1.0], [0.0], level=1.5)


def test_two_level_bootstrap_reduces_to_paired_with_one_seed_and_widens_with_seed_spread():
    g = torch.Generator().manual_seed(3)
    a = [(torch.rand(200, generator=g) < 0.6).float().tolist() for _ in range(3)]
    b = [(torch.rand(200, generator=g) < 0.5).float().tolist() for _ in range(3)]
    one = two_level_bootstrap_ci(a[:1], b[:1], samples=1000)
    assert one["diff"] == pytest.approx(paired_bootstrap_ci(a[0], b[0])["diff"]) and one["seeds"] == 1
    # seeds that disagree (one helps a lot, two hurt) give a wider interval than seeds that agree
    spread = two_level_bootstrap_ci(
        [[1.0] * 50, [0.0] * 50, [0.0] * 50], [[0.0] * 50, [0.5] * 50, [0.5] * 50]
    )
    agree = two_level_bootstrap_ci([[1.0] * 50] * 3, [[0.0] * 50] * 3)
    assert agree["low"] == agree["high"] == 1.0 and spread["high"] - spread["low"] > 0.5
    with pytest.raises(ValueError, match="same number"):
        two_level_bootstrap_ci(a, b[:2])


def test_holm_adjust_is_step_down_and_monotone():
    assert holm_adjust([0.01, 0.04]) == pytest.approx([0.02, 0.04])
    assert holm_adjust([0.04, 0.01]) == pytest.approx([0.04, 0.02])
    assert holm_adjust([0.03, 0.02, 0.5]) == pytest.approx([0.06, 0.06, 0.5])
    assert holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def test_ranking_auc_counts_pairs_and_ties():
    assert ranking_auc([0.9, 0.1, 0.5], [True, False, False]) == 1.0
    assert ranking_auc([0.1, 0.9], [True, False]) == 0.0
    assert ranking_auc([0.5, 0.5, 0.2], [True, False, False]) == 0.75  # one tie (half), one win
    assert math.isnan(ranking_auc([0.3, 0.4], [True, True])) and math.isnan(ranking_auc([], []))


# ------------------------------------------------------------------------------------ end to end
def test_eval_writes_json_markdown_and_plot_with_consistent_numbers(checkpoints, tmp_path):
    out = tmp_path / "eval"
    report = run_eval(
        compose_cfg(
            "swarm_eval", [f"checkpoint={checkpoints['swarm']}", *TINY_EVAL, f"out_dir={out}"], tmp_path
        )
    )
    assert report["written_to"] == str(out)
    files = {p.name for p in out.iterdir()}
    assert {"results.json", "results.md", "em_vs_forward_passes.png"} <= files
    assert (out / "em_vs_forward_passes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_test"] == 12 and saved["value_head"] is True and saved["task"]["name"] == "mul"
    level = saved["answer_level"]
    assert level["reference"] == {"agents": 4, "rounds": 1}
    bucket = level["buckets"]["1x1"]
    assert bucket["problems"] == 12

    task = get_task("mul", digits_a=1, digits_b=1)
    problems = task.generate("train", 12, seed=0)
    from moe_swarm.store.checkpoint import load_model

    model, _ = load_model(checkpoints["swarm"])
    ref = greedy(model, ByteTokenizer(), [p.prompt for p in problems], 4, task.canonical)
    assert bucket["greedy"]["swarm"] == pytest.approx(
        sum(task.score(r.answer, p.answer) for r, p in zip(ref, problems)) / 12
    )

    cells = {(r["agents"], r["rounds"]): r for r in bucket["grid"]}
    assert set(cells) == {(1, 0), (4, 0), (1, 1), (4, 1)}
    for row in cells.values():
        for key in (*ANSWER_OUTCOMES, "independent_majority", "independent_rescored"):
            assert 0.0 <= row[key] <= 1.0, key
        assert row["coverage"] >= max(
            row["majority"], row["score_weighted"], row["swarm"], row["best_of_n_value"]
        )
        assert row["coverage"] >= row["pass_at_n"]
        if row["rounds"] == 0:  # one round: every record is a first-round record
            assert row["coverage"] == row["pass_at_n"]
        assert row["forward_passes"] >= row["agents"]  # every agent writes at least its EOS
        assert abs(row["independent_forward_passes"] - row["forward_passes"]) <= row["forward_passes"]
    one = cells[(1, 0)]
    assert one["single_agent"] == one["majority"] == one["score_weighted"] == one["swarm"] == one["pass_at_n"]
    # Without refinement the control's agents are the swarm's own: re-voted alike they agree exactly.
    assert cells[(4, 0)]["independent_rescored"] == cells[(4, 0)]["swarm"]
    assert (
        cells[(4, 1)]["forward_passes"] > cells[(4, 0)]["forward_passes"] or cells[(4, 1)]["rounds_used"] == 1
    )

    names = {c["comparison"] for c in bucket["comparisons"]}
    assert {
        "swarm - greedy",
        "score_weighted - majority",
        "swarm - independent_majority",
        "swarm - independent_rescored",
        "best_of_n_value - majority",
        "temperature - routing (independent_majority)",
    } <= names
    for c in bucket["comparisons"]:
        assert c["low"] <= c["diff"] + 1e-12 and c["diff"] <= c["high"] + 1e-12 and c["n"] == 12
    assert {d["diversity"] for d in bucket["diversity"]} == {"temperature", "routing"}

    assert saved["threads"] == torch.get_num_threads()
    targets = {t["target"]: t for t in saved["targets"]}
    assert set(targets) == {
        "swarm - greedy >= 5 points, CI above 0",
        "swarm - independent_majority >= 3 points, CI above 0",
    }
    for t in targets.values():
        assert t["met"] == (t["measured"] >= t["threshold"] and t["ci"][0] > 0)

    md = (out / "results.md").read_text()
    assert "## Difficulty 1x1 (12 problems)" in md and "## Targets" in md
    table_rows = [ln for ln in md.splitlines() if ln.startswith("| 4 | 1 |") or ln.startswith("| 1 | 0 |")]
    assert len(table_rows) == 2
    for row in bucket["grid"]:
        for key, x in row.items():
            if key.endswith("_auc_within"):  # undefined (NaN) unless some problem has right and wrong records
                assert math.isnan(x) or 0.0 <= x <= 1.0
                assert not (row["agents"] == 1 and not math.isnan(x)), "one record cannot be ranked"
            elif isinstance(x, float):
                assert not math.isnan(x), key
    assert "Scorers ranking the records of one problem (N=4, R=1" in md


def test_eval_without_a_value_head_needs_a_score_that_does_not_use_one(checkpoints, tmp_path):
    args = [
        f"checkpoint={checkpoints['base']}",
        *TINY_EVAL,
        "grid.agents=[2]",
        "grid.rounds=[0]",
        "controls.diversity=[]",
        f"out_dir={tmp_path / 'a'}",
    ]
    with pytest.raises(ValueError, match="needs a value head"):
        run_eval(compose_cfg("swarm_eval", args, tmp_path))
    report = run_eval(compose_cfg("swarm_eval", [*args, "swarm=logprob"], tmp_path))
    row = report["answer_level"]["buckets"]["1x1"]["grid"][0]
    assert report["value_head"] is False and math.isnan(row["best_of_n_value"])
    # the head can also come from a separate swarm_state.pt
    report = run_eval(
        compose_cfg(
            "swarm_eval",
            [*args, f"swarm_state={checkpoints['state']}", f"out_dir={tmp_path / 'b'}"],
            tmp_path,
        )
    )
    assert report["value_head"] is True


def test_eval_rejects_a_reference_cell_outside_the_grid(checkpoints, tmp_path):
    args = [f"checkpoint={checkpoints['swarm']}", *TINY_EVAL, "reference.agents=16", f"out_dir={tmp_path}"]
    with pytest.raises(ValueError, match="reference cell"):
        run_eval(compose_cfg("swarm_eval", args, tmp_path))


def test_cli_writes_results_next_to_the_checkpoint_run(checkpoints, tmp_path):
    args = [
        f"checkpoint={checkpoints['swarm']}",
        *TINY_EVAL,
        "grid.agents=[2]",
        "grid.rounds=[0,1]",
        "controls.diversity=[]",
    ]
    proc = run_entry_point("moe_swarm.cli.swarm_eval", args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = checkpoints["swarm"].parent.parent / "swarm_eval"
    assert (out / "results.json").is_file() and (out / "results.md").is_file()
    assert "| 2 | 1 |" in proc.stdout
    bad = run_entry_point("moe_swarm.cli.swarm_eval", [f"checkpoint={checkpoints['base']}"], tmp_path, 120)
    assert bad.returncode != 0 and "needs a value head" in bad.stderr + bad.stdout
