"""Issue 21: a run whose stdout is not a terminal prints plain progress lines (defect 4); the training
CLI's --help says what it is for, and saving a checkpoint prints no Lightning note (defect 10)."""

from __future__ import annotations

import re

from conftest import TINY_MODEL, run_entry_point

LINE = re.compile(
    r"^step (\d+)/8 \(\d+%\)  loss [\d.]+  tokens/s [\d,]+  elapsed \d+:\d\d  ETA \d+:\d\d$", re.M
)


def test_training_into_a_pipe_prints_step_loss_tokens_per_s_and_eta(tmp_path):
    overrides = [o for o in TINY_MODEL if "enable_progress_bar" not in o]
    args = ["experiment=quickstart", *overrides, "trainer.enable_progress_bar=true", "trainer.max_steps=8",
            "trainer.val_check_interval=8", "trainer.limit_val_batches=1", "validate_before_fit=false",
            "data.block_size=32", "data.batch_size=2", "run_id=piped"]  # fmt: skip
    proc = run_entry_point(
        "moe_swarm.cli.train", args, tmp_path
    )  # stdout is a pipe, as in `make train > log`
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [int(m.group(1)) for m in LINE.finditer(proc.stdout)]
    assert steps and steps == sorted(steps) and steps[-1] == 8, proc.stdout[-3000:]
    assert len(steps) >= 2  # every few steps, not one line at the end
    assert "\r" not in proc.stdout and "━" not in proc.stdout  # no redrawing bar in the log
    assert "`weights_only` was not set" not in proc.stdout + proc.stderr  # defect 10: a note at every save


def test_train_help_starts_with_a_purpose_line(tmp_path):
    proc = run_entry_point("moe_swarm.cli.train", ["--help"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("moe-swarm-train: train a sparse mixture-of-experts language model"), (
        proc.stdout[:300]
    )
    assert "is powered by Hydra" not in proc.stdout
