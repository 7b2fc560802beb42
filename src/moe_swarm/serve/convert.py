"""Conversions between the wire messages (serve/proto/mcp.proto) and the control core's types.

The servicer uses the ``*_to_proto`` / ``*_from_proto`` pairs in both directions; the MCP server turns
the sidecar's replies back into the core's :class:`~moe_swarm.control.job_view.JobView` with
:func:`job_from_proto`, so a job has one definition on both sides of the wire.
"""

from __future__ import annotations

from moe_swarm.control.inference import InferenceRequest, InferenceResult
from moe_swarm.control.job_kinds import BenchmarkRequest, EvaluationRequest, TrainingRequest
from moe_swarm.control.job_view import JobView
from moe_swarm.control.models import LoadedModel, ServableCheckpoint
from moe_swarm.control.runs import RunSummaryView
from moe_swarm.control.sweeps import SweepRequest, SweepTable
from moe_swarm.serve.proto import mcp_pb2

KIND_TO_PROTO = {
    "training": mcp_pb2.TRAINING,
    "benchmark": mcp_pb2.BENCHMARK,
    "evaluation": mcp_pb2.EVALUATION,
    "sweep": mcp_pb2.SWEEP,
}
PROTO_TO_KIND = {v: k for k, v in KIND_TO_PROTO.items()}


def job_to_proto(view: JobView) -> mcp_pb2.Job:
    job = mcp_pb2.Job(
        job_id=view.job_id,
        kind=KIND_TO_PROTO.get(view.kind, mcp_pb2.JOB_KIND_UNSPECIFIED),
        state=mcp_pb2.JobState.Value(view.state),
        config_path=view.config_path,
        overrides=view.overrides,
        run_id=view.run_id,
        request_id=view.request_id,
        created_unix=view.created_unix,
        started_unix=view.started_unix,
        finished_unix=view.finished_unix,
        pid=view.pid,
        message=view.message,
        log_tail=view.log_tail,
        run_dir=view.run_dir,
        checkpoint=view.checkpoint,
        metrics=view.metrics,
        cancel_requested=view.cancel_requested,
        priority=view.priority,
        queue_position=view.queue_position,
        restarts=view.restarts,
    )
    if view.exit_code is not None:
        job.exit_code = view.exit_code
    return job


def job_from_proto(j: mcp_pb2.Job) -> JobView:
    return JobView(
        job_id=j.job_id,
        kind=mcp_pb2.JobKind.Name(j.kind).lower(),
        state=mcp_pb2.JobState.Name(j.state),
        config_path=j.config_path,
        overrides=list(j.overrides),
        run_id=j.run_id,
        request_id=j.request_id,
        created_unix=j.created_unix,
        started_unix=j.started_unix,
        finished_unix=j.finished_unix,
        pid=j.pid,
        exit_code=j.exit_code if j.HasField("exit_code") else None,
        message=j.message,
        log_tail=list(j.log_tail),
        run_dir=j.run_dir,
        checkpoint=j.checkpoint,
        metrics=dict(j.metrics),
        cancel_requested=j.cancel_requested,
        priority=j.priority,
        queue_position=j.queue_position,
        restarts=j.restarts,
    )


def job_states_from_proto(states: list[int]) -> set[str]:
    return {mcp_pb2.JobState.Name(s) for s in states if s != mcp_pb2.JOB_STATE_UNSPECIFIED}


def training_from_proto(r: mcp_pb2.TrainRequest) -> TrainingRequest:
    return TrainingRequest(config_path=r.config_path, overrides=list(r.overrides), run_id=r.run_id,
                           request_id=r.request_id, priority=r.priority)  # fmt: skip


def benchmark_from_proto(r: mcp_pb2.BenchmarkRequest) -> BenchmarkRequest:
    return BenchmarkRequest(num_samples=r.num_samples, suites=list(r.suites))


def benchmark_to_proto(job_id: str, rows: list[dict]) -> mcp_pb2.BenchmarkResponse:
    results = [mcp_pb2.BenchmarkResult(metric=r["metric"], value=float(r["value"]), labels=r.get("labels", {}))
               for r in rows]  # fmt: skip
    return mcp_pb2.BenchmarkResponse(results=results, job_id=job_id)


