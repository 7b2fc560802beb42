"""What the MCP tools, resources and prompts share: the tool annotations, the caller's token, sidecar
errors as tool errors, jobs off the wire as the tools return them, and a page of a job's log."""

from __future__ import annotations

import re

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.mcp.models import Job, LogPage, job_model
from moe_swarm.serve.convert import job_from_proto
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.store.layout import METRICS_LINE_PREFIX

LOG_PAGE_BYTES = 256 * 1024
TAIL_OVERSCAN = 8  # a tail reads this many raw lines per readable line wanted (metrics lines are dropped)
MAX_TAIL_LINES = 20_000


def _annotations(read_only: bool, destructive: bool, idempotent: bool) -> ToolAnnotations:
    """The hints a client shows before a call; every tool acts on this sidecar only (closed world)."""
    return ToolAnnotations(
        readOnlyHint=read_only, destructiveHint=destructive, idempotentHint=idempotent, openWorldHint=False
    )


READ = _annotations(read_only=True, destructive=False, idempotent=True)  # looks, changes nothing
STARTS = _annotations(read_only=False, destructive=False, idempotent=False)  # each call starts new work
LOADS = _annotations(read_only=False, destructive=False, idempotent=True)  # the same call, the same state
STOPS = _annotations(read_only=False, destructive=True, idempotent=True)  # ends a job (repeatable)


def caller_token() -> str | None:
    """The bearer token of the HTTP caller (its scopes are the sidecar's to enforce), else None."""
    access = get_access_token()
    return access.token if access is not None else None


def job_result(j: pb.Job) -> Job:  # type: ignore[valid-type]
    """A job off the wire as the tools return it (the control core's one job view)."""
    return job_model(job_from_proto(j))


# The sidecar's messages name its RPCs and moe-swarm-ctl; an MCP caller gets the MCP tool's name instead.
RPC_TO_TOOL = {
    "ListExperiments": "list_experiments",
    "StartTraining": "start_training",
    "GetJob": "get_job",
    "ListJobs": "list_jobs",
    "WatchJob": "wait_for_job",
    "TailLogs": "tail_logs",
    "CancelJob": "cancel_job",
    "RunBenchmark": "run_benchmark",
    "RunInference": "run_inference",
    "StreamInference": "run_inference (stream)",
    "StartSweep": "start_sweep",
    "GetSweepResults": "get_sweep_results",
    "ListModels": "list_models",
    "LoadModel": "load_model",
    "GetRun": "the moe://runs/{run_id}/summary resource",
}
_CTL_EXAMPLE = re.compile(r",? e\.g\. `moe-swarm-ctl train (\w+)`")
_CTL_ASIDE = re.compile(r"\s*\(moe-swarm-ctl [^)]*\)")


def mcp_wording(message: str) -> str:
    """A sidecar message as an MCP caller should read it: tool names, no moe-swarm-ctl asides."""
    text = _CTL_EXAMPLE.sub(r", e.g. experiment \1", message)
    text = _CTL_ASIDE.sub("", text)
    for rpc, tool in RPC_TO_TOOL.items():
        text = re.sub(rf"\b{rpc}\b", tool, text)
    return text


def tool_error(e: SidecarError) -> ToolError:
    return ToolError(f"{e.code}: {mcp_wording(e.message)}")


def _readable(line: str) -> bool:
    """Log lines a reader wants: the child's ``MOE_SWARM_METRICS {json}`` lines are for the sidecar
    (their values are in get_job's metrics), not for people."""
    return not line.startswith(METRICS_LINE_PREFIX)


async def log_page(sidecar: Sidecar, job_id: str, max_lines: int, offset: int) -> LogPage:
    """Up to ``max_lines`` readable lines of the log from ``offset`` (-1: the last ``max_lines``); the
    metrics lines are skipped (offsets stay byte offsets of the log, so paging works as before)."""
    request = pb.TailLogsRequest(job_id=job_id, follow=False)
    if offset < 0:
        request.tail_lines = min(max_lines * TAIL_OVERSCAN, MAX_TAIL_LINES)
    else:
        request.offset = offset
    raw, start, size = "", None, 0
    try:
        async for chunk in sidecar.stream("TailLogs", request, token=caller_token()):
            if start is None:
                start = chunk.offset
            raw += chunk.text
            size = chunk.offset + len(chunk.text.encode("utf-8", errors="replace")) - start
            readable = sum(1 for ln in raw.splitlines() if _readable(ln))
            if (offset >= 0 and readable > max_lines) or size >= LOG_PAGE_BYTES:
                break
    except SidecarError as e:
        raise tool_error(e) from None
    start = start if start is not None else max(offset, 0)
    lines = raw.splitlines(keepends=True)
    keep = [i for i, ln in enumerate(lines) if _readable(ln)]
    if offset < 0:  # the last max_lines readable lines, up to the end of what was read
        chosen = keep[-max_lines:]
        first = chosen[0] if chosen else len(lines)
        last = len(lines)
        more = False
    else:
        chosen = keep[:max_lines]
        first = 0
        last = chosen[-1] + 1 if len(keep) > max_lines else len(lines)
        more = len(keep) > max_lines or size >= LOG_PAGE_BYTES
    skipped = len("".join(lines[:first]).encode("utf-8", errors="replace"))
    consumed = len("".join(lines[:last]).encode("utf-8", errors="replace"))
    page = "".join(lines[i] for i in chosen if i < last)
    return LogPage(job_id=job_id, text=page, offset=start + skipped, next_offset=start + consumed,
                   lines=len(chosen), more=more)  # fmt: skip
