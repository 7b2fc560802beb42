"""Elastic restarts: torchrun (c10d rendezvous, --max-restarts 1) restarts the whole group after a rank is
SIGKILLed mid-run; the ranks resume from the newest sharded checkpoint (EP x FSDP2, gloo on CPU) and
finish with the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
from test_parallel import CHILD, child_env, max_diff


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_killed_mid_run_restarts_under_torchrun_and_ends_like_an_uninterrupted_run(tmp_path: Path):
    reference = tmp_path / "reference.pt"
    subprocess.run(
        [
            sys.executable,
            str(CHILD),
            "train",
            "--world",
            "1",
            "--ref-shards",
            "2",
            "--steps",
            "4",
            "--state-out",
            str(reference),
        ],
        env=child_env(),
        check=True,
        timeout=60,
    )
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{_free_port()}",
        "--max-restarts",
        "1",
    ]
    result, final = tmp_path / "result.json", tmp_path / "final.pt"
    child = [
        str(CHILD),
        "train",
        "--ep",
        "2",
        "--steps",
        "4",
        "--kill-at",
        "2",
        "--ckpt-root",
        str(tmp_path / "ckpt"),
        "--state-out",
        str(final),
        "--result",
        str(result),
    ]
    # Without this, the restarted group reuses a stale TCPStore address (connection refused or a hang).
    env = child_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    env.pop("MASTER_PORT", None)
    env.pop("MASTER_ADDR", None)
    proc = subprocess.run([*torchrun, *child], env=env, capture_output=True, text=True, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "exitcode: -9" in out, "rank 1 was killed by SIGKILL in the first attempt"
    res = json.loads(result.read_text())
    assert res["restarts"] == 1 and res["start"] == 2, res  # the second attempt resumed at step 2
    assert max_diff(torch.load(reference, weights_only=True), torch.load(final, weights_only=True)) < 1e-5
