"""trainer=model_parallel end to end: Lightning's ModelParallelStrategy runs the project's parallelize
(FSDP2 + expert parallelism) in 2 CPU processes (gloo) on prepared token shards (data=tokens, document
masking on), writes a sharded last.ckpt that resumes (the loader position included) and that the
project's one loader reads, with routing state identical on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import free_port

from moe_swarm.data.prepare import prepare
from moe_swarm.scale.cluster import clean_env
from moe_swarm.store.checkpoint import load_checkpoint
from moe_swarm.store.sharded import export_consolidated, is_sharded_checkpoint

ARGS = [
    "experiment=moe_parallel",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=2",
    "model.moe.d_ff=32",
    "model.moe.num_experts=4",
    "data=tokens",  # prepared token shards, streamed per rank (FSDP2 + EP ranks are data-parallel ranks)
    "data.batch_size=4",
    "data.block_size=32",
    "data.val_windows=2",
    "data.val_fraction=0.1",
    "data.packing.mask_documents=true",
    "trainer.enable_progress_bar=false",
    "trainer.val_check_interval=2",
    "logger=csv",
    "router=sigmoid_bias",  # bias updates must come from counts summed over every routing rank
    "callbacks.replica_check.every_n_train_steps=1",  # full-tensor digests compared after every step
    "run_id=mp",
]


def _prepare(tmp: Path) -> Path:
    """Token shards of a small JSONL corpus (byte tokenizer), written once per run folder."""
    out = tmp / "tokens"
    if not out.exists():
        src = tmp / "docs.jsonl"
        docs = [
            f"document {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 5)
            for i in range(300)
        ]
        src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        prepare([("docs", str(src))], out)
    return out


def _loader_state(last: Path) -> dict:
    """The token loader's position in a sharded last.ckpt (Lightning keeps loop state in meta.pt)."""
    meta = torch.load(last / "meta.pt", map_location="cpu", weights_only=False)
    (state,) = meta["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    return {"sequences": state["sequences"], "world_size": state["world_size"]}


def _train(tmp: Path, steps: int) -> str:
    env = clean_env(os.environ)
    for name in ("RUN_ID", "NODE_RANK", "NUM_NODES", "DEVICES", "MASTER_PORT"):
        env.pop(name, None)
    env["MASTER_PORT"] = str(free_port())  # below the ephemeral range: no other test can take it
    env.update({"MOE_SWARM_RUNS_DIR": str(tmp), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moe_swarm.cli.train",
            *ARGS,
            f"data.path={_prepare(tmp)}",
            f"trainer.max_steps={steps}",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "terminate called" not in out
    return out


def test_model_parallel_trainer_trains_resumes_and_its_sharded_checkpoint_loads_in_one_process(tmp_path):
    _train(tmp_path, steps=4)
    run = tmp_path / "mp"
    last = run / "checkpoints" / "last.ckpt"
    assert is_sharded_checkpoint(last), "last.ckpt is a torch.distributed.checkpoint folder"
    leftovers = [p.name for p in last.parent.iterdir() if p.name.endswith((".partial", ".previous"))]
    assert not leftovers, f"every sharded save is published (renamed into place): {leftovers}"
    digests = [json.loads((run / f"param_digest_rank{r}.json").read_text()) for r in (0, 1)]
    assert digests[0]["sha256"] == digests[1]["sha256"] and digests[0]["world_size"] == 2
    assert any(k.endswith("experts.w1") for k in digests[0]["tensors"])
    loaded = load_checkpoint(last)  # the folder itself, consolidated in memory
    assert loaded.global_step == 4
    assert _loader_state(last) == {"sequences": 4 * 2 * 4, "world_size": 2}  # steps x ranks x batch
    assert loaded.model.moe_layers[0].router.bias.abs().sum() > 0, "the sigmoid bias moved"
    exported = load_checkpoint(export_consolidated(last, tmp_path / "consolidated.ckpt"))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, exported.model.state_dict()[name]), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["checkpoint"] == str(last)

    out = _train(tmp_path, steps=6)  # same run id: resumes from the sharded folder
    assert f"resuming run mp from {last}" in out
    assert load_checkpoint(last).global_step == 6
    assert _loader_state(last) == {"sequences": 6 * 2 * 4, "world_size": 2}  # continued, not restarted
