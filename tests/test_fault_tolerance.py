"""Fault tolerance with real processes: SIGKILL and SIGTERM mid-run, kills during checkpoint writes, NaN loss."""

from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from moe_swarm.scale.cluster import clean_env
from moe_swarm.scale.fault import AtomicCheckpointIO
from moe_swarm.store.checkpoint import load_model

TINY = [
    "experiment=quickstart",
    *TINY_MODEL,
    "data.val_windows=2",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "validate_before_fit=false",
]
# Long enough never to finish by itself; validation far away so only the step checkpoint writes last.ckpt.
ENDLESS = [
    "trainer.max_steps=100000",
    "trainer.val_check_interval=1000",
    "trainer.log_every_n_steps=1",
    "callbacks.last_checkpoint.every_n_steps=2",
]


def _env(runs: Path) -> dict[str, str]:
    env = clean_env(os.environ)
    env.pop("RUN_ID", None)
    env.update({"MOE_SWARM_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"})
    return env


def _start(args: list[str], runs: Path, log_name: str) -> tuple[subprocess.Popen, Path]:
    log = runs / f"{log_name}.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe_swarm.cli.train", *args],
            cwd=runs,
            env=_env(runs),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def _run(args: list[str], runs: Path, log_name: str, timeout: float = 120) -> tuple[int, str]:
    proc, log = _start(args, runs, log_name)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return rc, log.read_text()


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def _wait_for_step(proc: subprocess.Popen, log: Path, ckpt: Path, min_step: int, timeout: float = 90) -> int:
    """Poll last.ckpt (whole at any instant: it is renamed into place) until it reaches min_step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ckpt.is_file() and (step := _step(ckpt)) >= min_step:
            return step
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    pytest.fail(f"no checkpoint at step >= {min_step} within {timeout} s:\n{log.read_text()[-3000:]}")


def _logged_steps(run_dir: Path, version: int) -> list[int]:
    with (run_dir / "logs" / f"version_{version}" / "metrics.csv").open() as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_resumes_from_last_ckpt(tmp_path):
    run_dir = tmp_path / "killed"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc, log = _start([*TINY, *ENDLESS, "run_id=killed"], tmp_path, "first")
    _wait_for_step(proc, log, ckpt, min_step=6)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    saved = _step(ckpt)
    assert saved >= 6 and saved % 2 == 0, "last.ckpt must be a whole step checkpoint"

    rc, out = _run(
        [
            *TINY,
            "trainer.max_steps=" + str(saved + 4),
            "trainer.val_check_interval=1000",
            "trainer.log_every_n_steps=1",
            "run_id=killed",
        ],
        tmp_path,
        "second",
    )
    assert rc == 0, out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(ckpt) and summary["global_step"] == saved + 4
    # The restarted run logged only steps after the checkpoint: it continued, it did not start over.
    steps = _logged_steps(run_dir, version=1)
    assert steps and min(steps) >= saved and max(steps) < saved + 4
    assert _step(ckpt) == saved + 4


@pytest.mark.slow
def test_sigterm_checkpoints_then_exits_143_and_resumes(tmp_path):
    run_dir = tmp_path / "termed"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    proc, log = _start([*TINY, *ENDLESS, "run_id=termed"], tmp_path, "first")
    seen = _wait_for_step(proc, log, ckpt, min_step=4)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    out = log.read_text()
    assert rc == 143, out[-3000:]
    assert "SIGTERM: saved" in out
    stopped_at = _step(ckpt)
    assert stopped_at >= seen
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["global_step"] == stopped_at

    rc, out = _run(
        [*TINY, f"trainer.max_steps={stopped_at + 3}", "trainer.val_check_interval=1000", "run_id=termed"],
        tmp_path,
        "second",
    )
    assert rc == 0, out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["resumed_from"] == str(ckpt)
    assert summary["global_step"] == stopped_at + 3 == _step(ckpt)


@pytest.mark.slow
def test_nonfinite_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    # Plain SGD at lr=1e3 without clipping diverges within a few steps: a real NaN, no test hook.
    diverge = [
        "module.optimizer._target_=torch.optim.SGD",
        "~module.optimizer.betas",
        "~module.optimizer.eps",
        "module.optimizer.lr=1e3",
        "module.scheduler=null",
        "trainer.gradient_clip_val=null",
    ]
    rc, out = _run(
        [*TINY, *diverge, "trainer.max_steps=50", "trainer.val_check_interval=2", "run_id=nan"],
        tmp_path,
        "nan",
    )
    assert rc != 0
    match = re.search(r"FloatingPointError: training loss became (nan|inf|-inf) at global step (\d+)", out)
    assert match, out[-3000:]
    failed_at = int(match.group(2))
    ckpt = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    model, hparams = load_model(ckpt)  # whole and loadable
    # global_step counts finished optimizer steps: the failing batch would have been step failed_at + 1.
    assert 0 < hparams["global_step"] <= failed_at, out[-3000:]
    assert hparams["global_step"] % 2 == 0, "the last good checkpoint is the last validation checkpoint"
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())


# ---- atomic checkpoint writes --------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from moe_swarm.scale.fault import AtomicCheckpointIO

    path, mode, marker = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    class StallWhilePickled:
        # Pickled in the middle of torch.save: the temporary file is open, the target untouched.
        def __reduce__(self):
            marker.write_text("saving")
            time.sleep(120)
            return (int, (0,))

    io = AtomicCheckpointIO()
    start = int(torch.load(path, weights_only=True)["i"]) + 1 if path.exists() else 1
    for i in range(start, start + 10_000):
        ckpt = {"i": i, "w": torch.full((2_000_000,), float(i))}  # 8 MB
        if mode == "stall" and i > start:
            ckpt["stall"] = StallWhilePickled()
        io.save_checkpoint(ckpt, path)
        if i == start:
            marker.write_text("first")
    """
)


