"""The MoE-vs-dense study (moe_swarm.reporting.moe_study): every arm is a valid config with the dense
arm's active FFN width, the statistics behave, and a smoke version of the whole study runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf

from moe_swarm.model.transformer import MoETransformer, TransformerConfig
from moe_swarm.reporting.moe_study import GRID, SMOKE_GRID, health, specialisation, train_command


def _model(tmp_path, overrides) -> TransformerConfig:
    cfg = compose_cfg("train", ["experiment=moe_study", "data.bin_path=x.bin", *overrides], tmp_path)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("init_from")
    return TransformerConfig.from_dict(model)


def test_every_arm_composes_with_the_dense_active_ffn_width(tmp_path):
    dense = _model(tmp_path, GRID[0].overrides)
    assert dense.ffn == "dense" and dense.resolved_dense_d_ff == 256
    dense_active = MoETransformer(dense).count_parameters().active
    for v in GRID[1:]:
        cfg = _model(tmp_path, v.overrides)
        m = cfg.moe
        assert m.num_experts == v.experts and m.num_shared_experts == v.shared, v.name
        assert m.router.top_k * m.d_ff + m.shared_d_ff == 256, v.name  # equal active FFN width
        router = cfg.n_layers * v.experts * cfg.d_model
        assert MoETransformer(cfg).count_parameters().active == dense_active + router, v.name
    cmd = train_command(GRID[3], 2, "c.bin")
    assert "seed=2" in cmd and "model.moe.granularity=2" in cmd and "threads=1" in cmd


def test_specialisation_and_health_against_hand_values():
    same = {"prose": [[5, 5, 0, 0]], "code": [[1, 1, 0, 0]]}
    apart = {"prose": [[4, 0, 0, 0]], "code": [[0, 2, 2, 0]]}
    assert specialisation(same) == pytest.approx(0.0, abs=1e-7)
    assert specialisation(apart) == pytest.approx(1.0, abs=1e-7)
    h = health(apart)  # load 4, 2, 2, 0: one dead expert, max/mean 4/2
    assert h["dead"] == 1 and h["max_over_mean"] == pytest.approx(2.0, abs=1e-6)
    assert h["cv"] == pytest.approx(float(torch.tensor([4.0, 2, 2, 0]).std(correction=0) / 2), abs=1e-6)


@pytest.mark.slow
def test_smoke_study_trains_both_arms_and_writes_the_report(tmp_path):
    """Tiny model, 3 steps, one seed, two arms (dense, fine-grained MoE) in parallel."""
    out = tmp_path / "study"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_swarm.reporting.moe_study",
            "run",
            "--smoke",
            "--seeds",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "study.json").read_text())
    rows = {r["variant"]: r for r in result["table"]}
    assert set(rows) == {v.name for v in SMOKE_GRID}
    moe = rows[SMOKE_GRID[1].name]
    assert moe["diff"]["low"] <= moe["diff"]["diff"] <= moe["diff"]["high"]
    assert moe["params_active"] > rows["dense"]["params_active"]  # + the router only
    assert 0.0 <= moe["specialisation"] <= 1.0
    assert (out / "bpb_vs_experts_and_flops.png").is_file()
    assert "MoE − dense" in (out / "study.md").read_text()
