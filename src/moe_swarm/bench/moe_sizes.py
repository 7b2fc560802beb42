"""Model-sized MoE layer cases: ours vs the dense-GEMM floor vs Hugging Face's Mixtral block.

One case is one layer shape at T tokens, forward+backward (router included), every candidate on
the same weights and tokens, timed interleaved:

- ``ours_<precision>``: our ``MoELayer`` (auto dispatch). ``bf16`` = bf16 parameters;
  ``bf16_mixed`` = fp32 parameters under ``torch.autocast(bf16)``, what Lightning's ``bf16-mixed``
  runs; ``fp32`` = fp32 parameters (the CPU comparison).
- ``floor_<dtype>``: a dense SwiGLU over T*k rows with the same d_model/d_ff, i.e. the same GEMM
  FLOPs with no routing or dispatch: what the layer could cost at best.
- ``hf_<backend>_<dtype>``: transformers' ``MixtralSparseMoeBlock`` (experts backend ``grouped_mm``,
  ``batched_mm`` or ``eager``) built on our weights, when transformers is installed
  (``pip install -e ".[peers]"``) and the backend's working set fits in memory. Its output is
  checked against ours first; a disagreeing peer is reported as failed, not timed.

Rows: ``<case>/<candidate>_ms`` and ``_tflops`` (18 * T * k * d * d_ff FLOPs per fwd+bwd), plus
the ratios the goals are stated in: ``mixed_over_bf16``, ``ours_over_floor``, ``hf_best_over_ours``.
"""

from __future__ import annotations

import gc
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F

from moe_swarm.bench import peers
from moe_swarm.bench.context import BenchContext, Case
from moe_swarm.bench.model_shape import LayerShape
from moe_swarm.bench.results import Row
from moe_swarm.bench.timing import median, paired_ratios, time_interleaved
from moe_swarm.model import MoELayer

SUITE = "moe_layer"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "bf16_mixed": torch.float32}
# Output agreement of a peer with our layer, relative to our largest output.
PEER_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class SizedShape(LayerShape):
    """A layer shape with the name of the model it comes from (the first part of its case name)."""

    name: str = field(kw_only=True)


# The three model shapes, for --device cuda.
GPU_SHAPES = (
    SizedShape(8, 2, 4096, 14336, name="mixtral_8x7b"),
    SizedShape(64, 8, 2048, 1024, name="olmoe_1b_7b"),
    SizedShape(128, 8, 2048, 768, name="qwen3_30b_a3b"),
)
GPU_TOKENS = 8192
# The CPU side-by-side with the peer (1 thread, fp32, T=2048).
CPU_SHAPES = (SizedShape(64, 8, 256, 256, name="fine_grained"), SizedShape(8, 2, 256, 1024, name="coarse"))
CPU_TOKENS = 2048
QUICK_CPU_SHAPES = (SizedShape(8, 2, 64, 128, name="tiny"),)
QUICK_CPU_TOKENS = 256


def case_name(shape: SizedShape, tokens: int) -> str:
    return f"{shape.name}_E{shape.num_experts}k{shape.top_k}_d{shape.d_model}_ff{shape.d_ff}_t{tokens}"


