"""Job kinds: what a training job and a benchmark job each are, apart from being a supervised child.

A :class:`JobKind` turns a request into a validated spec, says whether a new job may start now, gives
the child's argv and environment, and reads the outcome a finished child left behind (a training run's
summary and checkpoint, a benchmark's results file). The job service (:mod:`moe_swarm.control.jobs`)
does the rest the same way for every kind. A new kind of job is a new class here, registered in
:class:`~moe_swarm.control.jobs.JobService`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from moe_swarm.atomic import atomic_write_text
from moe_swarm.control.errors import Busy, FailedPrecondition, InvalidArgument
from moe_swarm.control.registry import JobRecord
from moe_swarm.control.settings import (
    BenchmarkSettings,
    EvaluationSettings,
    TrainingSettings,
    resolve_command,
)
from moe_swarm.control.validation import (
    OverridePolicy,
    ResolvedConfig,
    check_id,
    resolve_config_path,
    validate_overrides,
)
from moe_swarm.store.layout import RunLayout, is_checkpoint
from moe_swarm.store.summary import read_summary

MAX_PRIORITY = 1000
ALREADY_COMPLETE = "is already complete:"  # store.summary.already_complete_message, printed by the child


@dataclass(frozen=True)
class Outcome:
    """What a finished child left behind: final metrics, a checkpoint, or why a clean exit still failed."""

    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""
    missing: str = ""  # non-empty: exit code 0 is a failure with this message


class JobKind(ABC):
    """One kind of job. ``spec`` is whatever :meth:`validate` returns; it carries ``request_id``."""

    name: ClassVar[str]

    @abstractmethod
    def validate(self, request: Any) -> Any:
        """The request checked and normalised (raises InvalidArgument, NotFound, PermissionDenied)."""

    async def precheck(self, spec: Any) -> None:
        """A slower check before the job takes a slot (e.g. compose the config); default none."""
        return None

    @abstractmethod
    def admit(self, spec: Any, active: list[JobRecord]) -> None:
        """Raise Busy / FailedPrecondition when a job of this kind may not start next to ``active``."""

    @abstractmethod
    def record(self, job_id: str, spec: Any, log_path: Path) -> JobRecord:
        """The new job's record, argv included."""

    def environment(self, rec: JobRecord) -> dict[str, str]:
        """Environment variables the child gets on top of the service's base environment."""
        return {}

    def outcome(self, rec: JobRecord) -> Outcome:
        return Outcome()

    def success_note(self, tail: list[str]) -> str:
        """A word the message of a succeeded job must carry (read from the log's last lines); "" = none."""
        return ""

    def slots(self) -> int:
        """How many jobs of this kind run at once; more wait PENDING in the queue (admit bounds it)."""
        return 1


def hydra_quote(value: str) -> str:
    """A Hydra override value that stays one literal string (paths may hold spaces, commas, quotes)."""
    return "'" + value.replace("'", "\\'") + "'"


@dataclass(frozen=True)
class TrainingRequest:
    config_path: str = ""
    overrides: list[str] = field(default_factory=list)
    run_id: str = ""
    request_id: str = ""
    priority: int = 0


