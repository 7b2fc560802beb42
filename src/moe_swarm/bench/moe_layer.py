"""Suite ``moe_layer``: forward+backward of one MoE layer per dispatch implementation.

Every implementation runs on the same layer, the same tokens and the same routing, interleaved
within each repeat, against two references: ``reference_loop`` (the Mixtral-style loop over
experts) and ``dense_all_experts`` (every expert on every token, then mask). Before timing, each
implementation's output is checked against ``reference_loop`` so a fast wrong path cannot win.

Run alone: ``python -m moe_swarm.bench.moe_layer [--quick] [--threads N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import sys
from functools import partial
from pathlib import Path

import torch

from moe_swarm.bench.context import DTYPES, BenchContext, Case
from moe_swarm.bench.model_shape import LayerShape
from moe_swarm.bench.moe_sizes import format_sized_table, sized_cases
from moe_swarm.bench.reference import dense_all_experts
from moe_swarm.bench.results import Row
from moe_swarm.bench.timing import median, paired_ratios, time_interleaved
from moe_swarm.model import MoELayer, grouped_mm_supported
from moe_swarm.model.experts import aligned_for_grouped_mm

SUITE = "moe_layer"
REFERENCE = "reference_loop"
IMPLS = ("reference_loop", "grouped_mm", "sorted_split", "auto", "dense_all_experts")
# Timed implementations that are not ExpertPool dispatch modes (bench/reference.py).
BASELINES = {"dense_all_experts": dense_all_experts}
# Output agreement with reference_loop, relative to the largest reference output.
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}


FULL_SHAPES = (LayerShape(8, 2, 256, 1024), LayerShape(64, 8, 256, 256))
FULL_TOKENS = (512, 4096)
QUICK_SHAPES = (LayerShape(8, 2, 64, 128), LayerShape(64, 8, 64, 64))
QUICK_TOKENS = (256,)


def case_name(shape: LayerShape, tokens: int, dtype_name: str) -> str:
    return f"E{shape.num_experts}k{shape.top_k}_t{tokens}_{dtype_name}"


def _layer_out(layer: MoELayer, x: torch.Tensor, impl: str) -> torch.Tensor:
    """The layer's output (router included) with the experts run by ``impl``."""
    routed = layer.router(x)
    if impl in BASELINES:
        return BASELINES[impl](layer.experts, x, routed.indices, routed.weights, routed.keep)
    return layer.experts(
        x, routed.indices, routed.weights, routed.keep, impl=None if impl == "auto" else impl
    )


