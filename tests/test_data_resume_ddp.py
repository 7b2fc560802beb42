"""THE resume test: 2 DDP ranks on gloo, 2 dataloader workers each, killed at step k and resumed,
see batch for batch the same token ids as an uninterrupted run (also across an epoch boundary)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, free_port
from data_stream_helpers import read_steps

from moe_swarm.data.packing import Position
from moe_swarm.data.prepare import prepare
from moe_swarm.scale.cluster import clean_env
from moe_swarm.training.stream_data import TokenDataModule

STEPS, KILL_AT = 9, 4


def _train(runs: Path, run_id: str, record: Path, data: Path, exit_at: int | None) -> tuple[int, str]:
    recorder = (
        f"{{_target_:data_stream_helpers.TokenRecorder,dirpath:'{record}',exit_at_step:{exit_at or 'null'}}}"
    )
    args = [
        "experiment=quickstart",
        *TINY_MODEL,
        "data=tokens",
        f"data.path={data}",
        "data.block_size=32",
        "data.num_workers=2",
        "data.val_windows=2",
        "data.val_fraction=0.05",
        "trainer=ddp_sim",
        f"trainer.max_steps={STEPS}",
        "trainer.val_check_interval=1000",
        "validate_before_fit=false",
        "callbacks.last_checkpoint.every_n_steps=2",
        f"+callbacks.token_log={recorder}",
        f"run_id={run_id}",
    ]
    env = clean_env(os.environ)
    for name in ("RUN_ID", "NODE_RANK", "NUM_NODES", "DEVICES", "MASTER_PORT"):
        env.pop(name, None)
    env["MASTER_PORT"] = str(free_port())  # below the ephemeral range: no other test can take it
    tests = str(Path(__file__).parent)
    env.update(
        {
            "MOE_SWARM_RUNS_DIR": str(runs),
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
            "MASTER_ADDR": "127.0.0.1",
            "PYTHONPATH": os.pathsep.join([tests, env.get("PYTHONPATH", "")]),
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "moe_swarm.cli.train", *args],
        cwd=runs,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_killed_and_resumed_ddp_run_sees_the_same_tokens_batch_for_batch(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"text": f"document {i}: " + "abcdefgh"[i % 8] * (i % 50 + 5)}) + "\n"
            for i in range(60)
        )
    )
    data = tmp_path / "data"
    prepare([("corpus", str(corpus))], data)
    dm = TokenDataModule(str(data), block_size=32, batch_size=4, val_fraction=0.05)
    dm.setup()
    dm.train_stream.world_size = 2
    per_epoch = dm.train_stream.epoch_batches(Position())
    assert KILL_AT < per_epoch < STEPS, "killed mid-epoch, and the run crosses into the next epoch"

    rc, out = _train(tmp_path, "reference", tmp_path / "ref", data, None)
    assert rc == 0, out[-4000:]
    rc, out = _train(tmp_path, "resumed", tmp_path / "res", data, KILL_AT)
    assert rc != 0, "the first part dies at step k"
    ckpt = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert ckpt.exists(), out[-4000:]
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == KILL_AT
    (loader_state,) = state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["world_size"] == 2 and loader_state["sequences"] > 0
    rc, out = _train(tmp_path, "resumed", tmp_path / "res", data, None)
    assert rc == 0, out[-4000:]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["resumed_from"] == str(ckpt)

    for rank in (0, 1):
        ref, res = read_steps(tmp_path / "ref", rank), read_steps(tmp_path / "res", rank)
        assert sorted(ref) == sorted(res) == list(range(STEPS))
        for step in range(STEPS):
            assert res[step] == ref[step], f"rank {rank} step {step}: the resumed run saw other tokens"
    ranks = [read_steps(tmp_path / "ref", r) for r in (0, 1)]
    assert all(ranks[0][s] != ranks[1][s] for s in range(STEPS)), "the ranks read different sequences"
