"""A read-only view of one training run: its composed config, summary and last checkpoint.

A client (``moe-swarm-ctl``, the MCP server) reads these through RPCs (ListExperiments, GetRun) instead
of reading the sidecar's folders behind its back; ids are checked, so a request can never name a path.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from moe_swarm.control.errors import FailedPrecondition, InvalidArgument, NotFound
from moe_swarm.control.experiments import MAX_FILE_CHARS
from moe_swarm.control.registry import JobRegistry
from moe_swarm.control.validation import check_id
from moe_swarm.store.layout import RunLayout
from moe_swarm.store.summary import read_summary


@dataclass
class RunView:
    run_id: str
    run_dir: Path
    config_yaml: str = ""
    summary_json: str = ""
    checkpoint: str = ""
    job_ids: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


PLOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.png$")
MAX_PLOT_BYTES = 3 * 1024 * 1024  # under the 4 MiB message limit


def resolved_yaml(text: str) -> str:
    """Hydra saves the config with its ``${...}`` interpolations; give it resolved when they resolve."""
    from omegaconf import OmegaConf

    from moe_swarm.config import register_resolvers

    register_resolvers()
    try:
        return OmegaConf.to_yaml(OmegaConf.create(text), resolve=True)
    except Exception:  # an interpolation that needs the training process (e.g. ${hydra:...}): as saved
        return text


def _newest(paths: list[Path]) -> Path | None:
    files = [p for p in paths if p.is_file()]
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else None


def run_view(runs_dir: Path, registry: JobRegistry, ref: str) -> RunView:
    """The run named by a run id or a training job's id: its newest composed config (Hydra's
    ``.hydra/config.yaml`` of the newest launch), summary.json and last checkpoint."""
    check_id(ref, "run_id", required=True)
    job = registry.get(ref)
    run_id = job.run_id if job is not None and job.kind == "training" and job.run_id else ref
    layout = RunLayout.for_run(runs_dir, run_id)
    jobs = [j.job_id for j in registry.list(None, "training", 0) if j.run_id == run_id]
    if not layout.root.is_dir():
        hint = f"; its job(s) {', '.join(jobs)} have not created it yet" if jobs else ""
        raise NotFound(f"no run {run_id!r} under this sidecar's runs folder{hint}; list jobs to find run ids")
    view = RunView(run_id=run_id, run_dir=layout.root, job_ids=jobs)
    config = _newest(list(layout.hydra.glob("**/.hydra/config.yaml")))
    if config is not None:
        text = config.read_text(encoding="utf-8", errors="replace")
        view.config_yaml = resolved_yaml(text)[:MAX_FILE_CHARS]
    if layout.summary.is_file():
        view.summary_json = layout.summary.read_text(encoding="utf-8", errors="replace")[:MAX_FILE_CHARS]
    last = layout.existing_last_checkpoint()
    view.checkpoint = str(last) if last else ""
    view.plots = sorted(p.name for p in layout.plots.glob("*.png") if PLOT_NAME.match(p.name))
    return view


def run_plot(runs_dir: Path, registry: JobRegistry, ref: str, name: str) -> bytes:
    """The PNG bytes of one of a run's plots (names from :func:`run_view`; never a path)."""
    view = run_view(runs_dir, registry, ref)
    if not PLOT_NAME.match(name or ""):
        raise InvalidArgument(
            f"plot name {name[:80]!r} is not a plot file name like loss.png; see the run's plots"
        )
    if name not in view.plots:
        raise NotFound(
            f"run {view.run_id!r} has no plot {name!r}; it has: {', '.join(view.plots) or 'none yet'}"
        )
    path = RunLayout(view.run_dir).plots / name
    if path.stat().st_size > MAX_PLOT_BYTES:
        raise InvalidArgument(f"plot {name!r} is {path.stat().st_size} bytes, over {MAX_PLOT_BYTES}")
    return path.read_bytes()


