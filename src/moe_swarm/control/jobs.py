"""The job service: submits, tracks, cancels and streams jobs of every kind; no transport.

The registry on disk is the source of truth. A job kind (:mod:`moe_swarm.control.job_kinds`) gives the
argv, environment and outcome; the process supervisor (:mod:`moe_swarm.control.supervisor`) runs the
child; this module ties them together: idempotent submission, limits, the queue, state changes, graceful
cancel and shutdown. Telling readers about changes (wait, watch, tail, metric events) is
:mod:`moe_swarm.control.job_events`; sweeps as one job are :mod:`moe_swarm.control.sweeps`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from moe_swarm.control.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    NotFound,
    Unavailable,
)
from moe_swarm.control.exits import describe_exit, failure_reason
from moe_swarm.control.job_events import JobEvents
from moe_swarm.control.job_kinds import (
    BenchmarkJob,
    BenchmarkRequest,
    EvaluationJob,
    EvaluationRequest,
    JobKind,
    TrainingJob,
    TrainingRequest,
)
from moe_swarm.control.job_store import SqliteJobRegistry
from moe_swarm.control.job_view import JobView
from moe_swarm.control.models import resolve_checkpoint_reference
from moe_swarm.control.registry import JobRecord, JobRegistry, JobState, new_job_id
from moe_swarm.control.settings import BenchmarkSettings, EvaluationSettings, SweepSettings, TrainingSettings
from moe_swarm.control.supervisor import ChildHooks, ProcessSupervisor, stop_orphan
from moe_swarm.control.sweeps import SweepJob, SweepRequest, SweepTable
from moe_swarm.control.validation import check_id
from moe_swarm.store.layout import METRICS_LINES_ENV, parse_metrics_line

log = logging.getLogger("moe_swarm.control.jobs")


class JobService:
    """Jobs by id. ``hidden_env``: variables of this process a child must never see (credentials)."""

    def __init__(
        self,
        training: TrainingSettings,
        benchmark: BenchmarkSettings,
        *,
        state_dir: Path,
        runs_dir: Path,
        conf_dir: Path,
        hidden_env: Sequence[str] = (),
        job_store: str = "sqlite",
        evaluation: EvaluationSettings | None = None,
        checkpoint_roots: Sequence[str] = (),
        sweep: SweepSettings | None = None,
    ) -> None:
        self.training_settings = training
        if job_store == "sqlite":
            self.registry: JobRegistry = SqliteJobRegistry(state_dir / "jobs.sqlite3", state_dir / "jobs")
        elif job_store == "json":
            self.registry = JobRegistry(state_dir / "jobs")
        else:
            raise ValueError(f"serve.job_store={job_store!r} is not a job store; use 'sqlite' or 'json'")
        self.logs_dir = state_dir / "logs"
        self.work_dir = state_dir / "work"
        self.runs_dir = runs_dir
        for d in (self.logs_dir, self.work_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.hidden_env = tuple(hidden_env)
        self.training = TrainingJob(training, conf_dir=conf_dir, runs_dir=runs_dir, work_dir=self.work_dir)
        self.benchmark = BenchmarkJob(benchmark, work_dir=self.work_dir)
        roots = [runs_dir, *(Path(r) for r in checkpoint_roots)]
        self.evaluation = EvaluationJob(
            evaluation or EvaluationSettings(),
            resolve=lambda ref: resolve_checkpoint_reference(ref, self.registry, runs_dir, roots, _stem)[0],
            runs_dir=runs_dir,
            work_dir=self.work_dir,
        )
        self.sweep = SweepJob(sweep or SweepSettings(), self.training)
        kinds = (self.training, self.benchmark, self.evaluation, self.sweep)
        self.kinds: dict[str, JobKind] = {k.name: k for k in kinds}
        self.supervisor = ProcessSupervisor(parse_metrics_line)
        self.events = JobEvents(self.registry, self.get, self.log_path)
        self._tasks: dict[str, asyncio.Task] = {}
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> list[JobRecord]:
        """Load the registry. Training jobs a previous sidecar left PENDING or RUNNING are queued again
        (``serve.training.resume_after_restart``): a child that outlived it is stopped first (SIGTERM, so it
        checkpoints), and the job's next child resumes the run from its last checkpoint. Other jobs are
        marked FAILED, saying why. Returns the jobs it changed; call :meth:`start_queued` next."""
        return self.registry.recover(requeue=self._requeue_after_restart)

    def _requeue_after_restart(self, rec: JobRecord) -> str:
        if not self.training_settings.resume_after_restart or rec.kind != "training" or not rec.run_id:
            return ""
        if rec.cancel_requested:  # it was being cancelled: it stays stopped (FAILED, saying why)
            return ""
        was = rec.state.value + (f" (pid {rec.pid})" if rec.pid else "")
        if rec.state is JobState.RUNNING and rec.pid:
            stop_orphan(rec.pid, f"run_id={rec.run_id}", self.training_settings.cancel_grace_s)
        return (
            f"queued again after a sidecar restart (it was {was}): it resumes run {rec.run_id} from its "
            "last checkpoint"
        )

    @property
    def closing(self) -> bool:
        return self._closing

    async def shutdown(self, grace_s: float) -> None:
        """Ask every running child to checkpoint and stop; SIGKILL what is left after ``grace_s``. Queued
        jobs stay PENDING in the registry: the next sidecar starts them."""
        self._closing = True
        for rec in self.registry.active():
            if rec.job_id not in self._tasks:
                continue
            self.cancel(
                rec.job_id, reason="stopped because the sidecar is shutting down (SIGTERM)", grace_s=grace_s
            )
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s + 1.0)
            self.supervisor.kill_remaining(f"did not stop within {grace_s:.0f} s")
            if pending:
                await asyncio.wait(pending, timeout=10.0)

    # ------------------------------------------------------------------ queries
    def get(self, job_id: str) -> JobRecord:
        check_id(job_id, "job_id", required=True)
        rec = self.registry.get(job_id)
        if rec is None:
            raise NotFound(f"job {job_id!r} does not exist; list jobs with ListJobs (moe-swarm-ctl list)")
        return rec

    def view(self, rec: JobRecord) -> JobView:
        """What clients see of a job, with its place in the queue while it waits."""
        position = 0
        if rec.state is JobState.PENDING and rec.job_id not in self._tasks:
            waiting = [j.job_id for j in self.registry.queue(rec.kind) if j.job_id not in self._tasks]
            position = waiting.index(rec.job_id) + 1 if rec.job_id in waiting else 0
        return rec.view(queue_position=position)

    def list(
        self, states: set[str] | None = None, kind: str | None = None, limit: int = 0
    ) -> list[JobRecord]:
        """Newest first, optionally filtered by state names and kind."""
        if limit < 0:
            raise InvalidArgument(f"limit={limit} is negative; pass 0 (all) or N > 0")
        return self.registry.list({JobState(s) for s in states or ()} or None, kind, limit)

    def log_path(self, job_id: str) -> Path:
        return self.logs_dir / f"{job_id}.log"

    def benchmark_results(self, job_id: str) -> tuple[JobRecord, list[dict]]:
        """A succeeded benchmark job and its rows."""
        rec = self.get(job_id)
        if rec.kind != "benchmark":
            raise InvalidArgument(f"job {rec.job_id} is a {rec.kind} job; name a benchmark job")
        if rec.state is not JobState.SUCCEEDED:
            raise FailedPrecondition(
                f"benchmark job {rec.job_id} is {rec.state.value}; results exist once it has SUCCEEDED"
                + (f" ({rec.message})" if rec.message else "")
            )
        return rec, self.benchmark.results(rec)

    # ------------------------------------------------------------------ submit
    async def submit_training(self, request: TrainingRequest) -> tuple[JobRecord, str]:
        """Validate, compose-check and start a training job; returns the job and what happened. A
        repeated request_id returns the first job."""
        spec = self.training.validate(request)
        await self.training.precheck(spec)
        rec, created = self._submit(self.training, spec)
        if not created:
            return (
                rec,
                f"job {rec.job_id} was already started for request_id {rec.request_id!r}; it is {rec.state.value}",
            )
        position = self.view(rec).queue_position
        queued = (
            f" (queued at position {position}, priority {rec.priority}: it starts when a training slot frees)"
            if position
            else ""
        )
        return rec, (
            f"job {rec.job_id} started{queued}: training {spec.config.kind} {spec.config.name!r} as run "
            f"{rec.run_id}; follow it with WatchJob/TailLogs (moe-swarm-ctl logs -f {rec.job_id})"
        )

    def submit_evaluation(self, request: EvaluationRequest) -> JobRecord:
        """Start (or queue) ``moe-swarm-eval`` on a checkpoint; a repeated request_id returns the first job."""
        return self._submit(self.evaluation, self.evaluation.validate(request))[0]

    async def submit_sweep(self, request: SweepRequest) -> JobRecord:
        """Validate, compose-check (the first trial) and start or queue a sweep; a repeated request_id
        returns the first job."""
        spec = self.sweep.validate(request)
        await self.sweep.precheck(spec)
        return self._submit(self.sweep, spec)[0]

    def sweep_results(self, job_id: str) -> tuple[JobRecord, SweepTable]:
        """A sweep job and its results table (finished trials and the running one)."""
        rec = self.get(job_id)
        if rec.kind != "sweep":
            raise InvalidArgument(f"job {rec.job_id} is a {rec.kind} job; name a sweep job")
        return rec, self.sweep.table(rec)

    def submit_benchmark(self, request: BenchmarkRequest) -> JobRecord:
        return self._submit(self.benchmark, self.benchmark.validate(request))[0]

    async def run_benchmark(
        self, request: BenchmarkRequest, timeout_s: float, on_job: Callable[[str], None] | None = None
    ) -> tuple[JobRecord, list[dict]]:
        """Start a benchmark job (``on_job`` is told its id) and wait for its rows; the job is cancelled
        if the caller goes away or ``timeout_s`` passes first."""
        rec = self.submit_benchmark(request)
        if on_job is not None:
            on_job(rec.job_id)
        try:
            rec = await self.wait(rec.job_id, timeout=timeout_s)
        except asyncio.CancelledError:
            self.cancel(rec.job_id, reason="the RunBenchmark caller went away")
            raise
        if not rec.state.terminal:
            self.cancel(rec.job_id, reason=f"RunBenchmark timed out after {timeout_s:.0f} s")
            raise DeadlineExceeded(
                f"benchmark job {rec.job_id} did not finish within {timeout_s:.0f} s (serve.benchmark.timeout_s); "
                "ask for fewer samples or suites"
            )
        if rec.state is not JobState.SUCCEEDED:
            tail = " | ".join(rec.log_tail[-3:])
            text = f"benchmark job {rec.job_id} {rec.state.value}: {rec.message} {tail}".strip()
            raise Unavailable(text) if self.closing else JobFailed(text)
        return rec, self.benchmark.results(rec)

    def _submit(self, kind: JobKind, spec: Any) -> tuple[JobRecord, bool]:
        if spec.request_id:
            previous = self.registry.find_by_request_id(spec.request_id)
            if previous is not None:
                if previous.request_fingerprint != spec.fingerprint():
                    raise InvalidArgument(
                        f"request_id {spec.request_id!r} was already used for a different request "
                        f"(job {previous.job_id}); use a new request_id for a new job"
                    )
                return previous, False
        if self._closing:
            raise Unavailable(
                "the sidecar is shutting down and starts no new jobs; retry against the new instance"
            )
        kind.admit(spec, self.registry.active(kind.name))
        job_id = new_job_id(kind.name)
        rec = kind.record(job_id, spec, self.log_path(job_id))
        self.registry.create(rec)
        Path(rec.log_path).touch()
        self.start_queued()
        return rec, True

    def start_queued(self) -> None:
        """Start queued (PENDING) jobs of every kind while the kind has free slots: highest priority first,
        then oldest. Called after a submit, when a job ends, and after a restart."""
        if self._closing:
            return
        for kind in self.kinds.values():
            running = [j for j in self.registry.active(kind.name) if j.job_id in self._tasks]
            waiting = [j for j in self.registry.queue(kind.name) if j.job_id not in self._tasks]
            for rec in waiting[: max(0, kind.slots() - len(running))]:
                task = asyncio.get_running_loop().create_task(self._supervise(kind, rec.job_id))
                self._tasks[rec.job_id] = task
                task.add_done_callback(lambda _t, job_id=rec.job_id: self._job_ended(job_id))

    def _job_ended(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self.start_queued()

    # ------------------------------------------------------------------ cancel / wait
    def cancel(
        self, job_id: str, reason: str = "cancelled by request", grace_s: float | None = None
    ) -> JobRecord:
        """Ask a job to checkpoint and stop. Repeatable; a finished job is returned unchanged."""
        rec = self.get(job_id)
        if rec.state.terminal or rec.cancel_requested:
            return rec
        if rec.state is JobState.PENDING and job_id not in self._tasks:  # waiting in the queue
            self._finish(job_id, JobState.CANCELLED, f"{reason} (while queued; it never started)")
            return rec
        self.registry.update(job_id, cancel_requested=True, message=reason)
        self.supervisor.stop(job_id, self.training_settings.cancel_grace_s if grace_s is None else grace_s)
        self.events.notify(job_id)
        return rec

    # ------------------------------------------------------------------ waiting and streams
    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Until the job is finished (or ``timeout`` seconds, then the job as it is)."""
        return await self.events.wait(job_id, timeout)

    def watch(self, job_id: str) -> AsyncIterator[tuple[str, JobRecord, dict[str, float]]]:
        """("SNAPSHOT", job, {}), then ("METRICS", job, metrics) / ("STATE", job, {}) until finished."""
        return self.events.watch(job_id)

    def tail(
        self, job_id: str, follow: bool, tail_lines: int, start: int = 0
    ) -> AsyncIterator[tuple[int, str]]:
        """(byte offset, text) chunks of the job's log; with ``follow`` until the job is finished."""
        return self.events.tail(job_id, follow, tail_lines, start)

    # ------------------------------------------------------------------ internals
    def child_env(self, extra: dict[str, str]) -> dict[str, str]:
        """This process's environment without its credentials, plus the settings' and the kind's."""
        env = dict(os.environ)
        for name in self.hidden_env:  # never hand the server's credentials to a child
            env.pop(name, None)
        env.pop("RUN_ID", None)
        env["PYTHONUNBUFFERED"] = "1"
        env[METRICS_LINES_ENV] = "1"
        env.setdefault("TERM", "dumb")
        env.update({str(k): str(v) for k, v in self.training_settings.env.items()})
        env.update(extra)
        return env

    async def _supervise(self, kind: JobKind, job_id: str) -> None:
        rec = self.registry.get(job_id)
        assert rec is not None
        if rec.cancel_requested:
            self._finish(job_id, JobState.CANCELLED, rec.message or "cancelled before it started")
            return

        def started(pid: int) -> None:
            self.registry.transition(job_id, JobState.RUNNING, pid=pid)
            self.events.notify(job_id)
            if rec.cancel_requested:  # cancelled while the process was being created
                self.supervisor.stop(job_id, self.training_settings.cancel_grace_s)

        hooks = ChildHooks(
            started, lambda m: self.events.record_metrics(job_id, m), lambda: self.events.notify(job_id)
        )
        try:
            exit_ = await self.supervisor.run(
                job_id, rec.argv, env=self.child_env(kind.environment(rec)),
                cwd=self.training_settings.cwd or os.getcwd(), log_path=Path(rec.log_path), hooks=hooks,
            )  # fmt: skip
        except OSError as exc:
            self._finish(job_id, JobState.FAILED, f"could not start the child process {rec.argv[:3]}: {exc}")
            return
        self._complete(kind, job_id, exit_.code, exit_.tail)

    def _complete(self, kind: JobKind, job_id: str, code: int, tail: list[str]) -> None:
        rec = self.registry.get(job_id)
        assert rec is not None
        outcome = kind.outcome(rec)
        if outcome.metrics:
            self.events.record_metrics(job_id, outcome.metrics)
        updates: dict = {"exit_code": code}
        if outcome.checkpoint:
            updates["checkpoint"] = outcome.checkpoint
        ckpt_note = f"; last checkpoint: {outcome.checkpoint}" if outcome.checkpoint else ""
        if rec.cancel_requested:
            state = JobState.CANCELLED
            message = f"{rec.message or 'cancelled'} ({describe_exit(code)}){ckpt_note or '; no checkpoint was written'}"
        elif code == 0 and outcome.missing:
            state, message = JobState.FAILED, outcome.missing
            updates["log_tail"] = tail
        elif code == 0:
            note = kind.success_note(tail)
            state, message = JobState.SUCCEEDED, f"{note or 'finished'}{ckpt_note}"
        else:
            state = JobState.FAILED
            message = f"the child process failed ({describe_exit(code)}): {failure_reason(tail)}"
            updates["log_tail"] = tail
        self._finish(job_id, state, message, **updates)

    def _finish(self, job_id: str, state: JobState, message: str, **updates: Any) -> None:
        self.registry.transition(job_id, state, message=message, **updates)
        log.info("job %s %s: %s", job_id, state.value, message)
        self.events.notify(job_id)


def _stem(path: Path) -> str:
    return path.stem
