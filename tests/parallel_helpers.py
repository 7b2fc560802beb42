"""Launching tests/parallel_child.py ranks (gloo on CPU, 127.0.0.1) for the test_parallel* files: the
child's environment, one-process references, hand-started ranks, torchrun with elastic restarts, and
comparing the state dicts the ranks write."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port  # noqa: F401 (re-exported for the parallel tests)

from moe_swarm.scale.cluster import clean_env

CHILD = Path(__file__).with_name("parallel_child.py")


def child_env(**extra: str) -> dict[str, str]:
    env = clean_env(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", **extra})
    return env


def run_reference(shards: int, steps: int, state_out: Path) -> None:
    """One process training the same ``shards``-way data-parallel objective; writes the final state."""
    subprocess.run(
        [
            sys.executable,
            str(CHILD),
            "train",
            "--world",
            "1",
            "--ref-shards",
            str(shards),
            "--steps",
            str(steps),
            "--state-out",
            str(state_out),
        ],
        env=child_env(),
        check=True,
        timeout=60,
    )


def run_ranks(
    world: int, args: list[str], tmp: Path, timeout: float = 90, expect_ok: bool = True, child: Path = CHILD
) -> list[str]:
    """Start ``world`` ranks of ``child`` (one process each) and wait; each must exit 0 (or not, with
    ``expect_ok=False``), within ``timeout`` (a hang fails the test), without an exit-time abort."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        log = tmp / f"rank{rank}-{time.monotonic_ns()}.log"
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_PORT=port)
        with log.open("w") as f:
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, str(child), *args, "--world", str(world)],
                        env=env,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    ),
                    log,
                )
            )
    deadline = time.monotonic() + timeout
    outs = []
    for proc, log in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
                p.wait()
            pytest.fail(f"ranks still running after {timeout} s:\n{log.read_text()[-3000:]}")
        outs.append((proc.returncode, log.read_text()))
    for rc, out in outs:
        assert (rc == 0) == expect_ok, out[-4000:]
        assert "terminate called" not in out, out[-2000:]
    return [out for _, out in outs]


def elastic_torchrun(nproc: int, max_restarts: int, **extra_env: str) -> tuple[list[str], dict[str, str]]:
    """The torchrun command (c10d rendezvous on a free local port) and the child environment for an
    elastic group of ``nproc`` ranks on one node that torchrun restarts up to ``max_restarts`` times."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--max-restarts",
        str(max_restarts),
    ]
    # Without this, the restarted group reuses a stale TCPStore address (connection refused or a hang).
    env = child_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **extra_env)
    # torchrun sets the rendezvous and rank variables for each worker: none may leak in from outside.
    for name in ("MASTER_PORT", "MASTER_ADDR", "RUN_ID", "NODE_RANK", "NUM_NODES", "DEVICES"):
        env.pop(name, None)
    return command, env


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)
