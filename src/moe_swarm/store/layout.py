"""The contracts between a training process and whoever watches it: run-directory layout, metrics lines.

A run is keyed by its id: everything it writes lives under ``<runs_dir>/<run_id>/``::

    checkpoints/last.ckpt     newest full training state (the same run id resumes from it)
    checkpoints/best-*.ckpt   best checkpoint by the optimised metric
    checkpoints/swarm.ckpt    swarm value-head runs: model + swarm state in one file
    summary.json              what the run did (status, steps, start/end metrics, paths)
    run.lock                  held while a process trains in this folder (pid, host)
    logs/  plots/  hydra/     CSV/TensorBoard logs, expert-load plots, Hydra's config snapshots

The gRPC sidecar, ``moe-swarm-eval``, the launcher and the tests read these paths from
:class:`RunLayout`, never from string literals of their own. (The Hydra config spells the same
folders as ``${run_dir}/checkpoints`` etc.: config cannot import Python.)

Metrics lines: when ``MOE_SWARM_METRICS_LINES=1`` is set in its environment, training prints
``MOE_SWARM_METRICS {"train/loss": 1.2, "trainer/global_step": 10}`` lines on stdout (rank 0),
which a supervising process turns into metric events. :func:`format_metrics_line` writes them,
:func:`parse_metrics_line` reads them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "METRICS_LINES_ENV",
    "METRICS_LINE_PREFIX",
    "RunLayout",
    "format_metrics_line",
    "metrics_lines_enabled",
    "parse_metrics_line",
]

METRICS_LINES_ENV = "MOE_SWARM_METRICS_LINES"
METRICS_LINE_PREFIX = "MOE_SWARM_METRICS "


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory. Pure path arithmetic: nothing is created or read."""

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def for_run(cls, runs_dir: str | os.PathLike, run_id: str) -> RunLayout:
        return cls(Path(runs_dir) / run_id)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunLayout:
        """The run a checkpoint belongs to: the folder above ``checkpoints/`` (else its own folder)."""
        folder = Path(checkpoint).parent
        return cls(folder.parent if folder.name == "checkpoints" else folder)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def swarm_checkpoint(self) -> Path:
        return self.checkpoints / "swarm.ckpt"

    @property
    def swarm_state(self) -> Path:
        return self.root / "swarm_state.pt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def hydra(self) -> Path:
        return self.root / "hydra"

    def existing_last_checkpoint(self) -> Path | None:
        """``last_checkpoint`` if it exists (a file, or a sharded folder under trainer=model_parallel), else None."""
        last = self.last_checkpoint
        return last if is_checkpoint(last) else None


def metrics_lines_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when the supervising process asked for metrics lines (``MOE_SWARM_METRICS_LINES=1``)."""
    return (os.environ if environ is None else environ).get(METRICS_LINES_ENV) == "1"


def format_metrics_line(metrics: Mapping[str, float]) -> str:
    """One line: the prefix, then a JSON object of the finite numbers (keys sorted), no newline."""
    clean = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            clean[str(k)] = v
    return METRICS_LINE_PREFIX + json.dumps(clean, sort_keys=True)


def parse_metrics_line(line: str) -> dict[str, float] | None:
    """A metrics line -> its numeric entries as floats; None for any other line (or a torn one)."""
    if not line.startswith(METRICS_LINE_PREFIX):
        return None
    try:
        data = json.loads(line[len(METRICS_LINE_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {
        str(k): float(v) for k, v in data.items() if not isinstance(v, bool) and isinstance(v, (int, float))
    }


SHARDED_MARKER = ".metadata"  # torch.distributed.checkpoint's index file inside a sharded checkpoint folder


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """A sharded checkpoint folder (``trainer=model_parallel``): it holds the ``.metadata`` that ``dcp.save``
    writes."""
    return Path(path, SHARDED_MARKER).is_file()


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint is there to load: a ``.ckpt`` file, or a sharded folder."""
    return Path(path).is_file() or is_sharded_checkpoint(path)
