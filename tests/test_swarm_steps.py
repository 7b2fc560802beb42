"""The step-level swarm: KV-cache reuse, compute accounting, voting, backtracking, the step checker, and
moe-swarm-swarm-train / moe-swarm-swarm-eval with mode=steps on a real tiny scratchpad checkpoint."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_MUL_BASE, compose_cfg

from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.model.transformer import KVCache
from moe_swarm.store.checkpoint import load_checkpoint
from moe_swarm.swarm import (
    StepChecker,
    StepSwarm,
    StepSwarmConfig,
    ThoughtBuffer,
    collect_step_rollouts,
    encode_steps,
    load_step_checker,
)
from moe_swarm.swarm.checker import score_completions

TOK = ByteTokenizer()
TASK = get_task("mul", digits_a=2, digits_b=1, scratchpad=True)


def tiny(seed: int = 0) -> MoETransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=4, max_seq_len=96, moe=MoEConfig(num_experts=4, d_ff=32)
    )
    return MoETransformer(cfg).eval()


def teacher_forced_mean_logprob(model, ids: list[int], step_ids: list[int]) -> float:
    """Mean log-prob of ``step_ids`` after ``ids``, from one full forward without any cache."""
    seq = torch.tensor([ids + step_ids])
    logp = model(seq).logits[0].float().log_softmax(-1)
    lps = [logp[len(ids) - 1 + i, t] for i, t in enumerate(step_ids)]
    return float(sum(lps) / len(lps))


def test_proposals_from_the_shared_cache_equal_a_full_recompute():
    model = tiny()
    problems = TASK.generate("train", 3, seed=0)
    cfg = StepSwarmConfig(
        num_agents=4, wave_agents=4, commit_share=2.0, max_backtracks=0, max_step_tokens=8, max_steps=3
    )
    results = StepSwarm(model, cfg, TOK, TASK).solve([p.prompt for p in problems])
    checked = 0
    for p, r in zip(problems, results):
        assert len(r.committed) == len(r.steps) and [c.step for c in r.committed] == r.steps
        for prop, prefix in zip(r.proposals, r.prefixes):
            ids = TOK.encode(p.prompt, bos=True) + [t for c in r.committed[: len(prefix)] for t in c.tokens]
            assert len(prop.tokens) == prop.num_tokens
            assert prop.logprob == pytest.approx(
                teacher_forced_mean_logprob(model, ids, prop.tokens), abs=1e-4
            )
            checked += 1
    assert checked == sum(len(r.proposals) for r in results) > 12


def test_compute_is_counted_and_batching_does_not_change_results():
    model = tiny(1)
    prompts = [p.prompt for p in TASK.generate("train", 4, seed=1)]
    cfg = StepSwarmConfig(num_agents=8, wave_agents=4, commit_share=0.6, max_step_tokens=8, max_steps=4)
    buffer = ThoughtBuffer()
    together = StepSwarm(model, cfg, TOK, TASK, buffer=buffer).solve(prompts)
    alone = [StepSwarm(model, cfg, TOK, TASK).solve([q])[0] for q in prompts]
    assert len(buffer) == sum(len(r.proposals) for r in together)
    for a, b, q in zip(together, alone, prompts):
        assert a.completion == b.completion and a.forward_passes == b.forward_passes
        prompt_len = len(TOK.encode(q, bos=True))
        assert a.forward_passes == 1 + sum(
            p.num_tokens for p in a.proposals
        )  # prefill + every fed step token
        assert a.tokens_processed == prompt_len + sum(p.num_tokens for p in a.proposals)
        assert a.flops > 0 and a.checker_evaluations == 0
        assert len(a.shares) == len(a.steps) and all(0 < s <= 1 for s in a.shares)


def test_split_votes_backtrack_a_bounded_number_of_times():
    model = tiny(2)
    prompts = [p.prompt for p in TASK.generate("train", 2, seed=2)]
    never_confident = StepSwarmConfig(
        num_agents=4, wave_agents=4, confident_share=1.01, max_backtracks=3, max_step_tokens=8, max_steps=3
    )
    for r in StepSwarm(model, never_confident, TOK, TASK).solve(prompts):
        assert r.backtracks == 3
        assert {p.attempt for p in r.proposals} >= {0, 1}
    with pytest.raises(ValueError, match="needs a trained StepChecker"):
        StepSwarm(model, StepSwarmConfig(vote="checker"), TOK, TASK)
    with pytest.raises(ValueError, match="wave_agents"):
        StepSwarmConfig(num_agents=2, wave_agents=4)
    with pytest.raises(ValueError, match="unknown StepSwarmConfig keys"):
        StepSwarmConfig.from_dict({"agents": 3})


def test_checker_scores_a_step_alike_from_its_cache_and_from_the_whole_text():
    model = tiny(3)
    checker = StepChecker(tiny(4), hidden=16).eval()
    prompt, steps = "74*3=", ["4*3+0=12", "7*3+1=22"]
    context = TOK.encode(prompt, bos=True) + TOK.encode(steps[0] + "\n")
    cache = KVCache(checker.model.cfg, 1, len(context) + 16, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        checker.model(torch.tensor([context]), cache=cache, last_only=True)
    step = TOK.encode(steps[1] + "\n")
    chunk = checker.score_chunk(cache, torch.tensor([step]), torch.tensor([len(step)]))
    full = score_completions(checker, TOK, prompt, ["\n".join(steps) + "\n=222"])[0]
    idx, mask, starts, ends = encode_steps(TOK, [prompt + steps[0] + "\n"], [steps[1]], [False], 96)
    with torch.no_grad():
        forced = torch.sigmoid(checker.score_sequences(idx, mask, starts, ends))
    assert len(full) == 3 and float(chunk[0]) == pytest.approx(full[1], abs=1e-5)
    assert float(forced[0]) == pytest.approx(full[1], abs=1e-5)
    swarm = StepSwarm(
        model,
        StepSwarmConfig(num_agents=4, wave_agents=2, vote="checker", max_step_tokens=8, max_steps=3),
        TOK,
        TASK,
        checker,
    )
    r = swarm.solve([prompt])[0]
    assert r.checker_evaluations == len(r.proposals) and all(0 <= p.checker <= 1 for p in r.proposals)
    assert r.forward_passes == 2 + sum(p.num_tokens + 1 for p in r.proposals)  # two prefills, decode + check


def test_rollout_labels_come_from_the_step_oracle():
    model = tiny(5)
    problems = TASK.generate("train", 4, seed=3)
    cfg = StepSwarmConfig(
        num_agents=4, wave_agents=4, commit_share=2.0, max_backtracks=0, max_step_tokens=8, max_steps=4
    )
    ro = collect_step_rollouts(StepSwarm(model, cfg, TOK, TASK), problems, TASK)
    assert len(ro) == len(ro.contexts) == len(ro.steps) == int(ro.prefix_ok.numel())
    for i in range(len(ro)):
        problem = next(p for p in problems if ro.contexts[i].startswith(p.prompt))
        prefix = ro.contexts[i][len(problem.prompt) :].split("\n")[:-1]  # context = prompt + "step\n" each
        assert bool(ro.labels[i]) == TASK.step_is_correct(problem, prefix, ro.steps[i])
        assert bool(ro.prefix_ok[i]) == (TASK.next_step(problem, prefix) is not None)
    assert not bool(ro.labels[~ro.prefix_ok].any())  # nothing after a wrong step is right
    # hard negatives: the wrong step a group's plurality picked while a right one was proposed
    for g in set(ro.groups.tolist()):
        rows = (ro.groups == g).nonzero().squeeze(1).tolist()
        steps = [ro.steps[i].strip() for i in rows]
        winner = max(steps, key=lambda x: (steps.count(x), -steps.index(x)))
        wrong_pick = bool(ro.vote_wrong[rows[0]])
        for i, st in zip(rows, steps):
            assert bool(ro.hard_negative[i]) == (wrong_pick and st == winner)
            assert not (ro.hard_negative[i] and ro.labels[i] > 0.5)
    assert torch.isnan(ro.checker).all()  # no checker proposed these
    both = ro.extended(ro)
    assert len(both) == 2 * len(ro) and both.steps[len(ro) :] == ro.steps
    assert set(both.groups[: len(ro)].tolist()).isdisjoint(both.groups[len(ro) :].tolist())


def test_batches_hold_whole_groups_and_the_ranking_loss_reads_pairs_within_them():
    from moe_swarm.swarm.scorer import group_ranking_loss
    from moe_swarm.training.scorer_data import pack_groups

    groups = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    rows = [0, 1, 2, 3, 4, 6, 7, 8, 9]  # row 5 (group 2) has no training weight
    one_pass = pack_groups(groups, rows, 4, None, torch.Generator().manual_seed(0))
    assert sorted(r for b in one_pass for r in b) == rows
    for b in one_pass:
        assert all(set(groups[b].tolist()) & {int(groups[r])} for r in b)
        whole = {int(groups[r]) for r in b}
        assert sorted(b) == sorted(r for r in rows if int(groups[r]) in whole)  # no group is split
    assert all(len(b) >= 4 for b in one_pass[:-1])
    fixed = pack_groups(groups, rows, 4, 7, torch.Generator().manual_seed(0))
    assert len(fixed) == 7  # passes repeat, reshuffled, until the count is reached
    with pytest.raises(ValueError, match="no training rows"):
        pack_groups(groups, [], 4, None, torch.Generator())

    logits = torch.tensor([2.0, 0.0, 1.0, 5.0, -1.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    grp = torch.tensor([0, 0, 0, 1, 1])
    sp = torch.nn.functional.softplus
    want = (sp(torch.tensor(0.0 - 2.0)) + sp(torch.tensor(1.0 - 2.0)) + sp(torch.tensor(5.0 + 1.0))) / 3
    assert float(group_ranking_loss(logits, labels, grp)) == pytest.approx(float(want))
    w = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0])  # pair weight = product of the rows' weights
    want_w = (2 * sp(torch.tensor(-2.0)) + sp(torch.tensor(-1.0)) + sp(torch.tensor(6.0))) / 4
    assert float(group_ranking_loss(logits, labels, grp, w)) == pytest.approx(float(want_w))
    assert group_ranking_loss(logits, torch.ones(5), grp) is None  # no wrong row: no pair


def test_weighted_checker_loss_is_the_weighted_mean_of_the_rows():
    from moe_swarm.swarm.scorer import labelled_loss

    logits, labels = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0])
    per_row = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    w = torch.tensor([1.0, 3.0, 0.0])
    assert float(labelled_loss(logits, labels, weights=w)) == pytest.approx(float((per_row * w).sum() / 4))
    assert float(labelled_loss(logits, labels, weights=torch.ones(3))) == pytest.approx(
        float(labelled_loss(logits, labels)), abs=1e-6
    )


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def checker_run(tmp_path_factory) -> dict:
    from moe_swarm.cli.swarm_train import swarm_train
    from moe_swarm.cli.train import train

    runs = tmp_path_factory.mktemp("steps")
    base = [
        *TINY_MUL_BASE,
        "data.task_kwargs.scratchpad=true",
        "model.max_seq_len=48",
        "module.eval_max_new_tokens=24",
        "trainer.max_steps=150",
        "trainer.val_check_interval=150",
        "run_id=steps-base",
    ]
    ckpt = Path(train(compose_cfg("train", base, runs))["checkpoint"])
    summary = swarm_train(
        compose_cfg(
            "swarm_train",
            [
                f"checkpoint={ckpt}",
                "swarm_objective=step_checker",
                "run_id=steps-checker",
                "data.n_train=24",
                "data.n_val=4",
                "data.batch_size=32",
                "data.rollout.num_agents=4",
                "data.rollout.wave_agents=4",
                "data.rollout.max_step_tokens=10",
                "trainer.max_steps=20",
                "trainer.val_check_interval=20",
                "trainer.enable_progress_bar=false",
                "validate_before_fit=false",
            ],
            runs,
        )
    )
    return {"base": ckpt, "summary": summary, "runs": runs}


def test_step_checker_training_writes_a_loadable_checker(checker_run):
    s = checker_run["summary"]
    assert s["status"] == "succeeded" and s["objective"] == "StepCheckerModule" and s["global_step"] == 20
    assert {"val/checker_loss", "val/logprob_auc_within", "train/loss"} <= set(s["metrics"])
    loaded = load_checkpoint(s["checkpoint"])
    base = load_checkpoint(checker_run["base"])
    assert loaded.task == base.task and loaded.task["kwargs"]["scratchpad"] is True
    for a, b in zip(loaded.model.state_dict().values(), base.model.state_dict().values()):
        assert torch.equal(a, b)  # the generator is frozen; only the checker trains
    checker, steps = load_step_checker(s["checkpoint"])
    assert isinstance(checker, StepChecker) and steps == StepSwarmConfig.from_dict(s["swarm"])
    changed = [
        not torch.equal(a, b)
        for a, b in zip(checker.model.state_dict().values(), base.model.state_dict().values())
    ]
    assert any(changed), "the checker's own copy of the backbone is fine-tuned"


ON_POLICY_TINY = [
    "swarm_objective=step_checker_on_policy",
    "data.n_train=12",
    "data.n_val=4",
    "data.batch_size=16",
    "data.rollout.num_agents=4",
    "data.rollout.wave_agents=4",
    "data.rollout.max_step_tokens=10",
    "data.rounds=2",
    "data.round_batches=3",
    "data.round_problems=6",
    "data.wrong_prefix_weight=0.5",
    "data.group_batches=true",
    "module.rank_weight=1.0",
    "trainer.enable_progress_bar=false",
    "validate_before_fit=false",
]


def test_on_policy_rounds_collect_with_the_checker_being_trained(checker_run, tmp_path):
    from moe_swarm.cli.swarm_train import swarm_train

    args = [f"checkpoint={checker_run['base']}", "run_id=on-policy", "trainer.max_steps=9", *ON_POLICY_TINY]
    s = swarm_train(compose_cfg("swarm_train", args, tmp_path))
    assert s["status"] == "succeeded" and s["global_step"] == 9
    rounds = s["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["problems"] for r in rounds] == [12, 6, 6] and len({r["seed"] for r in rounds}) == 3
    assert rounds[0]["vote"] == "plurality" and rounds[0]["collector_auc_within"] is None
    assert rounds[0]["checker_scored"] == 0
    for r in rounds:
        assert (
            0.0 <= r["swarm_em"] <= 1.0 and r["proposals"] >= r["after_right_prefix"] >= r["hard_negatives"]
        )
        assert 0.0 <= r["val_auc_within"] <= 1.0 or math.isnan(r["val_auc_within"])  # each round validated
    for r in rounds[1:]:  # the checker being trained chose these trajectories and scored every proposal
        assert r["vote"] == "checker_odds" and r["checker_scored"] == r["proposals"] > 0
        auc = r["collector_auc_within"]
        assert auc is None or math.isnan(auc) or 0.0 <= auc <= 1.0
    checker, _ = load_step_checker(s["checkpoint"])
    assert isinstance(checker, StepChecker)


def test_on_policy_rounds_refuse_a_schedule_that_ends_before_the_last_round(checker_run, tmp_path):
    from moe_swarm.cli.swarm_train import swarm_train

    args = [f"checkpoint={checker_run['base']}", "run_id=short", "trainer.max_steps=5", *ON_POLICY_TINY]
    with pytest.raises(ValueError, match=r"trainer.max_steps=5 ends before .* set trainer.max_steps=9"):
        swarm_train(compose_cfg("swarm_train", args, tmp_path))
    args = [f"checkpoint={checker_run['base']}", "run_id=no-groups", "trainer.max_steps=9", *ON_POLICY_TINY]
    with pytest.raises(ValueError, match="add data.group_batches=true"):
        swarm_train(compose_cfg("swarm_train", [*args, "data.group_batches=false"], tmp_path))


def test_step_level_eval_reports_swarm_controls_and_targets(checker_run, tmp_path):
    from moe_swarm.cli.swarm_eval import run_eval

    out = tmp_path / "eval"
    args = [
        f"checkpoint={checker_run['summary']['checkpoint']}",
        "mode=steps",
        "split=train",
        "n_test=6",
        "step_level.agents=[2,4]",
        "step_level.max_new_tokens=24",
        "steps.wave_agents=2",
        "steps.max_step_tokens=10",
        "bootstrap.samples=200",
        "step_level.selector.n_val=4",
        f"out_dir={out}",
    ]
    report = run_eval(compose_cfg("swarm_eval", args, tmp_path))
    saved = json.loads((out / "results.json").read_text())
    assert saved["mode"] == "steps" and saved["step_level"]["checker"] is True
    bucket = next(iter(saved["step_level"]["buckets"].values()))
    assert [row["agents"] for row in bucket["grid"]] == [2, 4]
    for row in bucket["grid"]:
        for key in (
            "step_swarm",
            "independent_majority",
            "independent_checker",
            "best_of_n_checker",
            "pass_at_n",
        ):
            assert 0.0 <= row[key] <= 1.0, key
        assert row["coverage"] >= row["pass_at_n"] - 1e-12
        assert abs(row["independent_forward_passes"] - row["forward_passes"]) <= row["forward_passes"]
        assert "step_swarm_plurality" in row
    names = {c["comparison"] for c in bucket["comparisons"]}
    assert {
        "step_swarm - greedy",
        "step_swarm - independent_majority",
        "step_swarm - independent_checker",
    } <= names
    primary = [c for c in bucket["comparisons"] if "p_holm" in c]
    assert len(primary) == 6 and all(c["p_holm"] >= c["p_value"] for c in primary)  # 3 per N
    assert {
        "step_swarm - independent_majority_at_flops",
        "step_swarm - independent_checker_at_flops",
    } <= names
    for row in bucket["grid"]:  # matched on FLOPs: the control's FLOPs land near the swarm's
        assert 0.0 <= row["independent_majority_at_flops"] <= 1.0
        assert abs(row["independent_at_flops_flops"] - row["flops"]) <= 0.5 * row["flops"]
    assert {t["target"].split(" >=")[0] for t in saved["targets"]} == {
        "step_swarm - greedy",
        "step_swarm - independent_majority",
        "step_swarm - independent_majority_at_flops",
    }
    assert "Matched on FLOPs" in (out / "results.md").read_text()
    sel = saved["step_level"]["selector"]  # fitted on val items only (the eval's own items excluded)
    assert sel["split"] == "val" and sel["problems"] == 4
    if sel["choice_groups"]:
        assert all(0.0 <= row["step_swarm_selector"] <= 1.0 for row in bucket["grid"])
        assert "step_swarm_selector - independent_majority_at_flops" in names
    assert "Step selector" in (out / "results.md").read_text()
    assert (out / "steps_em_vs_forward_passes.png").read_bytes()[:4] == b"\x89PNG"
    assert "Step-level swarm config" in (out / "results.md").read_text()
    assert report["written_to"] == str(out)
    ranking = saved["step_level"]["ranking"]["4"]
    assert set(ranking) == {"checker", "logprob"}
    assert all(math.isnan(r["auc_within"]) or 0 <= r["auc_within"] <= 1 for r in ranking.values())


def test_trunk_checker_trains_on_the_frozen_generator_and_the_swarm_costs_what_the_control_costs(
    checker_run, tmp_path
):
    from moe_swarm.cli.swarm_eval import run_eval
    from moe_swarm.cli.swarm_train import swarm_train
    from moe_swarm.swarm import TrunkStepChecker

    s = swarm_train(
        compose_cfg(
            "swarm_train",
            [
                f"checkpoint={checker_run['base']}",
                "swarm_objective=step_checker",
                "module.kind=trunk",
                "run_id=steps-trunk",
                "data.n_train=16",
                "data.n_val=4",
                "data.batch_size=32",
                "data.rollout.num_agents=4",
                "data.rollout.wave_agents=4",
                "data.rollout.max_step_tokens=10",
                "trainer.max_steps=10",
                "trainer.val_check_interval=10",
                "trainer.enable_progress_bar=false",
                "validate_before_fit=false",
            ],
            tmp_path,
        )
    )
    assert s["status"] == "succeeded" and "val/checker_auc_within" in s["metrics"]
    checker, _ = load_step_checker(s["checkpoint"])
    assert isinstance(checker, TrunkStepChecker)
    loaded, base = load_checkpoint(s["checkpoint"]), load_checkpoint(checker_run["base"])
    for a, b in zip(loaded.model.state_dict().values(), base.model.state_dict().values()):
        assert torch.equal(a, b)  # the generator is the trunk, and it is frozen
    out = tmp_path / "eval"
    args = [f"checkpoint={s['checkpoint']}", "mode=steps", "split=train", "n_test=6", "step_level.agents=[4]"]
    args += ["step_level.max_new_tokens=24", "steps.wave_agents=2", "steps.max_step_tokens=10"]
    args += [
        "bootstrap.samples=100",
        "step_level.ablation_votes=[]",
        "step_level.selector=null",
        f"out_dir={out}",
    ]
    report = run_eval(compose_cfg("swarm_eval", args, tmp_path))
    row = next(iter(report["step_level"]["buckets"].values()))["grid"][0]
    assert row["checker_evaluations"] > 0
    # no forward pass per check: the step swarm and the control sample the same kind of rows; the swarm's
    # shared prefix even saves attention FLOPs. Bounded by the control's own rounding to whole samples.
    per_fp = row["independent_flops"] / row["independent_forward_passes"]
    assert row["flops"] <= 1.15 * (
        row["independent_flops"] + per_fp * abs(row["forward_passes"] - row["independent_forward_passes"])
    )
