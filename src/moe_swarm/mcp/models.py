"""Typed tool results (pydantic): each tool returns one of these, so its outputSchema is published and
its result arrives as structured content. A job is the control core's
:class:`~moe_swarm.control.job_view.JobView` (read off the wire by :func:`moe_swarm.serve.convert.job_from_proto`);
converters from the sidecar's other protobuf messages live here."""

from __future__ import annotations

import dataclasses
from typing import Any, get_type_hints

from pydantic import BaseModel, Field, create_model

from moe_swarm.control.inference import InferenceResult as CoreInferenceResult
from moe_swarm.control.inference import Step, Vote
from moe_swarm.control.job_view import JobView
from moe_swarm.serve.proto import mcp_pb2


class Experiment(BaseModel):
    name: str = Field(description="experiment name to pass to start_training")
    description: str = Field(description="what the experiment is for (first comment line of its YAML)")


class ExperimentList(BaseModel):
    experiments: list[Experiment]


class RunSummary(BaseModel):
    run_id: str
    experiment: str = Field("", description="the experiment it was launched with ('' = unknown)")
    status: str = Field("", description="summary.json's status, or the state of the job that has it now")
    global_step: int = 0
    max_steps: int = Field(0, description="trainer.max_steps of its newest launch (0 = unknown)")
    metric: str = Field("", description="the optimised metric, e.g. val/bpb")
    metric_value: float | None = Field(None, description="its value at the end of the run")
    checkpoint: str = ""
    job_ids: list[str] = Field(
        default_factory=list, description="this sidecar's jobs on the run, newest first"
    )


class RunList(BaseModel):
    runs: list[RunSummary]


class DeletedRun(BaseModel):
    run_id: str
    run_dir: str = Field(description="the folder that was removed")
    bytes_freed: int


def run_from_proto(r: mcp_pb2.RunSummary) -> RunSummary:
    fields = {name: getattr(r, name) for name in RunSummary.model_fields if name != "metric_value"}
    fields["job_ids"] = list(r.job_ids)
    return RunSummary(**fields, metric_value=r.metric_value if r.HasField("metric_value") else None)


def _model_of(view: type) -> type[BaseModel]:
    """A pydantic model with a dataclass's fields, each field's ``doc`` metadata as its description
    (so the tool's output schema documents it): the MCP side of the core's one view, not a copy."""
    hints = get_type_hints(view)
    spec: dict[str, Any] = {
        f.name: (hints[f.name], Field(description=f.metadata.get("doc"))) for f in dataclasses.fields(view)
    }
    return create_model(view.__name__.removesuffix("View"), __doc__=view.__doc__, **spec)


Job = _model_of(JobView)


def job_model(view: JobView) -> Job:  # type: ignore[valid-type]
    return Job(**dataclasses.asdict(view))


class JobList(BaseModel):
    jobs: list[Job]  # type: ignore[valid-type]


class WaitResult(BaseModel):
    job: Job  # type: ignore[valid-type]
    finished: bool = Field(description="False when the wait timed out first (the job keeps running)")
    waited_s: float


class LogPage(BaseModel):
    job_id: str
    text: str
    offset: int = Field(description="byte offset in the log where this page starts (metrics lines left out)")
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


InferenceResult = _model_of(CoreInferenceResult)


class InferenceAnswer(InferenceResult):  # type: ignore[valid-type, misc]
    """The answer plus, when no model was named, which default answered and whether it changed."""

    default_model_source: str = Field(
        "", description="set when no model was named: why `model_id` is the default"
    )
    default_model_notice: str = Field(
        "", description="set when the default model changed since the previous answer by the default"
    )


class ChatMessage(BaseModel):
    role: str = Field(description="system, user, assistant, ... as the model's chat template expects")
    content: str


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
    loaded: bool = Field(False, description="in memory now (in `servable`)")


class ModelList(BaseModel):
    models: list[Model] = Field(description="models loaded in memory")
    default_model_id: str = Field(description="the model a request without `model` gets ('' = none yet)")
    default_model_source: str = Field("", description="why it is the default (pinned by whom)")
    servable: list[Model] = Field(
        default_factory=list,
        description="every checkpoint a request may name (loaded or not), with its task and prompt format",
    )


def model_from_proto(m: mcp_pb2.ModelInfo) -> Model:
    """The fields of ModelInfo a tool shows (the same names on the wire)."""
    return Model(**{name: getattr(m, name) for name in Model.model_fields})


def benchmark_from_proto(r: mcp_pb2.BenchmarkResponse) -> BenchmarkResult:
    return BenchmarkResult(
        job_id=r.job_id,
        rows=[BenchmarkRow(metric=x.metric, value=x.value, labels=dict(x.labels)) for x in r.results],
    )


def inference_from_proto(r: mcp_pb2.InferResponse) -> InferenceAnswer:
    """The sidecar's InferResponse as the core's result (the wire calls the answer ``output``)."""
    nested = ("answer", "votes", "steps")
    same = {
        f.name: getattr(r, f.name) for f in dataclasses.fields(CoreInferenceResult) if f.name not in nested
    }
    same.update(answer=r.output, votes=[Vote(v.answer, v.weight) for v in r.votes],
                steps=[Step(s.text, s.vote_share) for s in r.steps])  # fmt: skip
    return InferenceAnswer(
        **same, default_model_source=r.default_model_source, default_model_notice=r.default_model_notice
    )


def as_json(model: BaseModel | dict[str, Any]) -> str:
    if isinstance(model, BaseModel):
        return model.model_dump_json(indent=1)
    import json

    return json.dumps(model, indent=1, sort_keys=True)


class SweepTrial(BaseModel):
    number: int = Field(description="Hydra's job number n; the trial's run id is <sweep_id>-<n>")
    run_id: str
    overrides: list[str] = Field(description="the values this trial swept (key=value)")
    metric: str = Field(description="the objective (the run's optimized_metric)")
    value: float | None = Field(None, description="the objective at the trial's final step; None until then")
    status: str = Field(description="the run's status (succeeded, ...), running, or incomplete")
    global_step: int = 0
    checkpoint: str = ""


class SweepResults(BaseModel):
    job_id: str
    state: str = Field(description="the sweep job's state")
    sweep_id: str
    search: str = Field(description="grid or optuna")
    metric: str
    mode: str = Field(description="min or max: which objective value is best")
    trials: list[SweepTrial]
    best: int = Field(description="index into trials of the best finished trial; -1 while none has finished")
    markdown: str = Field(description="the same table as Markdown")


def sweep_from_proto(r: mcp_pb2.SweepResults) -> SweepResults:
    trials = [SweepTrial(number=t.number, run_id=t.run_id, overrides=list(t.overrides), metric=t.metric,
                         value=t.value if t.HasField("value") else None, status=t.status,
                         global_step=t.global_step, checkpoint=t.checkpoint) for t in r.trials]  # fmt: skip
    return SweepResults(job_id=r.job_id, state=mcp_pb2.JobState.Name(r.job.state), sweep_id=r.sweep_id,
                        search=r.search, metric=r.metric, mode=r.mode, trials=trials, best=r.best,
                        markdown=r.markdown)  # fmt: skip