@dataclass(frozen=True)
class TrainSpec:
    """A validated training request."""

    config: ResolvedConfig
    config_path: str
    overrides: list[str]
    run_id: str
    request_id: str
    priority: int = 0

    def fingerprint(self) -> str:
        data = json.dumps([self.config_path, self.overrides, self.run_id], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


class TrainingJob(JobKind):
    """``python -m moe_swarm.cli.train experiment=... run_id=... <overrides>`` in a Hydra run folder."""

    name = "training"

    def __init__(self, settings: TrainingSettings, *, conf_dir: Path, runs_dir: Path, work_dir: Path) -> None:
        self.settings = settings
        self.conf_dir = conf_dir
        self.runs_dir = runs_dir
        self.work_dir = work_dir
        self.policy = OverridePolicy(
            addable_keys=tuple(settings.addable_keys),
            path_keys=tuple(settings.path_keys),
            data_roots=tuple(settings.data_roots),
            max_overrides=settings.max_overrides,
        )

    def validate(self, request: TrainingRequest) -> TrainSpec:
        check_id(request.run_id, "run_id")
        check_id(request.request_id, "request_id")
        resolved = resolve_config_path(
            request.config_path,
            experiment_dir=self.conf_dir / "experiment",
            config_roots=self.settings.config_roots,
            default_experiment=self.settings.default_experiment,
        )
        cleaned = validate_overrides(list(request.overrides), self.policy)
        if not -MAX_PRIORITY <= request.priority <= MAX_PRIORITY:
            raise InvalidArgument(
                f"priority={request.priority} is out of range; use -{MAX_PRIORITY}..{MAX_PRIORITY}"
            )
        return TrainSpec(
            resolved, request.config_path, cleaned, request.run_id, request.request_id, request.priority
        )

    async def precheck(self, spec: TrainSpec) -> None:
        """Compose and validate the config as the child will (in a worker thread): a typo is refused
        with Hydra's or the validator's message before the job takes a slot."""
        config_name = self.settings.config_name
        if not config_name:
            return
        from moe_swarm.control.compose import check_training_config

        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory(prefix="compose-", dir=self.work_dir) as tmp:
            overrides = self.hydra_overrides(spec, spec.run_id or "submit-check", Path(tmp), "submitted")
            model = await loop.run_in_executor(
                None, check_training_config, self.conf_dir, config_name, overrides
            )
        last = (
            RunLayout.for_run(self.runs_dir, spec.run_id).existing_last_checkpoint() if spec.run_id else None
        )
        if last is not None and model is not None:
            from moe_swarm.control.compose import check_resume_model

            await loop.run_in_executor(None, check_resume_model, spec.run_id, last, model)

    def admit(self, spec: TrainSpec, active: list[JobRecord]) -> None:
        """Running jobs fill ``max_concurrent`` slots; beyond them up to ``max_queued`` wait in the queue."""
        limit, queued = self.settings.max_concurrent, self.settings.max_queued
        if len(active) >= limit and not queued:
            raise Busy(
                f"{len(active)} training job(s) already running (limit {limit}: serve.training.max_concurrent): "
                f"{', '.join(j.job_id for j in active)}; wait for one to finish or cancel it"
            )
        if len(active) >= limit + queued:
            raise Busy(
                f"{len(active)} training job(s) running or queued (limits: serve.training.max_concurrent={limit}, "
                f"max_queued={queued}); wait for one to finish or cancel one: {', '.join(j.job_id for j in active)}"
            )
        for j in active:  # a run id made from the new job's id is always free
            if spec.run_id and j.run_id == spec.run_id:
                raise FailedPrecondition(
                    f"run_id {spec.run_id!r} is in use by {j.state.value.lower()} job {j.job_id}; wait or cancel it"
                )

    def slots(self) -> int:
        return self.settings.max_concurrent

    def record(self, job_id: str, spec: TrainSpec, log_path: Path) -> JobRecord:
        run_id = spec.run_id or job_id
        return JobRecord(
            job_id=job_id,
            kind=self.name,
            config_path=spec.config_path or spec.config.name,
            overrides=list(spec.overrides),
            run_id=run_id,
            request_id=spec.request_id,
            request_fingerprint=spec.fingerprint(),
            argv=resolve_command(self.settings.command)
            + self.hydra_overrides(spec, run_id, self.work_dir / job_id / "conf", job_id),
            run_dir=str(RunLayout.for_run(self.runs_dir, run_id).root),
            log_path=str(log_path),
            priority=spec.priority,
        )

    def hydra_overrides(self, spec: TrainSpec, run_id: str, conf: Path, name: str) -> list[str]:
        """The child's Hydra overrides; a file experiment is written to ``conf/experiment/<name>.yaml``."""
        out = []
        if spec.config.kind == "file":
            text = spec.config.text
            if "@package" not in "\n".join(text.splitlines()[:5]):
                text = "# @package _global_\n" + text
            atomic_write_text(conf / "experiment" / f"{name}.yaml", text)
            out += [f"hydra.searchpath=[{hydra_quote(f'file://{conf}')}]", f"experiment={name}"]
        else:
            out.append(f"experiment={spec.config.name}")
        out += [f"run_id={run_id}", f"paths.runs_dir={hydra_quote(str(self.runs_dir))}"]
        return out + list(self.settings.extra_overrides) + list(spec.overrides)

    def environment(self, rec: JobRecord) -> dict[str, str]:
        return {"RUN_ID": rec.run_id}

    def success_note(self, tail: list[str]) -> str:
        """A run id that had already finished its max_steps trains nothing: say so, not just "finished"."""
        done = [ln.strip() for ln in tail if ALREADY_COMPLETE in ln]
        return f"nothing ran: {done[-1]}" if done else ""

    def outcome(self, rec: JobRecord) -> Outcome:
        """The run's final metrics (summary.json) and its checkpoint (the summary's, else last.ckpt)."""
        layout = RunLayout(rec.run_dir)
        summary = read_summary(layout.summary) or {}
        final = {
            k: float(v) for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))
        }
        last = layout.existing_last_checkpoint()
        ckpt = summary.get("checkpoint") or (str(last) if last else "")
        return Outcome(metrics=final, checkpoint=str(ckpt) if ckpt and is_checkpoint(ckpt) else "")


