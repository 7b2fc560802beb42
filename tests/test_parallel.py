"""FSDP2 and expert parallelism with real processes (gloo on CPU): parity with one process, sharded
checkpoints that resume exactly and move between layouts, and the consolidated export.

The ranks run tests/parallel_child.py (plain torch.distributed, no Lightning); rank 0 writes the full
final state, the test compares it with the one-process run of the same data-parallel objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from parallel_helpers import load, max_diff, run_ranks, run_reference

from moe_swarm.scale.parallel import ParallelConfig, ParallelConfigError
from moe_swarm.store.checkpoint import load_checkpoint
from moe_swarm.store.sharded import ShardedCheckpointError, export_consolidated

TOL = 1e-5


# ---- expert-parallel layer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant", ["balanced", "a-rank-receives-no-tokens", "bf16-autocast", "fine-grained-and-shared"]
)
def test_ep_layer_outputs_and_all_gradients_equal_one_process_on_two_ranks(tmp_path, variant):
    result = tmp_path / "result.json"
    flags = {
        "balanced": [],
        "a-rank-receives-no-tokens": ["--no-tokens"],
        "bf16-autocast": ["--autocast"],
        "fine-grained-and-shared": ["--granularity", "2", "--shared", "1"],  # 8 experts, top-4, + 1 shared
    }
    run_ranks(2, ["ep_layer", "--result", str(result), *flags[variant]], tmp_path)
    res = json.loads(result.read_text())
    for name, err in res["max_abs_err"].items():
        # Under autocast the router gradient is a sum over ranks of bf16-rounded terms: order matters.
        limit = 1e-4 if variant == "bf16-autocast" and name == "router_grad" else 1e-6
        assert err < limit, (name, err)
    if variant == "a-rank-receives-no-tokens":  # experts 2 and 3 live on rank 1: it got zero rows, took part
        assert res["tokens_per_expert"][2:] == [0.0, 0.0] and min(res["tokens_per_expert"][:2]) > 0
    if variant == "bf16-autocast":  # the expert GEMMs really ran in bf16 (on both sides)
        assert res["fp32_gap"] > 1e-3, res["fp32_gap"]  # relative; bf16 keeps 8 bits of mantissa
    else:
        assert res["fp32_gap"] == 0.0


def test_an_expert_count_that_does_not_divide_fails_on_every_rank_with_the_fix(tmp_path):
    outs = run_ranks(2, ["ep_layer", "--experts", "3"], tmp_path, expect_ok=False)
    for out in outs:
        assert "model.num_experts=3 cannot be split over parallel.expert_parallel_size=2" in out, out[-2000:]
        assert "one of [1, 3]" in out


def test_layouts_that_do_not_fit_the_world_are_refused_before_training():
    with pytest.raises(
        ParallelConfigError, match=r"world size 3 is not a multiple of .*expert_parallel_size=2"
    ):
        ParallelConfig(expert_parallel_size=2).check(world_size=3, num_experts=4)
    with pytest.raises(ParallelConfigError, match=r"data_parallel_size=4 but the run has 2 processes"):
        ParallelConfig(data_parallel_size=4).check(world_size=2, num_experts=4)
    with pytest.raises(
        ParallelConfigError, match=r"unknown parallel config key\(s\) \['expert_paralel_size'\]"
    ):
        ParallelConfig.from_dict({"expert_paralel_size": 2})


# ---- training parity, resume, layouts -------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One-process references for the 2- and 4-shard data-parallel objectives (3 AdamW steps)."""
    tmp = tmp_path_factory.mktemp("parallel")
    for shards in (2, 4):
        run_reference(shards, steps=3, state_out=tmp / f"ref{shards}.pt")
    return tmp


def test_fsdp2_training_on_two_processes_matches_one_process(runs, tmp_path):
    run_ranks(2, ["train", "--steps", "3", "--state-out", str(tmp_path / "fsdp.pt")], tmp_path)
    assert max_diff(load(runs / "ref2.pt"), load(tmp_path / "fsdp.pt")) < TOL


def test_ep_x_fsdp_on_four_processes_matches_one_process_and_resumes_exactly(runs, tmp_path):
    ckpt = runs / "ep4-step2"
    full = ["train", "--ep", "2", "--steps", "3", "--save-at", "2", "--save-dir", str(ckpt)]
    run_ranks(4, [*full, "--state-out", str(runs / "ep4.pt")], tmp_path)
    assert max_diff(load(runs / "ref4.pt"), load(runs / "ep4.pt")) < TOL
    # Resume the same layout from the sharded step-2 checkpoint: step 3 comes out bit for bit.
    result = tmp_path / "resume.json"
    run_ranks(
        4,
        [
            "train",
            "--ep",
            "2",
            "--steps",
            "3",
            "--resume-from",
            str(ckpt),
            "--state-out",
            str(tmp_path / "resumed.pt"),
            "--result",
            str(result),
        ],
        tmp_path,
    )
    assert json.loads(result.read_text())["start"] == 2
    assert max_diff(load(runs / "ep4.pt"), load(tmp_path / "resumed.pt")) == 0.0


def test_a_sharded_checkpoint_moves_from_four_ranks_to_two_and_to_one_process(runs, tmp_path):
    ckpt = runs / "ep4-step2"
    if not ckpt.is_dir():
        pytest.skip("needs the 4-rank run of the test above")
    at2 = load(runs / "ep4-step2.pt")  # the full state the 4 ranks (EP 2 x FSDP 2) saved at step 2
    # -> 2 ranks, FSDP only (no expert parallelism): loads without a step, and trains on.
    run_ranks(
        2,
        ["train", "--steps", "2", "--resume-from", str(ckpt), "--state-out", str(tmp_path / "two.pt")],
        tmp_path,
    )
    assert max_diff(at2, load(tmp_path / "two.pt")) == 0.0
    # -> one process: the consolidated single file, read by the project's one loader.
    out = export_consolidated(ckpt, tmp_path / "consolidated.ckpt")
    loaded = load_checkpoint(out)
    assert loaded.global_step == 2
    assert max_diff(at2, loaded.model.state_dict()) == 0.0
    with pytest.raises(ShardedCheckpointError, match="is not a sharded checkpoint"):
        export_consolidated(out, tmp_path / "again.ckpt")
