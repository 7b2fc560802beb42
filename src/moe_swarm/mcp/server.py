"""The MCP server and its tools, each a thin mapping onto one or two sidecar RPCs (resources and
prompts: :mod:`moe_swarm.mcp.resources`).

Every bad input comes back as a tool error whose text is the sidecar's own message (what was wrong and
what to do); nothing here re-validates what the sidecar validates. Long jobs follow MCP's "return a
handle, then watch" pattern: ``start_training`` returns the job, ``wait_for_job`` streams progress
notifications (step/max_steps, latest loss and validation metric, at most about one a second) until the
job finishes or the wait times out; cancelling the wait never cancels the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import yaml
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from moe_swarm.mcp.backend import Sidecar, SidecarError
from moe_swarm.mcp.calls import READ, STARTS, STOPS, caller_token, job_result, log_page, tool_error
from moe_swarm.mcp.model_tools import register_model_tools
from moe_swarm.mcp.models import (
    BenchmarkResult,
    DeletedRun,
    Experiment,
    ExperimentList,
    Job,
    JobList,
    LogPage,
    RunList,
    SweepResults,
    WaitResult,
    benchmark_from_proto,
    run_from_proto,
    sweep_from_proto,
)
from moe_swarm.mcp.resources import SidecarMCPServer, register_prompts, register_resources
from moe_swarm.serve.proto import mcp_pb2 as pb

log = logging.getLogger("moe_swarm.mcp")

MAX_WAIT_S = 600.0
PROGRESS_INTERVAL_S = 1.0
MAX_LOG_LINES = 1000
BENCHMARK_TIMEOUT_S = 1800.0
JOB_DISCOVERY_S = 30.0  # how often the job watcher looks for jobs started elsewhere
STATES = ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
KINDS = ("training", "benchmark", "evaluation", "sweep")


INSTRUCTIONS = """\
moe-swarm trains, benchmarks and serves sparse Mixture-of-Experts language models. Typical flow:
list_experiments -> start_training(experiment, overrides such as trainer.max_steps=50) -> wait_for_job
(progress notifications) -> list_models / run_inference with the trained model (its prompt_format says
what a prompt must look like; stream=true sends the text as it is decoded). start_sweep runs a grid or an
Optuna search as one job (get_sweep_results). Jobs run in the sidecar and outlive this session: when
wait_for_job times out, call it again. Read run configs and metrics as resources (moe://runs/{run_id}/config,
moe://jobs/{job_id}/metrics)."""


def _max_steps(config_yaml: str) -> int | None:
    try:
        cfg = yaml.safe_load(config_yaml) or {}
        value = (cfg.get("trainer") or {}).get("max_steps")
    except (yaml.YAMLError, AttributeError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def _progress_message(job: Job, step: float | None, max_steps: int | None, eta_s: float | None = None) -> str:
    parts = [job.state.lower()]
    if step is not None:
        parts.append(f"step {int(step)}" + (f"/{max_steps}" if max_steps else ""))
    for key in ("train/loss", "val/loss", "val/bpb", "val/em"):
        if key in job.metrics:
            parts.append(f"{key} {job.metrics[key]:.4g}")
    if "train/tokens_per_s" in job.metrics:
        parts.append(f"{job.metrics['train/tokens_per_s']:,.0f} tokens/s")
    if eta_s is not None and not job.finished:
        parts.append(f"ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}")
    return ", ".join(parts)


def _eta_s(
    first: tuple[float, float] | None, now: float, step: float | None, max_steps: int | None
) -> float | None:
    """Seconds left at the step rate seen since ``first`` = (time, step) of this wait's first step."""
    if first is None or step is None or not max_steps or step <= first[1] or now <= first[0]:
        return None
    return (max_steps - step) * (now - first[0]) / (step - first[1])


def build_server(sidecar: Sidecar, **server_kwargs: Any) -> MCPServer:
    """The MCP server over ``sidecar``. ``server_kwargs`` go to :class:`MCPServer` (auth, verifier)."""
    bus = InMemorySubscriptionBus()

    watched: dict[str, asyncio.Task] = {}

    async def follow(job_id: str) -> None:
        """Publish resource-updated events for one job from its WatchJob stream until it finishes."""
        last = None
        try:
            async for event in sidecar.stream("WatchJob", pb.WatchJobRequest(job_id=job_id)):
                if last is not None and event.job.state != last:
                    for uri in (f"moe://jobs/{job_id}", f"moe://jobs/{job_id}/metrics"):
                        await bus.publish(ResourceUpdated(uri=uri))
                last = event.job.state
        except SidecarError as e:
            log.debug("job watcher for %s: %s", job_id, e.message)
        finally:
            watched.pop(job_id, None)

    def watch(job_id: str) -> None:
        if job_id not in watched:
            watched[job_id] = asyncio.create_task(follow(job_id))

    async def discover_jobs() -> None:
        """Follow every active job through the sidecar's WatchJob stream (no per-second polling): jobs this
        server starts are followed at once; others are found by a ListJobs of active jobs every
        JOB_DISCOVERY_S. Uses this server's own sidecar token; without one the sidecar refuses and the
        watcher stops (HTTP callers still get updates from their own wait_for_job calls)."""
        delay = JOB_DISCOVERY_S
        active = [pb.JobState.Value("PENDING"), pb.JobState.Value("RUNNING")]
        while True:
            try:
                listed = await sidecar.call("ListJobs", pb.ListJobsRequest(states=active, limit=50))
            except SidecarError as e:
                if e.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    log.info("job watcher stopped: the sidecar refused this server's token (%s)", e.message)
                    return
                log.debug("job watcher: %s", e.message)
                delay = min(delay * 2, 120.0)
            else:
                delay = JOB_DISCOVERY_S
                for j in listed.jobs:
                    watch(j.job_id)
            await asyncio.sleep(delay)

    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[dict]:
        task = asyncio.create_task(discover_jobs())
        try:
            yield {}
        finally:
            for t in [task, *watched.values()]:
                t.cancel()
            for t in [task, *watched.values()]:
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    mcp = SidecarMCPServer(
        sidecar,
        name="moe-swarm",
        title="moe-swarm control",
        instructions=INSTRUCTIONS,
        version=_version(),
        lifespan=lifespan,
        subscriptions=bus,
        **server_kwargs,
    )

    async def call(method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return await sidecar.call(method, request, token=caller_token(), timeout=timeout)
        except SidecarError as e:
            raise tool_error(e) from None

    async def get_job_proto(job_id: str) -> pb.Job:
        return await call("GetJob", pb.GetJobRequest(job_id=job_id))

    # ------------------------------------------------------------------------------------------ tools
    @mcp.tool(
        description="List the experiments start_training accepts, with what each is for.", annotations=READ
    )
    async def list_experiments() -> ExperimentList:
        resp = await call("ListExperiments", pb.ListExperimentsRequest())
        return ExperimentList(
            experiments=[Experiment(name=e.name, description=e.description) for e in resp.experiments]
        )

    @mcp.tool(
        description="Start a training job (experiment name + Hydra overrides such as trainer.max_steps=50); "
        "returns the job at once: follow it with wait_for_job.",
        annotations=STARTS,
    )
    async def start_training(
        experiment: str,
        overrides: list[str] | None = None,
        run_id: str = "",
        request_id: str = "",
        priority: int = 0,
    ) -> Job:
        """``run_id`` names the run directory (the same id resumes it); ``request_id`` makes retries safe;
        when the training slots are taken the job waits in the queue (``queue_position``), higher
        ``priority`` first."""
        resp = await call(
            "StartTraining",
            pb.TrainRequest(
                config_path=experiment,
                overrides=overrides or [],
                run_id=run_id,
                request_id=request_id,
                priority=priority,
            ),
            timeout=120,
        )
        watch(resp.job_id)  # resource-updated events from its WatchJob stream
        return job_result(resp.job)

    @mcp.tool(
        description="List the runs under the sidecar's runs folder (also those trained from the CLI), newest "
        "first: experiment, status, steps, final metric, checkpoint.",
        annotations=READ,
    )
    async def list_runs(limit: int = 50) -> RunList:
        if not 1 <= limit <= 500:
            raise ToolError(f"limit={limit} is out of range; use 1..500")
        resp = await call("ListRuns", pb.ListRunsRequest(limit=limit))
        return RunList(runs=[run_from_proto(r) for r in resp.runs])

    @mcp.tool(
        description="Delete a run's folder (checkpoints, logs, plots) for good; confirm must repeat the run id. "
        "A run with an active job is refused.",
        annotations=STOPS,
    )
    async def delete_run(run_id: str, confirm: str = "") -> DeletedRun:
        resp = await call("DeleteRun", pb.DeleteRunRequest(run_id=run_id, confirm=confirm))
        return DeletedRun(run_id=resp.run_id, run_dir=resp.run_dir, bytes_freed=resp.bytes_freed)

    @mcp.tool(
        description="Evaluate a checkpoint (a training job id, run id or path) as a job: loss, bits per byte, "
        "perplexity and, for reasoning runs, exact match; follow it with wait_for_job, read them in its metrics.",
        annotations=STARTS,
    )
    async def start_evaluation(
        checkpoint: str, split: str = "val", em_problems: int | None = None, max_batches: int = 0
    ) -> Job:
        """``split``: val, or test for reasoning runs; ``em_problems``: None = the server's default."""
        request = pb.EvaluationRequest(checkpoint=checkpoint, split=split, max_batches=max_batches)
        if em_problems is not None:
            request.em_problems = em_problems
        job = await call("StartEvaluation", request)
        watch(job.job_id)
        return job_result(job)

    @mcp.tool(
        description="Run a Hydra sweep (a grid over params such as model.moe.num_experts=4,8) or the Optuna "
        "search (search='optuna', trials=N) as ONE job; each trial trains run <sweep_id>-<n>. Follow it with "
        "wait_for_job; its results table (per trial: overrides, objective, status) is get_sweep_results and "
        "the moe://sweeps/{job_id}/results resource.",
        annotations=STARTS,
    )
    async def start_sweep(
        experiment: str = "",
        params: list[str] | None = None,
        overrides: list[str] | None = None,
        search: str = "grid",
        trials: int = 0,
        sweep_id: str = "",
        request_id: str = "",
        priority: int = 0,
    ) -> Job:
        """``params``: swept keys, "key=v1,v2"; ``overrides``: fixed for every trial; ``trials``: optuna only."""
        job = await call("StartSweep", pb.SweepRequest(config_path=experiment, params=params or [],
                                                       overrides=overrides or [], search=search, trials=trials,
                                                       sweep_id=sweep_id, request_id=request_id,
                                                       priority=priority), timeout=120)  # fmt: skip
        watch(job.job_id)
        return job_result(job)

    @mcp.tool(
        description="The results table of a sweep job (also while it runs): per trial its swept overrides, "
        "objective value and status, and the best trial.",
        annotations=READ,
    )
    async def get_sweep_results(job_id: str) -> SweepResults:
        return sweep_from_proto(await call("GetSweepResults", pb.GetJobRequest(job_id=job_id)))

    @mcp.tool(description="Get one job: state, failure reason, latest metrics, checkpoint.", annotations=READ)
    async def get_job(job_id: str) -> Job:
        return job_result(await get_job_proto(job_id))

    @mcp.tool(description="List jobs, newest first, optionally filtered by state and kind.", annotations=READ)
    async def list_jobs(state: str = "", kind: str = "", limit: int = 20) -> JobList:
        """``state``: one of PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLED (or ''); ``kind``: training,
        benchmark, evaluation, sweep (or ''); ``limit``: 1..500."""
        if state and state.upper() not in STATES:
            raise ToolError(f"state {state!r} is not a job state; use one of {', '.join(STATES)} or ''")
        if kind and kind.lower() not in KINDS:
            raise ToolError(f"kind {kind!r} is not a job kind; use one of {', '.join(KINDS)} or ''")
        if not 1 <= limit <= 500:
            raise ToolError(f"limit={limit} is out of range; use 1..500")
        request = pb.ListJobsRequest(limit=limit)
        if state:
            request.states.append(pb.JobState.Value(state.upper()))
        if kind:
            request.kind = pb.JobKind.Value(kind.upper())
        resp = await call("ListJobs", request)
        return JobList(jobs=[job_result(j) for j in resp.jobs])

    @mcp.tool(
        description="Wait until a job finishes (or timeout_s, at most 600), sending progress notifications "
        "with step/max_steps and the latest loss; cancelling the wait leaves the job running.",
        annotations=READ,
    )
    async def wait_for_job(job_id: str, ctx: Context, timeout_s: float = 300.0) -> WaitResult:
        if not 0 < timeout_s <= MAX_WAIT_S:
            raise ToolError(f"timeout_s={timeout_s} is out of range; use 0 < timeout_s <= {MAX_WAIT_S:.0f}")
        start = time.monotonic()
        job = job_result(await get_job_proto(job_id))
        state = job.state
        max_steps: int | None = None
        last_sent = 0.0
        first_step: tuple[float, float] | None = None  # (time, step) when this wait first saw a step
        try:
            with anyio.move_on_after(timeout_s):
                async for event in sidecar.stream(
                    "WatchJob", pb.WatchJobRequest(job_id=job_id), token=caller_token()
                ):
                    job = job_result(event.job)
                    if job.state != state:
                        state = job.state
                        await _notify_updated(ctx, f"moe://jobs/{job_id}")
                    step = job.metrics.get("trainer/global_step")
                    if max_steps is None and job.kind == "training" and job.run_id and step is not None:
                        max_steps = await _run_max_steps(sidecar, job.run_id)
                    now = time.monotonic()
                    if step is not None and first_step is None:
                        first_step = (now, float(step))
                    if job.finished or now - last_sent >= PROGRESS_INTERVAL_S:
                        last_sent = now
                        total = float(max_steps) if max_steps else None
                        eta = _eta_s(first_step, now, step, max_steps)
                        await ctx.report_progress(
                            float(step or 0), total, _progress_message(job, step, max_steps, eta)
                        )
                    if job.finished:
                        break
        except SidecarError as e:
            raise tool_error(e) from None
        return WaitResult(job=job, finished=job.finished, waited_s=round(time.monotonic() - start, 3))

    @mcp.tool(
        description="Ask a job to checkpoint and stop (graceful; repeatable; a finished job is returned as is).",
        annotations=STOPS,
    )
    async def cancel_job(job_id: str) -> Job:
        return job_result(await call("CancelJob", pb.CancelJobRequest(job_id=job_id)))

    @mcp.tool(
        description="Read a job's log: the last max_lines lines (offset -1), or max_lines from a byte offset "
        "(page on with next_offset).",
        annotations=READ,
    )
    async def tail_logs(job_id: str, max_lines: int = 100, offset: int = -1) -> LogPage:
        if not 1 <= max_lines <= MAX_LOG_LINES:
            raise ToolError(f"max_lines={max_lines} is out of range; use 1..{MAX_LOG_LINES}")
        if offset < -1:
            raise ToolError(f"offset={offset} is invalid; use -1 (the end of the log) or a byte offset >= 0")
        return await log_page(sidecar, job_id, max_lines, offset)

    @mcp.tool(
        description="Run benchmark suites on the sidecar (one at a time) and return their rows; "
        "suites e.g. moe_layer, generate, serve; repeats = timed repeats (0 = server default).",
        annotations=STARTS,
    )
    async def run_benchmark(suites: list[str] | None = None, repeats: int = 0) -> BenchmarkResult:
        resp = await call(
            "RunBenchmark",
            pb.BenchmarkRequest(num_samples=repeats, suites=suites or []),
            timeout=BENCHMARK_TIMEOUT_S,
        )
        return benchmark_from_proto(resp)

    register_model_tools(mcp, sidecar, call)
    register_resources(mcp, sidecar)
    register_prompts(mcp, sidecar)
    return mcp


def _version() -> str:
    import moe_swarm

    return moe_swarm.__version__


async def _notify_updated(ctx: Context, uri: str) -> None:
    """Resource-updated: to `subscriptions/listen` streams (2026-07-28), and to a handshake-era session."""
    await ctx.notify_resource_updated(uri)
    if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
        with contextlib.suppress(Exception):  # a session without a writable stream (closed): nothing to tell
            await ctx.session.send_resource_updated(uri)


async def _run_max_steps(sidecar: Sidecar, run_id: str) -> int | None:
    try:
        run = await sidecar.call("GetRun", pb.GetRunRequest(run_id=run_id), token=caller_token())
    except SidecarError:
        return None
    return _max_steps(run.config_yaml)
