"""Defect 7 of issue 21: ``moe-swarm-eval`` without arguments is a one-line usage error, not a traceback."""

from __future__ import annotations

from conftest import REPO_ROOT, run_entry_point


def test_eval_without_a_checkpoint_prints_one_usage_line(tmp_path):
    proc = run_entry_point("moe_swarm.cli.eval", [], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: no checkpoint given; usage: moe-swarm-eval checkpoint="
    ), lines
    assert "Traceback" not in proc.stderr and "MissingMandatoryValue" not in proc.stderr


def test_the_readme_offers_split_test_only_for_reasoning_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "[split=test]" not in readme
    assert "`split=test` for reasoning-task runs" in readme