def layer_step(layer: MoELayer, x: torch.Tensor, grad_out: torch.Tensor, impl: str):
    """One forward+backward of the layer (router included) with the experts run by ``impl``."""
    params = list(layer.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        _layer_out(layer, x, impl).backward(grad_out)

    return step


def _forward(layer: MoELayer, x: torch.Tensor, impl: str) -> torch.Tensor:
    with torch.no_grad():
        return _layer_out(layer, x, impl)


def check_agreement(layer: MoELayer, x: torch.Tensor, impls: list[str]) -> None:
    """Raise if any implementation's output differs from ``reference_loop`` beyond the dtype's tolerance."""
    ref = _forward(layer, x, REFERENCE).float()
    scale = ref.abs().max().clamp_min(1e-12)
    for impl in impls:
        err = (_forward(layer, x, impl).float() - ref).abs().max() / scale
        if not bool(torch.isfinite(err)) or float(err) > TOLERANCE[x.dtype]:
            raise RuntimeError(
                f"moe_layer: {impl} disagrees with {REFERENCE} (max relative error {float(err):.2e} > "
                f"{TOLERANCE[x.dtype]:.0e}, dtype {x.dtype}); the dispatch code is wrong, not slow"
            )


def runnable_impls(layer: MoELayer, x: torch.Tensor) -> tuple[list[str], dict[str, str]]:
    """The implementations that run for this device/dtype/shape, and why the others are left out."""
    impls, skipped = [], {}
    for impl in IMPLS:
        if impl == "grouped_mm":
            aligned = aligned_for_grouped_mm(x.dtype, layer.experts.d_model, layer.experts.d_ff)
            if not aligned or not grouped_mm_supported(x.device.type, x.dtype):
                skipped[impl] = (
                    f"torch.nn.functional.grouped_mm does not run for {x.device.type}/{x.dtype} here"
                )
                continue
        impls.append(impl)
    return impls, skipped


def bench_case(ctx: BenchContext, shape: LayerShape, tokens: int, dtype_name: str) -> list[Row]:
    dtype = DTYPES[dtype_name]
    torch.manual_seed(ctx.seed)
    layer = shape.make_layer().to(ctx.device, dtype)
    x = torch.randn(tokens, shape.d_model, device=ctx.device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(tokens, shape.d_model, device=ctx.device, dtype=dtype)
    impls, skipped = runnable_impls(layer, x)
    name = case_name(shape, tokens, dtype_name)
    for impl, reason in skipped.items():
        ctx.report_problem(SUITE, f"{name}/{impl}", reason)
    check_agreement(layer, x, [i for i in impls if i != REFERENCE])
    auto_resolves_to = layer.experts.resolve_dispatch(x)
    times = time_interleaved(
        {impl: layer_step(layer, x, grad_out, impl) for impl in impls},
        repeats=ctx.repeats_or(full=7, quick=2),
        warmup=1,
        device=ctx.device,
    )
    config = {
        **shape.config(),
        "tokens": tokens,
        "dtype": dtype_name,
        "pass": "forward+backward",
    }
    ref_ms = median(times[REFERENCE]) * 1e3
    ref_metric = f"{SUITE}/{name}/{REFERENCE}_ms"
    rows = []
    for impl in impls:
        ms = median(times[impl]) * 1e3
        note = f"auto -> {auto_resolves_to}" if impl == "auto" else ""
        rows.append(
            ctx.row(
                SUITE,
                f"{name}/{impl}_ms",
                ms,
                "ms",
                reference=ref_metric,
                reference_value=ref_ms,
                higher_is_better=False,
                config=config,
                note=note,
                samples=[t * 1e3 for t in times[impl]],
            )
        )
    for impl in impls:
        if impl == REFERENCE:
            continue
        per_repeat = paired_ratios(times[REFERENCE], times[impl])
        note = f"auto -> {auto_resolves_to}" if impl == "auto" else ""
        rows.append(
            ctx.row(
                SUITE,
                f"{name}/{impl}_speedup",
                median(per_repeat),
                "x",
                reference=ref_metric,
                reference_value=1.0,
                higher_is_better=True,
                config=config,
                note=note,
                samples=per_repeat,
            )
        )
    del layer, x, grad_out
    gc.collect()
    return rows


def cases(ctx: BenchContext) -> list[Case]:
    """On CUDA the model-sized cases only (the dispatch cases are too small to say anything on a
    GPU); on CPU the CPU side-by-side with the peer (bench/moe_sizes.py), then the dispatch cases in
    fp32 and, where the CPU has native bf16, bf16."""
    if ctx.device.type == "cuda":
        return sized_cases(ctx)
    shapes = QUICK_SHAPES if ctx.quick else FULL_SHAPES
    token_counts = QUICK_TOKENS if ctx.quick else FULL_TOKENS
    dtypes = ctx.precisions(SUITE, tuple(DTYPES))
    dispatch = [
        Case(SUITE, case_name(shape, tokens, d), partial(bench_case, ctx, shape, tokens, d), (d,))
        for shape in shapes
        for tokens in token_counts
        for d in dtypes
    ]
    return sized_cases(ctx) + dispatch


def format_table(rows: list[Row]) -> str:
    """Cases down, implementations across: median ms and the speedup over reference_loop."""
    by_metric = {r.metric: r for r in rows if r.suite == SUITE}
    cases: list[str] = []
    for metric in by_metric:
        case = metric.split("/")[1]
        if case not in cases:
            cases.append(case)
    header = ["case"] + [f"{impl} ms (x ref)" for impl in IMPLS]
    lines = [header]
    for case in cases:
        cells = [case]
        for impl in IMPLS:
            ms = by_metric.get(f"{SUITE}/{case}/{impl}_ms")
            speedup = by_metric.get(f"{SUITE}/{case}/{impl}_speedup")
            if ms is None:
                cells.append("n/a")
            else:
                cells.append(f"{ms.value:.1f} ({speedup.value if speedup else 1.0:.2f}x)")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    from moe_swarm.bench.results import write_results_json
    from moe_swarm.bench.runner import add_run_arguments, execute_cli, print_problems

    parser = argparse.ArgumentParser(
        prog="python -m moe_swarm.bench.moe_layer",
        description="MoE layer forward+backward per dispatch implementation vs reference_loop and dense.",
    )
    add_run_arguments(
        parser,
        quick="tiny shapes, 2 repeats",
        repeats="timed repeats per case (default 7, quick 2)",
        device="cpu or cuda",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the rows to this results.json path"
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    report = execute_cli({SUITE: cases}, args, "moe_swarm.bench.moe_layer", argv)
    cpu = report.meta["cpu"]
    print(f"moe_layer fwd+bwd, median of repeats, {report.meta['threads']} thread(s), "
          f"{report.meta['device_name']}, CPU capability {cpu['capability']}")  # fmt: skip
    print("cell = median ms (speedup over reference_loop; > 1 is faster)")
    print(format_table(report.rows))
    print(format_sized_table(report.rows))
    code = print_problems(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_results_json(args.json, report.rows, report.meta, report.problems)
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
