"""Suite ``parallel``: DDP vs FSDP2 vs expert parallelism (EP) on the same MoE LM, at 2 and 4 processes.

Each world size is one group of worker processes (gloo on CPU, NCCL on GPUs; one device per rank)
that trains the same model three ways, interleaved repeat by repeat (DDP, FSDP2, EP; then the
reverse order), so all three see the same machine load:
- ``ddp``: torch ``DistributedDataParallel``, every rank holds every weight;
- ``fsdp2``: :func:`moe_swarm.scale.parallel.parallelize` with ``expert_parallel_size=1``;
- ``ep``: ``parallelize`` with ``expert_parallel_size = world`` (each rank holds E / world experts,
  FSDP2 for the rest).

Reported per layout: tokens/s (global batch tokens / median step time), step time, the training
state resident per rank (parameters + gradients + AdamW moments, local shards, measured from the
tensors) with its expert part, and on CUDA the peak allocated memory. For EP also the all-to-all
share of the step: the time gloo/NCCL spent in all_to_all (profiler events of one extra, profiled
step) over that step's wall time. Ratios are against DDP at the same world size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from moe_swarm.bench.context import BenchContext, Case, SuiteUnavailable
from moe_swarm.bench.model_shape import ModelShape
from moe_swarm.bench.results import Row
from moe_swarm.scale.cluster import clean_env

SUITE = "parallel"
LAYOUTS = ("ddp", "fsdp2", "ep")


@dataclass(frozen=True)
class Setup(ModelShape):
    batch_per_rank: int
    seq_len: int
    steps: int  # timed steps per repeat (after one warm-up step)

    @property
    def case(self) -> str:
        return f"{self.shape_name}_b{self.batch_per_rank}t{self.seq_len}"


FULL = Setup(128, 4, 4, 256, 8, 2, batch_per_rank=4, seq_len=128, steps=4)
QUICK = Setup(64, 2, 2, 64, 8, 2, batch_per_rank=2, seq_len=32, steps=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cases(ctx: BenchContext) -> list[Case]:
    """One case per world size (2 and 4 processes), each timing the three layouts side by side."""
    setup = QUICK if ctx.quick else FULL
    repeats = ctx.repeats_or(full=3, quick=1)
    worlds = (2, 4)
    if ctx.device.type == "cuda" and torch.cuda.device_count() < max(worlds):
        raise SuiteUnavailable(f"needs {max(worlds)} GPUs (one per rank), found {torch.cuda.device_count()}")

    def world_case(world: int) -> list[Row]:
        return _rows(ctx, setup, world, repeats, _launch(world, setup, repeats, ctx))

    return [Case(SUITE, f"W{world}", functools.partial(world_case, world)) for world in worlds]


def _launch(world: int, setup: Setup, repeats: int, ctx: BenchContext) -> dict:
    """Start ``world`` worker processes; returns rank 0's measurements."""
    port = str(_free_port())
    with tempfile.TemporaryDirectory(prefix="moe-swarm-parallel-") as tmp:
        out = Path(tmp) / "result.json"
        procs = []
        for rank in range(world):
            env = clean_env(os.environ)  # no rank variables of an outer launcher leak into the workers
            env.update(
                RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port, OMP_NUM_THREADS=str(ctx.threads),
            )  # fmt: skip
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
            cmd = [
                sys.executable, "-m", "moe_swarm.bench.parallel_suite", "--setup", json.dumps(asdict(setup)),
                "--repeats", str(repeats), "--threads", str(ctx.threads), "--device", ctx.device.type,
                "--out", str(out),
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            )
        logs = []
        deadline = time.monotonic() + 1800
        for proc in procs:
            try:
                logs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"parallel suite: {world} workers did not finish in 30 min") from None
        bad = [(p.returncode, log) for p, log in zip(procs, logs) if p.returncode != 0]
        if bad:
            raise RuntimeError(
                f"parallel suite: a worker of {world} failed (exit {bad[0][0]}):\n{bad[0][1][-3000:]}"
            )
        return json.loads(out.read_text())


