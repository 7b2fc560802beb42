"""What the MCP tools, resources and prompts share: the caller's token, sidecar errors as tool errors,
jobs off the wire as the tools return them, and a page of a job's log."""

from __future__ import annotations

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver.exceptions import ToolError

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.mcp.models import Job, LogPage, job_model
from moe_swarm.serve.convert import job_from_proto
from moe_swarm.serve.proto import mcp_pb2 as pb

LOG_PAGE_BYTES = 256 * 1024


def caller_token() -> str | None:
    """The bearer token of the HTTP caller (its scopes are the sidecar's to enforce), else None."""
    access = get_access_token()
    return access.token if access is not None else None


def job_result(j: pb.Job) -> Job:  # type: ignore[valid-type]
    """A job off the wire as the tools return it (the control core's one job view)."""
    return job_model(job_from_proto(j))


def tool_error(e: SidecarError) -> ToolError:
    return ToolError(f"{e.code}: {e.message}")


async def log_page(sidecar: Sidecar, job_id: str, max_lines: int, offset: int) -> LogPage:
    """Up to ``max_lines`` lines of the log from ``offset`` (-1: the last ``max_lines`` lines)."""
    request = pb.TailLogsRequest(job_id=job_id, follow=False)
    if offset < 0:
        request.tail_lines = max_lines
    else:
        request.offset = offset
    text, start, size = "", None, 0
    try:
        async for chunk in sidecar.stream("TailLogs", request, token=caller_token()):
            if start is None:
                start = chunk.offset
            text += chunk.text
            size = chunk.offset + len(chunk.text.encode("utf-8", errors="replace")) - start
            if text.count("\n") >= max_lines or size >= LOG_PAGE_BYTES:
                break
    except SidecarError as e:
        raise tool_error(e) from None
    start = start if start is not None else max(offset, 0)
    lines = text.splitlines(keepends=True)
    more = len(lines) > max_lines or size >= LOG_PAGE_BYTES
    page = "".join(lines[:max_lines])
    next_offset = start + len(page.encode("utf-8", errors="replace"))
    return LogPage(job_id=job_id, text=page, offset=start, next_offset=next_offset,
                   lines=min(len(lines), max_lines), more=more)  # fmt: skip
