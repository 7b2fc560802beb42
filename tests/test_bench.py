"""Benchmark suite: output schema, compare, the library entry point and failure handling.

These tests check behaviour (what is written, how errors are reported), never how fast anything is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_swarm.bench import SUITES, SuiteUnavailable, execute, run_benchmarks, select_suites
from moe_swarm.bench.__main__ import main as bench_main
from moe_swarm.bench.context import DTYPES
from moe_swarm.bench.model_shape import LayerShape
from moe_swarm.bench.moe_layer import BASELINES, check_agreement
from moe_swarm.bench.results import Row, load_results
from moe_swarm.bench.timing import time_interleaved

FIELD_TYPES = {
    "suite": str,
    "metric": str,
    "value": float,
    "unit": str,
    "reference": str,
    "reference_value": float,
    "ratio": float,
    "higher_is_better": bool,
    "config": dict,
    "torch_version": str,
    "device": str,
    "threads": int,
    "git_commit": str,
    "note": str,
    "samples": list,
}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


def _bench(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "moe_swarm.bench", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One real `moe_swarm.bench run --quick` in a child process; returns its run folder."""
    work = tmp_path_factory.mktemp("bench")
    proc = _bench("run", "--quick", "--out", "tmp", cwd=work)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list((work / "tmp").iterdir())
    assert len(runs) == 1, runs
    assert f"results: {Path('tmp') / runs[0].name}" in proc.stdout
    return runs[0]


def test_quick_run_writes_rows_with_the_full_schema(quick_run: Path):
    payload = json.loads((quick_run / "results.json").read_text())
    rows = payload["rows"]
    assert rows
    for row in rows:
        assert set(row) == set(FIELD_TYPES), row["metric"]
        for name, typ in FIELD_TYPES.items():
            assert isinstance(row[name], typ), (row["metric"], name, row[name])
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["reference_value"])
        assert row["metric"].startswith(row["suite"] + "/")
        assert row["threads"] == 1 and row["device"] == "cpu"
        assert row["torch_version"] == torch.__version__
    suites = {r["suite"] for r in rows}
    assert {"moe_layer", "generate"} <= suites
    # Every registered suite either produced rows or was reported, none failed.
    reported = {p["suite"] for p in payload["problems"] if p["what"] == p["suite"]}
    assert set(SUITES) == suites | reported
    assert all(p["status"] == "skipped" for p in payload["problems"]), payload["problems"]
    metrics = {r["metric"] for r in rows}
    assert "moe_layer/E64k8_t256_fp32/auto_speedup" in metrics
    assert "generate/agents8_new16/batched_over_single" in metrics
    meta = payload["meta"]
    assert (
        meta["quick"] is True and meta["threads"] == 1 and meta["command"].startswith("moe-swarm-bench run")
    )


