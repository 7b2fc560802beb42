"""The run layer (lit/run.py) as a new user meets it: final-step metrics, locks, re-runs, resume
errors, checkpoint cadence, config errors and console noise. Real runs, real child processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, compose_cfg, run_entry_point

from moe_swarm.cli.train import train
from moe_swarm.config import ConfigError
from moe_swarm.scale.cluster import clean_env
from moe_swarm.store.layout import RunLayout, parse_metrics_line
from moe_swarm.store.run_lock import RunLock, RunLockError
from moe_swarm.training.resume import ResumeError

TINY = [
    "experiment=quickstart",
    *TINY_MODEL,
    "data.val_windows=2",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "module.scheduler.warmup_steps=2",
]


def _train(tmp_path: Path, *overrides: str) -> dict:
    return train(compose_cfg("train", [*TINY, *overrides], tmp_path))


def _val_steps(run_dir: Path) -> list[int]:
    rows = []
    for path in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with path.open() as f:
            rows += [int(r["step"]) for r in csv.DictReader(f) if r.get("val/bpb")]
    return rows


# ---- item 1: the end metric is the final-step metric ---------------------------------------------


def test_validates_once_at_a_final_step_that_is_not_a_multiple_of_the_interval(tmp_path):
    from hydra import compose, initialize_config_dir

    from moe_swarm.cli.eval import evaluate
    from moe_swarm.config import config_dir

    s = _train(tmp_path, "run_id=odd", "trainer.max_steps=7", "trainer.val_check_interval=5")
    assert s["global_step"] == 7
    # Lightning logs a validation inside fit at step index global_step - 1; 0 is the start validation.
    assert _val_steps(Path(s["run_dir"])) == [0, 4, 6], "at the start, the interval, once at the final step"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("eval", overrides=[f"checkpoint={s['checkpoint']}", f"out={tmp_path / 'e.json'}"])
    report = evaluate(cfg)
    assert report["global_step"] == 7
    assert s["metric_end"] == pytest.approx(report["val/bpb"], abs=1e-4), "summary = eval of last.ckpt"


# ---- item 3: one process per run directory ------------------------------------------------------


def test_run_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path):
    path = tmp_path / "run.lock"
    held = rf"run 'r1' is in use by pid {os.getpid()} on host"
    with RunLock(path, "r1"), pytest.raises(RunLockError, match=held):
        RunLock(path, "r1").acquire()
    # A lock file left by a process that died (its flock is gone with it) is stale: taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0}))
    lock = RunLock(path, "r1").acquire()
    assert lock.previous_holder["pid"] == dead.pid
    lock.release()
    assert path.read_text() == "", "released: the file is emptied, not deleted"


@pytest.mark.slow
def test_second_run_with_the_same_id_fails_naming_the_holder(tmp_path):
    env = clean_env(os.environ) | {"MOE_SWARM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("RUN_ID", None)
    first = subprocess.Popen(
        [sys.executable, "-m", "moe_swarm.cli.train", *TINY, "trainer.max_steps=100000", "run_id=shared"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = RunLayout(tmp_path / "shared").lock
    try:
        deadline = time.monotonic() + 60
        while not (lock.is_file() and lock.read_text()) and time.monotonic() < deadline:
            assert first.poll() is None, "the first run exited early"
            time.sleep(0.2)
        proc = run_entry_point(
            "moe_swarm.cli.train", [*TINY, "trainer.max_steps=2", "run_id=shared"], tmp_path
        )
        assert proc.returncode == 2
        assert f"run 'shared' is in use by pid {first.pid} on host" in proc.stderr
        assert "another run_id" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 143
    assert lock.read_text() == "", "the lock is released when the run ends"


# ---- item 4: a finished run is reported, never overwritten ---------------------------------------


def test_rerunning_a_finished_run_id_keeps_its_summary_and_says_how_to_extend(tmp_path, capsys):
    first = _train(tmp_path, "run_id=done", "trainer.max_steps=3")
    summary = RunLayout(tmp_path / "done").summary
    before = summary.read_bytes()
    capsys.readouterr()
    again = _train(tmp_path, "run_id=done", "trainer.max_steps=3")
    out = capsys.readouterr().out
    assert "run 'done' is already complete: 3 of trainer.max_steps=3 steps" in out
    assert "larger trainer.max_steps" in out
    assert summary.read_bytes() == before and again == first


def test_resumed_run_keeps_its_start_metric(tmp_path):
    first = _train(tmp_path, "run_id=grow", "trainer.max_steps=2")
    second = _train(tmp_path, "run_id=grow", "trainer.max_steps=4")
    assert second["resumed_from"] and second["global_step"] == 4
    assert second["metric_start"] == first["metric_start"] is not None
    assert second["metrics_start"] == first["metrics_start"]


# ---- item 6: resume errors in one paragraph ----------------------------------------------------


def test_resume_with_a_changed_model_config_explains_what_to_do(tmp_path):
    _train(tmp_path, "run_id=chg", "trainer.max_steps=2")
    with pytest.raises(ResumeError) as err:
        _train(tmp_path, "run_id=chg", "trainer.max_steps=4", "model.d_model=64")
    text = str(err.value)
    assert "model.d_model: 32 in the checkpoint, 64 now" in text
    assert "resume=false" in text and "another run_id" in text
    assert "\n" not in text and len(text) < 700 and "size mismatch" not in text
    # resume=false trains the id from scratch with the new config
    s = _train(tmp_path, "run_id=chg", "trainer.max_steps=4", "model.d_model=64", "resume=false")
    assert s["resumed_from"] is None and s["global_step"] == 4


def test_truncated_last_ckpt_falls_back_to_the_newest_readable_checkpoint(tmp_path, caplog):
    s = _train(tmp_path, "run_id=cut", "trainer.max_steps=4", "trainer.val_check_interval=2")
    layout = RunLayout(tmp_path / "cut")
    best = Path(s["best_checkpoint"])
    data = layout.last_checkpoint.read_bytes()
    layout.last_checkpoint.write_bytes(data[: len(data) // 3])
    with caplog.at_level("WARNING", logger="moe_swarm.run"):
        again = _train(tmp_path, "run_id=cut", "trainer.max_steps=6", "trainer.val_check_interval=2")
    assert again["resumed_from"] == str(best) and again["global_step"] == 6
    assert any("truncated or corrupt" in r.message and str(best) in r.message for r in caplog.records)


@pytest.mark.slow
def test_truncated_last_ckpt_without_a_fallback_is_one_paragraph(tmp_path):
    _train(tmp_path, "run_id=cut2", "trainer.max_steps=2", "callbacks.model_checkpoint.enabled=false")
    layout = RunLayout(tmp_path / "cut2")
    assert [p.name for p in layout.checkpoints.glob("*.ckpt")] == ["last.ckpt"]
    layout.last_checkpoint.write_bytes(layout.last_checkpoint.read_bytes()[:1000])
    proc = run_entry_point("moe_swarm.cli.train", [*TINY, "trainer.max_steps=4", "run_id=cut2"], tmp_path)
    assert proc.returncode == 2
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "last.ckpt is truncated or corrupt" in line and "resume=false" in line
    assert "Traceback" not in proc.stderr and "PytorchStreamReader" not in proc.stderr


# ---- item 8: last.ckpt on a step and wall-clock cadence ----------------------------------------


def _child(tmp_path: Path, args: list[str], **env_extra: str) -> subprocess.Popen:
    env = clean_env(os.environ) | {"MOE_SWARM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("RUN_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "moe_swarm.cli.train", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_wall_clock_cadence_saves_last_ckpt_without_validation(tmp_path):
    """No validation, no best checkpoint, no step cadence: only the clock can write last.ckpt mid-run."""
    args = [
        *TINY,
        "trainer.max_steps=100000",
        "trainer.val_check_interval=100000",
        "callbacks.model_checkpoint.enabled=false",
        "callbacks.last_checkpoint.every_n_steps=0",
        "callbacks.last_checkpoint.every_minutes=0.002",
        "validate_before_fit=false",
        "run_id=timed",
    ]
    proc = _child(tmp_path, args)
    ckpt = RunLayout(tmp_path / "timed").last_checkpoint
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.is_file() and torch.load(ckpt, weights_only=True)["global_step"] >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "training stopped early"
        assert ckpt.is_file(), "no time-based checkpoint within 90 s"
    finally:
        proc.kill()
        proc.wait()


def test_sigkill_loses_at_most_the_step_cadence(tmp_path):
    every = 3
    args = [
        *TINY,
        "trainer.max_steps=100000",
        "trainer.val_check_interval=100000",
        "trainer.log_every_n_steps=1",
        f"callbacks.last_checkpoint.every_n_steps={every}",
        "run_id=kill",
    ]
    proc = _child(tmp_path, args, MOE_SWARM_METRICS_LINES="1")
    last_step = 0
    for line in proc.stdout:
        metrics = parse_metrics_line(line)
        if metrics and metrics.get("trainer/global_step", 0) >= 3 * every + 1:
            last_step = int(metrics["trainer/global_step"])
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    saved = torch.load(RunLayout(tmp_path / "kill").last_checkpoint, weights_only=True)["global_step"]
    assert last_step - every < saved <= last_step + 1


# ---- item 9: config values fail fast, one line each ------------------------------------------


def test_bad_values_fail_before_anything_is_built_one_line_each(tmp_path):
    proc = run_entry_point(
        "moe_swarm.cli.train",
        [
            "experiment=quickstart",
            "trainer.max_steps=abc",
            "threads=-1",
            "model.n_layers=0",
            "data.bin_path=/no/x.bin",
        ],
        tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr
    assert "trainer.max_steps='abc': must be an integer >= 1" in err
    assert "threads=-1: must be an integer >= 1 or null" in err
    assert "model.n_layers=0: must be an integer >= 1" in err
    assert "data.bin_path='/no/x.bin': no such file or folder" in err
    assert not (tmp_path / "runs").exists() and not any(tmp_path.glob("*/checkpoints"))


@pytest.mark.parametrize(
    "entry,args",
    [("train", ["experiment=quickstart"]), ("swarm_train", ["checkpoint=/no/such.ckpt"])],
)
def test_a_bad_value_is_refused_before_lightning_is_imported(entry, args, tmp_path):
    """The config check runs first: a typo costs the seconds of composing, not of loading Lightning."""
    code = (
        "import sys\n"
        f"from moe_swarm.cli.{entry} import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('lightning loaded:', 'lightning' in sys.modules)\n"
    )
    env = {**os.environ, "MOE_SWARM_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args, "trainer.max_steps=abc"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert "trainer.max_steps='abc': must be an integer >= 1" in proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[-2:] == ["exit 2", "lightning loaded: False"], proc.stdout


def test_config_errors_are_value_errors_listing_every_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        _train(tmp_path, "trainer.max_steps=0", "+model.num_expert=16")
    assert err.value.problems[0] == "trainer.max_steps=0: must be an integer >= 1"
    assert len(err.value.problems) == 2 and "model.num_expert" in err.value.problems[1]
    with pytest.raises(ConfigError, match=r"model\.num_expert.*model\.moe\.num_experts"):
        _train(tmp_path, "+model.num_expert=16")


def test_hydra_full_error_shows_the_traceback(tmp_path):
    env_args = ["experiment=quickstart", "trainer.max_steps=0"]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        proc = run_entry_point("moe_swarm.cli.train", env_args, tmp_path)
    finally:
        del os.environ["HYDRA_FULL_ERROR"]
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


# ---- item 10: console output a person reads --------------------------------------------------


@pytest.mark.slow
def test_console_output_has_no_duplicates_adverts_or_junk_numbers(tmp_path):
    args = [*TINY, "trainer.max_steps=4", "trainer.enable_progress_bar=true", "run_id=quiet"]
    proc = run_entry_point("moe_swarm.cli.train", args, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = [ln for ln in out.splitlines() if "GPU available" in ln]
    assert len(lines) == 1, lines
    for junk in ("litlogger", "Total FLOPs", "Epoch 0/-2", "v_num", "LeafSpec"):
        assert junk not in out, junk
    assert "model: " in out and " active per token" in out
    tput = [ln for ln in out.splitlines() if "throughput:" in ln][0]
    assert ".0000" not in tput, tput


# ---- item 11: plots that compare across steps, and a loss curve --------------------------------


def test_expert_load_plots_share_one_colour_scale_with_integer_ticks():
    import numpy as np

    from moe_swarm.training.callbacks import plot_expert_load

    even = plot_expert_load(np.full((2, 4), 0.25), 5, [1, 3])
    skewed = plot_expert_load(np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]), 10, [1, 3])
    for fig in (even, skewed):
        ax = fig.axes[0]
        assert ax.images[0].get_clim() == (0.0, 0.75)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "3"]
        assert list(ax.get_xticks()) == [0, 1, 2, 3]


def test_a_run_writes_a_loss_curve_next_to_the_expert_load_plots(tmp_path):
    s = _train(tmp_path, "run_id=plots", "trainer.max_steps=4", "trainer.val_check_interval=2")
    plots = Path(s["plots"])
    assert (plots / "loss.png").stat().st_size > 0
    assert {p.name for p in plots.glob("expert_load_step*.png")} == {
        "expert_load_step0.png",
        "expert_load_step2.png",
        "expert_load_step4.png",
    }


def test_callbacks_follow_the_config_without_a_logger(tmp_path):
    """`~logger` drops the loggers; the LR monitor (which needs one) is disabled by its `enabled`
    interpolation, not filtered by class name in code."""
    s = _train(tmp_path, "run_id=nolog", "trainer.max_steps=2", "~logger")
    assert s["status"] == "succeeded" and s["logs"] == []
    cfg = compose_cfg("train", [*TINY, "~logger"], tmp_path)
    assert cfg.callbacks.lr_monitor.enabled is False and cfg.callbacks.progress_bar.enabled is False
