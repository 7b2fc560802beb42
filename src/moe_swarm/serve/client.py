"""A blocking client of the sidecar: one channel, the bearer token and timeout on every call.

Used by ``moe-swarm-ctl`` (:mod:`moe_swarm.serve.ctl_commands`) and by benchmarks; the MCP server has its
own asyncio client (:mod:`moe_swarm.mcp.backend`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc

from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
TERMINAL = {mcp_pb2.SUCCEEDED, mcp_pb2.FAILED, mcp_pb2.CANCELLED}
_TOO_LARGE = re.compile(r"Received message larger than max \((\d+) vs\. (\d+)\)")


def explain_details(code_name: str, details: str) -> str:
    """gRPC's own refusals in the server's words: a message over the transport limit never reaches the
    servicer, so its prompt-length check cannot answer; say what the limits are instead."""
    found = _TOO_LARGE.search(details or "")
    if code_name == "RESOURCE_EXHAUSTED" and found:
        return (
            f"the request is {int(found[1]):,} bytes, more than the sidecar accepts ({int(found[2]):,} bytes, "
            "serve.max_message_bytes); a prompt may have at most serve.inference.max_prompt_chars characters "
            "(2048 by default): send a shorter prompt"
        )
    return details


class Client:
    """A stub plus the call options every RPC needs (token metadata, timeout)."""

    def __init__(self, target: str, token: str | None = None, ca_cert: str | None = None, tls: bool = False,
                 timeout: float = 30.0) -> None:  # fmt: skip
        if ca_cert or tls:
            root = Path(ca_cert).read_bytes() if ca_cert else None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = mcp_pb2_grpc.MCPControlStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout or self.timeout)

    def stream(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
