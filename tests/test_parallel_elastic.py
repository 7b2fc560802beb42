"""Elastic restarts: torchrun (c10d rendezvous, --max-restarts 1) restarts the whole group after a rank is
SIGKILLed mid-run; the ranks resume from the newest sharded checkpoint (EP x FSDP2, gloo on CPU) and
finish with the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from parallel_helpers import CHILD, elastic_torchrun, load, max_diff, run_reference


def test_a_rank_killed_mid_run_restarts_under_torchrun_and_ends_like_an_uninterrupted_run(tmp_path: Path):
    reference = tmp_path / "reference.pt"
    run_reference(2, steps=4, state_out=reference)
    torchrun, env = elastic_torchrun(nproc=2, max_restarts=1)
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
    proc = subprocess.run([*torchrun, *child], env=env, capture_output=True, text=True, timeout=150)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "exitcode: -9" in out, "rank 1 was killed by SIGKILL in the first attempt"
    res = json.loads(result.read_text())
    assert res["restarts"] == 1 and res["start"] == 2, res  # the second attempt resumed at step 2
    assert max_diff(load(reference), load(final)) < 1e-5


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return sorted(kids)


def test_moe_swarm_train_under_torchrun_restarts_a_killed_rank_from_the_sharded_last_ckpt(tmp_path: Path):
    """The real entry point: cluster=torchelastic keeps torchrun's variables for Lightning, the
    killed group restarts, and the new attempt resumes from the sharded last.ckpt to the end."""
    from test_parallel_lightning import ARGS, _prepare

    args = [a for a in ARGS if not a.startswith(("run_id=", "callbacks.replica_check", "router="))]
    args += [
        f"data.path={_prepare(tmp_path)}",
        "cluster=torchelastic",
        "trainer.max_steps=6",
        "callbacks.last_checkpoint.every_n_steps=2",
        "run_id=elastic",
    ]
    torchrun, env = elastic_torchrun(nproc=2, max_restarts=1, MOE_SWARM_RUNS_DIR=str(tmp_path))
    log = tmp_path / "torchrun.log"
    meta = tmp_path / "elastic" / "checkpoints" / "last.ckpt" / "meta.pt"
    with log.open("w") as f:
        agent = subprocess.Popen(
            [*torchrun, "-m", "moe_swarm.cli.train", *args],
            cwd=tmp_path,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 150
        while not meta.is_file() and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = _children(agent.pid)
        assert meta.is_file() and len(workers) == 2, log.read_text()[-3000:]
        os.kill(workers[-1], signal.SIGKILL)  # one rank dies after the step-2 checkpoint
        rc = agent.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    out = log.read_text()
    assert rc == 0, out[-4000:]
    assert "exitcode: -9" in out and "resuming run elastic from" in out, out[-4000:]
    summary = json.loads((tmp_path / "elastic" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["global_step"] == 6
    assert summary["resumed_from"].endswith("last.ckpt")


# ---- Kubernetes: the elastic Job, validated offline -------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def test_launcher_renders_an_elastic_job_that_validates_strictly_and_the_plain_job_stays_default():
    import yaml

    from moe_swarm.scale.k8s import LaunchError, render_job, render_jobs

    args = ("moe-swarm-train", "img:1", "cpu", 2, 2, ["experiment=moe_parallel"], "run1")
    plain = {d["kind"]: d for d in yaml.safe_load_all(render_job(*args)) if d}
    assert "MOE_SWARM_MAX_RESTARTS" not in plain["ConfigMap"]["data"]
    assert "cluster=env" in plain["ConfigMap"]["data"]["MOE_SWARM_OVERRIDES"]
    manifests = render_jobs(
        [("moe-swarm-train", 2, 2, ["experiment=moe_parallel"], "run1")], "img:1", "cpu", max_restarts=3
    )
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifests) if d}
    data = docs["ConfigMap"]["data"]
    assert data["MOE_SWARM_MAX_RESTARTS"] == "3" and data["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert data["MOE_SWARM_RDZV_ID"] == "run1"
    assert "cluster=torchelastic" in data["MOE_SWARM_OVERRIDES"].splitlines()
    assert docs["Job"]["spec"]["completions"] == 2  # still one pod per node; torchrun restarts inside it
    validate = REPO / ".venv" / "bin" / "kubernetes-validate"
    result = subprocess.run(
        [str(validate), "--strict", "-"], input=manifests, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(LaunchError, match="max_restarts=-1 must be an integer >= 0"):
        render_jobs([("moe-swarm-train", 1, 1, [], "r")], "img:1", "cpu", max_restarts=-1)


def test_entrypoint_runs_moe_swarm_train_under_torchrun_when_max_restarts_is_set(tmp_path):
    """docker/entrypoint.sh with a stand-in `python` that prints its arguments."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{fake.parent}:/usr/bin:/bin",
        "NUM_NODES": "2",
        "DEVICES": "4",
        "JOB_COMPLETION_INDEX": "1",
        "MASTER_ADDR": "job-0.job",
        "MASTER_PORT": "29500",
        "MOE_SWARM_MAX_RESTARTS": "3",
        "MOE_SWARM_RDZV_ID": "run1",
        "MOE_SWARM_OVERRIDES": "experiment=moe_parallel\ncluster=torchelastic\n",
    }
    out = subprocess.run(
        ["bash", str(REPO / "docker" / "entrypoint.sh"), "train", "trainer.max_steps=5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=job-0.job:29500",
        "--rdzv-id=run1",
        "--max-restarts=3",
        "-m",
        "moe_swarm.cli.train",
        "experiment=moe_parallel",
        "cluster=torchelastic",
        "trainer.max_steps=5",
    ]
    env["MOE_SWARM_MAX_RESTARTS"] = "x"
    bad = subprocess.run(
        ["bash", str(REPO / "docker" / "entrypoint.sh"), "train"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 64 and "MOE_SWARM_MAX_RESTARTS='x' must be an integer" in bad.stderr
