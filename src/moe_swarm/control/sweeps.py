"""A sweep as one job: ``moe-swarm-train -m`` (a Hydra grid, or the Optuna search of
``hparams_search=optuna``) in one child process, and the results table of its trials.

Each trial is a training run ``<sweep_id>-<n>`` under the runs folder (Hydra's job number ``n``); Hydra
keeps the trial's overrides in ``<runs_dir>/sweeps/<sweep_id>/<n>/.hydra/overrides.yaml`` and the run its
``summary.json``. The table is read from those files, so it shows finished trials and the running one
while the sweep goes on, and the same after a sidecar restart. The fixed overrides and every value of a
swept key pass the same checks as a training request's overrides; a sweep takes its own slot (one sweep
at a time by default) and queues like training.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moe_swarm.control.errors import Busy, FailedPrecondition, InvalidArgument
from moe_swarm.control.job_kinds import JobKind, Outcome, TrainingJob, TrainingRequest, TrainSpec
from moe_swarm.control.registry import JobRecord, JobState
from moe_swarm.control.settings import SweepSettings, resolve_command
from moe_swarm.control.validation import validate_overrides
from moe_swarm.store.layout import RunLayout, is_checkpoint
from moe_swarm.store.summary import read_summary

SEARCHES = ("grid", "optuna")
SERVER_KEYS = ("experiment", "run_id", "paths.runs_dir", "hydra.searchpath")


@dataclass(frozen=True)
class SweepRequest:
    config_path: str = ""  # an experiment name (or a YAML file under the config roots), as for training
    params: list[str] = field(default_factory=list)  # swept keys: "model.moe.num_experts=4,8"
    overrides: list[str] = field(default_factory=list)  # fixed for every trial
    search: str = ""  # "" or "grid": every combination; "optuna": hparams_search=optuna (TPE)
    trials: int = 0  # optuna: number of trials (0 = the search config's n_trials)
    sweep_id: str = ""  # keys the trials' run ids (<sweep_id>-<n>); default: the job id
    request_id: str = ""
    priority: int = 0


@dataclass(frozen=True)
class SweepSpec:
    train: TrainSpec  # the experiment and the fixed overrides, validated as a training request
    params: list[tuple[str, list[str]]]  # (key, values)
    search: str
    trials: int
    request_id: str = ""
    priority: int = 0

    def fingerprint(self) -> str:
        data = json.dumps([self.train.fingerprint(), self.params, self.search, self.trials], sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SweepTrial:
    """One row of the results table."""

    number: int
    run_id: str
    overrides: list[str]  # the trial's swept values (key=value)
    metric: str  # the objective (optimized_metric), e.g. val/bpb
    value: float | None  # its value at the trial's final step; None until the trial has finished
    status: str  # the run's summary status ("succeeded", ...), "running", or "incomplete"
    global_step: int = 0
    checkpoint: str = ""


@dataclass(frozen=True)
class SweepTable:
    sweep_id: str
    search: str
    metric: str
    mode: str  # "min" | "max": which value is best
    trials: list[SweepTrial]
    best: int  # index into trials of the best finished trial; -1 = none yet

    def markdown(self) -> str:
        """The table as Markdown, the best trial marked."""
        lines = [f"sweep {self.sweep_id} ({self.search}): objective {self.metric or '?'} ({self.mode})", "",
                 "| trial | run_id | overrides | value | step | status |", "|---|---|---|---|---|---|"]  # fmt: skip
        for i, t in enumerate(self.trials):
            value = "" if t.value is None else f"{t.value:.4g}" + (" (best)" if i == self.best else "")
            lines.append(f"| {t.number} | {t.run_id} | {' '.join(t.overrides)} | {value} | {t.global_step} "
                         f"| {t.status} |")  # fmt: skip
        return "\n".join(lines) + "\n"


def parse_params(params: list[str], policy: Any, max_trials: int, search: str) -> list[tuple[str, list[str]]]:
    """``key=v1,v2`` entries as (key, values); each ``key=value`` passes the training override checks."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out: list[tuple[str, list[str]]] = []
    for raw in params:
        text = raw.strip()
        try:
            (ov,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise InvalidArgument(f"sweep param {text!r} is not key=v1,v2,...: {exc}") from None
        if ov.is_sweep_override() and type(ov.value()).__name__ != "ChoiceSweep":
            raise InvalidArgument(
                f"sweep param {text!r}: use a list of values, key=v1,v2 (not range/interval)"
            )
        values = (
            list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        )
        key = ov.get_key_element()
        validate_overrides([f"{key}={v}" for v in values], policy)
        if key in (k for k, _ in out):
            raise InvalidArgument(f"sweep param {key!r} is given twice; list its values once: {key}=v1,v2")
        out.append((key, values))
    if not out and search == "grid":
        raise InvalidArgument(
            "a grid sweep needs params, e.g. model.moe.num_experts=4,8 (or search='optuna')"
        )
    size = math.prod(len(v) for _, v in out)
    if search == "grid" and size > max_trials:
        raise InvalidArgument(f"the grid has {size} trials; this server's limit is {max_trials} "
                              "(serve.sweep.max_trials): sweep fewer values")  # fmt: skip
    return out


class SweepJob(JobKind):
    """``python -m moe_swarm.cli.train -m experiment=... run_id=<sweep_id> <fixed> <key=v1,v2 ...>``."""

    name = "sweep"

    def __init__(self, settings: SweepSettings, training: TrainingJob) -> None:
        self.settings = settings
        self.training = training
        self.runs_dir = training.runs_dir

    def validate(self, request: SweepRequest) -> SweepSpec:
        search = request.search or "grid"
        if search not in SEARCHES:
            raise InvalidArgument(
                f"search={request.search!r} is not a search; use 'grid' (or '') or 'optuna'"
            )
        if not 0 <= request.trials <= self.settings.max_trials:
            raise InvalidArgument(f"trials={request.trials} is out of range; use 1..{self.settings.max_trials} "
                                  "(0 = the search config's n_trials)")  # fmt: skip
        if request.trials and search == "grid":
            raise InvalidArgument(
                "trials is for search='optuna'; a grid runs every combination of its params"
            )
        train = self.training.validate(TrainingRequest(request.config_path, list(request.overrides),
                                                       request.sweep_id, request.request_id, request.priority))  # fmt: skip
        params = parse_params(list(request.params), self.training.policy, self.settings.max_trials, search)
        fixed = {o.split("=", 1)[0].lstrip("+") for o in train.overrides}
        both = sorted(fixed & {k for k, _ in params})
        if both:
            raise InvalidArgument(f"{both} are both fixed overrides and swept params; give each key once")
        return SweepSpec(train, params, search, request.trials, request.request_id, request.priority)

    async def precheck(self, spec: SweepSpec) -> None:
        """The first trial's config is composed and validated as a training job's would be."""
        first = [f"{k}={v[0]}" for k, v in spec.params]
        await self.training.precheck(replace(spec.train, overrides=[*spec.train.overrides, *first]))

    def admit(self, spec: SweepSpec, active: list[JobRecord]) -> None:
        limit = self.settings.max_concurrent + self.settings.max_queued
        if len(active) >= limit:
            raise Busy(f"{len(active)} sweep job(s) running or queued (limit {limit}: serve.sweep.max_concurrent "
                       f"+ max_queued); wait for one to finish or cancel one")  # fmt: skip
        for j in active:
            if spec.train.run_id and j.run_id == spec.train.run_id:
                raise FailedPrecondition(f"sweep_id {spec.train.run_id!r} is in use by job {j.job_id}; wait or "
                                         "cancel it, or pick another sweep_id")  # fmt: skip

    def slots(self) -> int:
        return self.settings.max_concurrent

    def record(self, job_id: str, spec: SweepSpec, log_path: Path) -> JobRecord:
        sweep_id = spec.train.run_id or job_id
        conf = self.training.work_dir / job_id / "conf"
        argv = [*resolve_command(self.training.settings.command), "-m",
                *self.training.hydra_overrides(spec.train, sweep_id, conf, job_id)]  # fmt: skip
        if spec.search == "optuna":
            argv.append("hparams_search=optuna")
            argv += [f"hydra.sweeper.n_trials={spec.trials}"] if spec.trials else []
            argv += [f"{k}=choice({','.join(v)})" for k, v in spec.params]
        else:
            argv += [f"{k}={','.join(v)}" for k, v in spec.params]
        return JobRecord(
            job_id=job_id, kind=self.name, config_path=spec.train.config_path or spec.train.config.name,
            overrides=[*spec.train.overrides, *(f"{k}={','.join(v)}" for k, v in spec.params)], run_id=sweep_id,
            request_id=spec.request_id, request_fingerprint=spec.fingerprint(), argv=argv,
            run_dir=str(self.sweep_dir(sweep_id)), log_path=str(log_path), priority=spec.priority,
            params={"search": spec.search, "swept": [k for k, _ in spec.params]},
        )  # fmt: skip

    def environment(self, rec: JobRecord) -> dict[str, str]:
        return {"RUN_ID": rec.run_id}

    def sweep_dir(self, sweep_id: str) -> Path:
        return self.runs_dir / "sweeps" / sweep_id

    def outcome(self, rec: JobRecord) -> Outcome:
        """The sweep's metrics: trials run and finished, and the best trial's objective and checkpoint."""
        table = self.table(rec)
        if not table.trials:
            return Outcome(missing="the sweep exited 0 but ran no trial (see its log)")
        metrics = {"sweep/trials": float(len(table.trials)),
                   "sweep/finished": float(sum(t.value is not None for t in table.trials))}  # fmt: skip
        if table.best < 0:
            return Outcome(metrics=metrics)
        best = table.trials[table.best]
        metrics.update(
            {"sweep/best_trial": float(best.number), f"sweep/best {table.metric}": float(best.value)}
        )
        return Outcome(metrics=metrics, checkpoint=best.checkpoint)

    def table(self, rec: JobRecord) -> SweepTable:
        """The results table of a sweep job, from the files its trials left (while it runs, too)."""
        swept = set(rec.params.get("swept") or [])
        fixed = {a.split("=", 1)[0].lstrip("+~") for a in rec.argv if "=" in a} - swept
        return sweep_table(self.runs_dir, rec.run_id, fixed, str(rec.params.get("search") or "grid"),
                           running=rec.state is JobState.RUNNING)  # fmt: skip


def sweep_table(runs_dir: Path, sweep_id: str, fixed: set[str], search: str, running: bool) -> SweepTable:
    """Rows for every trial Hydra started (``sweeps/<sweep_id>/<n>``), newest trial last; a trial's
    overrides are those whose key is not one of the ``fixed`` keys (its swept values)."""
    import yaml

    folder = runs_dir / "sweeps" / sweep_id
    numbers = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []
    trials: list[SweepTrial] = []
    metric, mode = "", ""
    for n in numbers:
        try:
            task = yaml.safe_load((folder / str(n) / ".hydra" / "overrides.yaml").read_text()) or []
            if not mode:  # the objective's direction, from the trial's composed config
                composed = yaml.safe_load((folder / str(n) / ".hydra" / "config.yaml").read_text()) or {}
                mode = str(composed.get("optimized_metric_mode") or "")
        except (OSError, yaml.YAMLError):
            task = []
        swept = [o for o in task if o.split("=", 1)[0].lstrip("+~") not in fixed | set(SERVER_KEYS)]
        layout = RunLayout.for_run(runs_dir, f"{sweep_id}-{n}")
        s = read_summary(layout.summary) or {}
        value = s.get("metric_end")
        finished = isinstance(value, (int, float)) and bool(s)
        status = str(s.get("status") or ("running" if running and n == numbers[-1] else "incomplete"))
        last = layout.existing_last_checkpoint()
        ckpt = str(s.get("checkpoint") or (last or ""))
        metric = str(s.get("optimized_metric") or metric)
        trials.append(SweepTrial(n, f"{sweep_id}-{n}", swept, str(s.get("optimized_metric") or ""),
                                 float(value) if finished else None, status, int(s.get("global_step") or 0),
                                 ckpt if ckpt and is_checkpoint(ckpt) else ""))  # fmt: skip
    done = [i for i, t in enumerate(trials) if t.value is not None]
    mode = mode or "min"
    sign = -1.0 if mode == "max" else 1.0
    best = min(done, key=lambda i: sign * trials[i].value) if done else -1  # type: ignore[operator]
    return SweepTable(sweep_id, search, metric, mode, trials, best)
