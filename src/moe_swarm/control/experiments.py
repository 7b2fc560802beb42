"""The experiments a client may train: ``conf/experiment/*.yaml`` with a one-line description each.

Served read-only (ListExperiments) so a client never reads the server's folders behind its back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_FILE_CHARS = 256 * 1024


@dataclass(frozen=True)
class ExperimentInfo:
    name: str
    description: str
    yaml: str


def describe_yaml(text: str) -> str:
    """The first comment line of an experiment file that is not a ``@package`` directive."""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        comment = stripped.lstrip("#").strip()
        if comment and not comment.startswith("@package"):
            return comment
    return ""


def list_experiments(experiment_dir: Path) -> list[ExperimentInfo]:
    """Every ``<experiment_dir>/*.yaml``, sorted by name (none when the folder cannot be read)."""
    out = []
    try:
        paths = sorted(Path(experiment_dir).glob("*.yaml"))
    except OSError:
        return []
    for path in paths:
        text = path.read_text(encoding="utf-8")[:MAX_FILE_CHARS]
        out.append(ExperimentInfo(path.stem, describe_yaml(text), text))
    return out


def experiment_names(experiment_dir: Path) -> str:
    """The experiments' names joined for an error message ('' when there are none)."""
    return ", ".join(e.name for e in list_experiments(experiment_dir))
