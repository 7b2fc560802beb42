"""The job manager: runs training and benchmark jobs as child processes and supervises them.

Children are started with ``asyncio.create_subprocess_exec`` (fork + exec of a fresh interpreter, never a
fork of this process that holds gRPC state), each in a new session so it leads its own process group.
Their stdout and stderr go through the server into ``<state_dir>/logs/<job_id>.log``: lines of the form
``MOE_SWARM_METRICS {"train/loss": 1.2, ...}`` update the job's metrics. Cancel is graceful: SIGTERM
to the child (training saves ``last.ckpt`` and exits), SIGKILL to its group only after a grace period.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from moe_swarm.atomic import atomic_write_text
from moe_swarm.layout import METRICS_LINES_ENV, RunLayout, is_checkpoint, parse_metrics_line
from moe_swarm.serve.benchmarks import SUITES
from moe_swarm.serve.errors import (
    failed_precondition,
    invalid_argument,
    not_found,
    resource_exhausted,
    unavailable,
)
from moe_swarm.serve.registry import JobRecord, JobRegistry, JobState, new_job_id
from moe_swarm.serve.settings import ServeSettings, resolve_command
from moe_swarm.serve.validation import (
    OverridePolicy,
    ResolvedConfig,
    check_id,
    resolve_config_path,
    validate_overrides,
)

log = logging.getLogger("moe_swarm.serve.jobs")

STEP_METRIC = "trainer/global_step"
LOG_TAIL_LINES = 40
READ_CHUNK = 64 * 1024
MAX_METRIC_EVENTS = 2000
WAKE_INTERVAL_S = 1.0  # upper bound on how long a watcher sleeps without re-checking


@dataclass(frozen=True)
class TrainSpec:
    """A validated StartTraining request."""

    config: ResolvedConfig
    config_path: str
    overrides: list[str]
    run_id: str
    request_id: str

    def fingerprint(self) -> str:
        data = json.dumps([self.config_path, self.overrides, self.run_id], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


HYDRA_TRAILER = "Set the environment variable HYDRA_FULL_ERROR=1"
HYDRA_ERROR_START = "Error executing job with overrides:"
LOG_RECORD = re.compile(r"^(\[\d{4}-\d\d-\d\d [^\]]*\]\[|(DEBUG|INFO|WARNING): )")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(: |$)")
MAX_REASON_LINES = 6
MAX_REASON_CHARS = 800


def failure_reason(tail: list[str]) -> str:
    """What a failed child said went wrong, from the end of its log.

    Hydra's trailer ("Set the environment variable HYDRA_FULL_ERROR=1 ...") and log records are not a
    reason: they are dropped. The reason starts after Hydra's "Error executing job with overrides" line,
    or at the exception line that ends a Python traceback; otherwise it is the last few lines (Hydra's
    and the config validator's messages), joined with " | ".
    """
    lines = [
        ln.rstrip()
        for ln in tail
        if ln.strip() and not ln.startswith(HYDRA_TRAILER) and not LOG_RECORD.match(ln)
    ]
    if not lines:
        return "no output (see the job's log)"
    start = max(0, len(lines) - MAX_REASON_LINES)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(HYDRA_ERROR_START):
            start = i + 1
            break
        if i >= start and lines[i].startswith(("  File ", "Traceback (most recent call last)")):
            start = i + 1
            break
    exc = next((i for i in range(start, len(lines)) if EXCEPTION_LINE.match(lines[i])), None)
    if exc is not None:
        start = exc
    reason = " | ".join(ln.strip() for ln in lines[start:]) or lines[-1].strip()
    return reason[:MAX_REASON_CHARS]


def hydra_quote(value: str) -> str:
    """A Hydra override value that stays one literal string (paths may hold spaces, commas, quotes)."""
    return "'" + value.replace("'", "\\'") + "'"


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    return f"exit code {code}"


class JobManager:
    """Starts, tracks, cancels and streams jobs; the registry on disk is the source of truth."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        state = settings.state_path
        self.registry = JobRegistry(state / "jobs")
        self.logs_dir = state / "logs"
        self.work_dir = state / "work"
        self.runs_dir = settings.runs_path
        for d in (self.logs_dir, self.work_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        t = settings.training
        self.policy = OverridePolicy(
            addable_keys=tuple(t.addable_keys),
            path_keys=tuple(t.path_keys),
            data_roots=tuple(t.data_roots),
            max_overrides=t.max_overrides,
        )
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._signals: dict[str, asyncio.Event] = {}
        self._metric_events: dict[str, collections.deque] = {}
        self._metric_seq = 0
        self._helpers: set[asyncio.Task] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> list[JobRecord]:
        """Load the registry; jobs a previous sidecar left running are marked FAILED (see registry)."""
        return self.registry.recover()

    @property
    def closing(self) -> bool:
        return self._closing

    async def shutdown(self, grace_s: float) -> None:
        """Ask every running child to checkpoint and stop; SIGKILL what is left after ``grace_s``."""
        self._closing = True
        for rec in self.registry.active():
            self.cancel(
                rec.job_id, reason="stopped because the sidecar is shutting down (SIGTERM)", grace_s=grace_s
            )
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s + 1.0)
            for job_id, proc in list(self._procs.items()):
                if proc.returncode is None:
                    log.warning(
                        "job %s did not stop within %.0f s; killing its process group", job_id, grace_s
                    )
                    self._kill_group(proc.pid)
            if pending:
                await asyncio.wait(pending, timeout=10.0)

    # ------------------------------------------------------------------ queries
    def get(self, job_id: str) -> JobRecord:
        check_id(job_id, "job_id", required=True)
        rec = self.registry.get(job_id)
        if rec is None:
            raise not_found(f"job {job_id!r} does not exist; list jobs with ListJobs (moe-swarm-ctl list)")
        return rec

    def log_path(self, job_id: str) -> Path:
        return self.logs_dir / f"{job_id}.log"

    # ------------------------------------------------------------------ training
    def validate_training(
        self, config_path: str, overrides: list[str], run_id: str, request_id: str
    ) -> TrainSpec:
        t = self.settings.training
        check_id(run_id, "run_id")
        check_id(request_id, "request_id")
        resolved = resolve_config_path(
            config_path,
            experiment_dir=self.settings.conf_path / "experiment",
            config_roots=t.config_roots,
            default_experiment=t.default_experiment,
        )
        cleaned = validate_overrides(list(overrides), self.policy)
        return TrainSpec(resolved, config_path, cleaned, run_id, request_id)

    def submit_training(self, spec: TrainSpec) -> tuple[JobRecord, bool]:
        """Start a training job; returns (job, created). A repeated request_id returns the first job."""
        if spec.request_id:
            previous = self.registry.find_by_request_id(spec.request_id)
            if previous is not None:
                if previous.request_fingerprint != spec.fingerprint():
                    raise invalid_argument(
                        f"request_id {spec.request_id!r} was already used for a different request "
                        f"(job {previous.job_id}); use a new request_id for a new job"
                    )
                return previous, False
        self._check_open()
        active = self.registry.active("training")
        limit = self.settings.training.max_concurrent
        if len(active) >= limit:
            raise resource_exhausted(
                f"{len(active)} training job(s) already running (limit {limit}: serve.training.max_concurrent): "
                f"{', '.join(j.job_id for j in active)}; wait for one to finish or cancel it"
            )
        job_id = new_job_id("training")
        run_id = spec.run_id or job_id
        for j in active:
            if j.run_id == run_id:
                raise failed_precondition(
                    f"run_id {run_id!r} is in use by running job {j.job_id}; wait or cancel it"
                )
        run_dir = RunLayout.for_run(self.runs_dir, run_id).root
        argv = self._training_argv(job_id, spec, run_id)
        rec = JobRecord(
            job_id=job_id,
            kind="training",
            config_path=spec.config_path or spec.config.name,
            overrides=list(spec.overrides),
            run_id=run_id,
            request_id=spec.request_id,
            request_fingerprint=spec.fingerprint(),
            argv=argv,
            run_dir=str(run_dir),
            log_path=str(self.log_path(job_id)),
        )
        self._launch(rec, env_extra={"RUN_ID": run_id})
        return rec, True

    def _training_argv(self, job_id: str, spec: TrainSpec, run_id: str) -> list[str]:
        conf = self.work_dir / job_id / "conf"
        return resolve_command(self.settings.training.command) + self._hydra_overrides(
            spec, run_id, conf, job_id
        )

    def _hydra_overrides(self, spec: TrainSpec, run_id: str, conf: Path, name: str) -> list[str]:
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
        return out + list(self.settings.training.extra_overrides) + list(spec.overrides)

    async def check_composes(self, spec: TrainSpec) -> None:
        """Compose and validate the request's config as the child will (in a worker thread); raise
        INVALID_ARGUMENT with Hydra's or the validator's message, before the job takes a slot."""
        config_name = self.settings.training.config_name
        if not config_name:
            return
        from moe_swarm.serve.compose import check_training_config

        with tempfile.TemporaryDirectory(prefix="compose-", dir=self.work_dir) as tmp:
            overrides = self._hydra_overrides(spec, spec.run_id or "submit-check", Path(tmp), "submitted")
            await asyncio.get_running_loop().run_in_executor(
                None, check_training_config, self.settings.conf_path, config_name, overrides
            )

    # ------------------------------------------------------------------ benchmarks
    def submit_benchmark(self, num_samples: int, suites: list[str]) -> JobRecord:
        b = self.settings.benchmark
        if num_samples < 0:
            raise invalid_argument(
                f"num_samples={num_samples} is negative; pass the number of timed repeats (>= 1)"
            )
        if num_samples > b.max_samples:
            raise invalid_argument(
                f"num_samples={num_samples} is above this server's limit of {b.max_samples}; ask for fewer repeats"
            )
        repeats = num_samples or b.default_samples
        names = list(suites) or list(b.suites)
        unknown = [s for s in names if s not in SUITES]
        if unknown:
            raise invalid_argument(f"unknown benchmark suite(s) {unknown}; choose from {sorted(SUITES)}")
        self._check_open()
        active = self.registry.active("benchmark")
        if active:
            raise resource_exhausted(
                f"benchmark job {active[0].job_id} is running; one benchmark runs at a time so timings "
                "are not disturbed; try again when it has finished"
            )
        job_id = new_job_id("benchmark")
        out = self.work_dir / job_id / "results.json"
        argv = resolve_command(b.command) + [
            "--out", str(out), "--repeats", str(repeats), "--suites", ",".join(names), "--threads", str(b.threads),
        ]  # fmt: skip
        if b.quick:
            argv.append("--quick")
        rec = JobRecord(
            job_id=job_id,
            kind="benchmark",
            config_path=",".join(names),
            argv=argv,
            log_path=str(self.log_path(job_id)),
            params={"repeats": repeats, "suites": names, "results_path": str(out)},
        )
        self._launch(rec, env_extra={})
        return rec

    def benchmark_results(self, rec: JobRecord) -> list[dict]:
        path = Path(rec.params.get("results_path", ""))
        return json.loads(path.read_text(encoding="utf-8"))["rows"]

    # ------------------------------------------------------------------ cancel / wait
    def cancel(
        self, job_id: str, reason: str = "cancelled by request", grace_s: float | None = None
    ) -> JobRecord:
        """Ask a job to checkpoint and stop. Repeatable; a finished job is returned unchanged."""
        rec = self.get(job_id)
        if rec.state.terminal or rec.cancel_requested:
            return rec
        self.registry.update(job_id, cancel_requested=True, message=reason)
        proc = self._procs.get(job_id)
        if proc is not None and proc.returncode is None:
            self._signal_child(proc.pid, signal.SIGTERM)
            grace = self.settings.training.cancel_grace_s if grace_s is None else grace_s
            self._background(self._kill_after(job_id, proc, grace))
        self._notify(job_id)
        return rec

    async def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Until the job is finished (or ``timeout`` seconds, then the job as it is)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            event = self._signal(job_id)
            rec = self.get(job_id)
            if rec.state.terminal:
                return rec
            left = WAKE_INTERVAL_S if deadline is None else min(WAKE_INTERVAL_S, deadline - time.monotonic())
            if left <= 0:
                return rec
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), left)

    # ------------------------------------------------------------------ streams
    async def watch(self, job_id: str) -> AsyncIterator[tuple[str, JobRecord, dict[str, float]]]:
        """("SNAPSHOT", job, {}), then ("METRICS", job, metrics) / ("STATE", job, {}) until finished."""
        rec = self.get(job_id)
        events = self._metric_events.get(job_id)
        last_seq = events[-1][0] if events else 0
        last_state = rec.state
        yield "SNAPSHOT", rec, {}
        while not last_state.terminal:
            event = self._signal(job_id)
            for seq, _t, metrics in list(self._metric_events.get(job_id, ())):
                if seq > last_seq:
                    last_seq = seq
                    yield "METRICS", rec, metrics
            if rec.state != last_state:
                last_state = rec.state
                yield "STATE", rec, {}
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), WAKE_INTERVAL_S)

    async def tail(
        self, job_id: str, follow: bool, tail_lines: int, start: int = 0
    ) -> AsyncIterator[tuple[int, str]]:
        """(byte offset, text) chunks of the job's log from byte ``start`` (or its last ``tail_lines``
        lines); with ``follow`` until the job is finished."""
        rec = self.get(job_id)
        if tail_lines < 0:
            raise invalid_argument(f"tail_lines={tail_lines} is negative; pass 0 (whole log) or N > 0")
        if start < 0:
            raise invalid_argument(f"offset={start} is negative; pass 0 (start of the log) or a byte offset")
        path = Path(rec.log_path or self.log_path(job_id))
        offset = self._tail_offset(path, tail_lines) if tail_lines else start
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            event = self._signal(job_id)
            data = b""
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
                f.seek(offset)
                data = f.read(READ_CHUNK)
            if data:
                text = decoder.decode(data)
                if text:
                    yield offset, text
                offset += len(data)
                continue
            if not follow or rec.state.terminal:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), WAKE_INTERVAL_S)

    @staticmethod
    def _tail_offset(path: Path, lines: int) -> int:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        window = min(size, 1024 * 1024)
        with open(path, "rb") as f:
            f.seek(size - window)
            data = f.read(window)
        cut = len(data)
        if data.endswith(b"\n"):
            cut -= 1
        for _ in range(lines):
            cut = data.rfind(b"\n", 0, cut)
            if cut < 0:
                return size - window
        return size - window + cut + 1

    # ------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self._closing:
            raise unavailable(
                "the sidecar is shutting down and starts no new jobs; retry against the new instance"
            )

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def _signal(self, job_id: str) -> asyncio.Event:
        return self._signals.setdefault(job_id, asyncio.Event())

    def _notify(self, job_id: str) -> None:
        event = self._signals.pop(job_id, None)
        if event is not None:
            event.set()

    def _launch(self, rec: JobRecord, env_extra: dict[str, str]) -> None:
        self.registry.create(rec)
        Path(rec.log_path).touch()
        task = asyncio.get_running_loop().create_task(self._supervise(rec.job_id, env_extra))
        self._tasks[rec.job_id] = task
        task.add_done_callback(lambda _t, job_id=rec.job_id: self._tasks.pop(job_id, None))

    def _child_env(self, env_extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        # Never hand the server's credentials to a child.
        env.pop(self.settings.auth.token_env, None)
        env.pop("RUN_ID", None)
        env["PYTHONUNBUFFERED"] = "1"
        env[METRICS_LINES_ENV] = "1"
        env.setdefault("TERM", "dumb")
        env.update({str(k): str(v) for k, v in self.settings.training.env.items()})
        env.update(env_extra)
        return env

    async def _supervise(self, job_id: str, env_extra: dict[str, str]) -> None:
        rec = self.registry.get(job_id)
        assert rec is not None
        if rec.cancel_requested:
            self._finish(job_id, JobState.CANCELLED, rec.message or "cancelled before it started")
            return
        cwd = self.settings.training.cwd or os.getcwd()
        try:
            proc = await asyncio.create_subprocess_exec(
                *rec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=self._child_env(env_extra),
                start_new_session=True,
            )
        except OSError as exc:
            self._finish(job_id, JobState.FAILED, f"could not start the child process {rec.argv[:3]}: {exc}")
            return
        self._procs[job_id] = proc
        self.registry.transition(job_id, JobState.RUNNING, pid=proc.pid)
        log.info("job %s started: pid %d: %s", job_id, proc.pid, " ".join(rec.argv))
        self._notify(job_id)
        if rec.cancel_requested:  # cancelled while the process was being created
            self._signal_child(proc.pid, signal.SIGTERM)
            self._background(self._kill_after(job_id, proc, self.settings.training.cancel_grace_s))
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        try:
            await self._pump(job_id, proc, Path(rec.log_path), tail)
        except Exception as exc:  # e.g. the log's disk is full: the job cannot be supervised any more
            log.exception("job %s: reading the child's output failed; stopping the child", job_id)
            tail.append(f"moe-swarm-serve: stopped supervising the child: {exc!r}")
            if proc.returncode is None:
                self._kill_group(proc.pid)
        code = await proc.wait()
        self._procs.pop(job_id, None)
        self._complete(job_id, code, list(tail))

    async def _pump(
        self, job_id: str, proc: asyncio.subprocess.Process, path: Path, tail: collections.deque
    ) -> None:
        assert proc.stdout is not None
        pending = b""
        with open(path, "ab") as out:
            while True:
                chunk = await proc.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                pending += chunk
                *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
                if len(pending) > READ_CHUNK:  # a line without end: keep its start only
                    lines.append(pending[:READ_CHUNK])
                    pending = b""
                for raw in lines:
                    line = raw.decode("utf-8", errors="replace").rstrip()
                    if not line:
                        continue
                    metrics = parse_metrics_line(line)
                    if metrics is None:
                        tail.append(line)
                    elif metrics:
                        self._record_metrics(job_id, metrics)
                self._notify(job_id)
            if pending:
                line = pending.decode("utf-8", errors="replace").rstrip()
                if line:
                    tail.append(line)

    def _record_metrics(self, job_id: str, metrics: dict[str, float]) -> None:
        """Merge a metrics line into the job; publish a METRICS event with what is new in it.

        Training repeats its latest validation metrics in every step's line; an event carries only the
        values that changed (plus the step), so watchers see each validation result once, not as a
        stale copy every few steps. The job's ``metrics`` map always holds every latest value.
        """
        rec = self.registry.get(job_id)
        if rec is None or rec.state.terminal:
            return
        fresh = {k: v for k, v in metrics.items() if rec.metrics.get(k) != v or k == STEP_METRIC}
        merged = dict(rec.metrics)
        merged.update(metrics)
        self.registry.update(job_id, durable=False, metrics=merged)
        if not fresh or (set(fresh) == {STEP_METRIC} and len(metrics) > 1):
            return  # nothing new besides the step
        self._metric_seq += 1
        q = self._metric_events.setdefault(job_id, collections.deque(maxlen=MAX_METRIC_EVENTS))
        q.append((self._metric_seq, time.time(), fresh))

    def _complete(self, job_id: str, code: int, tail: list[str]) -> None:
        rec = self.registry.get(job_id)
        assert rec is not None
        updates: dict = {"exit_code": code}
        if rec.kind == "training":
            layout = RunLayout(rec.run_dir)
            summary = self._read_summary(layout)
            final = {
                k: float(v) for k, v in (summary.get("metrics") or {}).items() if isinstance(v, (int, float))
            }
            if final:
                self._record_metrics(job_id, final)
            last = layout.existing_last_checkpoint()
            ckpt = summary.get("checkpoint") or (str(last) if last else "")
            if ckpt and is_checkpoint(ckpt):
                updates["checkpoint"] = str(ckpt)
        ckpt_note = f"; last checkpoint: {updates['checkpoint']}" if updates.get("checkpoint") else ""
        if rec.cancel_requested:
            state = JobState.CANCELLED
            message = f"{rec.message or 'cancelled'} ({describe_exit(code)}){ckpt_note or '; no checkpoint was written'}"
        elif code == 0 and rec.kind == "benchmark" and not Path(rec.params.get("results_path", "")).is_file():
            state = JobState.FAILED
            message = "the benchmark child exited 0 but wrote no results"
            updates["log_tail"] = tail
        elif code == 0:
            state = JobState.SUCCEEDED
            message = f"finished{ckpt_note}"
        else:
            state = JobState.FAILED
            message = f"the child process failed ({describe_exit(code)}): {failure_reason(tail)}"
            updates["log_tail"] = tail
        self._finish(job_id, state, message, **updates)

    def _finish(self, job_id: str, state: JobState, message: str, **updates) -> None:
        self.registry.transition(job_id, state, message=message, **updates)
        log.info("job %s %s: %s", job_id, state.value, message)
        self._notify(job_id)

    @staticmethod
    def _read_summary(layout: RunLayout) -> dict:
        try:
            data = json.loads(layout.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def _kill_after(self, job_id: str, proc: asyncio.subprocess.Process, grace_s: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)
            return
        if proc.returncode is None:
            log.warning("job %s ignored SIGTERM for %.0f s; killing its process group", job_id, grace_s)
            self._kill_group(proc.pid)

    @staticmethod
    def _signal_child(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        """SIGKILL the child's own process group (it was started with a new session, pgid == pid).

        Only called while the child has not been reaped, so the group id is still ours."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
