"""The gRPC control sidecar (grpc.aio) with health, reflection, auth and metrics (``moe-swarm-serve``,
whose console script is :mod:`moe_swarm.serve.__main__`).

Prints ``moe-swarm serving on HOST:PORT`` when ready (``serve.port=0`` picks a free port). On SIGTERM or
SIGINT: health turns NOT_SERVING, in-flight RPCs get ``serve.grace_s`` to finish, running jobs are asked to
checkpoint and stop, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from moe_swarm.control.inference import InferenceService
from moe_swarm.control.jobs import JobService
from moe_swarm.control.models import ModelRepository
from moe_swarm.serve.auth import BearerAuthInterceptor, load_tokens
from moe_swarm.serve.observability import ObservabilityInterceptor, RpcStats
from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc
from moe_swarm.serve.service import ControlService
from moe_swarm.serve.settings import READY_PREFIX, ServeSettings

log = logging.getLogger("moe_swarm.serve")
SERVICE_NAME = mcp_pb2.DESCRIPTOR.services_by_name["MCPControl"].full_name
LONG_LIVED_RPCS = frozenset({"/grpc.health.v1.Health/Watch"})


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _server_credentials(settings: ServeSettings) -> grpc.ServerCredentials | None:
    cert, key = settings.tls.cert, settings.tls.key
    if not cert and not key:
        return None
    if not (cert and key):
        raise ValueError("TLS needs both serve.tls.cert and serve.tls.key (PEM files), or neither")
    try:
        return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
    except OSError as exc:
        raise ValueError(f"cannot read the TLS certificate or key: {exc}") from exc


@dataclass
class RunningServer:
    """A started server and everything it owns; :meth:`stop` shuts it all down gracefully."""

    settings: ServeSettings
    server: grpc.aio.Server
    port: int
    health: HealthServicer
    jobs: JobService
    models: ModelRepository
    inference: InferenceService
    executor: ThreadPoolExecutor
    stats: RpcStats
    metrics_port: int | None = None
    _metrics_httpd: Any = None
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False

    @property
    def address(self) -> str:
        return _address(self.settings.host, self.port)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING, then stop taking RPCs, let in-flight ones finish, stop jobs; idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.grace_s if grace_s is None else grace_s
        await self.health.enter_graceful_shutdown()
        log.info("shutting down: health is NOT_SERVING; in-flight RPCs have %.1f s to finish", grace)
        if self.settings.shutdown_delay_s > 0:
            await asyncio.sleep(self.settings.shutdown_delay_s)
        loop = asyncio.get_running_loop()
        jobs_done = loop.create_task(self.jobs.shutdown(self.settings.training.cancel_grace_s))
        stopped = loop.create_task(self.server.stop(grace))  # no new RPCs; in-flight ones get `grace`
        # Health watches never end by themselves: once every other RPC has finished, cut them.
        deadline = loop.time() + grace
        while not stopped.done() and loop.time() < deadline and self.stats.in_flight(LONG_LIVED_RPCS) > 0:
            await asyncio.sleep(0.05)
        if not stopped.done():
            await self.server.stop(0)
        await stopped
        await jobs_done
        await self.inference.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._metrics_httpd is not None:
            self._metrics_httpd.shutdown()
            self._metrics_httpd.server_close()
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def start_server(settings: ServeSettings) -> RunningServer:
    """Build and start the server (port 0 = a free port); returns once it accepts RPCs."""
    import torch

    if settings.inference.threads > 0:
        torch.set_num_threads(settings.inference.threads)
    tokens = load_tokens(settings.auth) if settings.auth.enabled else []
    credentials = _server_credentials(settings)

    prom_registry = None
    if settings.metrics_port is not None:
        from prometheus_client import CollectorRegistry

        prom_registry = CollectorRegistry()
    stats = RpcStats(prom_registry)
    interceptors: list[grpc.aio.ServerInterceptor] = [ObservabilityInterceptor(stats, settings.log_rpcs)]
    if settings.auth.enabled:
        interceptors.append(BearerAuthInterceptor(tokens, settings.auth.exempt_methods))
    options = [
        ("grpc.so_reuseport", 0),  # else a second server silently shares the port
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
    ]
    server = grpc.aio.server(
        interceptors=interceptors, options=options, maximum_concurrent_rpcs=settings.max_concurrent_rpcs
    )

    jobs = JobService(
        settings.training,
        settings.benchmark,
        state_dir=settings.state_path,
        runs_dir=settings.runs_path,
        conf_dir=settings.conf_path,
        hidden_env=[settings.auth.token_env],
        job_store=settings.job_store,
        evaluation=settings.evaluation,
        sweep=settings.sweep,
        checkpoint_roots=settings.inference.checkpoint_roots,
    )
    for rec in jobs.recover():
        log.warning("job %s %s on startup: %s", rec.job_id, rec.state.value, rec.message)
    jobs.start_queued()
    models = ModelRepository(settings.inference, jobs.registry, jobs.runs_dir)
    executor = ThreadPoolExecutor(
        max_workers=max(1, settings.inference.workers), thread_name_prefix="moe-infer"
    )
    inference = InferenceService(settings.inference, models, executor, on_batch=stats.record_batch)
    service = ControlService(settings, jobs, models, inference, stats)
    mcp_pb2_grpc.add_MCPControlServicer_to_server(service, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )

    address = _address(settings.host, settings.port)
    try:
        port = (
            server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        )
    except RuntimeError as exc:
        raise OSError(
            f"cannot listen on {address}: {exc}; is the port in use? (serve.port=0 picks a free one)"
        ) from exc
    if port == 0:
        raise OSError(f"cannot listen on {address}; is the port in use? (serve.port=0 picks a free one)")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)

    running = RunningServer(settings, server, port, health, jobs, models, inference, executor, stats)
    if prom_registry is not None:
        from prometheus_client import Gauge, start_http_server

        Gauge("moe_swarm_jobs_active", "jobs PENDING or RUNNING", registry=prom_registry).set_function(
            lambda: len(jobs.registry.active())
        )
        Gauge("moe_swarm_models_loaded", "models held in memory", registry=prom_registry).set_function(
            lambda: len(models.loaded())
        )
        httpd, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=prom_registry
        )
        running._metrics_httpd = httpd
        running.metrics_port = httpd.server_port
    return running


async def serve(settings: ServeSettings) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
    running = await start_server(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if running.metrics_port is not None:
        print(
            f"moe-swarm metrics on http://{settings.metrics_host}:{running.metrics_port}/metrics", flush=True
        )
    print(f"{READY_PREFIX}{running.address}", flush=True)
    await stop.wait()
    log.info("signal received")
    await running.stop()
    return 0


class BackgroundServer:
    """The real server on its own event loop in a thread: for tests, benchmarks and embedding.

    ``with BackgroundServer(settings) as srv: grpc.insecure_channel(srv.address)``.
    """

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.running: RunningServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> BackgroundServer:
        self._thread = threading.Thread(target=self._run, name="moe-swarm-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self.running = await start_server(self.settings)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop.wait()
        await self.running.stop()

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.port

    @property
    def address(self) -> str:
        return _address(self.settings.host, self.port)

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect the job manager) and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 120.0) -> None:
        if (
            self.loop is not None
            and self._stop is not None
            and self._thread is not None
            and self._thread.is_alive()
        ):
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the server did not stop within {timeout} s")

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
