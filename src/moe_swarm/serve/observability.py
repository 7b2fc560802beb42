"""Every RPC logged as one structured line, and per-method counts and latency percentiles.

The interceptor wraps each handler, so it also sees RPCs that auth rejected and streams until they end.
Numbers go to :class:`RpcStats` (reported by GetServerInfo) and, when a Prometheus registry is given,
to ``moe_swarm_rpc_requests_total{method,code}`` and ``moe_swarm_rpc_latency_seconds{method}``.
Handlers add fields to their log line (e.g. the job id) with :func:`annotate`.
"""

from __future__ import annotations

import collections
import contextvars
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

RPC_LOG = logging.getLogger("moe_swarm.serve.rpc")
LATENCY_WINDOW = 2048  # latencies kept per method for percentiles
_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "moe_swarm_rpc_fields", default=None
)


def annotate(**fields: Any) -> None:
    """Add fields (job_id=..., model_id=...) to the current RPC's log line."""
    current = _FIELDS.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v not in (None, "")})


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


class RpcStats:
    """Thread-safe counters per method: requests, errors, status codes, recent latencies."""

    def __init__(self, prometheus_registry: Any = None) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[str] = collections.Counter()
        self._errors: collections.Counter[str] = collections.Counter()
        self._codes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._latency: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=LATENCY_WINDOW)
        )
        self._inflight: collections.Counter[str] = collections.Counter()
        self._prom_requests = self._prom_latency = self._prom_batch = None
        if prometheus_registry is not None:
            from prometheus_client import Counter, Histogram

            self._prom_requests = Counter(
                "moe_swarm_rpc_requests", "RPCs handled, by method and status code", ["method", "code"],
                registry=prometheus_registry,
            )  # fmt: skip
            self._prom_latency = Histogram(
                "moe_swarm_rpc_latency_seconds", "RPC latency (streams: until the stream ends)", ["method"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                registry=prometheus_registry,
            )  # fmt: skip
            self._prom_batch = Histogram(
                "moe_swarm_inference_batch_size", "requests per batched swarm solve",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=prometheus_registry,
            )  # fmt: skip

    def started(self, method: str) -> None:
        with self._lock:
            self._inflight[method] += 1

    def in_flight(self, exclude: frozenset[str] = frozenset()) -> int:
        """RPCs running now (streams included), except the methods in ``exclude``."""
        with self._lock:
            return sum(n for m, n in self._inflight.items() if m not in exclude)

    def record(self, method: str, code: str, seconds: float) -> None:
        with self._lock:
            self._inflight[method] -= 1
            self._requests[method] += 1
            self._codes[method][code] += 1
            if code != "OK":
                self._errors[method] += 1
            self._latency[method].append(seconds)
        if self._prom_requests is not None:
            self._prom_requests.labels(method=method, code=code).inc()
            self._prom_latency.labels(method=method).observe(seconds)

    def record_batch(self, size: int) -> None:
        if self._prom_batch is not None:
            self._prom_batch.observe(size)

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per method: requests, errors, p50/p95/p99 latency in ms, counts per status code."""
        with self._lock:
            out = []
            for method in sorted(self._requests):
                lat = sorted(self._latency[method])
                out.append(
                    {
                        "method": method,
                        "requests": self._requests[method],
                        "errors": self._errors[method],
                        "p50_ms": percentile(lat, 50) * 1e3,
                        "p95_ms": percentile(lat, 95) * 1e3,
                        "p99_ms": percentile(lat, 99) * 1e3,
                        "codes": dict(self._codes[method]),
                    }
                )
            return out


def _code_name(context: Any, exc: BaseException | None) -> str:
    fields = _FIELDS.get() or {}
    if "code" in fields:
        return str(fields.pop("code"))
    try:
        code = context.code()
    except Exception:
        code = None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int) and code:
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c.name
    if exc is None:
        return "OK"
    if isinstance(exc, (GeneratorExit,)) or type(exc).__name__ == "CancelledError":
        return "CANCELLED"
    return "UNKNOWN"


def record_code(code: grpc.StatusCode) -> None:
    """Tell the interceptor which status the handler is about to abort with."""
    fields = _FIELDS.get()
    if fields is not None:
        fields["code"] = code.name


Behavior = Callable[..., Any]


async def call_behavior(behavior: Behavior, request: Any, context: grpc.aio.ServicerContext) -> Any:
    """Run a handler behavior, coroutine or async generator (whose items are written to ``context``)."""
    result = behavior(request, context)
    if inspect.isasyncgen(result):
        async for item in result:
            await context.write(item)
        return None
    return await result if inspect.isawaitable(result) else result


def _wrap_behavior(behavior: Behavior, method: str, stats: RpcStats, log_rpcs: bool) -> Behavior:
    """A coroutine handler that runs ``behavior`` (coroutine or async generator) and records the outcome."""

    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        fields: dict[str, Any] = {}
        token = _FIELDS.set(fields)
        stats.started(method)
        start = time.perf_counter()
        exc: BaseException | None = None
        try:
            return await call_behavior(behavior, request_or_iterator, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            seconds = time.perf_counter() - start
            code = _code_name(context, exc)
            stats.record(method, code, seconds)
            if log_rpcs:
                line = {"rpc": method, "code": code, "latency_ms": round(seconds * 1e3, 3)}
                try:
                    line["peer"] = context.peer()
                except Exception:
                    line["peer"] = ""
                line.update({k: v for k, v in fields.items() if k != "code"})
                RPC_LOG.info(json.dumps(line, sort_keys=False, default=str))
            _FIELDS.reset(token)

    return wrapper


def wrap_handler(
    handler: grpc.RpcMethodHandler, make: Callable[[Behavior], Behavior]
) -> grpc.RpcMethodHandler:
    """The same handler kind with its behavior replaced by ``make(behavior)``."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            make(handler.unary_unary), handler.request_deserializer, handler.response_serializer
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            make(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            make(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        make(handler.stream_stream), handler.request_deserializer, handler.response_serializer
    )


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Outermost interceptor: one log line and one stats record per RPC, whatever its outcome."""

    def __init__(self, stats: RpcStats, log_rpcs: bool = True) -> None:
        self.stats = stats
        self.log_rpcs = log_rpcs

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(handler, lambda b: _wrap_behavior(b, method, self.stats, self.log_rpcs))
