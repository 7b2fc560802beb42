"""Suite ``generate``: decoding throughput of ``MoETransformer.generate``.

Two side-by-side comparisons on one randomly initialised MoE model:
- KV cache vs full recompute (``use_cache=False``) for one sequence, greedy, at each length, with
  the decode step run eagerly, as a static-shape step, compiled (``decode="compiled"``) and, on
  CUDA, compiled into CUDA graphs (``decode="cudagraphs"``); every variant's tokens are checked
  against recompute;
- N swarm agents (own temperature, seed and routing noise per row) in ONE batched generate vs
  the same N agents run one after another, both against one agent alone (tokens/s for 1 and N).
On CUDA the model is GPU-sized (the ``moe_large`` shape) in bf16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

import torch

from moe_swarm.bench.context import BenchContext, Case
from moe_swarm.bench.model_shape import ModelShape
from moe_swarm.bench.results import Row
from moe_swarm.bench.timing import median, paired_ratios, time_interleaved
from moe_swarm.model import MoETransformer, RoutingControl

SUITE = "generate"


@dataclass(frozen=True)
class GenerateSetup(ModelShape):
    prompt_len: int
    new_tokens: tuple[int, ...]  # lengths for KV cache vs recompute
    agents: int
    agent_new_tokens: int


FULL = GenerateSetup(
    128, 4, 4, 256, 8, 2, prompt_len=16, new_tokens=(64, 256), agents=16, agent_new_tokens=64
)
QUICK = GenerateSetup(64, 2, 2, 64, 4, 2, prompt_len=8, new_tokens=(16, 32), agents=8, agent_new_tokens=16)
# conf/model/moe_large.yaml's shape (gpu_h100/gpu_a100 experiments), for --device cuda.
GPU = GenerateSetup(
    1024, 12, 16, 1024, 16, 2, prompt_len=64, new_tokens=(256,), agents=16, agent_new_tokens=128
)
GPU_QUICK = GenerateSetup(
    1024, 12, 16, 1024, 16, 2, prompt_len=64, new_tokens=(256,), agents=16, agent_new_tokens=64
)


def decode_modes(ctx: BenchContext) -> tuple[str, ...]:
    """The KV-cached decode variants timed here; compiling costs ~30 s on a busy 2-core CPU."""
    if ctx.device.type == "cuda":
        return ("eager", "static", "compiled", "cudagraphs")
    return ("eager", "static") if ctx.quick else ("eager", "static", "compiled")


def build_model(ctx: BenchContext, setup: GenerateSetup) -> tuple[MoETransformer, torch.dtype]:
    longest = max(*setup.new_tokens, setup.agent_new_tokens)
    cfg = setup.model_config(max_seq_len=setup.prompt_len + longest)
    torch.manual_seed(ctx.seed)
    # bf16 on CUDA (what a GPU would serve), fp32 on CPU.
    dtype = torch.bfloat16 if ctx.device.type == "cuda" else torch.float32
    return MoETransformer(cfg).to(ctx.device, dtype).eval(), dtype


def _base_config(setup: GenerateSetup, dtype: torch.dtype) -> dict:
    d = asdict(setup)
    d.pop("new_tokens")
    d.pop("agents")
    d.pop("agent_new_tokens")
    d["dtype"] = str(dtype).removeprefix("torch.")
    return d


def dispatch_note(model: MoETransformer) -> str:
    """Which expert dispatch ``auto`` used in the timed calls (it can depend on the process's history)."""
    pool = model.moe_layers[0].experts
    probe = next(model.parameters()).new_zeros(1, model.cfg.d_model)
    with torch.no_grad():
        return f"experts dispatch: {pool.resolve_dispatch(probe, model.cfg.moe.router.top_k)}"


def _greedy_decoder(
    model: MoETransformer, prompt, n: int, use_cache: bool, outputs: dict, name: str, decode: str = "eager"
):
    """A call decoding ``n`` greedy tokens; it keeps its last tokens in ``outputs[name]``."""

    def call() -> None:
        outputs[name] = model.generate(prompt, n, temperature=0.0, use_cache=use_cache, decode=decode).tokens

    return call


def _prompt(ctx: BenchContext, setup: GenerateSetup) -> torch.Tensor:
    gen = torch.Generator().manual_seed(ctx.seed)
    return torch.randint(0, 256, (1, setup.prompt_len), generator=gen).to(ctx.device)


def bench_kv_cache(
    ctx: BenchContext, model: MoETransformer, dtype: torch.dtype, setup: GenerateSetup, n: int
) -> list[Row]:
    """KV cache (each decode mode) vs recompute for one sequence decoding ``n`` greedy tokens."""
    rows: list[Row] = []
    prompt = _prompt(ctx, setup)
    outputs: dict[str, torch.Tensor] = {}
    candidates = {"recompute": _greedy_decoder(model, prompt, n, False, outputs, "recompute")}
    for mode in decode_modes(ctx):
        name = "kv_cache" if mode == "eager" else f"kv_{mode}"
        candidates[name] = _greedy_decoder(model, prompt, n, True, outputs, name, decode=mode)
    try:
        times = time_interleaved(
            candidates, repeats=ctx.repeats_or(full=3, quick=2), warmup=1, device=ctx.device
        )
    except Exception as exc:  # a compile backend that does not work here: keep the eager rows
        broken = [k for k in candidates if k.startswith("kv_") and k not in ("kv_cache", "kv_static")]
        ctx.report_problem(SUITE, f"new{n}/{','.join(broken)}", f"{type(exc).__name__}: {exc}", "failed")
        for k in broken:
            candidates.pop(k)
        times = time_interleaved(
            candidates, repeats=ctx.repeats_or(full=3, quick=2), warmup=1, device=ctx.device
        )
    agree = {k: float((v == outputs["recompute"]).float().mean()) for k, v in outputs.items()}
    note = "greedy tokens equal to recompute: " + ", ".join(f"{k} {v:.0%}" for k, v in agree.items())
    note += f"; {dispatch_note(model)} at 1 row"
    config = {**_base_config(setup, dtype), "new_tokens": n, "batch": 1}
    case = f"new{n}"
    tok_s = {k: [n / t for t in v] for k, v in times.items()}
    ref_metric = f"{SUITE}/{case}/recompute_tok_s"
    ref = median(tok_s["recompute"])
    common = {"higher_is_better": True, "config": config, "note": note}
    rows.append(ctx.row(SUITE, f"{case}/recompute_tok_s", ref, "tok/s", reference=ref_metric,
                        reference_value=ref, samples=tok_s["recompute"], **common))  # fmt: skip
    for name in times:
        if name == "recompute":
            continue
        speedups = paired_ratios(times["recompute"], times[name])
        suffix = "" if name == "kv_cache" else name.removeprefix("kv")
        rows += [
            ctx.row(SUITE, f"{case}/{name}_tok_s", median(tok_s[name]), "tok/s", reference=ref_metric,
                    reference_value=ref, samples=tok_s[name], **common),
            ctx.row(SUITE, f"{case}/kv{suffix}_speedup", median(speedups), "x", reference=ref_metric,
                    reference_value=1.0, samples=speedups, **common),
        ]  # fmt: skip
    return rows


def bench_agents(
    ctx: BenchContext, model: MoETransformer, dtype: torch.dtype, setup: GenerateSetup
) -> list[Row]:
    """N agents in one batched generate vs one after another vs one alone."""
    n_agents, n = setup.agents, setup.agent_new_tokens
    dev = ctx.device
    prompt = _prompt(ctx, setup)
    temperature = torch.full((n_agents,), 0.8, device=dev)
    seeds = torch.arange(n_agents, device=dev) + 1000 * ctx.seed
    routing = RoutingControl(noise_scale=torch.full((n_agents,), 0.5, device=dev), seed=seeds.clone())

    def agent_call(i: int, j: int):
        """Agents i..j-1 of the swarm in one generate call."""
        part = RoutingControl(noise_scale=routing.noise_scale[i:j], seed=routing.seed[i:j])
        return lambda: model.generate(
            prompt.expand(j - i, -1), n, temperature=temperature[i:j], seed=seeds[i:j], routing=part
        )

    batched = agent_call(0, n_agents)
    one_by_one = [agent_call(i, i + 1) for i in range(n_agents)]

    def sequential() -> None:
        for call in one_by_one:
            call()

    times = time_interleaved(
        {"single": one_by_one[0], "batched": batched, "sequential": sequential},
        repeats=ctx.repeats_or(full=5, quick=2),
        warmup=1,
        device=dev,
    )
    ms = {k: [t * 1e3 for t in v] for k, v in times.items()}
    med = {k: median(v) for k, v in ms.items()}
    case = f"agents{n_agents}_new{n}"
    config = {**_base_config(setup, dtype), "agents": n_agents, "new_tokens": n, "temperature": 0.8,
              "routing_noise": 0.5}  # fmt: skip
    single_metric = f"{SUITE}/{case}/single_ms"
    seq_tok_metric = f"{SUITE}/{case}/sequential_tok_s"
    total = n_agents * n
    seq_tok_s, batched_tok_s = total / (med["sequential"] / 1e3), total / (med["batched"] / 1e3)
    base = {"config": config}
    dispatch = dispatch_note(model)
    over_single = paired_ratios(times["batched"], times["single"])
    speedup = paired_ratios(times["sequential"], times["batched"])
    return [
        ctx.row(SUITE, f"{case}/single_ms", med["single"], "ms", reference=single_metric,
                reference_value=med["single"], higher_is_better=False, samples=ms["single"], note=dispatch, **base),
        ctx.row(SUITE, f"{case}/batched_ms", med["batched"], "ms", reference=single_metric,
                reference_value=med["single"], higher_is_better=False, samples=ms["batched"], **base),
        ctx.row(SUITE, f"{case}/sequential_ms", med["sequential"], "ms", reference=single_metric,
                reference_value=med["single"], higher_is_better=False, samples=ms["sequential"], **base),
        ctx.row(SUITE, f"{case}/batched_over_single", median(over_single), "x", samples=over_single,
                reference=single_metric, reference_value=1.0, higher_is_better=False, **base,
                note=f"wall time of {n_agents} agents in one batch / one agent alone"),
        ctx.row(SUITE, f"{case}/batched_speedup", median(speedup), "x", samples=speedup,
                reference=f"{SUITE}/{case}/sequential_ms", reference_value=1.0, higher_is_better=True, **base,
                note=f"{n_agents} agents one after another / the same agents in one batch"),
        ctx.row(SUITE, f"{case}/sequential_tok_s", seq_tok_s, "tok/s", reference=seq_tok_metric,
                reference_value=seq_tok_s, higher_is_better=True, **base),
        ctx.row(SUITE, f"{case}/batched_tok_s", batched_tok_s, "tok/s", reference=seq_tok_metric,
                reference_value=seq_tok_s, higher_is_better=True, **base),
        ctx.row(SUITE, f"{case}/single_tok_s", n / (med["single"] / 1e3), "tok/s", reference=seq_tok_metric,
                reference_value=seq_tok_s, higher_is_better=True, note="one agent alone", **base),
    ]  # fmt: skip


def cases(ctx: BenchContext) -> list[Case]:
    """One case per KV-cache length, then the agents case; the model is built once, by the first."""
    cuda = ctx.device.type == "cuda"
    if cuda:
        setup = GPU_QUICK if ctx.quick else GPU
    else:
        setup = QUICK if ctx.quick else FULL
    model = cache(lambda: build_model(ctx, setup))
    precisions = ("bf16",) if cuda else ("fp32",)
    kv = [
        Case(SUITE, f"new{n}", lambda n=n: bench_kv_cache(ctx, *model(), setup, n), precisions)
        for n in setup.new_tokens
    ]
    agents = f"agents{setup.agents}_new{setup.agent_new_tokens}"
    return [*kv, Case(SUITE, agents, lambda: bench_agents(ctx, *model(), setup), precisions)]
