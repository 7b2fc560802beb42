"""The MCPControl servicer: turns RPCs into job-manager, model-store and batcher calls.

Every handler either returns a response or aborts with the status of a
:class:`~moe_swarm.serve.errors.RequestError`; an unexpected exception becomes INTERNAL with its text,
and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

import moe_swarm
from moe_swarm.serve.auth import CALLER_SCOPES
from moe_swarm.serve.batching import DynamicBatcher
from moe_swarm.serve.errors import RequestError, invalid_argument
from moe_swarm.serve.jobs import JobManager
from moe_swarm.serve.models import InferParams, LoadedModel, ModelStore
from moe_swarm.serve.observability import RpcStats, annotate, record_code
from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc
from moe_swarm.serve.registry import JobRecord, JobState
from moe_swarm.serve.runs import list_experiments, run_view
from moe_swarm.serve.settings import ServeSettings
from moe_swarm.serve.validation import check_id, check_range

log = logging.getLogger("moe_swarm.serve")
KIND_TO_PROTO = {"training": mcp_pb2.TRAINING, "benchmark": mcp_pb2.BENCHMARK}
PROTO_TO_KIND = {v: k for k, v in KIND_TO_PROTO.items()}
MAX_SEED = 2**62


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    record_code(code)
    await context.abort(code, message)


def _internal_message(name: str, exc: BaseException) -> str:
    return f"internal error in {name}: {type(exc).__name__}: {exc}; the server keeps running (see its log)"


async def _abort_for(context: grpc.aio.ServicerContext, name: str, e: Exception) -> None:
    """Abort with RequestError's own status, or INTERNAL (logged) for anything unexpected."""
    if isinstance(e, RequestError):
        await _abort(context, e.code, e.message)
        return
    log.exception("%s failed", name)
    await _abort(context, grpc.StatusCode.INTERNAL, _internal_message(name, e))


def unary(fn: Callable) -> Callable:
    """Map RequestError to its status and anything unexpected to INTERNAL."""

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


def job_to_proto(rec: JobRecord) -> mcp_pb2.Job:
    job = mcp_pb2.Job(
        job_id=rec.job_id,
        kind=KIND_TO_PROTO.get(rec.kind, mcp_pb2.JOB_KIND_UNSPECIFIED),
        state=mcp_pb2.JobState.Value(rec.state.value),
        config_path=rec.config_path,
        overrides=rec.overrides,
        run_id=rec.run_id,
        request_id=rec.request_id,
        created_unix=rec.created_unix,
        started_unix=rec.started_unix,
        finished_unix=rec.finished_unix,
        pid=rec.pid,
        message=rec.message,
        log_tail=rec.log_tail,
        run_dir=rec.run_dir,
        checkpoint=rec.checkpoint,
        metrics=rec.metrics,
        cancel_requested=rec.cancel_requested,
    )
    if rec.exit_code is not None:
        job.exit_code = rec.exit_code
    return job


def model_to_proto(m: LoadedModel, default_id: str) -> mcp_pb2.ModelInfo:
    total, active = m.param_counts()
    return mcp_pb2.ModelInfo(
        model_id=m.model_id,
        checkpoint=str(m.checkpoint),
        params_total=total,
        params_active=active,
        task=m.task,
        global_step=m.global_step,
        loaded_unix=m.loaded_unix,
        is_default=m.model_id == default_id,
        device=m.device,
        max_seq_len=int(m.model.cfg.max_seq_len),
        prompt_format=m.prompt_format,
        example_prompt=m.example_prompt,
    )


