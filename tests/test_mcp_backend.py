"""The MCP server's gRPC client under cancellation: a time limit that ends during a sidecar call is
caught by its own scope and cancels the RPC on the server.

grpc.aio answers a cancelled unary await with a fresh CancelledError that anyio's scopes do not
recognise as theirs; before the fix it escaped ``wait_for_job``'s ``move_on_after`` and the MCP client
got "Connection closed" for a wait that merely timed out (a CI failure in test_serve_lifecycle.py).
A real grpc.aio server on 127.0.0.1 plays a sidecar that answers slowly: the real sidecar cannot be
made slow on demand."""

from __future__ import annotations

import asyncio

import anyio
import grpc
from mcp import Client

from moe_swarm.mcp.backend import Sidecar, SidecarConfig
from moe_swarm.mcp.server import build_server
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc

SLOW_S = 30.0
RUNNING = pb.Job(
    job_id="j1", kind=pb.TRAINING, state=pb.RUNNING, run_id="r1", metrics={"trainer/global_step": 3}
)


class SlowSidecar(mcp_pb2_grpc.MCPControlServicer):
    """GetJob answers at once; GetRun and the WatchJob stream after its snapshot take SLOW_S. Records the
    RPCs that the client cancelled."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []

    async def _stall(self, rpc: str) -> None:
        try:
            await asyncio.sleep(SLOW_S)
        except asyncio.CancelledError:
            self.cancelled.append(rpc)
            raise

    async def GetJob(self, request, context):
        return RUNNING

    async def ListJobs(self, request, context):  # the MCP server's job watcher asks at start
        return pb.ListJobsResponse(jobs=[RUNNING])

    async def GetRun(self, request, context):
        await self._stall("GetRun")
        return pb.RunInfo()

    async def WatchJob(self, request, context):
        yield pb.JobEvent(type=pb.JobEvent.SNAPSHOT, job=RUNNING)
        await self._stall("WatchJob")


async def _serving(servicer: SlowSidecar):
    server = grpc.aio.server()
    mcp_pb2_grpc.add_MCPControlServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _until(predicate, what: str, timeout: float = 10.0) -> None:
    try:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def test_a_deadline_during_a_unary_call_or_a_stream_is_caught_by_its_own_scope_and_cancels_the_rpc():
    async def go():
        servicer = SlowSidecar()
        server, address = await _serving(servicer)
        sidecar = Sidecar(SidecarConfig(target=address))
        try:
            with anyio.move_on_after(0.5) as unary:
                await sidecar.call("GetRun", pb.GetRunRequest(run_id="r1"))
            events = []
            try:
                with anyio.fail_after(0.5):
                    async for event in sidecar.stream("WatchJob", pb.WatchJobRequest(job_id="j1")):
                        events.append(event.type)
                timed_out = False
            except TimeoutError:
                timed_out = True
            await _until(lambda: len(servicer.cancelled) == 2, "both RPCs cancelled on the server")
            return unary.cancelled_caught, timed_out, events, sorted(servicer.cancelled)
        finally:
            await sidecar.close()
            await server.stop(0)

    caught, timed_out, events, cancelled = anyio.run(go)
    assert caught, "move_on_after did not catch its own cancellation"
    assert timed_out and events == [pb.JobEvent.SNAPSHOT]
    assert cancelled == ["GetRun", "WatchJob"]


def test_wait_for_job_whose_time_runs_out_during_a_sidecar_call_returns_unfinished():
    """wait_for_job reads the run's max_steps (GetRun) on the first step it sees; its timeout ends there."""

    async def go():
        servicer = SlowSidecar()
        server, address = await _serving(servicer)
        try:
            async with Client(build_server(Sidecar(SidecarConfig(target=address))), mode="auto") as c:
                waited = await c.call_tool("wait_for_job", {"job_id": "j1", "timeout_s": 0.5})
                again = await c.call_tool("get_job", {"job_id": "j1"})  # the session keeps serving
            return waited, again
        finally:
            await server.stop(0)

    waited, again = anyio.run(go)
    assert not waited.is_error, waited
    assert waited.structured_content["finished"] is False
    assert waited.structured_content["job"]["state"] == "RUNNING"
    assert again.structured_content["job_id"] == "j1"