@dataclass(frozen=True)
class BenchmarkRequest:
    num_samples: int = 0
    suites: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BenchSpec:
    repeats: int
    suites: list[str]
    request_id: str = ""  # benchmarks are not idempotent: every request runs


class BenchmarkJob(JobKind):
    """The benchmark child (``serve.benchmark.command``) over named suites; one at a time."""

    name = "benchmark"

    def __init__(self, settings: BenchmarkSettings, *, work_dir: Path) -> None:
        self.settings = settings
        self.work_dir = work_dir

    def validate(self, request: BenchmarkRequest) -> BenchSpec:
        b = self.settings
        if request.num_samples < 0:
            raise InvalidArgument(
                f"num_samples={request.num_samples} is negative; pass the number of timed repeats (>= 1)"
            )
        if request.num_samples > b.max_samples:
            raise InvalidArgument(
                f"num_samples={request.num_samples} is above this server's limit of {b.max_samples}; "
                "ask for fewer repeats"
            )
        names = list(request.suites) or list(b.suites)
        unknown = [s for s in names if s not in b.available_suites]
        if unknown:
            raise InvalidArgument(
                f"unknown benchmark suite(s) {unknown}; choose from {sorted(b.available_suites)}"
            )
        return BenchSpec(request.num_samples or b.default_samples, names)

    def admit(self, spec: BenchSpec, active: list[JobRecord]) -> None:
        if active:
            raise Busy(
                f"benchmark job {active[0].job_id} is running; one benchmark runs at a time so timings "
                "are not disturbed; try again when it has finished"
            )

    def record(self, job_id: str, spec: BenchSpec, log_path: Path) -> JobRecord:
        b = self.settings
        out = self.work_dir / job_id / "results.json"
        argv = resolve_command(b.command) + [
            "--out", str(out), "--repeats", str(spec.repeats), "--suites", ",".join(spec.suites),
            "--threads", str(b.threads),
        ]  # fmt: skip
        if b.quick:
            argv.append("--quick")
        return JobRecord(
            job_id=job_id,
            kind=self.name,
            config_path=",".join(spec.suites),
            argv=argv,
            log_path=str(log_path),
            params={"repeats": spec.repeats, "suites": spec.suites, "results_path": str(out)},
        )

    def outcome(self, rec: JobRecord) -> Outcome:
        if not Path(rec.params.get("results_path", "")).is_file():
            return Outcome(missing="the benchmark child exited 0 but wrote no results")
        return Outcome()

    @staticmethod
    def results(rec: JobRecord) -> list[dict]:
        """The rows a succeeded benchmark job wrote: ``{"metric", "value", "labels"}`` each."""
        path = Path(rec.params.get("results_path", ""))
        return json.loads(path.read_text(encoding="utf-8"))["rows"]