class ControlService(mcp_pb2_grpc.MCPControlServicer):
    """The seed's three RPCs plus jobs, models and server info."""

    def __init__(
        self,
        settings: ServeSettings,
        jobs: JobManager,
        models: ModelStore,
        batcher: DynamicBatcher,
        stats: RpcStats,
        started: float | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.models = models
        self.batcher = batcher
        self.stats = stats
        self.started = time.time() if started is None else started

    # ================================================================ seed RPCs
    @unary
    async def StartTraining(self, request: mcp_pb2.TrainRequest, context) -> mcp_pb2.TrainResponse:
        spec = self.jobs.validate_training(
            request.config_path, list(request.overrides), request.run_id, request.request_id
        )
        await self.jobs.check_composes(spec)
        rec, created = self.jobs.submit_training(spec)
        annotate(job_id=rec.job_id)
        if created:
            text = (
                f"job {rec.job_id} started: training {spec.config.kind} {spec.config.name!r} as run "
                f"{rec.run_id}; follow it with WatchJob/TailLogs (moe-swarm-ctl logs -f {rec.job_id})"
            )
        else:
            text = f"job {rec.job_id} was already started for request_id {rec.request_id!r}; it is {rec.state.value}"
        return mcp_pb2.TrainResponse(success=True, log=text, job_id=rec.job_id, job=job_to_proto(rec))

    @unary
    async def RunBenchmark(self, request: mcp_pb2.BenchmarkRequest, context) -> mcp_pb2.BenchmarkResponse:
        rec = self.jobs.submit_benchmark(request.num_samples, list(request.suites))
        annotate(job_id=rec.job_id)
        timeout = self.settings.benchmark.timeout_s
        try:
            rec = await self.jobs.wait(rec.job_id, timeout=timeout)
        except asyncio.CancelledError:
            self.jobs.cancel(rec.job_id, reason="the RunBenchmark caller went away")
            raise
        if not rec.state.terminal:
            self.jobs.cancel(rec.job_id, reason=f"RunBenchmark timed out after {timeout:.0f} s")
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"benchmark job {rec.job_id} did not finish within {timeout:.0f} s (serve.benchmark.timeout_s); "
                "ask for fewer samples or suites",
            )
        if rec.state is not JobState.SUCCEEDED:
            tail = " | ".join(rec.log_tail[-3:])
            code = grpc.StatusCode.UNAVAILABLE if self.jobs.closing else grpc.StatusCode.INTERNAL
            raise RequestError(
                code, f"benchmark job {rec.job_id} {rec.state.value}: {rec.message} {tail}".strip()
            )
        return self._benchmark_response(rec)

    def _benchmark_response(self, rec: JobRecord) -> mcp_pb2.BenchmarkResponse:
        rows = self.jobs.benchmark_results(rec)
        return mcp_pb2.BenchmarkResponse(
            results=[
                mcp_pb2.BenchmarkResult(
                    metric=r["metric"], value=float(r["value"]), labels=r.get("labels", {})
                )
                for r in rows
            ],
            job_id=rec.job_id,
        )

    def _infer_params(self, request: mcp_pb2.InferRequest) -> tuple[InferParams, int]:
        """The request's swarm settings (defaults filled in, limits checked) and its seed."""
        s = self.settings.inference
        d = s.defaults
        max_new = request.max_new_tokens or d.max_new_tokens
        agents = request.agents or d.agents
        rounds = request.rounds if request.HasField("rounds") else d.rounds
        temperature = request.temperature if request.HasField("temperature") else d.temperature
        seed = request.seed if request.HasField("seed") else d.seed
        check_range(max_new, "max_new_tokens", 1, s.max_new_tokens)
        check_range(agents, "agents", 1, s.max_agents)
        check_range(rounds, "rounds", 0, s.max_rounds)
        if not (0.0 <= temperature <= 10.0):  # also rejects NaN
            raise invalid_argument(
                f"temperature={temperature} is out of range; use a value in [0, 10] (0 = greedy)"
            )
        check_range(seed, "seed", 0, MAX_SEED)
        mode = request.mode or "answers"
        if mode not in ("answers", "steps"):
            raise invalid_argument(
                f"mode={request.mode!r} is not one of 'answers', 'steps' (or empty = 'answers')"
            )
        params = InferParams(
            max_new_tokens=max_new, agents=agents, rounds=rounds, temperature=float(temperature), mode=mode
        )
        return params, int(seed)

    @staticmethod
    def _step_response(result, params: InferParams, loaded, batch_size: int) -> mcp_pb2.InferResponse:
        """InferResponse of a step-level solve: the committed steps with their vote shares, the answer
        line's vote, and compute (generator and checker forward passes)."""
        votes = sorted(result.answer_votes.items(), key=lambda kv: (-kv[1], kv[0]))
        total = sum(w for _, w in votes) or 1.0
        return mcp_pb2.InferResponse(
            output=result.answer,
            vote_share=float(result.shares[-1]) if result.shares else 0.0,
            votes=[mcp_pb2.Vote(answer=a, weight=float(w / total)) for a, w in votes],
            forward_passes=int(result.forward_passes),
            generated_tokens=int(sum(p.num_tokens for p in result.proposals)),
            flops=float(result.flops),
            rounds_used=1 + int(result.backtracks),
            agents=params.agents,
            model_id=loaded.model_id,
            batch_size=batch_size,
            steps=[
                mcp_pb2.Step(text=p.text, vote_share=float(s))
                for p, s in zip(result.committed, result.shares)
            ],
        )

    @unary
    async def RunInference(self, request: mcp_pb2.InferRequest, context) -> mcp_pb2.InferResponse:
        prompt = request.prompt
        limit = self.settings.inference.max_prompt_chars
        if not prompt:
            raise invalid_argument("prompt is empty; pass the text to answer")
        if len(prompt) > limit:
            raise invalid_argument(f"prompt is {len(prompt)} characters; this server's limit is {limit}")
        params, seed = self._infer_params(request)
        loaded = await self.models.get(request.model_id)
        annotate(model_id=loaded.model_id)
        loaded.check_prompt(prompt, params)
        key = (loaded.model_id, loaded.file_stamp, params)
        result, batch_size = await self.batcher.submit(key, (loaded, prompt, seed))
        if params.mode == "steps":
            return self._step_response(result, params, loaded, batch_size)
        votes = sorted(result.votes.items(), key=lambda kv: (-kv[1], kv[0]))
        return mcp_pb2.InferResponse(
            output=result.answer,
            vote_share=float(result.vote_share),
            votes=[mcp_pb2.Vote(answer=a, weight=float(w)) for a, w in votes],
            forward_passes=int(result.forward_passes),
            generated_tokens=int(result.forward_passes),  # equal under KV-cache decoding (wire field kept)
            flops=float(result.flops),
            rounds_used=int(result.rounds_used),
            agents=params.agents,
            model_id=loaded.model_id,
            batch_size=batch_size,
        )

    # ================================================================ jobs
    @unary
    async def GetJob(self, request: mcp_pb2.GetJobRequest, context) -> mcp_pb2.Job:
        annotate(job_id=request.job_id)
        return job_to_proto(self.jobs.get(request.job_id))

    @unary
    async def ListJobs(self, request: mcp_pb2.ListJobsRequest, context) -> mcp_pb2.ListJobsResponse:
        states = set()
        for s in request.states:
            if s == mcp_pb2.JOB_STATE_UNSPECIFIED:
                continue
            states.add(JobState(mcp_pb2.JobState.Name(s)))
        kind = PROTO_TO_KIND.get(request.kind) if request.kind else None
        if request.limit < 0:
            raise invalid_argument(f"limit={request.limit} is negative; pass 0 (all) or N > 0")
        jobs = self.jobs.registry.list(states or None, kind, request.limit)
        return mcp_pb2.ListJobsResponse(jobs=[job_to_proto(j) for j in jobs])

    @unary
    async def CancelJob(self, request: mcp_pb2.CancelJobRequest, context) -> mcp_pb2.Job:
        annotate(job_id=request.job_id)
        return job_to_proto(self.jobs.cancel(request.job_id))

    @streaming
    async def WatchJob(self, request: mcp_pb2.WatchJobRequest, context) -> AsyncIterator[mcp_pb2.JobEvent]:
        annotate(job_id=request.job_id)
        types = {"SNAPSHOT": mcp_pb2.JobEvent.SNAPSHOT, "STATE": mcp_pb2.JobEvent.STATE,
                 "METRICS": mcp_pb2.JobEvent.METRICS}  # fmt: skip
        async for kind, rec, metrics in self.jobs.watch(request.job_id):
            yield mcp_pb2.JobEvent(
                type=types[kind], job=job_to_proto(rec), metrics=metrics, time_unix=time.time()
            )

    @streaming
    async def TailLogs(self, request: mcp_pb2.TailLogsRequest, context) -> AsyncIterator[mcp_pb2.LogChunk]:
        annotate(job_id=request.job_id)
        async for offset, text in self.jobs.tail(
            request.job_id, request.follow, request.tail_lines, request.offset
        ):
            yield mcp_pb2.LogChunk(text=text, offset=offset)

    # ================================================================ models
    @unary
    async def LoadModel(self, request: mcp_pb2.LoadModelRequest, context) -> mcp_pb2.ModelInfo:
        path, suggested = self.models.resolve_reference(request.checkpoint)
        model_id = request.model_id or suggested
        check_id(model_id, "model_id", required=True)
        loaded = await self.models.load(path, model_id, make_default=request.make_default)
        annotate(model_id=model_id)
        return model_to_proto(loaded, self.models.default_id())

    @unary
    async def ListModels(self, request: mcp_pb2.ListModelsRequest, context) -> mcp_pb2.ListModelsResponse:
        default_id = self.models.default_id()
        return mcp_pb2.ListModelsResponse(
            models=[model_to_proto(m, default_id) for m in self.models.loaded()],
            default_model_id=default_id,
            default_checkpoint=self.models.default_checkpoint(),
        )

    # ================================================================ server
    @unary
    async def GetServerInfo(self, request: mcp_pb2.GetServerInfoRequest, context) -> mcp_pb2.ServerInfo:
        import torch

        default_id = self.models.default_id()
        b = self.settings.inference.batching
        return mcp_pb2.ServerInfo(
            version=moe_swarm.__version__,
            torch_version=torch.__version__,
            device=self.models.device,
            cuda_available=torch.cuda.is_available(),
            cuda_device_count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
            models=[model_to_proto(m, default_id) for m in self.models.loaded()],
            running_jobs=[job_to_proto(j) for j in self.jobs.registry.active()],
            rpc_stats=[mcp_pb2.RpcStats(**row) for row in self.stats.snapshot()],
            uptime_s=time.time() - self.started,
            auth_enabled=self.settings.auth.enabled,
            tls_enabled=bool(self.settings.tls.cert),
            batching_enabled=b.enabled,
            max_batch_size=b.max_batch_size,
            max_batch_delay_ms=b.max_delay_ms,
            grpc_version=f"{grpc.__version__} (python {sys.version.split()[0]})",
            caller_scopes=list(CALLER_SCOPES.get()),
        )

    # ================================================================ experiments, runs, results
    @unary
    async def ListExperiments(self, request, context) -> mcp_pb2.ListExperimentsResponse:
        return mcp_pb2.ListExperimentsResponse(
            experiments=[
                mcp_pb2.Experiment(name=e.name, description=e.description, yaml=e.yaml)
                for e in list_experiments(self.settings.conf_path)
            ]
        )

    @unary
    async def GetRun(self, request: mcp_pb2.GetRunRequest, context) -> mcp_pb2.RunInfo:
        view = run_view(self.jobs.runs_dir, self.jobs.registry, request.run_id)
        annotate(run_id=view.run_id)
        return mcp_pb2.RunInfo(
            run_id=view.run_id,
            run_dir=str(view.run_dir),
            config_yaml=view.config_yaml,
            summary_json=view.summary_json,
            checkpoint=view.checkpoint,
            job_ids=view.job_ids,
        )

    @unary
    async def GetBenchmarkResults(self, request: mcp_pb2.GetJobRequest, context) -> mcp_pb2.BenchmarkResponse:
        rec = self.jobs.get(request.job_id)
        annotate(job_id=rec.job_id)
        if rec.kind != "benchmark":
            raise invalid_argument(f"job {rec.job_id} is a {rec.kind} job; name a benchmark job")
        if rec.state is not JobState.SUCCEEDED:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"benchmark job {rec.job_id} is {rec.state.value}; results exist once it has SUCCEEDED"
                + (f" ({rec.message})" if rec.message else ""),
            )
        return self._benchmark_response(rec)
