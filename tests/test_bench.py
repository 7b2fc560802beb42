"""Benchmark suites: output schema, compare, the library entry point, failure handling, the CPU
capability rule (no bf16 case where bf16 is emulated), progress and the time budget.

These tests check behaviour (what is written, how errors are reported), never how fast anything is.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from moe_swarm.bench import (
    SUITES,
    SuiteUnavailable,
    execute,
    machine,
    progress,
    run_benchmarks,
    select_suites,
)
from moe_swarm.bench.cli import SUITES as CLI_SUITES
from moe_swarm.bench.cli import main as bench_main
from moe_swarm.bench.context import BF16_PRECISIONS, DTYPES, BenchContext, Case
from moe_swarm.bench.machine import CpuInfo, has_native_bf16
from moe_swarm.bench.model_shape import LayerShape
from moe_swarm.bench.moe_layer import BASELINES, check_agreement
from moe_swarm.bench.results import EnvInfo, Row, load_results
from moe_swarm.bench.runner import one_case, plan_cases
from moe_swarm.bench.timing import time_interleaved

ROOT = Path(__file__).resolve().parents[1]
NATIVE_BF16 = CpuInfo.collect(threads=1).native_bf16

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
    cpu = meta["cpu"]
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability() and cpu["threads"] == 1
    assert cpu["model_name"] and cpu["native_bf16"] == NATIVE_BF16
    assert meta["missing_cases"] == [] and "moe_layer/E64k8_t256_fp32" in meta["cases"]
    assert any("_bf16" in m for m in metrics) == NATIVE_BF16


def test_quick_run_writes_markdown_and_plots(quick_run: Path):
    md = (quick_run / "results.md").read_text()
    assert "## Goals" in md and "## moe_layer" in md and "## generate" in md
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in md
    assert ("bf16 and bf16-mixed CPU cases are left out" in md) == (not NATIVE_BF16)
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
    # Every implementation ran for every quick dispatch case: 2 shapes x (fp32, and bf16 where the CPU
    # has it natively) x (5 times + 4 speedups); the model-sized cases (names with _ff) come on top.
    dtypes = list(DTYPES) if NATIVE_BF16 else ["fp32"]
    dispatch = [r for r in rows if "_ff" not in r.metric]
    assert len(dispatch) == 2 * len(dtypes) * 9
    assert "moe_layer/tiny_E8k2_d64_ff128_t256/ours_fp32_over_floor" in by_metric
    for dtype in dtypes:
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

    available = {"ghost": ghost, "broken": broken, "tiny": one_case("tiny", tiny)}
    report = execute(select_suites("tiny,ghost,broken", available))
    assert [r.metric for r in report.rows] == ["tiny/case/x_ms"]
    status = {p["suite"]: (p["status"], p["reason"]) for p in report.problems}
    assert status["ghost"] == ("skipped", "needs a ghost")
    assert status["broken"][0] == "failed" and "ZeroDivisionError: boom" in status["broken"][1]
    with pytest.raises(RuntimeError, match="benchmark suite\\(s\\) failed: broken: ZeroDivisionError: boom"):
        run_benchmarks(suites="broken", available=available)
    with pytest.raises(ValueError, match="unknown suite.*choose from ghost, broken, tiny"):
        select_suites("serve", available)


def test_bench_cli_offers_the_registry_plus_serve_and_the_sidecar_conf_lists_them():
    """The sidecar validates suite names against ``serve.benchmark.available_suites`` (it does not
    import bench, which sits above it); that list must be exactly what the benchmark child runs."""
    conf = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())["serve"]["benchmark"]
    assert list(CLI_SUITES) == [*SUITES, "serve"]
    assert conf["available_suites"] == list(CLI_SUITES)
    assert set(conf["suites"]) <= set(CLI_SUITES)  # RunBenchmark's default suites
    assert conf["command"][-1] == "moe_swarm.bench.child"
    # Listing the suites stays light: no sidecar, gRPC or Lightning import until a suite plans.
    code = (
        "import sys, moe_swarm.bench, moe_swarm.bench.cli, moe_swarm.bench.__main__;"
        "print(sorted(m for m in sys.modules if m.startswith(('moe_swarm.serve', 'grpc', 'lightning'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _ctx(quick: bool = True) -> BenchContext:
    env = EnvInfo.collect(torch.device("cpu"), threads=1)
    return BenchContext(quick=quick, repeats=1, threads=1, device=torch.device("cpu"), env=env)


def _fake_cpu(monkeypatch, capability: str, flags: set[str]) -> None:
    monkeypatch.setattr(machine, "cpu_capability", lambda: capability)
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.parametrize(
    ("capability", "flags", "native"),
    [
        ("AVX2", {"avx2", "fma"}, False),
        ("AVX512", {"avx512f"}, False),  # AVX-512 without its bf16 extension
        ("AVX512", {"avx512f", "avx512_bf16"}, True),
        ("AVX512", {"avx512f", "amx_bf16", "amx_tile"}, True),
        ("AVX2", {"avx2", "avx512_bf16"}, False),  # torch dispatches AVX2 kernels here
        ("DEFAULT", {"asimd", "bf16"}, True),  # Arm with the bf16 feature
    ],
)
def test_native_bf16_needs_avx512_bf16_or_amx(capability, flags, native):
    assert has_native_bf16(capability, frozenset(flags)) is native


@pytest.mark.parametrize("quick", [True, False])
def test_no_bf16_case_is_planned_on_an_avx2_only_cpu(monkeypatch, quick):
    """The capability rule on every planned case (nothing runs): bf16 and bf16-mixed CPU cases exist
    only where bf16 is native, and the report says why they are missing."""
    _fake_cpu(monkeypatch, "AVX2", {"avx2", "fma"})
    ctx = _ctx(quick)
    assert not ctx.env.cpu.native_bf16
    cases = plan_cases(CLI_SUITES, ctx)
    assert {c.suite for c in cases} == set(CLI_SUITES) and not any(
        p["status"] == "failed" for p in ctx.problems
    )
    assert [c.label for c in cases if set(c.precisions) & set(BF16_PRECISIONS)] == []
    (note,) = [p for p in ctx.problems if p["what"] == "moe_layer/bf16 cases"]
    assert note["status"] == "skipped" and "AVX2" in note["reason"] and "emulat" in note["reason"]

    _fake_cpu(monkeypatch, "AVX512", {"avx512f", "avx512_bf16"})
    ctx = _ctx(quick)
    bf16 = [c.label for c in plan_cases(CLI_SUITES, ctx) if "bf16" in c.precisions]
    assert bf16 and all(label.startswith("moe_layer/") and label.endswith("_bf16") for label in bf16)
    assert not ctx.problems


def _suite(name: str, n: int, clock: list[float] | None = None):
    """A suite of ``n`` cases returning one row each; each case moves ``clock`` on by a minute."""

    def plan(ctx: BenchContext) -> list[Case]:
        def case(i: int) -> list[Row]:
            if clock is not None:
                clock[0] += 60.0
            return [ctx.row(name, f"c{i}/x_ms", 1.0 + i, "ms", reference=f"{name}/c{i}/x_ms",
                            reference_value=1.0 + i, higher_is_better=False, config={"i": i})]  # fmt: skip

        return [Case(name, f"c{i}", functools.partial(case, i)) for i in range(n)]

    return plan


def test_max_minutes_stops_starting_cases_and_lists_the_missing(tmp_path: Path, monkeypatch, capsys):
    clock = [0.0]  # minutes pass only inside the fake cases: nothing is timed
    monkeypatch.setattr(progress.RunProgress, "elapsed", property(lambda self: clock[0]))
    available = {"a": _suite("a", 2, clock), "b": _suite("b", 2, clock)}
    code = bench_main(["run", "--max-minutes", "1.5", "--out", str(tmp_path)], available=available)
    assert code == 0
    out, err = capsys.readouterr()
    assert "not run: b/c0, b/c1" in out
    assert "[bench] case 1/4 a/c0" in err and "[bench] case 2/4 a/c1" in err and "case 3/4" not in err
    assert "[bench] 2/4 cases in" in err and "(2 not run: time budget spent)" in err
    (run_dir,) = list(tmp_path.iterdir())
    payload = json.loads((run_dir / "results.json").read_text())
    assert [r["metric"] for r in payload["rows"]] == ["a/c0/x_ms", "a/c1/x_ms"]
    assert payload["meta"]["missing_cases"] == ["b/c0", "b/c1"] and payload["meta"]["max_minutes"] == 1.5
    md = (run_dir / "results.md").read_text()
    assert "## Not run" in md and "- b/c0\n- b/c1" in md and "2 of 4 cases" in md
    assert bench_main(["run", "--max-minutes", "0", "--out", str(tmp_path)], available=available) == 2


def test_progress_prints_case_i_of_n_with_elapsed_and_an_eta(capsys):
    execute({"a": _suite("a", 3)})
    err = capsys.readouterr().err
    assert "[bench] case 1/3 a/c0 | elapsed 0:00, ETA ?" in err
    assert "[bench] case 3/3 a/c2 | elapsed" in err and "ETA 0:00" in err
    assert progress.eta_seconds(elapsed=60.0, done=2, total=5) == pytest.approx(90.0)
    assert progress.clock(3725) == "1:02:05" and progress.clock(65) == "1:05"


def test_progress_draws_a_rich_bar_on_a_terminal():
    import io

    stream = io.StringIO()
    bar = progress.RunProgress(2, stream=stream, rich=True)
    for label in ("a/c0", "a/c1"):
        bar.start(label)
        bar.finish()
    bar.close()
    text = stream.getvalue()
    assert "2/2" in text and "a/c1" in text and "ETA" in text and "[bench] 2/2 cases" in text


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
    assert "reference_loop ms (x ref)" in printed and "E64k8_t256_fp32" in printed
    assert f"CPU capability {torch.backends.cpu.get_cpu_capability()}" in printed
    rows, meta = load_results(out)
    assert {r.suite for r in rows} == {"moe_layer"} and meta["threads"] == 1
    shutil.rmtree(tmp_path / "sub")


def test_loadtest_serves_a_random_model_the_checkpoint_loader_reads(tmp_path: Path):
    """The ``serve`` suite's sidecars load this checkpoint; it must be the training layout, model sized."""
    from moe_swarm.bench.loadtest import QUICK_MODEL, random_checkpoint
    from moe_swarm.store.checkpoint import load_checkpoint

    loaded = load_checkpoint(random_checkpoint(tmp_path / "models" / "model.ckpt", QUICK_MODEL))
    cfg = loaded.model.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.moe.num_experts, cfg.max_seq_len) == (64, 2, 4, 64)