def _check_whole(path: Path) -> int:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(ckpt["w"], torch.full_like(ckpt["w"], float(ckpt["i"]))), "torn or mixed checkpoint"
    return int(ckpt["i"])


def _spawn_writer(script: Path, target: Path, mode: str, marker: Path) -> subprocess.Popen:
    marker.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), str(target), mode, str(marker)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
    )


def _wait_marker(proc: subprocess.Popen, marker: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.is_file() and marker.read_text() == text:
            return
        if proc.poll() is not None:
            pytest.fail(f"writer exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail(f"writer never reached {text!r}")


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_tears_last_ckpt(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    target = tmp_path / "ckpts" / "last.ckpt"
    marker = tmp_path / "marker"
    temps = lambda: list(target.parent.glob(".last.ckpt.*.tmp"))  # noqa: E731

    # 1) Deterministic: kill while a save is in progress (temporary file open, target untouched).
    proc = _spawn_writer(script, target, "stall", marker)
    _wait_marker(proc, marker, "saving")
    assert len(temps()) == 1, "the save in progress writes a temporary file next to the target"
    proc.kill()
    proc.wait(timeout=30)
    assert _check_whole(target) == 1, "the previous checkpoint must survive a kill mid-save"

    # 2) Kills at arbitrary moments of a tight save loop; each restart continues from the file.
    rng = random.Random(0)
    last = 1
    for _ in range(2):
        proc = _spawn_writer(script, target, "loop", marker)
        _wait_marker(proc, marker, "first")
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait(timeout=30)
        now = _check_whole(target)
        assert now > last, "each writer saved at least once before it was killed"
        last = now
        assert len(temps()) <= 1, "stale temporary files must not pile up"


def test_atomic_checkpoint_io_replaces_in_place_with_normal_permissions(tmp_path):
    target = tmp_path / "c" / "last.ckpt"
    stale = target.parent / ".last.ckpt.dead.tmp"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"i": 1}, target)
    inode = target.stat().st_ino
    stale.write_bytes(b"left by a killed save")
    io.save_checkpoint({"i": 2}, target)
    assert torch.load(target, weights_only=True)["i"] == 2
    assert target.stat().st_ino != inode, "a new file was renamed over the old one, not rewritten in place"
    assert not stale.exists() and not list(target.parent.glob("*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint({"i": 3}, target, storage_options={"x": 1})
