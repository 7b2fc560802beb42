"""A read-only view of one training run: its composed config, summary and last checkpoint.

A client (``moe-swarm-ctl``, the MCP server) reads these through RPCs (ListExperiments, GetRun) instead
of reading the sidecar's folders behind its back; ids are checked, so a request can never name a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moe_swarm.control.errors import NotFound
from moe_swarm.control.experiments import MAX_FILE_CHARS
from moe_swarm.control.registry import JobRegistry
from moe_swarm.control.validation import check_id
from moe_swarm.layout import RunLayout


@dataclass
class RunView:
    run_id: str
    run_dir: Path
    config_yaml: str = ""
    summary_json: str = ""
    checkpoint: str = ""
    job_ids: list[str] = field(default_factory=list)


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
    return view
