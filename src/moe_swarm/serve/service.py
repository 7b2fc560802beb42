"""The MCPControl servicer: translates each RPC into one call on the control core and back.

No validation and no decisions here: the core (:mod:`moe_swarm.control`) checks requests and raises
domain exceptions, which :mod:`moe_swarm.serve.status` maps to status codes; :mod:`moe_swarm.serve.convert`
translates messages.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

import moe_swarm
from moe_swarm.control.errors import InvalidArgument
from moe_swarm.control.experiments import list_experiments
from moe_swarm.control.inference import InferenceService
from moe_swarm.control.jobs import JobService
from moe_swarm.control.models import ModelRepository
from moe_swarm.control.runs import delete_run, list_runs, run_plot, run_view
from moe_swarm.control.streaming import stream_inference
from moe_swarm.serve import convert
from moe_swarm.serve.auth import CALLER_SCOPES
from moe_swarm.serve.observability import RpcStats, annotate
from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc
from moe_swarm.serve.settings import ServeSettings
from moe_swarm.serve.status import streaming, unary

EVENT_TYPES = {"SNAPSHOT": mcp_pb2.JobEvent.SNAPSHOT, "STATE": mcp_pb2.JobEvent.STATE,
               "METRICS": mcp_pb2.JobEvent.METRICS}  # fmt: skip


class ControlService(mcp_pb2_grpc.MCPControlServicer):
    """The seed's three RPCs plus jobs, models and server info."""

    def __init__(
        self,
        settings: ServeSettings,
        jobs: JobService,
        models: ModelRepository,
        inference: InferenceService,
        stats: RpcStats,
        started: float | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.models = models
        self.inference = inference
        self.stats = stats
        self.started = time.time() if started is None else started

    # ================================================================ seed RPCs
    @unary
    async def StartTraining(self, request: mcp_pb2.TrainRequest, context) -> mcp_pb2.TrainResponse:
        rec, text = await self.jobs.submit_training(convert.training_from_proto(request))
        annotate(job_id=rec.job_id)
        return mcp_pb2.TrainResponse(
            success=True, log=text, job_id=rec.job_id, job=convert.job_to_proto(self.jobs.view(rec))
        )

    @unary
    async def RunBenchmark(self, request: mcp_pb2.BenchmarkRequest, context) -> mcp_pb2.BenchmarkResponse:
        request_ = convert.benchmark_from_proto(request)
        rec, rows = await self.jobs.run_benchmark(
            request_, self.settings.benchmark.timeout_s, on_job=_annotate_job
        )
        return convert.benchmark_to_proto(rec.job_id, rows)

    @unary
    async def RunInference(self, request: mcp_pb2.InferRequest, context) -> mcp_pb2.InferResponse:
        on_model = lambda model_id: annotate(model_id=model_id)  # noqa: E731
        result = await self.inference.infer(convert.inference_from_proto(request), on_model=on_model)
        response = convert.inference_to_proto(result)
        if not request.model_id:  # answered by the default: say which and why, and when it changed
            response.default_model_source = self.models.default_source()
            response.default_model_notice = self.models.note_default_use(result.model_id)
        return response

    @streaming
    async def StreamInference(
        self, request: mcp_pb2.InferRequest, context
    ) -> AsyncIterator[mcp_pb2.InferChunk]:
        on_model = lambda model_id: annotate(model_id=model_id)  # noqa: E731
        async for piece in stream_inference(self.inference, convert.inference_from_proto(request), on_model):
            if piece.result is None:
                yield mcp_pb2.InferChunk(text=piece.text, tokens=piece.tokens)
                continue
            final = convert.inference_to_proto(piece.result)
            if not request.model_id:
                final.default_model_source = self.models.default_source()
                final.default_model_notice = self.models.note_default_use(piece.result.model_id)
            yield mcp_pb2.InferChunk(tokens=piece.tokens, final=final)

    # ================================================================ jobs
    @unary
    async def GetJob(self, request: mcp_pb2.GetJobRequest, context) -> mcp_pb2.Job:
        annotate(job_id=request.job_id)
        return convert.job_to_proto(self.jobs.view(self.jobs.get(request.job_id)))

    @unary
    async def ListJobs(self, request: mcp_pb2.ListJobsRequest, context) -> mcp_pb2.ListJobsResponse:
        states = convert.job_states_from_proto(list(request.states))
        kind = convert.PROTO_TO_KIND.get(request.kind) if request.kind else None
        jobs = self.jobs.list(states, kind, request.limit)
        return mcp_pb2.ListJobsResponse(jobs=[convert.job_to_proto(self.jobs.view(j)) for j in jobs])

    @unary
    async def CancelJob(self, request: mcp_pb2.CancelJobRequest, context) -> mcp_pb2.Job:
        annotate(job_id=request.job_id)
        return convert.job_to_proto(self.jobs.view(self.jobs.cancel(request.job_id)))

    @streaming
    async def WatchJob(self, request: mcp_pb2.WatchJobRequest, context) -> AsyncIterator[mcp_pb2.JobEvent]:
        annotate(job_id=request.job_id)
        async for kind, rec, metrics in self.jobs.watch(request.job_id):
            yield mcp_pb2.JobEvent(type=EVENT_TYPES[kind], job=convert.job_to_proto(self.jobs.view(rec)), metrics=metrics,
                                   time_unix=time.time())  # fmt: skip

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
        loaded = await self.models.load_reference(request.checkpoint, request.model_id, request.make_default)
        annotate(model_id=loaded.model_id)
        return convert.model_to_proto(loaded, self.models.default_id())

    @unary
    async def ListModels(self, request: mcp_pb2.ListModelsRequest, context) -> mcp_pb2.ListModelsResponse:
        default_id = self.models.default_id()
        servable = await asyncio.get_running_loop().run_in_executor(None, self.models.servable)
        loaded = {str(m.checkpoint.resolve()): m for m in self.models.loaded()}
        default_checkpoint = self.models.default_checkpoint()
        resolved_default = str(Path(default_checkpoint).resolve()) if default_checkpoint else ""
        return mcp_pb2.ListModelsResponse(
            models=[convert.model_to_proto(m, default_id) for m in self.models.loaded()],
            default_model_id=default_id,
            default_checkpoint=default_checkpoint,
            default_model_source=self.models.default_source(),
            servable=[convert.servable_to_proto(c, loaded, default_id, resolved_default) for c in servable],
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
            models=[convert.model_to_proto(m, default_id) for m in self.models.loaded()],
            running_jobs=[convert.job_to_proto(self.jobs.view(j)) for j in self.jobs.registry.active()],
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
        experiments = list_experiments(self.settings.conf_path / "experiment")
        return mcp_pb2.ListExperimentsResponse(
            experiments=[
                mcp_pb2.Experiment(name=e.name, description=e.description, yaml=e.yaml) for e in experiments
            ]
        )

    @unary
    async def GetRun(self, request: mcp_pb2.GetRunRequest, context) -> mcp_pb2.RunInfo:
        view = run_view(self.jobs.runs_dir, self.jobs.registry, request.run_id)
        annotate(run_id=view.run_id)
        return mcp_pb2.RunInfo(run_id=view.run_id, run_dir=str(view.run_dir), config_yaml=view.config_yaml,
                               summary_json=view.summary_json, checkpoint=view.checkpoint, job_ids=view.job_ids,
                               plots=view.plots)  # fmt: skip

    @unary
    async def GetRunPlot(self, request: mcp_pb2.GetRunPlotRequest, context) -> mcp_pb2.RunPlot:
        annotate(run_id=request.run_id)
        data = run_plot(self.jobs.runs_dir, self.jobs.registry, request.run_id, request.name)
        return mcp_pb2.RunPlot(name=request.name, mime_type="image/png", data=data)

    @unary
    async def DeleteRun(self, request: mcp_pb2.DeleteRunRequest, context) -> mcp_pb2.DeleteRunResponse:
        annotate(run_id=request.run_id)
        folder, size = delete_run(self.jobs.runs_dir, self.jobs.registry, request.run_id, request.confirm)
        return mcp_pb2.DeleteRunResponse(run_id=request.run_id, run_dir=str(folder), bytes_freed=size)

    @unary
    async def StartEvaluation(self, request: mcp_pb2.EvaluationRequest, context) -> mcp_pb2.Job:
        rec = self.jobs.submit_evaluation(convert.evaluation_from_proto(request))
        annotate(job_id=rec.job_id)
        return convert.job_to_proto(self.jobs.view(rec))

    @unary
    async def StartSweep(self, request: mcp_pb2.SweepRequest, context) -> mcp_pb2.Job:
        rec = await self.jobs.submit_sweep(convert.sweep_from_proto(request))
        annotate(job_id=rec.job_id)
        return convert.job_to_proto(self.jobs.view(rec))

    @unary
    async def GetSweepResults(self, request: mcp_pb2.GetJobRequest, context) -> mcp_pb2.SweepResults:
        annotate(job_id=request.job_id)
        rec, table = self.jobs.sweep_results(request.job_id)
        return convert.sweep_results_to_proto(convert.job_to_proto(self.jobs.view(rec)), table)

    @unary
    async def ListRuns(self, request: mcp_pb2.ListRunsRequest, context) -> mcp_pb2.ListRunsResponse:
        if request.limit < 0:
            raise InvalidArgument(f"limit={request.limit} is negative; pass 0 (all) or N > 0")
        runs = await asyncio.get_running_loop().run_in_executor(
            None, list_runs, self.jobs.runs_dir, self.jobs.registry, request.limit
        )
        return mcp_pb2.ListRunsResponse(runs=[convert.run_summary_to_proto(r) for r in runs])

    @unary
    async def GetBenchmarkResults(self, request: mcp_pb2.GetJobRequest, context) -> mcp_pb2.BenchmarkResponse:
        annotate(job_id=request.job_id)
        rec, rows = self.jobs.benchmark_results(request.job_id)
        return convert.benchmark_to_proto(rec.job_id, rows)


def _annotate_job(job_id: str) -> None:
    annotate(job_id=job_id)