def test_quick_run_writes_markdown_and_plots(quick_run: Path):
    md = (quick_run / "results.md").read_text()
    assert "## Goals" in md and "## moe_layer" in md and "## generate" in md
    assert "| E64k8_t256_fp32/auto_speedup |" in md
    for png in ("moe_layer.png", "generate.png"):
        assert (quick_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md


def test_compare_reports_changes_and_regressions(quick_run: Path, tmp_path: Path, capsys):
    old = quick_run / "results.json"
    payload = json.loads(old.read_text())
    slower = next(r for r in payload["rows"] if r["metric"].endswith("/auto_ms"))
    faster = next(r for r in payload["rows"] if r["metric"].endswith("/kv_cache_tok_s"))
    slower["value"] *= 1.5  # ms: higher is worse
    faster["value"] *= 2.0  # tok/s: higher is better
    dropped = payload["rows"].pop()["metric"]
    new = tmp_path / "new.json"
    new.write_text(json.dumps(payload))

    proc = _bench("compare", str(old), str(new), cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "+50.0%" in lines[slower["metric"]] and "WORSE" in lines[slower["metric"]]
    assert "+100.0%" in lines[faster["metric"]] and "better" in lines[faster["metric"]]
    assert f"only in the old run (1): {dropped}" in proc.stdout
    assert "1 worse by more than 5%" in proc.stdout

    assert bench_main(["compare", str(old), str(new), "--fail-on-worse"]) == 1
    assert bench_main(["compare", str(quick_run), str(old), "--fail-on-worse"]) == 0
    assert "0 worse" in capsys.readouterr().out


def test_compare_rejects_a_file_that_is_not_results(tmp_path: Path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    assert bench_main(["compare", str(bad), str(bad)]) == 2
    assert "has no 'rows' list" in capsys.readouterr().err
    assert bench_main(["compare", str(tmp_path / "nope.json"), str(bad)]) == 2
    assert "no results file" in capsys.readouterr().err


def test_run_benchmarks_returns_named_float_rows_and_restores_threads(tmp_path: Path):
    torch.set_num_threads(2)
    try:
        rows = run_benchmarks(suites="moe_layer", quick=True, repeats=1, threads=1, out_dir=tmp_path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    by_metric = {r.metric: r for r in rows}
    speedup = by_metric["moe_layer/E64k8_t256_fp32/auto_speedup"]
    assert isinstance(speedup.value, float) and speedup.unit == "x" and speedup.threads == 1
    # Every implementation ran for every quick dispatch case: 4 cases x (5 times + 4 speedups);
    # the model-sized cases (bench/moe_sizes.py, names with _ff) come on top.
    dispatch = [r for r in rows if "_ff" not in r.metric]
    assert len(dispatch) == 4 * 9
    assert "moe_layer/tiny_E8k2_d64_ff128_t256/ours_fp32_over_floor" in by_metric
    for dtype in DTYPES:
        assert f"moe_layer/E8k2_t256_{dtype}/dense_all_experts_ms" in by_metric
    (run_dir,) = list(tmp_path.iterdir())
    loaded, meta = load_results(run_dir)
    assert [r.metric for r in loaded] == [r.metric for r in rows]
    assert meta["threads"] == 1


def test_bad_options_are_rejected_with_a_clear_message(tmp_path: Path, capsys):
    with pytest.raises(ValueError, match="unknown suite.*choose from moe_layer"):
        run_benchmarks(suites="moe_layr")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        run_benchmarks(suites="moe_layer", threads=0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        run_benchmarks(suites="moe_layer", repeats=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False"):
            run_benchmarks(suites="moe_layer", device="cuda")
    assert bench_main(["run", "--suites", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unavailable_suite_is_skipped_and_broken_suite_is_reported():
    def ghost(ctx):
        raise SuiteUnavailable("needs a ghost")

    def broken(ctx):
        raise ZeroDivisionError("boom")

    def tiny(ctx):
        return [
            ctx.row("tiny", "case/x_ms", 2.0, "ms", reference="tiny/case/x_ms", reference_value=2.0,
                    higher_is_better=False, config={"n": 1})
        ]  # fmt: skip

    available = {"ghost": ghost, "broken": broken, "tiny": tiny}
    report = execute(select_suites("tiny,ghost,broken", available))
    assert [r.metric for r in report.rows] == ["tiny/case/x_ms"]
    status = {p["suite"]: (p["status"], p["reason"]) for p in report.problems}
    assert status["ghost"] == ("skipped", "needs a ghost")
    assert status["broken"][0] == "failed" and "ZeroDivisionError: boom" in status["broken"][1]
    with pytest.raises(RuntimeError, match="benchmark suite\\(s\\) failed: broken: ZeroDivisionError: boom"):
        run_benchmarks(suites="broken", available=available)
    with pytest.raises(ValueError, match="unknown suite.*choose from ghost, broken, tiny"):
        select_suites("serve", available)


def test_bench_does_not_import_serve_and_serve_adds_its_suite():
    """bench <- serve: the bench package never imports moe_swarm.serve; the sidecar's suite list adds
    ``serve`` to bench's own, and the ``moe-swarm-bench`` console script runs over that list."""
    import ast

    import moe_swarm.bench

    code = (
        "import sys, moe_swarm.bench, moe_swarm.bench.__main__, moe_swarm.bench.registry;"
        "print(sorted(m for m in sys.modules if m.startswith(('moe_swarm.serve', 'lightning'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    for path in Path(moe_swarm.bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("moe_swarm.serve", "importlib")), (path.name, name)
    from moe_swarm.serve.benchmarks import SUITES as SERVE_SUITES

    assert list(SERVE_SUITES) == [*SUITES, "serve"]


def test_rows_refuse_non_positive_or_nan_numbers():
    base = dict(suite="s", metric="s/a", value=1.0, unit="ms", reference="s/a", reference_value=1.0, ratio=1.0,
                higher_is_better=False, config={}, torch_version="x", device="cpu", threads=1, git_commit="x")  # fmt: skip
    Row(**base)
    for bad in ({"value": 0.0}, {"ratio": float("nan")}, {"reference_value": -1.0}):
        with pytest.raises(ValueError, match="positive finite"):
            Row(**{**base, **bad})


def test_time_interleaved_rotates_the_order_and_counts_calls():
    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_interleaved(candidates, repeats=3, warmup=1, device=torch.device("cpu"))
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert [calls[3], calls[6], calls[9]] == ["a", "b", "c"]  # each repeat starts one further along
    assert all(t >= 0 for v in times.values() for t in v)


def test_moe_layer_refuses_to_time_a_wrong_implementation(monkeypatch):
    layer = LayerShape(num_experts=4, top_k=2, d_model=32, d_ff=64).make_layer()
    x = torch.randn(16, 32)
    check_agreement(layer, x, ["grouped_mm", "sorted_split", "auto", "dense_all_experts"])
    monkeypatch.setitem(BASELINES, "dense_all_experts", lambda pool, x, *a: torch.zeros_like(x))
    with pytest.raises(RuntimeError, match="dense_all_experts disagrees with reference_loop"):
        check_agreement(layer, x, ["dense_all_experts"])


def test_moe_layer_module_cli_prints_the_ratio_table(tmp_path: Path, capsys):
    from moe_swarm.bench import moe_layer

    out = tmp_path / "sub" / "moe.json"
    assert moe_layer.main(["--quick", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference_loop ms (x ref)" in printed and "E64k8_t256_bf16" in printed
    rows, meta = load_results(out)
    assert {r.suite for r in rows} == {"moe_layer"} and meta["threads"] == 1
    shutil.rmtree(tmp_path / "sub")