def layer_flops(shape: SizedShape, tokens: int) -> float:
    """GEMM FLOPs of one forward+backward: 3 GEMMs of 2*R*d*ff forward, twice that backward, R = T*k."""
    return 18.0 * tokens * shape.top_k * shape.d_model * shape.d_ff


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def peer_fits(backend: str, shape: SizedShape, tokens: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a peer backend's largest working set fits in half the free memory.

    ``batched_mm`` gathers every assignment's expert weights: T*k copies of (3 * d * d_ff); the
    others hold activations of the order of T*k*d_ff.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    rows = tokens * shape.top_k
    if backend == "batched_mm":
        need = 2 * rows * 3 * shape.d_model * shape.d_ff * elem
    else:
        need = 8 * rows * (shape.d_model + 2 * shape.d_ff) * elem
    return need < _free_bytes(device) // 2


def _swiglu_floor(rows: int, shape: SizedShape, device: torch.device, dtype: torch.dtype):
    w1 = torch.randn(shape.d_model, shape.d_ff, device=device, dtype=dtype, requires_grad=True)
    w3 = torch.randn(shape.d_model, shape.d_ff, device=device, dtype=dtype, requires_grad=True)
    w2 = torch.randn(shape.d_ff, shape.d_model, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(rows, shape.d_model, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(rows, shape.d_model, device=device, dtype=dtype)

    def step() -> None:
        for t in (w1, w3, w2, x):
            t.grad = None
        (F.silu(x @ w1) * (x @ w3) @ w2).backward(grad)

    return step


def _layer_step(module, x: torch.Tensor, grad: torch.Tensor, autocast: bool, ours: bool):
    params = list(module.parameters())
    ctx = torch.autocast(x.device.type, dtype=torch.bfloat16) if autocast else nullcontext()

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        with ctx:
            y = module(x)
            y = y[0] if ours else y
        y.backward(grad)

    return step


def sized_case(
    ctx: BenchContext, shape: SizedShape, tokens: int, precisions: tuple[str, ...], with_peers: bool = True
) -> list[Row]:
    """Time one shape: ours per precision, the dense floor and the HF peers; return its rows."""
    dev = ctx.device
    name = case_name(shape, tokens)
    torch.manual_seed(ctx.seed)
    with torch.device(dev):  # model-sized weights: initialise on the device, not on the host
        base = shape.make_layer()
    layers = {p: (base if PRECISIONS[p] == torch.float32 else _copy(base, PRECISIONS[p])) for p in precisions}
    compute = {p: torch.bfloat16 if p.startswith("bf16") else torch.float32 for p in precisions}
    x32 = torch.randn(1, tokens, shape.d_model, device=dev)
    g32 = torch.randn(1, tokens, shape.d_model, device=dev)
    inputs = {p: (x32.to(PRECISIONS[p]).requires_grad_(True), g32.to(PRECISIONS[p])) for p in precisions}

    candidates = {}
    for p in precisions:
        x, g = inputs[p]
        candidates[f"ours_{p}"] = _layer_step(layers[p], x, g, autocast=p == "bf16_mixed", ours=True)
    floor_dtypes = sorted({compute[p] for p in precisions}, key=str)
    for dt in floor_dtypes:
        candidates[f"floor_{_dname(dt)}"] = _swiglu_floor(tokens * shape.top_k, shape, dev, dt)

    hf_names: list[str] = []
    if with_peers and peers.transformers_available():
        for p in precisions:
            if p == "bf16_mixed":
                continue  # the peer runs in its parameter dtype; bf16 params are its fast case
            x, g = inputs[p]
            for backend in peers.HF_BACKENDS:
                cand = f"hf_{backend}_{p}"
                if not peer_fits(backend, shape, tokens, PRECISIONS[p], dev):
                    ctx.report_problem(
                        SUITE, f"{name}/{cand}", "working set does not fit in half the free memory"
                    )
                    continue
                block = peers.hf_mixtral_block(layers[p], backend)
                why = peer_disagreement(layers[p], block, x)
                if why is not None:
                    ctx.report_problem(SUITE, f"{name}/{cand}", why, "failed")
                    continue
                candidates[cand] = _layer_step(block, x, g, autocast=False, ours=False)
                hf_names.append(cand)

    times = time_interleaved(candidates, repeats=ctx.repeats_or(full=7, quick=3), warmup=1, device=dev)
    flops = layer_flops(shape, tokens)
    config = {
        **shape.config(),
        "tokens": tokens,
        "pass": "forward+backward",
        "flops": flops,
    }
    if hf_names:
        config["transformers"] = peers.transformers_version()
    first = f"ours_{precisions[0]}"
    ref_ms = f"{SUITE}/{name}/{first}_ms"
    rows = []
    for cand, ts in times.items():
        ms = median(ts) * 1e3
        rows.append(ctx.row(SUITE, f"{name}/{cand}_ms", ms, "ms", reference=ref_ms,
                            reference_value=median(times[first]) * 1e3, higher_is_better=False, config=config,
                            samples=[t * 1e3 for t in ts]))  # fmt: skip
        rows.append(ctx.row(SUITE, f"{name}/{cand}_tflops", flops / median(ts) / 1e12, "TFLOP/s",
                            reference=f"{SUITE}/{name}/{first}_tflops", reference_value=flops / median(times[first]) / 1e12,
                            higher_is_better=True, config=config))  # fmt: skip

    def ratio_row(metric: str, num: str, den: str, note: str, higher: bool) -> Row:
        per = paired_ratios(times[num], times[den])
        return ctx.row(SUITE, f"{name}/{metric}", median(per), "x", reference=f"{SUITE}/{name}/{den}_ms",
                       reference_value=1.0, higher_is_better=higher, config=config, note=note, samples=per)  # fmt: skip

    if "bf16_mixed" in precisions and "bf16" in precisions:
        rows.append(ratio_row("mixed_over_bf16", "ours_bf16_mixed", "ours_bf16",
                              "bf16-mixed layer time / pure-bf16 layer time (goal <= 1.1)", False))  # fmt: skip
    for p in precisions:
        floor = f"floor_{_dname(compute[p])}"
        rows.append(ratio_row(f"ours_{p}_over_floor", f"ours_{p}", floor,
                              "layer time / dense-GEMM floor time at the same FLOPs", False))  # fmt: skip
        mine = [h for h in hf_names if h.endswith(f"_{p}")]
        if mine:
            best = min(mine, key=lambda h: median(times[h]))
            rows.append(ratio_row(f"hf_best_over_ours_{p}", best, f"ours_{p}",
                                  f"fastest HF backend ({best}) time / our time (goal >= 1.2)", True))  # fmt: skip
    del layers, base, candidates
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def _dname(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def _copy(layer: MoELayer, dtype: torch.dtype) -> MoELayer:
    with torch.device(layer.router.weight.device):
        out = MoELayer(layer.experts.d_model, layer.cfg)
    out.load_state_dict(layer.state_dict())
    return out.to(dtype)


# A peer must route at least this fraction of tokens to the same experts as we do: our router
# computes its logits in fp32, HF's in the parameter dtype, so near-ties can flip in bf16.
MIN_SAME_ROUTING = 0.95


@torch.no_grad()
def peer_disagreement(ours: MoELayer, block, x: torch.Tensor) -> str | None:
    """Why the peer does not compute our function (None if it does).

    Compares outputs on the tokens both route to the same experts, and requires that to be nearly
    every token.
    """
    flat = x.reshape(-1, x.shape[-1])
    mine = ours.router(flat, compute_aux=False).indices.sort(-1).values
    theirs = block.gate(flat)[2].sort(-1).values
    same = (mine == theirs).all(-1)
    share = float(same.float().mean())
    if share < MIN_SAME_ROUTING:
        return f"routes only {share:.1%} of tokens like ours (< {MIN_SAME_ROUTING:.0%})"
    a = ours(x)[0].reshape(flat.shape)[same].float()
    b = block(x).reshape(flat.shape)[same].float()
    err = float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))
    if not err <= PEER_TOLERANCE[x.dtype]:
        return (
            f"output differs from ours by {err:.2e} (relative) on the {share:.1%} identically routed tokens"
        )
    return None


def sized_cases(
    ctx: BenchContext,
    shapes: tuple[SizedShape, ...] | None = None,
    tokens: int | None = None,
    precisions: tuple[str, ...] | None = None,
) -> list[Case]:
    """One case per shape: the three model shapes on CUDA, the CPU peer shapes on CPU (or the given
    shapes, tokens and precisions, run as asked)."""
    cuda = ctx.device.type == "cuda"
    if shapes is None:  # the device's own cases (tokens and precisions are for given shapes only)
        if cuda:
            shapes, tokens = GPU_SHAPES, GPU_TOKENS
        elif ctx.quick:
            shapes, tokens = QUICK_CPU_SHAPES, QUICK_CPU_TOKENS
        else:
            shapes, tokens = CPU_SHAPES, CPU_TOKENS
        precisions = ctx.precisions(SUITE, ("bf16", "bf16_mixed") if cuda else ("fp32",))
    precisions = precisions or (("bf16", "bf16_mixed") if cuda else ("fp32",))
    t = tokens or CPU_TOKENS
    return [
        Case(SUITE, case_name(shape, t), partial(sized_case, ctx, shape, t, precisions), precisions)
        for shape in shapes
    ]


def format_sized_table(rows: list[Row]) -> str:
    """Model-sized cases: one line per (case, candidate) with ms and TFLOP/s, then the ratios."""
    lines = []
    for r in rows:
        if r.suite != SUITE or r.metric.count("/") != 2 or "_ff" not in r.metric.split("/")[1]:
            continue
        case, name = r.metric.split("/")[1:]
        if name.endswith("_ms"):
            tf = next((x.value for x in rows if x.metric == r.metric[:-3] + "_tflops"), float("nan"))
            lines.append(f"{case}  {name[:-3]:<24} {r.value:9.2f} ms  {tf:7.3f} TFLOP/s")
        elif r.unit == "x" and not name.endswith("_speedup"):
            lines.append(f"{case}  {name:<24} {r.value:9.3f} x   ({r.note})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m moe_swarm.bench.moe_sizes``: only the model-sized cases, as a table."""
    import argparse
    import sys

    from moe_swarm.bench.runner import add_run_arguments, execute_cli, print_problems

    parser = argparse.ArgumentParser(
        prog="python -m moe_swarm.bench.moe_sizes", description=__doc__.split("\n")[0]
    )
    add_run_arguments(
        parser,
        quick="a tiny CPU shape / fewer repeats",
        repeats="timed repeats (default 7, quick 3)",
        device="cpu (peer shapes, fp32) or cuda (model shapes, bf16)",
    )
    parser.add_argument("--shape", action="append", default=None, metavar="E,K,D,FF",
                        help="a custom shape (repeatable) instead of the device's default shapes")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=None, help="tokens per case with --shape")
    parser.add_argument("--precisions", default=None, help="with --shape: comma list of fp32,bf16,bf16_mixed")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    suite = sized_cases
    if args.shape:
        shapes = tuple(
            SizedShape(*(int(v) for v in spec.split(",")), name=f"custom{i}")
            for i, spec in enumerate(args.shape)
        )
        precisions = tuple(args.precisions.split(",")) if args.precisions else None
        bad = [p for p in precisions or () if p not in PRECISIONS]
        if bad:
            parser.error(f"unknown precision(s) {bad}; choose from {list(PRECISIONS)}")

        def suite(ctx: BenchContext) -> list[Case]:
            return sized_cases(ctx, shapes, args.tokens, precisions)

    report = execute_cli({SUITE: suite}, args, "moe_swarm.bench.moe_sizes", argv)
    print(f"{report.meta['device_name']}, CPU capability {report.meta['cpu']['capability']}, "
          f"{report.meta['threads']} thread(s), torch {torch.__version__}")  # fmt: skip
    print(format_sized_table(report.rows))
    return print_problems(report)


if __name__ == "__main__":
    raise SystemExit(main())
