"""What the MCP layer costs: ``get_job`` through the MCP server over stdio vs the same GetJob over gRPC.

    python -m moe_swarm.bench.control_bench [--calls 200]

One sidecar (``moe-swarm-serve`` child process on 127.0.0.1) holds one job; one MCP server
(``python -m moe_swarm.mcp`` child process, stdio) fronts it. The client calls GetJob directly over gRPC and
the ``get_job`` tool through MCP, in alternating blocks of 10 calls so machine noise hits both, and reports
the median round trip of each and their ratio. The MCP path includes the gRPC hop behind it: the ratio is
the whole price of speaking MCP (JSON-RPC framing, pydantic validation, the extra process).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import torch

from moe_swarm.bench.loadtest import ServerProcess
from moe_swarm.bench.machine import CpuInfo
from moe_swarm.serve.client import TERMINAL
from moe_swarm.serve.observability import percentile
from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc

BLOCK = 10


def _job(stub: mcp_pb2_grpc.MCPControlStub) -> str:
    """A real job to read: a training job cancelled at once (it finishes in a few seconds)."""
    resp = stub.StartTraining(
        mcp_pb2.TrainRequest(config_path="quickstart", run_id="control-bench"), timeout=120
    )
    stub.CancelJob(mcp_pb2.CancelJobRequest(job_id=resp.job_id), timeout=30)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = stub.GetJob(mcp_pb2.GetJobRequest(job_id=resp.job_id), timeout=30)
        if job.state in TERMINAL:
            return resp.job_id
        time.sleep(0.2)
    raise TimeoutError(f"job {resp.job_id} did not stop within 120 s")


async def _measure(address: str, job_id: str, calls: int) -> dict[str, list[float]]:
    from mcp import Client, StdioServerParameters

    env = {**os.environ, "MOE_SWARM_TARGET": address, "MOE_SWARM_TOKEN": ""}
    params = StdioServerParameters(command=sys.executable, args=["-m", "moe_swarm.mcp"], env=env)
    times: dict[str, list[float]] = {"grpc": [], "mcp_stdio": []}
    with grpc.insecure_channel(address) as channel:
        stub = mcp_pb2_grpc.MCPControlStub(channel)
        request = mcp_pb2.GetJobRequest(job_id=job_id)
        async with Client(params) as client:
            for _ in range(BLOCK):  # warm-up: connections, first-call imports, caches
                stub.GetJob(request, timeout=30)
                await client.call_tool("get_job", {"job_id": job_id})
            for _ in range(max(1, calls // BLOCK)):
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    stub.GetJob(request, timeout=30)
                    times["grpc"].append(time.perf_counter() - t0)
                for _ in range(BLOCK):
                    t0 = time.perf_counter()
                    result = await client.call_tool("get_job", {"job_id": job_id})
                    times["mcp_stdio"].append(time.perf_counter() - t0)
                    if result.is_error:
                        raise RuntimeError(f"get_job over MCP failed: {result.content[0].text}")
    return times


def measure(calls: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Start the sidecar, make the job, time both paths; returns latencies (s) and the setup."""
    import anyio

    work = Path(tempfile.mkdtemp(prefix="moe-swarm-control-bench-"))
    server = ServerProcess(["serve.port=0", "serve.auth.enabled=false", "serve.log_rpcs=false",
                            f"serve.state_dir={work}", f"serve.training.runs_dir={work}/runs",
                            "serve.training.cancel_grace_s=30"])  # fmt: skip
    try:
        with grpc.insecure_channel(server.address) as channel:
            job_id = _job(mcp_pb2_grpc.MCPControlStub(channel))
        times = anyio.run(_measure, server.address, job_id, calls)
    finally:
        server.stop()
    return times, {
        "calls": len(times["grpc"]),
        "block": BLOCK,
        "transport": "stdio",
        "sidecar": "child process",
    }


def rows(ctx: Any) -> list:
    """Rows for the ``serve`` suite: median get_job round trip over gRPC and over MCP stdio (ratio vs gRPC)."""
    calls = ctx.repeats * BLOCK if ctx.repeats else (50 if ctx.quick else 200)
    times, config = measure(calls)
    grpc_ms = percentile(sorted(times["grpc"]), 50) * 1e3
    mcp_ms = percentile(sorted(times["mcp_stdio"]), 50) * 1e3
    ref = "serve/control/grpc_get_job_ms"
    return [
        ctx.row(
            "serve",
            "control/grpc_get_job_ms",
            grpc_ms,
            "ms",
            reference=ref,
            reference_value=grpc_ms,
            higher_is_better=False,
            config=config,
        ),  # fmt: skip
        ctx.row(
            "serve",
            "control/mcp_stdio_get_job_ms",
            mcp_ms,
            "ms",
            reference=ref,
            reference_value=grpc_ms,
            higher_is_better=False,
            config=config,
            note="MCP stdio -> MCP server -> gRPC -> sidecar",
        ),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200, help="timed calls per path (default 200)")
    args = p.parse_args(argv)
    times, config = measure(args.calls)
    g = sorted(times["grpc"])
    m = sorted(times["mcp_stdio"])
    print(f"get_job round trip, {config['calls']} calls per path in alternating blocks of {BLOCK} "
          f"({time.strftime('%Y-%m-%d %H:%M')}), CPU: {CpuInfo.collect(torch.get_num_threads()).describe()}:")  # fmt: skip
    for name, t in (("gRPC GetJob", g), ("MCP stdio get_job", m)):
        print(f"  {name:<18} p50 {percentile(t, 50) * 1e3:7.2f} ms   p99 {percentile(t, 99) * 1e3:7.2f} ms")
    print(f"  ratio MCP/gRPC (p50) {percentile(m, 50) / percentile(g, 50):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