def _rows(ctx: BenchContext, setup: Setup, world: int, repeats: int, result: dict) -> list[Row]:
    case = f"W{world}_{setup.case}"
    config = {**asdict(setup), "world_size": world, "repeats": repeats, "backend": result["backend"]}
    ddp = result["ddp"]
    ddp_step = statistics.median(ddp["step_s"])
    tokens = world * setup.batch_per_rank * setup.seq_len
    rows = []
    for layout in LAYOUTS:
        r = result[layout]
        step = statistics.median(r["step_s"])
        kw = {"config": {**config, "layout": layout, "expert_parallel_size": r["ep_size"]}}
        rows.append(ctx.row(SUITE, f"{case}/{layout}_tokens_per_s", tokens / step, "tokens/s",
                            reference=f"{SUITE}/{case}/ddp_tokens_per_s", reference_value=tokens / ddp_step,
                            higher_is_better=True, samples=[tokens / s for s in r["step_s"]], **kw))  # fmt: skip
        rows.append(ctx.row(SUITE, f"{case}/{layout}_step_s", step, "s",
                            reference=f"{SUITE}/{case}/ddp_step_s", reference_value=ddp_step,
                            higher_is_better=False, samples=r["step_s"],
                            note="median over repeats x steps; ratio = step time / DDP's", **kw))  # fmt: skip
        rows.append(ctx.row(SUITE, f"{case}/{layout}_state_mib_per_rank", r["state_bytes"] / 2**20, "MiB",
                            reference=f"{SUITE}/{case}/ddp_state_mib_per_rank",
                            reference_value=ddp["state_bytes"] / 2**20, higher_is_better=False,
                            note="params + grads + AdamW moments resident on one rank (local shards)", **kw))  # fmt: skip
        rows.append(ctx.row(SUITE, f"{case}/{layout}_expert_state_mib_per_rank", r["expert_state_bytes"] / 2**20,
                            "MiB", reference=f"{SUITE}/{case}/ddp_expert_state_mib_per_rank",
                            reference_value=ddp["expert_state_bytes"] / 2**20, higher_is_better=False,
                            note="the expert part of the resident state; goal for EP: 1/ep_size of DDP's", **kw))  # fmt: skip
        if r.get("peak_bytes"):
            rows.append(ctx.row(SUITE, f"{case}/{layout}_peak_mib_per_rank", r["peak_bytes"] / 2**20, "MiB",
                                reference=f"{SUITE}/{case}/ddp_peak_mib_per_rank",
                                reference_value=ddp["peak_bytes"] / 2**20, higher_is_better=False, **kw))  # fmt: skip
    ep = result["ep"]
    if ep.get("a2a_s") and ep.get("profiled_step_s"):
        rows.append(ctx.row(SUITE, f"{case}/ep_all_to_all_s_per_step", ep["a2a_s"], "s",
                            reference=f"{SUITE}/{case}/ep_profiled_step_s", reference_value=ep["profiled_step_s"],
                            higher_is_better=False, config={**config, "layout": "ep"},
                            note="ratio = all-to-all share of the step (profiler: backend all_to_all time)"))  # fmt: skip
    return rows


# ---- worker (one rank) ---------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from moe_swarm.model import MoETransformer
    from moe_swarm.scale.parallel import ParallelConfig, clip_grad_norm_, parallelize

    setup = Setup(**json.loads(args.setup))
    torch.set_num_threads(args.threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    cfg = setup.model_config(setup.seq_len)
    gen = torch.Generator().manual_seed(1000 + rank)
    data = torch.randint(0, 256, (setup.batch_per_rank, setup.seq_len + 1), generator=gen).to(device)
    idx, tgt = data[:, :-1], data[:, 1:]

    def build(layout: str):
        torch.manual_seed(0)
        model = MoETransformer(cfg).to(device)
        ep = world if layout == "ep" else 1
        if layout == "ddp":
            wrapped = DistributedDataParallel(model, device_ids=[rank] if cuda else None)
        else:
            parallelize(model, None, ParallelConfig(expert_parallel_size=ep))
            wrapped = model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        return model, wrapped, opt, ep

    def step(model, wrapped, opt, layout) -> None:
        out = wrapped(idx, tgt)
        (out.loss + 1e-2 * out.load_balance_loss + 1e-3 * out.z_loss).backward()
        if layout == "ddp":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        else:
            clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep gradients resident: they count in the state below

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t

    built = {name: build(name) for name in LAYOUTS}
    res: dict = {"backend": dist.get_backend()}
    for name, (model, wrapped, opt, ep) in built.items():
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        step(model, wrapped, opt, name)  # warm-up; creates gradients and optimizer state
        res[name] = {"ep_size": ep, "step_s": [], **_state_bytes(model, opt)}
        if cuda:
            res[name]["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    for r in range(args.repeats):
        for name in LAYOUTS if r % 2 == 0 else tuple(reversed(LAYOUTS)):
            model, wrapped, opt, _ = built[name]
            one = functools.partial(step, model, wrapped, opt, name)
            res[name]["step_s"] += [timed(one) for _ in range(setup.steps)]
    # One profiled EP step for the all-to-all share (the profiler's own overhead stays out of step_s).
    from torch.profiler import ProfilerActivity, profile

    model, wrapped, opt, _ = built["ep"]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res["ep"]["profiled_step_s"] = timed(lambda: step(model, wrapped, opt, "ep"))
    a2a_us = sum(
        e.cpu_time_total for e in prof.key_averages() if e.key in ("gloo:all_to_all", "nccl:all_to_all")
    )
    res["ep"]["a2a_s"] = a2a_us / 1e6
    if rank == 0:
        Path(args.out).write_text(json.dumps(res))
    dist.barrier()  # nobody tears the group down while a peer still uses it
    dist.destroy_process_group()


def _state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer state held by this rank (local shards of DTensors)."""
    from torch.distributed.tensor import DTensor

    def local(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    total = expert = 0
    for name, p in model.named_parameters():
        n = local(p) + (local(p.grad) if p.grad is not None else 0)
        n += sum(
            local(v) for v in opt.state.get(p, {}).values() if isinstance(v, torch.Tensor) and v.dim() > 0
        )
        total += n
        if ".experts." in name:
            expert += n
    return {"state_bytes": total, "expert_state_bytes": expert}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one worker of the parallel benchmark suite (started by it)")
    parser.add_argument("--setup", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True)
    _worker(parser.parse_args(argv))


if __name__ == "__main__":
    main()
