"""Typed tool results (pydantic): each tool returns one of these, so its outputSchema is published and
its result arrives as structured content. Converters from the sidecar's protobuf messages live here."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from moe_swarm.serve.client import TERMINAL
from moe_swarm.serve.proto import mcp_pb2


class Experiment(BaseModel):
    name: str = Field(description="experiment name to pass to start_training")
    description: str = Field(description="what the experiment is for (first comment line of its YAML)")


class ExperimentList(BaseModel):
    experiments: list[Experiment]


class Job(BaseModel):
    job_id: str
    kind: str = Field(description="training or benchmark")
    state: str = Field(description="PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED")
    config_path: str
    overrides: list[str]
    run_id: str
    created_unix: float
    started_unix: float
    finished_unix: float
    exit_code: int | None = Field(description="exit status of the child; negative = killed by that signal")
    message: str = Field(description="why the job is in its state (the failure reason for FAILED)")
    log_tail: list[str] = Field(description="last log lines, for failed jobs")
    run_dir: str
    checkpoint: str = Field(description="newest checkpoint of the run, '' until one exists")
    metrics: dict[str, float] = Field(description="latest value of every metric the job reported")
    cancel_requested: bool
    finished: bool = Field(description="True once the state is SUCCEEDED, FAILED or CANCELLED")


class JobList(BaseModel):
    jobs: list[Job]


class WaitResult(BaseModel):
    job: Job
    finished: bool = Field(description="False when the wait timed out first (the job keeps running)")
    waited_s: float


class LogPage(BaseModel):
    job_id: str
    text: str
    offset: int = Field(description="byte offset of `text` in the log")
    next_offset: int = Field(description="pass as `offset` to read on from here")
    lines: int
    more: bool = Field(description="True when the log continues past this page")


class BenchmarkRow(BaseModel):
    metric: str
    value: float
    labels: dict[str, str]


class BenchmarkResult(BaseModel):
    job_id: str
    rows: list[BenchmarkRow]


class Vote(BaseModel):
    answer: str
    weight: float


class Step(BaseModel):
    text: str
    vote_share: float


class InferenceResult(BaseModel):
    answer: str
    vote_share: float = Field(description="share of the vote the answer got (0..1)")
    votes: list[Vote]
    forward_passes: int
    generated_tokens: int
    flops: float
    rounds_used: int
    agents: int
    model_id: str
    batch_size: int
    steps: list[Step] = Field(
        description="mode 'steps': the committed reasoning steps with their vote shares"
    )


class Model(BaseModel):
    model_id: str
    checkpoint: str
    params_total: int
    params_active: int
    task: str = Field(description="reasoning task the model was trained on; '' = a text model")
    prompt_format: str = Field(description="what a prompt for this model must look like")
    example_prompt: str
    global_step: int
    is_default: bool
    device: str
    max_seq_len: int


class ModelList(BaseModel):
    models: list[Model]
    default_model_id: str = Field(description="the model a request without `model` gets ('' = none yet)")


def job_from_proto(j: mcp_pb2.Job) -> Job:
    state = mcp_pb2.JobState.Name(j.state)
    return Job(
        job_id=j.job_id,
        kind=mcp_pb2.JobKind.Name(j.kind).lower(),
        state=state,
        config_path=j.config_path,
        overrides=list(j.overrides),
        run_id=j.run_id,
        created_unix=j.created_unix,
        started_unix=j.started_unix,
        finished_unix=j.finished_unix,
        exit_code=j.exit_code if j.HasField("exit_code") else None,
        message=j.message,
        log_tail=list(j.log_tail),
        run_dir=j.run_dir,
        checkpoint=j.checkpoint,
        metrics=dict(j.metrics),
        cancel_requested=j.cancel_requested,
        finished=j.state in TERMINAL,
    )


def model_from_proto(m: mcp_pb2.ModelInfo) -> Model:
    return Model(
        model_id=m.model_id,
        checkpoint=m.checkpoint,
        params_total=m.params_total,
        params_active=m.params_active,
        task=m.task,
        prompt_format=m.prompt_format,
        example_prompt=m.example_prompt,
        global_step=m.global_step,
        is_default=m.is_default,
        device=m.device,
        max_seq_len=m.max_seq_len,
    )


def benchmark_from_proto(r: mcp_pb2.BenchmarkResponse) -> BenchmarkResult:
    return BenchmarkResult(
        job_id=r.job_id,
        rows=[BenchmarkRow(metric=x.metric, value=x.value, labels=dict(x.labels)) for x in r.results],
    )


def inference_from_proto(r: mcp_pb2.InferResponse) -> InferenceResult:
    return InferenceResult(
        answer=r.output,
        vote_share=r.vote_share,
        votes=[Vote(answer=v.answer, weight=v.weight) for v in r.votes],
        forward_passes=r.forward_passes,
        generated_tokens=r.generated_tokens,
        flops=r.flops,
        rounds_used=r.rounds_used,
        agents=r.agents,
        model_id=r.model_id,
        batch_size=r.batch_size,
        steps=[Step(text=x.text, vote_share=x.vote_share) for x in r.steps],
    )


def as_json(model: BaseModel | dict[str, Any]) -> str:
    if isinstance(model, BaseModel):
        return model.model_dump_json(indent=1)
    import json

    return json.dumps(model, indent=1, sort_keys=True)
