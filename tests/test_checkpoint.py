"""The one checkpoint loader, the atomic writers and the run-directory / metrics-line contract."""

import json
import os
import pickle
import stat
import subprocess
import sys
import zipfile

import pytest
import torch

from moe_swarm.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from moe_swarm.model.transformer import MoETransformer
from moe_swarm.store.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_config_from_hparams,
    save_model_checkpoint,
    task_spec,
)
from moe_swarm.store.layout import (
    METRICS_LINE_PREFIX,
    METRICS_LINES_ENV,
    RunLayout,
    format_metrics_line,
    metrics_lines_enabled,
    parse_metrics_line,
)

# Flat (legacy) keys: every version of the model config reads them.
TINY = model_config_from_hparams(
    {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16, "num_experts": 4, "max_seq_len": 32}}
)


@pytest.fixture
def good_ckpt(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    hp = {"task": {"name": "mul", "kwargs": {"digits_a": 1, "digits_b": 1}}, "run_config": {"seed": 3}}
    save_model_checkpoint(
        path, MoETransformer(TINY), {**hp, "global_step": 7}, extra={"swarm_state": {"a": 1}}
    )
    return path


def test_load_checkpoint_returns_model_task_run_config_and_state(good_ckpt):
    loaded = load_checkpoint(good_ckpt)
    assert not loaded.model.training and loaded.model.cfg.d_model == 16
    assert loaded.task == {"name": "mul", "kwargs": {"digits_a": 1, "digits_b": 1}}
    assert loaded.run_config == {"seed": 3} and loaded.swarm_state == {"a": 1}
    assert loaded.global_step == 7 and loaded.path == good_ckpt


def test_task_lives_under_task_with_legacy_eval_task_fallback():
    assert task_spec({"task": {"name": "mul"}}) == {"name": "mul", "kwargs": {}}
    assert task_spec({"eval_task": {"name": "reach", "kwargs": {"n": 2}}}) == {
        "name": "reach",
        "kwargs": {"n": 2},
    }
    assert task_spec({"task": {"name": "mul"}, "eval_task": {"name": "reach"}})["name"] == "mul"
    assert task_spec({"task": None, "eval_task": None}) is None and task_spec({}) is None
    with pytest.raises(CheckpointError, match="not"):
        task_spec({"task": {"kwargs": {}}})


def _write_foreign_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"state_dict": {}}))
    with open(tmp_path / "obj.pt", "wb") as f:
        torch.save({"state_dict": {}, "evil": pickle.loads(pickle.dumps(zipfile.ZipInfo("a")))}, f)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    return {
        "/etc/passwd": "is not a moe-swarm checkpoint: it is not a PyTorch zip archive",
        str(tmp_path / "x.json"): "is not a moe-swarm checkpoint: it is not a PyTorch zip archive",
        str(tmp_path / "obj.pt"): "is not a moe-swarm checkpoint: it holds Python objects (zipfile.ZipInfo)",
        str(
            tmp_path / "plain.pt"
        ): "is not a moe-swarm checkpoint: it is a PyTorch file without a 'state_dict'",
        str(tmp_path): "is not a moe-swarm checkpoint: it is a directory",
        str(tmp_path / "nope.ckpt"): "does not exist",
    }


def test_non_checkpoints_get_one_clear_message_never_weights_only_advice(tmp_path):
    for path, expected in _write_foreign_files(tmp_path).items():
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        text = str(err.value)
        assert path in text and expected in text, text
        assert "weights_only" not in text and "\n" not in text


def test_truncated_checkpoint_says_truncated(good_ckpt, tmp_path):
    data = good_ckpt.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.ckpt is truncated or corrupt: it starts like a PyTorch"):
        load_checkpoint(cut)


def test_weights_that_do_not_fit_the_config_are_summarised(good_ckpt):
    ckpt = torch.load(good_ckpt, weights_only=True)
    ckpt["hyper_parameters"]["model"]["d_model"] = 32
    ckpt["hyper_parameters"]["model"]["n_layers"] = 2
    torch.save(ckpt, good_ckpt)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(good_ckpt)
    text = str(err.value)
    assert "do not fit the model config" in text and "missing" in text and "of another shape" in text
    assert len(text) < 800, "a paragraph, not a wall of tensor names"


def test_eval_cli_on_a_non_checkpoint_prints_one_line_and_no_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "moe_swarm.cli.eval", "checkpoint=/etc/passwd", f"paths.runs_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HYDRA_FULL_ERROR": ""},
    )
    assert out.returncode == 2, out.stderr
    assert "/etc/passwd is not a moe-swarm checkpoint" in out.stderr
    assert "Traceback" not in out.stderr and "list index out of range" not in out.stderr


def test_atomic_writers_replace_whole_files_with_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_text(tmp_path / "a" / "t.txt", "hello")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_torch_save({"x": torch.ones(2)}, tmp_path / "c.pt")
    assert (tmp_path / "a" / "t.txt").read_text() == "hello" and (
        tmp_path / "b.bin"
    ).read_bytes() == b"\x00\x01"
    assert torch.load(tmp_path / "c.pt", weights_only=True)["x"].sum() == 2
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == 0o666 & ~umask
    assert not list(tmp_path.rglob("*.tmp"))


def test_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "c.pt"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_torch_save({"v": lambda: 2}, target)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_run_layout_paths():
    lay = RunLayout.for_run("runs", "abc")
    assert str(lay.last_checkpoint) == "runs/abc/checkpoints/last.ckpt"
    assert str(lay.summary) == "runs/abc/summary.json" and str(lay.lock) == "runs/abc/run.lock"
    assert RunLayout.of_checkpoint(lay.last_checkpoint) == lay
    assert RunLayout.of_checkpoint("elsewhere/model.ckpt").root.name == "elsewhere"


def test_metrics_line_round_trip_and_switch():
    line = format_metrics_line({"train/loss": 1.5, "trainer/global_step": 4, "bad": float("nan"), "s": "x"})
    assert line.startswith(METRICS_LINE_PREFIX) and "\n" not in line
    assert parse_metrics_line(line) == {"train/loss": 1.5, "trainer/global_step": 4.0}
    assert parse_metrics_line("MOE_SWARM_METRICS {torn") is None and parse_metrics_line("hello") is None
    assert metrics_lines_enabled({METRICS_LINES_ENV: "1"}) and not metrics_lines_enabled({})
