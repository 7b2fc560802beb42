"""A Model Context Protocol server over the gRPC sidecar: LLM agents train, watch, benchmark and ask the model.

``moe-swarm-mcp`` (or ``python -m moe_swarm.mcp``) speaks MCP (JSON-RPC) over stdio or Streamable HTTP,
built on the official Python SDK. Every tool is a call to the sidecar (:mod:`moe_swarm.serve`): jobs,
validation, auth and the registry are the sidecar's, never copied here. See docs/mcp.md.
"""

from moe_swarm import serve as _serve  # noqa: E402, F401  (its GRPC_VERBOSITY default, before grpc starts)
