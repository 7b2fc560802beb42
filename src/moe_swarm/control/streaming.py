"""Streamed inference: one continuation of a prompt, sent piece by piece as it is decoded; no transport.

The swarm's answer exists only after its vote, so a stream decodes one agent (the model's own
continuation, at the request's temperature and seed) through the decoding engine's per-token callback
(:func:`moe_swarm.cli.generate.stream_generate`, the same path as ``moe-swarm-generate``). A request is
checked exactly as :meth:`InferenceService.infer` checks it (prompt size, limits, the model's task
format and context), so the same bad input gets the same message. Decoding runs in a worker thread;
pieces reach the event loop through a queue, and a caller that goes away stops the decode.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from moe_swarm.control.errors import InvalidArgument
from moe_swarm.control.inference import InferenceRequest, InferenceResult, InferenceService, Vote


@dataclass(frozen=True)
class StreamPiece:
    """Newly decoded text and the tokens so far; the last piece of a stream carries ``result``."""

    text: str
    tokens: int
    result: InferenceResult | None = None


class _Stopped(Exception):
    """Raised inside the decode when the caller went away."""


def check_stream_request(request: InferenceRequest) -> None:
    """A stream is one agent of the answer-level unit: swarm-only settings are refused, not ignored."""
    if request.agents > 1:
        raise InvalidArgument(
            f"agents={request.agents}: a stream decodes one agent (the swarm's answer exists only after its "
            "vote); for agents > 1 ask without streaming (RunInference), or pass agents=1"
        )
    if request.rounds:
        raise InvalidArgument(
            f"rounds={request.rounds}: a stream has no refinement rounds; leave rounds unset or 0"
        )
    if request.mode not in ("", "answers"):
        raise InvalidArgument(
            f"mode={request.mode!r} cannot stream; ask without streaming (RunInference) for the step swarm"
        )


async def stream_inference(
    service: InferenceService, request: InferenceRequest, on_model: Callable[[str], None] | None = None
) -> AsyncIterator[StreamPiece]:
    """Check the request like ``infer``, then yield the continuation's pieces as they are decoded."""
    check_stream_request(request)
    request = replace(request, agents=1, rounds=0, mode="answers")
    loaded, prompt, params, seed = await service.prepare(request, on_model)

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()
    count = [0]

    def on_text(piece: str, tokens: int) -> None:
        if stop.is_set():
            raise _Stopped
        loop.call_soon_threadsafe(queue.put_nowait, ("text", (piece, tokens)))

    def decode() -> None:
        import torch

        from moe_swarm.cli.generate import stream_generate

        try:
            with torch.inference_mode():
                text, count[0] = stream_generate(loaded.model, loaded.tokenizer, prompt, on_text,
                                                 max_new_tokens=params.max_new_tokens,
                                                 temperature=params.temperature, seed=seed)  # fmt: skip
            loop.call_soon_threadsafe(queue.put_nowait, ("done", text))
        except _Stopped:
            pass
        except BaseException as exc:  # reported on the stream (INTERNAL); the server keeps serving
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    loop.run_in_executor(None, decode)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            if kind == "text":
                yield StreamPiece(value[0], tokens=value[1])
                continue
            answer = loaded.canonical(str(value))
            result = InferenceResult(answer=answer, vote_share=1.0, votes=[Vote(answer, 1.0)],
                                     forward_passes=count[0], generated_tokens=count[0], rounds_used=1, agents=1,
                                     model_id=loaded.model_id)  # fmt: skip
            yield StreamPiece("", tokens=count[0], result=result)
            return
    finally:  # done, failed, or the caller went away: the decode stops at its next piece
        stop.set()