def delete_run(runs_dir: Path, registry: JobRegistry, run_id: str, confirm: str) -> tuple[Path, int]:
    """Remove a run's folder; ``confirm`` must repeat the run id and no job may be using it. Returns the
    folder and the bytes it held. Jobs that used it stay listed (their checkpoint is gone)."""
    check_id(run_id, "run_id", required=True)
    if confirm != run_id:
        raise FailedPrecondition(
            f"deleting run {run_id!r} removes its checkpoints, logs and plots for good; to confirm, pass "
            f"confirm={run_id!r}"
        )
    layout = RunLayout.for_run(runs_dir, run_id)
    if not layout.root.is_dir() or layout.root.resolve().parent != Path(runs_dir).resolve():
        raise NotFound(f"no run {run_id!r} under this sidecar's runs folder; list runs to find run ids")
    busy = [j.job_id for j in registry.active("training") if j.run_id == run_id]
    if busy:
        raise FailedPrecondition(f"run {run_id!r} is in use by job(s) {', '.join(busy)}; cancel them first")
    size = sum(p.stat().st_size for p in layout.root.rglob("*") if p.is_file() and not p.is_symlink())
    shutil.rmtree(layout.root)
    return layout.root, size


@dataclass
class RunSummaryView:
    """One line of ListRuns: what a run is and how far it got."""

    run_id: str
    experiment: str = ""
    status: str = ""
    global_step: int = 0
    max_steps: int = 0
    metric: str = ""
    metric_value: float | None = None
    checkpoint: str = ""
    job_ids: list[str] = field(default_factory=list)
    updated_unix: float = 0.0


NOT_RUNS = {"sweeps", "eval"}  # folders the runs folder holds besides runs


def _launch_facts(layout: RunLayout) -> tuple[str, int]:
    """(experiment, trainer.max_steps) of the run's newest launch, from Hydra's saved overrides and config."""
    import yaml

    experiment, max_steps = "", 0
    overrides = _newest(list(layout.hydra.glob("**/.hydra/overrides.yaml")))
    with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
        for item in (yaml.safe_load(overrides.read_text()) or []) if overrides else []:
            if str(item).startswith("experiment="):
                experiment = str(item).split("=", 1)[1]
    config = _newest(list(layout.hydra.glob("**/.hydra/config.yaml")))
    with contextlib.suppress(OSError, ValueError, TypeError, yaml.YAMLError):
        steps = (
            ((yaml.safe_load(config.read_text()) or {}).get("trainer") or {}).get("max_steps")
            if config
            else 0
        )
        max_steps = int(steps) if isinstance(steps, int) else 0
    return experiment, max_steps


def list_runs(runs_dir: Path, registry: JobRegistry, limit: int = 0) -> list[RunSummaryView]:
    """Every run folder under ``runs_dir`` (trained by the CLI or by this sidecar), newest first."""
    jobs_by_run: dict[str, list] = {}
    for job in registry.list(None, "training", 0):  # newest first
        jobs_by_run.setdefault(job.run_id, []).append(job)
    out = []
    for folder in Path(runs_dir).iterdir() if Path(runs_dir).is_dir() else []:
        if not folder.is_dir() or folder.name in NOT_RUNS or folder.name.startswith("."):
            continue
        layout = RunLayout(folder)
        summary = read_summary(layout.summary) or {}
        jobs = jobs_by_run.get(folder.name, [])
        last = layout.existing_last_checkpoint()
        if not summary and last is None and not jobs:
            continue  # not a run folder
        experiment, max_steps = _launch_facts(layout)
        active = next((j for j in jobs if not j.state.terminal), None)
        value = summary.get("metric_end")
        out.append(RunSummaryView(
            run_id=folder.name, experiment=experiment or (jobs[0].config_path if jobs else ""),
            status=active.state.value.lower() if active else str(summary.get("status") or (jobs[0].state.value.lower() if jobs else "")),
            global_step=int(summary.get("global_step") or 0), max_steps=max_steps,
            metric=str(summary.get("optimized_metric") or ""),
            metric_value=float(value) if isinstance(value, (int, float)) else None,
            checkpoint=str(last) if last else "", job_ids=[j.job_id for j in jobs],
            updated_unix=max((p.stat().st_mtime for p in (layout.summary, last) if p and p.exists()), default=folder.stat().st_mtime),
        ))  # fmt: skip
    out.sort(key=lambda r: (r.updated_unix, r.run_id), reverse=True)
    return out[:limit] if limit > 0 else out
