"""The MCP server's backend: an asyncio gRPC client of the sidecar (one channel, per-call bearer token).

Errors come back as :class:`SidecarError` carrying the sidecar's own message (it already says what to
fix); an unreachable sidecar gets a message naming the address and how to start one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from moe_swarm.serve.client import DEFAULT_TARGET, explain_details
from moe_swarm.serve.proto import mcp_pb2_grpc

T = TypeVar("T")


class SidecarError(Exception):
    """A failed sidecar call: ``code`` is the gRPC status name, ``message`` what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SidecarConfig:
    """Where the sidecar is and how to reach it (the same environment variables as moe-swarm-ctl)."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    ca_cert: str | None = None
    tls: bool = False
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> SidecarConfig:
        env = {
            "target": os.environ.get("MOE_SWARM_TARGET", DEFAULT_TARGET),
            "token": os.environ.get("MOE_SWARM_TOKEN") or None,
            "ca_cert": os.environ.get("MOE_SWARM_CA_CERT") or None,
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)


async def _cancellable(rpc: grpc.aio.Call, step: Awaitable[T]) -> T:
    """Await one step of a gRPC call so that cancelling this task raises the canceller's own CancelledError.

    grpc.aio answers a cancelled unary await with a fresh CancelledError. anyio's cancel scopes
    (``move_on_after``, ``fail_after``, a client's ``notifications/cancelled``) tell their own cancellation
    by its message, so grpc's escaped them: a ``wait_for_job`` whose time ran out during a call ended as
    "Connection closed" instead of returning. Awaiting through ``asyncio.shield`` keeps the task's own
    exception; the RPC is then cancelled explicitly."""
    inner = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        rpc.cancel()
        raise


class Sidecar:
    """Calls the sidecar's MCPControl service. The channel is created on first use, in the running loop."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self._channel: grpc.aio.Channel | None = None
        self._stub: mcp_pb2_grpc.MCPControlStub | None = None

    def _get_stub(self) -> mcp_pb2_grpc.MCPControlStub:
        if self._stub is None:
            c = self.config
            if c.ca_cert or c.tls:
                root = Path(c.ca_cert).read_bytes() if c.ca_cert else None
                creds = grpc.ssl_channel_credentials(root_certificates=root)
                self._channel = grpc.aio.secure_channel(c.target, creds)
            else:
                self._channel = grpc.aio.insecure_channel(c.target)
            self._stub = mcp_pb2_grpc.MCPControlStub(self._channel)
        return self._stub

    def _metadata(self, token: str | None) -> tuple[tuple[str, str], ...]:
        token = token or self.config.token
        return (("authorization", f"Bearer {token}"),) if token else ()

    def _error(self, e: grpc.aio.AioRpcError) -> SidecarError:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in (e.details() or "").lower():
            return SidecarError(
                code.name,
                f"the moe-swarm sidecar at {self.config.target} is unreachable ({e.details()}); start it with "
                "`moe-swarm-serve` or point this server at it with --target / MOE_SWARM_TARGET",
            )
        return SidecarError(code.name, explain_details(code.name, e.details() or code.name))

    async def call(
        self, method: str, request: Any, token: str | None = None, timeout: float | None = None
    ) -> Any:
        """A unary RPC; raises SidecarError with the sidecar's message."""
        rpc = getattr(self._get_stub(), method)(
            request, metadata=self._metadata(token), timeout=timeout or self.config.timeout_s
        )
        try:
            return await _cancellable(rpc, rpc)
        except grpc.aio.AioRpcError as e:
            raise self._error(e) from None

    async def stream(self, method: str, request: Any, token: str | None = None) -> AsyncIterator[Any]:
        """A server-streaming RPC; raises SidecarError with the sidecar's message."""
        call = getattr(self._get_stub(), method)(request, metadata=self._metadata(token))
        try:
            while (item := await _cancellable(call, call.read())) is not grpc.aio.EOF:
                yield item
        except grpc.aio.AioRpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
