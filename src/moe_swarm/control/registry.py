"""The job registry: one JSON file per job on disk, a state machine whose terminal states never change.

States go PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED (a PENDING job may also fail to start or be
cancelled). Every change is written atomically (temporary file, fsync, rename), so a crash never leaves a
torn record. After a sidecar restart, :meth:`JobRegistry.recover` lists finished jobs as they were and marks
jobs that were still PENDING or RUNNING as FAILED, saying why.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from moe_swarm.atomic import atomic_write_text
from moe_swarm.control.job_view import JobView


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
JOB_KINDS = ("training", "benchmark", "evaluation", "sweep")


class InvalidTransition(RuntimeError):
    """A change the state machine forbids (anything out of a terminal state, or skipping RUNNING)."""


@dataclass
class JobRecord:
    """Everything known about one job, as persisted; :meth:`view` is what clients see."""

    job_id: str
    kind: str
    state: JobState = JobState.PENDING
    created_unix: float = 0.0
    started_unix: float = 0.0
    finished_unix: float = 0.0
    config_path: str = ""
    overrides: list[str] = field(default_factory=list)
    run_id: str = ""
    request_id: str = ""
    request_fingerprint: str = ""
    argv: list[str] = field(default_factory=list)
    pid: int = 0
    exit_code: int | None = None
    message: str = ""
    log_tail: list[str] = field(default_factory=list)
    run_dir: str = ""
    checkpoint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    cancel_requested: bool = False
    log_path: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0  # queued jobs start highest priority first, then oldest first
    restarts: int = 0  # times a sidecar restart requeued it to resume

    def view(self, queue_position: int = 0) -> JobView:
        return JobView(
            job_id=self.job_id, kind=self.kind, state=self.state.value, config_path=self.config_path,
            overrides=list(self.overrides), run_id=self.run_id, request_id=self.request_id,
            created_unix=self.created_unix, started_unix=self.started_unix, finished_unix=self.finished_unix,
            pid=self.pid, exit_code=self.exit_code, message=self.message, log_tail=list(self.log_tail),
            run_dir=self.run_dir, checkpoint=self.checkpoint, metrics=dict(self.metrics),
            cancel_requested=self.cancel_requested, priority=self.priority, queue_position=queue_position,
            restarts=self.restarts,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = JobState(values.get("state", "PENDING"))
        return cls(**values)


def new_job_id(kind: str) -> str:
    prefix = {"training": "train", "benchmark": "bench", "evaluation": "eval", "sweep": "sweep"}.get(
        kind, kind
    )
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


class JobRegistry:
    """Jobs by id, persisted under ``<root>/<job_id>.json``. Used from one thread (the event loop)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, JobRecord] = {}

    # --- persistence (one JSON file per job; control.job_store keeps them in SQLite instead) -------
    def _path(self, job_id: str) -> Path:
        return self.root / f"{job_id}.json"

    def _save(self, rec: JobRecord, *, durable: bool = True) -> None:
        atomic_write_text(
            self._path(rec.job_id), json.dumps(rec.to_dict(), indent=1, sort_keys=True), durable=durable
        )

    def _load(self) -> list[JobRecord]:
        """Every stored job; unreadable files are skipped with a note (and kept)."""
        out = []
        for path in sorted(self.root.glob("*.json")):
            try:
                out.append(JobRecord.from_dict(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError) as exc:
                print(f"moe-swarm-serve: skipping unreadable job record {path}: {exc}", flush=True)
        return out

    def recover(
        self, now: float | None = None, requeue: Callable[[JobRecord], str] | None = None
    ) -> list[JobRecord]:
        """Load every job; jobs left PENDING/RUNNING by a previous sidecar become FAILED, saying why,
        unless ``requeue`` returns a message for one: then it is PENDING again (queued to start anew).

        Returns the jobs that were marked FAILED or requeued.
        """
        now = time.time() if now is None else now
        recovered: list[JobRecord] = []
        for rec in self._load():
            self._jobs[rec.job_id] = rec
            if not rec.state.terminal:
                requeued = requeue(rec) if requeue is not None else ""
                if requeued:
                    rec.state, rec.pid, rec.cancel_requested, rec.message = (
                        JobState.PENDING,
                        0,
                        False,
                        requeued,
                    )
                    rec.restarts += 1
                    self._save(rec)
                    recovered.append(rec)
                    continue
                previous = rec.state.value
                rec.state = JobState.FAILED
                rec.finished_unix = now
                rec.message = (
                    f"the sidecar stopped while this job was {previous}"
                    + (f" (pid {rec.pid})" if rec.pid else "")
                    + "; it is no longer supervised"
                    + (
                        f". Start it again with run_id={rec.run_id} to resume from its last checkpoint"
                        if rec.run_id
                        else ""
                    )
                )
                self._save(rec)
                recovered.append(rec)
        return recovered

    # --- queries -----------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def list(
        self, states: set[JobState] | None = None, kind: str | None = None, limit: int = 0
    ) -> list[JobRecord]:
        """Newest first, optionally filtered by state and kind."""
        jobs = [
            j
            for j in self._jobs.values()
            if (not states or j.state in states) and (not kind or j.kind == kind)
        ]
        jobs.sort(key=lambda j: (j.created_unix, j.job_id), reverse=True)
        return jobs[:limit] if limit > 0 else jobs

    def find_by_request_id(self, request_id: str) -> JobRecord | None:
        if not request_id:
            return None
        for j in self._jobs.values():
            if j.request_id == request_id:
                return j
        return None

    def active(self, kind: str | None = None) -> list[JobRecord]:
        return [j for j in self._jobs.values() if not j.state.terminal and (kind is None or j.kind == kind)]

    def queue(self, kind: str) -> list[JobRecord]:
        """PENDING jobs of a kind in the order they start: highest priority first, then oldest first."""
        pending = [j for j in self._jobs.values() if j.state is JobState.PENDING and j.kind == kind]
        return sorted(pending, key=lambda j: (-j.priority, j.created_unix, j.job_id))

    # --- changes -----------------------------------------------------------------------------------
    def create(self, rec: JobRecord) -> JobRecord:
        if rec.job_id in self._jobs:
            raise ValueError(f"job {rec.job_id} already exists")
        if rec.kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {JOB_KINDS}, got {rec.kind!r}")
        if rec.state is not JobState.PENDING:
            raise InvalidTransition(f"a new job starts PENDING, not {rec.state.value}")
        rec.created_unix = rec.created_unix or time.time()
        self._jobs[rec.job_id] = rec
        self._save(rec)
        return rec

    def transition(self, job_id: str, new_state: JobState, **updates: Any) -> JobRecord:
        """Move a job to ``new_state`` (and set fields); refuses anything the state machine forbids."""
        rec = self._require(job_id)
        if new_state not in ALLOWED_TRANSITIONS[rec.state]:
            raise InvalidTransition(f"job {job_id} cannot go from {rec.state.value} to {new_state.value}")
        self._apply(rec, updates)
        rec.state = new_state
        now = time.time()
        if new_state is JobState.RUNNING:
            rec.started_unix = rec.started_unix or now
        if new_state.terminal:
            rec.finished_unix = now
        self._save(rec)
        return rec

    def update(self, job_id: str, *, durable: bool = True, **updates: Any) -> JobRecord:
        """Set fields of a job that is not finished yet (a finished job's record never changes)."""
        rec = self._require(job_id)
        if rec.state.terminal:
            raise InvalidTransition(
                f"job {job_id} is {rec.state.value}; a finished job's record never changes"
            )
        self._apply(rec, updates)
        self._save(rec, durable=durable)
        return rec

    def _require(self, job_id: str) -> JobRecord:
        rec = self._jobs.get(job_id)
        if rec is None:
            raise KeyError(job_id)
        return rec

    @staticmethod
    def _apply(rec: JobRecord, updates: dict[str, Any]) -> None:
        for key, value in updates.items():
            if key in ("job_id", "state", "kind") or not hasattr(rec, key):
                raise AttributeError(f"cannot set {key!r} on a job record")
            setattr(rec, key, value)
