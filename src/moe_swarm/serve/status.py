"""The one place where the control core's exceptions become gRPC status codes.

Every handler of the servicer is wrapped by :func:`unary` or :func:`streaming`: a
:class:`~moe_swarm.control.errors.ControlError` aborts the RPC with its status and message; anything
unexpected becomes INTERNAL with its text (logged), and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from moe_swarm.control import errors
from moe_swarm.serve.observability import record_code

log = logging.getLogger("moe_swarm.serve")

STATUS: dict[type[errors.ControlError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.JobFailed: grpc.StatusCode.INTERNAL,
}


def status_of(e: errors.ControlError) -> grpc.StatusCode:
    return STATUS.get(type(e), grpc.StatusCode.UNKNOWN)


async def _abort_for(context: grpc.aio.ServicerContext, name: str, e: Exception) -> None:
    if isinstance(e, errors.ControlError):
        code, message = status_of(e), e.message
    else:
        log.exception("%s failed", name)
        code = grpc.StatusCode.INTERNAL
        message = f"internal error in {name}: {type(e).__name__}: {e}; the server keeps running (see its log)"
    record_code(code)
    await context.abort(code, message)


def unary(fn: Callable) -> Callable:
    """Map ControlError to its status and anything unexpected to INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as e:
            await _abort_for(context, fn.__name__, e)

    return wrapper


def streaming(fn: Callable) -> Callable:
    """The same mapping for server-streaming handlers (async generators)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as e:
            await _abort_for(context, fn.__name__, e)

    return wrapper
