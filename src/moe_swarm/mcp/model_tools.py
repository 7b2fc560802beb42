"""The MCP tools that ask a model: run_inference (whole answers, or one agent streamed as progress
notifications), list_models and load_model; each a thin mapping onto sidecar RPCs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.mcp.calls import LOADS, READ, caller_token, tool_error
from moe_swarm.mcp.models import (
    ChatMessage,
    InferenceAnswer,
    Model,
    ModelList,
    inference_from_proto,
    model_from_proto,
)
from moe_swarm.serve.proto import mcp_pb2 as pb

STREAM_INTERVAL_S = 0.05  # streamed text: at most one progress notification per 50 ms (the last always)
STREAM_TIMEOUT_S = 300.0


def register_model_tools(mcp: MCPServer, sidecar: Sidecar, call: Callable[..., Awaitable[Any]]) -> None:
    """Add the inference and model tools to ``mcp``; ``call`` is the server's unary call (tool errors)."""

    @mcp.tool(
        description="Answer a prompt (or chat messages, for models with a chat template) with a trained model "
        "and the swarm loop (see list_models: prompt_format); returns the answer, its vote share, every vote "
        "and the compute used. stream=true decodes one agent and sends the text so far as progress "
        "notifications while it is decoded.",
        annotations=READ,
    )
    async def run_inference(
        ctx: Context,
        prompt: str = "",
        agents: int = 0,
        rounds: int | None = None,
        temperature: float | None = None,
        max_new_tokens: int = 0,
        seed: int | None = None,
        model: str = "",
        mode: str = "",
        messages: list[ChatMessage] | None = None,
        stream: bool = False,
    ) -> InferenceAnswer:
        """0 / None = the server's defaults; ``model``: a model id, job id, run id or checkpoint path;
        ``mode``: "answers" (default, vote on whole answers) or "steps" (the step-level swarm);
        ``messages``: a chat instead of ``prompt``; ``stream``: one agent, its text as progress notifications."""
        request = pb.InferRequest(prompt=prompt, agents=agents, max_new_tokens=max_new_tokens, model_id=model,
                                  mode=mode, messages=[pb.ChatMessage(role=m.role, content=m.content)
                                                       for m in messages or []])  # fmt: skip
        if rounds is not None:
            request.rounds = rounds
        if temperature is not None:
            request.temperature = temperature
        if seed is not None:
            request.seed = seed
        if not stream:
            return inference_from_proto(await call("RunInference", request, timeout=300))
        return await stream_answer(request, ctx)

    async def stream_answer(request: pb.InferRequest, ctx: Context) -> InferenceAnswer:
        """StreamInference, the text so far as each progress notification's message (progress = tokens,
        total = max_new_tokens when the request set it); the result is the final answer."""
        text, last_sent, sent_tokens = "", 0.0, 0
        total = float(request.max_new_tokens) if request.max_new_tokens else None
        try:
            with anyio.fail_after(STREAM_TIMEOUT_S):
                async for chunk in sidecar.stream("StreamInference", request, token=caller_token()):
                    text += chunk.text
                    now = time.monotonic()
                    final = chunk.HasField("final")
                    if chunk.tokens > sent_tokens and (final or now - last_sent >= STREAM_INTERVAL_S):
                        last_sent, sent_tokens = now, chunk.tokens
                        await ctx.report_progress(float(chunk.tokens), total, text)
                    if final:
                        return inference_from_proto(chunk.final)
        except SidecarError as e:
            raise tool_error(e) from None
        except TimeoutError:
            raise ToolError(
                f"the streamed answer took more than {STREAM_TIMEOUT_S:.0f} s; ask for fewer max_new_tokens"
            ) from None
        raise ToolError("the sidecar ended the stream without an answer; see its log")

    @mcp.tool(
        description="List every servable checkpoint (loaded or not) with its task and prompt format, the "
        "loaded models, and the default model with why it is the default.",
        annotations=READ,
    )
    async def list_models() -> ModelList:
        resp = await call("ListModels", pb.ListModelsRequest())
        return ModelList(
            models=[model_from_proto(m) for m in resp.models],
            default_model_id=resp.default_model_id,
            default_model_source=resp.default_model_source,
            servable=[model_from_proto(m) for m in resp.servable],
        )

    @mcp.tool(
        description="Load a checkpoint (job id, run id or path under the server's roots) for inference.",
        annotations=LOADS,
    )
    async def load_model(checkpoint: str, model_id: str = "", make_default: bool = False) -> Model:
        info = await call(
            "LoadModel",
            pb.LoadModelRequest(checkpoint=checkpoint, model_id=model_id, make_default=make_default),
            timeout=300,
        )
        return model_from_proto(info)
