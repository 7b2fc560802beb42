"""Distributed training with real processes: 2-process DDP on CPU (gloo), two "nodes" on 127.0.0.1,
and nodes that disagree on the run. DDP always runs as CLI subprocesses: Lightning's DDP launcher
re-runs the command line in its children, so `strategy=ddp` inside pytest would re-run pytest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch.distributed as dist
from conftest import TINY_MODEL, free_port

from moe_swarm.scale.cluster import ClusterConfigError, ClusterSpec, clean_env
from moe_swarm.scale.fault import WorldSizeCheck, check_nodes_agree
from moe_swarm.store.checkpoint import load_model

TINY = [
    "experiment=quickstart",
    *TINY_MODEL,
    "data.val_windows=2",
    "router=sigmoid_bias",  # the bias update must see token counts summed over ranks
    "callbacks.replica_check.every_n_train_steps=1",  # compare ranks after every optimizer step
]
NODE = [*TINY, "trainer=multinode", "cluster=env", "trainer.accelerator=cpu", "validate_before_fit=false"]


def _env(runs: Path, **extra: str) -> dict[str, str]:
    env = clean_env(os.environ)
    for name in ("RUN_ID", "NODE_RANK", "NUM_NODES", "DEVICES", "MASTER_PORT", "JOB_COMPLETION_INDEX"):
        env.pop(name, None)
    env.update(
        {
            "MOE_SWARM_RUNS_DIR": str(runs),
            "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo",
            "MASTER_ADDR": "127.0.0.1",
            **extra,
        }
    )
    return env


def _launch(args: list[str], runs: Path, name: str, **env: str) -> tuple[subprocess.Popen, Path]:
    log = runs / f"{name}.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe_swarm.cli.train", *args],
            cwd=runs,
            env=_env(runs, **env),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _finish(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> list[tuple[int, str]]:
    """Wait for every process (one shared deadline); a process still running then is killed and fails the test."""
    deadline = time.monotonic() + timeout
    results = []
    for proc, log in procs:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
                p.wait()
            pytest.fail(f"still running after {timeout} s (a hang):\n{log.read_text()[-3000:]}")
        results.append((rc, log.read_text()))
    return results


def _digests(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / f"param_digest_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_process_ddp_on_cpu_ends_with_identical_parameters_and_biases(tmp_path):
    proc = _launch(
        [*TINY, "trainer=ddp_sim", "trainer.max_steps=6", "trainer.val_check_interval=3", "run_id=ddp"],
        tmp_path,
        "ddp",
    )
    [(rc, out)] = _finish([proc], timeout=150)
    assert rc == 0, out[-4000:]
    run_dir = tmp_path / "ddp"
    rank0, rank1 = _digests(run_dir)
    assert (
        rank0["world_size"] == rank1["world_size"] == 2 and rank0["global_step"] == rank1["global_step"] == 6
    )
    assert rank0["tensors"] == rank1["tensors"] and rank0["sha256"] == rank1["sha256"]
    bias_keys = [k for k in rank0["tensors"] if k.endswith("router.bias")]
    assert bias_keys, "the digest covers the router bias buffers"
    model, hparams = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert hparams["global_step"] == 6
    assert model.moe_layers[0].router.bias.abs().sum() > 0, "the bias moved during training"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["metrics"]["router/load_max_over_mean"] >= 1.0


@pytest.mark.slow
def test_two_nodes_on_loopback_both_finish_and_leave_one_checkpoint(tmp_path):
    port = str(free_port())
    args = [*NODE, "trainer.max_steps=4", "trainer.val_check_interval=2", "run_id=two-nodes"]
    nodes = [
        _launch(args, tmp_path, f"node{r}", NUM_NODES="2", DEVICES="1", NODE_RANK=str(r), MASTER_PORT=port)
        for r in (0, 1)
    ]
    results = _finish(nodes, timeout=150)
    for rc, out in results:
        assert rc == 0, out[-4000:]
    assert "all 2 nodes agree" in results[0][1]
    run_dir = tmp_path / "two-nodes"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())  # hidden temp files included
    assert len(names) == 2 and names[0].startswith("best-step") and names[1] == "last.ckpt", names
    assert load_model(run_dir / "checkpoints" / "last.ckpt")[1]["global_step"] == 4
    rank0, rank1 = _digests(run_dir)
    assert rank0["sha256"] == rank1["sha256"] and rank0["world_size"] == 2
    # Both nodes share the run directory; only node 0 held its lock (node 1 would have failed on
    # it), and it is released when the run ends.
    assert (run_dir / "run.lock").read_text() == ""


@pytest.mark.slow
def test_nodes_that_disagree_on_the_node_count_both_exit_fast_naming_the_values(tmp_path):
    port = str(free_port())
    args = [*NODE, "trainer.max_steps=4", "run_id=mismatch", "trainer.strategy.timeout.seconds=60"]
    nodes = [
        _launch(args, tmp_path, "node0", NUM_NODES="2", DEVICES="1", NODE_RANK="0", MASTER_PORT=port),
        _launch(args, tmp_path, "node1", NUM_NODES="3", DEVICES="1", NODE_RANK="1", MASTER_PORT=port),
    ]
    # Bounded well below the 60 s rendezvous timeout: the start-up check answers as soon as both are up.
    results = _finish(nodes, timeout=55)
    for rc, out in results:
        assert rc != 0
        assert "nodes disagree on the run (num_nodes)" in out, out[-3000:]
        assert "num_nodes=2" in out and "num_nodes=3" in out
    assert not (tmp_path / "mismatch" / "checkpoints").exists()


@pytest.mark.slow
def test_a_missing_node_fails_after_the_rendezvous_timeout_with_the_values(tmp_path):
    args = [*NODE, "trainer.max_steps=4", "run_id=alone", "trainer.strategy.timeout.seconds=5"]
    node0 = _launch(
        args, tmp_path, "node0", NUM_NODES="2", DEVICES="1", NODE_RANK="0", MASTER_PORT=str(free_port())
    )
    [(rc, out)] = _finish([node0], timeout=60)
    assert rc != 0
    assert "node 1 did not report" in out and "num_nodes=2" in out, out[-3000:]


# ---- the checks themselves, in process -----------------------------------------------------------


def _spec(rank: int, port: int, num_nodes: int = 2) -> ClusterSpec:
    return ClusterSpec(num_nodes=num_nodes, devices=1, node_rank=rank, master_port=port)


@pytest.mark.parametrize(
    "node1_kwargs,expected",
    [
        ({"run_id": "other"}, "run_id=other"),  # different run dirs: they would resume different states
        ({"resuming": True}, "resuming=True"),  # node 1 sees a checkpoint node 0 does not (no shared storage)
    ],
)
def test_start_up_check_names_what_the_nodes_disagree_on(node1_kwargs, expected):
    port = free_port()
    views = [{"run_id": "r", "resuming": False}, {"run_id": "r", "resuming": False, **node1_kwargs}]

    def node(rank: int) -> str:
        try:
            check_nodes_agree(_spec(rank, port), timeout_s=20, environ={}, **views[rank])
        except ClusterConfigError as exc:
            return str(exc)
        return "agreed"

    with ThreadPoolExecutor(2) as pool:
        messages = list(pool.map(node, (0, 1)))
    for message in messages:
        assert "nodes disagree on the run" in message and expected in message


def test_start_up_check_passes_when_nodes_agree_and_skips_single_node_and_device_children():
    port = free_port()
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(
                check_nodes_agree, _spec(r, port), run_id="r", resuming=False, timeout_s=20, environ={}
            )
            for r in (0, 1)
        ]
        assert [f.result() for f in futures] == [None, None]
    # No store is contacted (nothing listens on this port): one node, or a per-device child process.
    check_nodes_agree(_spec(0, free_port(), num_nodes=1), run_id="r", resuming=False, timeout_s=1, environ={})
    check_nodes_agree(
        _spec(1, free_port()), run_id="r", resuming=False, timeout_s=1, environ={"LOCAL_RANK": "1"}
    )


def test_every_node_reaches_the_next_store_on_the_port_after_the_start_up_check():
    """Lightning's rendezvous opens its TCPStore on MASTER_PORT right after the check. A node that
    reached it while node 0's check store was still closing was dropped, and node 0 waited for it
    until its timeout (about one start in ten here without the fix; CI saw it as a two-node hang).
    20 starts, bounded by count and time."""

    def node(rank: int, port: int, both_read: threading.Barrier) -> str:
        check_nodes_agree(_spec(rank, port), run_id="r", resuming=False, timeout_s=20, environ={})
        store = dist.TCPStore("127.0.0.1", port, world_size=2, is_master=rank == 0,
                              wait_for_workers=True, timeout=timedelta(seconds=10))  # fmt: skip
        store.set(f"node{rank}", "up")
        seen = store.get(f"node{1 - rank}").decode()
        both_read.wait()  # node 0's store closes with its thread: serve until both nodes have read
        return seen

    deadline = time.monotonic() + 120
    for start in range(20):
        assert time.monotonic() < deadline, f"only {start} starts in 120 s"
        port, both_read = free_port(), threading.Barrier(2, timeout=30)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(node, r, port, both_read) for r in (0, 1)]
            assert [f.result() for f in futures] == ["up", "up"], f"start {start}"


def test_world_size_check_fails_when_the_group_is_not_num_nodes_times_devices():
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    WorldSizeCheck(expected_world_size=1).setup(trainer, L.LightningModule(), "fit")
    with pytest.raises(ClusterConfigError, match=r"expects 2 processes .* has 1"):
        WorldSizeCheck(expected_world_size=2).setup(trainer, L.LightningModule(), "fit")