@dataclass(frozen=True)
class EvaluationRequest:
    checkpoint: str  # a training job id, run id or checkpoint path under the allowed roots
    split: str = "val"
    em_problems: int | None = None  # None: the server's default
    max_batches: int = 0  # 0 = every batch of the split
    request_id: str = ""


@dataclass(frozen=True)
class EvalSpec:
    checkpoint: Path
    reference: str
    split: str
    em_problems: int
    max_batches: int
    request_id: str = ""

    def fingerprint(self) -> str:
        data = json.dumps([str(self.checkpoint), self.split, self.em_problems, self.max_batches])
        return hashlib.sha256(data.encode()).hexdigest()[:16]


class EvaluationJob(JobKind):
    """``moe-swarm-eval checkpoint=... split=...`` on a checkpoint the sidecar may name; its report (loss,
    bpb, perplexity, exact match) becomes the job's metrics."""

    name = "evaluation"
    SPLITS = ("val", "test")

    def __init__(self, settings: EvaluationSettings, *, resolve: Callable[[str], Path], runs_dir: Path,
                 work_dir: Path) -> None:  # fmt: skip
        self.settings = settings
        self.resolve = resolve  # a job id, run id or path -> the checkpoint (control.models' rules)
        self.runs_dir = runs_dir
        self.work_dir = work_dir

    def validate(self, request: EvaluationRequest) -> EvalSpec:
        check_id(request.request_id, "request_id")
        if request.split not in self.SPLITS:
            raise InvalidArgument(
                f"split={request.split!r} is not a split; use 'val' or 'test' (reasoning runs)"
            )
        em = self.settings.default_em_problems if request.em_problems is None else request.em_problems
        if not 0 <= em <= self.settings.max_em_problems:
            raise InvalidArgument(f"em_problems={em} is out of range; use 0..{self.settings.max_em_problems}")
        if request.max_batches < 0:
            raise InvalidArgument(f"max_batches={request.max_batches} is negative; pass 0 (all) or N > 0")
        path = self.resolve(request.checkpoint)
        return EvalSpec(path, request.checkpoint, request.split, em, request.max_batches, request.request_id)

    def admit(self, spec: EvalSpec, active: list[JobRecord]) -> None:
        limit = self.settings.max_concurrent + self.settings.max_queued
        if len(active) >= limit:
            raise Busy(
                f"{len(active)} evaluation job(s) running or queued (limit {limit}: serve.evaluation."
                "max_concurrent + max_queued); wait for one to finish"
            )

    def slots(self) -> int:
        return self.settings.max_concurrent

    def record(self, job_id: str, spec: EvalSpec, log_path: Path) -> JobRecord:
        out = self.work_dir / job_id / "eval.json"
        argv = resolve_command(self.settings.command) + [
            f"checkpoint={hydra_quote(str(spec.checkpoint))}", f"split={spec.split}",
            f"em_problems={spec.em_problems}", f"max_batches={spec.max_batches or 'null'}",
            f"out={hydra_quote(str(out))}", f"paths.runs_dir={hydra_quote(str(self.runs_dir))}",
        ]  # fmt: skip
        return JobRecord(
            job_id=job_id,
            kind=self.name,
            config_path=spec.reference,
            request_id=spec.request_id,
            request_fingerprint=spec.fingerprint(),
            argv=argv,
            log_path=str(log_path),
            checkpoint=str(spec.checkpoint),
            params={"results_path": str(out), "split": spec.split},
        )

    def outcome(self, rec: JobRecord) -> Outcome:
        try:
            report = json.loads(Path(rec.params.get("results_path", "")).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return Outcome(missing="the evaluation child exited 0 but wrote no report")
        metrics = {
            k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return Outcome(metrics=metrics, checkpoint=rec.checkpoint)