def inference_from_proto(r: mcp_pb2.InferRequest) -> InferenceRequest:
    """Unset optional fields (rounds, temperature, seed) stay None: the server's defaults."""
    return InferenceRequest(
        prompt=r.prompt,
        model_id=r.model_id,
        max_new_tokens=r.max_new_tokens,
        agents=r.agents,
        rounds=r.rounds if r.HasField("rounds") else None,
        temperature=r.temperature if r.HasField("temperature") else None,
        seed=r.seed if r.HasField("seed") else None,
        mode=r.mode,
        messages=tuple((m.role, m.content) for m in r.messages),
    )


def inference_to_proto(r: InferenceResult) -> mcp_pb2.InferResponse:
    return mcp_pb2.InferResponse(
        output=r.answer,
        vote_share=r.vote_share,
        votes=[mcp_pb2.Vote(answer=v.answer, weight=v.weight) for v in r.votes],
        forward_passes=r.forward_passes,
        generated_tokens=r.generated_tokens,
        flops=r.flops,
        rounds_used=r.rounds_used,
        agents=r.agents,
        model_id=r.model_id,
        batch_size=r.batch_size,
        steps=[mcp_pb2.Step(text=s.text, vote_share=s.vote_share) for s in r.steps],
    )


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


def servable_to_proto(
    c: ServableCheckpoint, loaded: dict[str, LoadedModel], default_id: str, default_checkpoint: str
) -> mcp_pb2.ModelInfo:
    """A checkpoint on disk; a loaded one is reported as loaded, under the id it was loaded with."""
    m = loaded.get(str(c.checkpoint))
    if m is not None:
        info = model_to_proto(m, default_id)
        info.loaded = True
        return info
    return mcp_pb2.ModelInfo(
        model_id=c.model_id,
        checkpoint=str(c.checkpoint),
        task=c.task,
        global_step=c.global_step,
        is_default=bool(default_checkpoint) and str(c.checkpoint) == default_checkpoint,
        max_seq_len=c.max_seq_len,
        prompt_format=c.prompt_format,
        example_prompt=c.example_prompt,
    )


def run_summary_to_proto(r: RunSummaryView) -> mcp_pb2.RunSummary:
    out = mcp_pb2.RunSummary(
        run_id=r.run_id, experiment=r.experiment, status=r.status, global_step=r.global_step,
        max_steps=r.max_steps, metric=r.metric, checkpoint=r.checkpoint, job_ids=r.job_ids,
        updated_unix=r.updated_unix,
    )  # fmt: skip
    if r.metric_value is not None:
        out.metric_value = r.metric_value
    return out


def evaluation_from_proto(r: mcp_pb2.EvaluationRequest) -> EvaluationRequest:
    em = r.em_problems if r.HasField("em_problems") else None
    return EvaluationRequest(checkpoint=r.checkpoint, split=r.split or "val", em_problems=em,
                             max_batches=r.max_batches, request_id=r.request_id)  # fmt: skip


def sweep_from_proto(r: mcp_pb2.SweepRequest) -> SweepRequest:
    return SweepRequest(config_path=r.config_path, params=list(r.params), overrides=list(r.overrides),
                        search=r.search, trials=r.trials, sweep_id=r.sweep_id, request_id=r.request_id,
                        priority=r.priority)  # fmt: skip


def sweep_results_to_proto(job: mcp_pb2.Job, table: SweepTable) -> mcp_pb2.SweepResults:
    trials = []
    for t in table.trials:
        row = mcp_pb2.SweepTrial(number=t.number, run_id=t.run_id, overrides=t.overrides, metric=t.metric,
                                 status=t.status, global_step=t.global_step, checkpoint=t.checkpoint)  # fmt: skip
        if t.value is not None:
            row.value = t.value
        trials.append(row)
    return mcp_pb2.SweepResults(job_id=job.job_id, job=job, sweep_id=table.sweep_id, search=table.search,
                                metric=table.metric, mode=table.mode, trials=trials, best=table.best,
                                markdown=table.markdown())  # fmt: skip
