"""RunInference throughput and latency at 1, 8 and 32 concurrent clients, with and without dynamic batching.

    python -m moe_swarm.bench.loadtest                       # a random-weight moe_small-sized model
    python -m moe_swarm.bench.loadtest --checkpoint runs/<run_id>/checkpoints/last.ckpt --requests 256

Two real servers (``moe-swarm-serve`` processes on 127.0.0.1, batching on / off, same checkpoint, same
torch threads and one solve worker each) run side by side; for every concurrency level the two are measured
one after the other, so machine noise hits both. Each client sends its requests one after another; the
table reports requests per second, p50/p99 latency and the mean number of requests per batched solve.
"""

from __future__ import annotations

import argparse
import math
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from moe_swarm.bench.machine import CpuInfo
from moe_swarm.serve.observability import percentile
from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc
from moe_swarm.serve.settings import READY_PREFIX

MODES = ("unbatched", "batched")
SMALL_MODEL = {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_ff": 256, "num_experts": 8, "top_k": 2}
QUICK_MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 64, "num_experts": 4, "top_k": 2}


@dataclass
class Level:
    mode: str
    clients: int
    requests: int
    seconds: float
    latencies: list[float]
    batch_sizes: list[int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def p(self, q: float) -> float:
        return percentile(sorted(self.latencies), q) * 1e3

    @property
    def mean_batch(self) -> float:
        return sum(self.batch_sizes) / len(self.batch_sizes)


class ServerProcess:
    """``moe-swarm-serve`` in a child process; ``address`` once it printed its ready line."""

    def __init__(self, overrides: list[str], timeout: float = 120.0) -> None:
        argv = [sys.executable, "-c", "from moe_swarm.serve.__main__ import main; main()", *overrides]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise TimeoutError(f"the server did not start within {timeout} s") from None
        if not line.startswith(READY_PREFIX):
            self.stop()
            raise RuntimeError(f"unexpected first line from the server: {line!r}")
        self.address = line[len(READY_PREFIX) :].strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def random_checkpoint(path: Path, dims: dict[str, int], seed: int = 0) -> Path:
    """A randomly initialised model (``dims``: flat model keys) in the training checkpoint layout."""
    import torch

    from moe_swarm.model import MoETransformer, TransformerConfig
    from moe_swarm.store.checkpoint import save_model_checkpoint

    torch.manual_seed(seed)
    model = MoETransformer(TransformerConfig.from_dict({**dims, "max_seq_len": 64}))
    save_model_checkpoint(path, model, {"global_step": 0})
    return path


def make_request(i: int, args: Any) -> mcp_pb2.InferRequest:
    a, b = 100 + (i * 37) % 900, 10 + (i * 11) % 90  # equal-length prompts: one length bucket
    return mcp_pb2.InferRequest(prompt=f"{a}*{b}=", max_new_tokens=args.max_new_tokens, agents=args.agents,
                                rounds=args.rounds, temperature=0.8, seed=i)  # fmt: skip


def measure(address: str, mode: str, clients: int, total: int, args: Any) -> Level:
    per_client = max(1, math.ceil(total / clients))
    latencies: list[float] = []
    batches: list[int] = []
    lock = threading.Lock()
    with grpc.insecure_channel(address) as channel:
        stub = mcp_pb2_grpc.MCPControlStub(channel)

        def client(c: int) -> None:
            for k in range(per_client):
                request = make_request(c * per_client + k, args)
                t0 = time.perf_counter()
                resp = stub.RunInference(request, timeout=600)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    batches.append(resp.batch_size)

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            for f in [pool.submit(client, c) for c in range(clients)]:
                f.result()
        seconds = time.perf_counter() - start
    return Level(mode, clients, per_client * clients, seconds, latencies, batches)


def run(args: Any) -> list[Level]:
    """Start both servers, warm them up, measure every concurrency level for both modes."""
    work = Path(tempfile.mkdtemp(prefix="moe-swarm-loadtest-"))
    if args.checkpoint:
        ckpt = Path(args.checkpoint).resolve()
    else:
        ckpt = random_checkpoint(work / "models" / "model.ckpt", QUICK_MODEL if args.quick else SMALL_MODEL)
    servers: dict[str, ServerProcess] = {}
    try:
        for mode in MODES:
            servers[mode] = ServerProcess([
                "serve.port=0", "serve.auth.enabled=false", "serve.log_rpcs=false", f"serve.state_dir={work / mode}",
                f"serve.training.runs_dir={work / mode}/runs",
                f"serve.inference.checkpoint_roots=[{ckpt.parent}]", f"serve.inference.default_model={ckpt}",
                f"serve.inference.threads={args.threads}", "serve.inference.workers=1",
                f"serve.inference.batching.enabled={'true' if mode == 'batched' else 'false'}",
                f"serve.inference.batching.max_batch_size={args.max_batch}",
                f"serve.inference.batching.max_delay_ms={args.max_delay_ms}",
                f"serve.max_concurrent_rpcs={max(256, 2 * max(args.clients))}",
            ])  # fmt: skip
        for mode in MODES:
            measure(servers[mode].address, mode, 2, 4, args)  # load the model, build the solver
        levels = []
        for clients in args.clients:
            for mode in MODES:
                level = measure(servers[mode].address, mode, clients, args.requests, args)
                levels.append(level)
                print(f"  {mode:>9} x{clients:<3} {level.rps:8.2f} req/s  p50 {level.p(50):8.1f} ms  "
                      f"p99 {level.p(99):8.1f} ms  mean batch {level.mean_batch:5.1f}", file=sys.stderr, flush=True)  # fmt: skip
        return levels
    finally:
        for s in servers.values():
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(levels: list[Level]) -> str:
    by = {(lv.mode, lv.clients): lv for lv in levels}
    clients = sorted({lv.clients for lv in levels})
    rows = [
        "| clients | requests | unbatched req/s | batched req/s | speedup | unbatched p50 / p99 ms "
        "| batched p50 / p99 ms | mean batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in clients:
        u, b = by[("unbatched", c)], by[("batched", c)]
        rows.append(
            f"| {c} | {b.requests} | {u.rps:.2f} | {b.rps:.2f} | {b.rps / u.rps:.2f}x | "
            f"{u.p(50):.0f} / {u.p(99):.0f} | {b.p(50):.0f} / {b.p(99):.0f} | {b.mean_batch:.1f} |"
        )
    return "\n".join(rows)


def run_suite(ctx: Any) -> list:
    """The ``serve`` benchmark suite (``moe-swarm-bench run --suites serve``): rows for moe_swarm.bench."""
    args = parse_args(["--quick"] if ctx.quick else [])
    args.threads = ctx.threads
    if ctx.repeats is not None:
        args.requests = max(args.requests, ctx.repeats * max(args.clients))
    levels = run(args)
    by = {(lv.mode, lv.clients): lv for lv in levels}
    config = {"agents": args.agents, "rounds": args.rounds, "max_new_tokens": args.max_new_tokens,
              "max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms, "workers": 1,
              "model": "checkpoint" if args.checkpoint else ("quick" if args.quick else "moe_small-sized random")}  # fmt: skip
    out = []
    for c in sorted({lv.clients for lv in levels}):
        u, b = by[("unbatched", c)], by[("batched", c)]
        ref_rps = f"serve/c{c}/unbatched_rps"
        cfg = {**config, "clients": c, "requests": b.requests}
        out.append(ctx.row("serve", f"c{c}/unbatched_rps", u.rps, "req/s", reference=ref_rps, reference_value=u.rps,
                           higher_is_better=True, config=cfg))  # fmt: skip
        out.append(ctx.row("serve", f"c{c}/batched_rps", b.rps, "req/s", reference=ref_rps, reference_value=u.rps,
                           higher_is_better=True, config=cfg, note=f"mean batch {b.mean_batch:.1f}"))  # fmt: skip
        for q in (50, 99):
            ref = f"serve/c{c}/unbatched_p{q}_ms"
            out.append(ctx.row("serve", f"c{c}/unbatched_p{q}_ms", u.p(q), "ms", reference=ref,
                               reference_value=u.p(q), higher_is_better=False, config=cfg))  # fmt: skip
            out.append(ctx.row("serve", f"c{c}/batched_p{q}_ms", b.p(q), "ms", reference=ref,
                               reference_value=u.p(q), higher_is_better=False, config=cfg))  # fmt: skip
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=128, help="requests per level (spread over the clients)")
    p.add_argument("--checkpoint", help="checkpoint to serve (default: a random-weight model)")
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per server")
    p.add_argument("--quick", action="store_true", help="a smaller model and fewer requests")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options; ``--quick`` also caps the requests per level at 64."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.requests = min(args.requests, 64)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    levels = run(args)
    print(f"\nRunInference, {args.agents} agents x {args.rounds + 1} proposal round(s), {args.max_new_tokens} new "
          f"tokens, torch threads {args.threads}, 1 solve worker per server, max batch {args.max_batch}, "
          f"max delay {args.max_delay_ms:g} ms ({started}):")  # fmt: skip
    print(f"CPU: {CpuInfo.collect(args.threads).describe()}\n")
    print(table(levels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
