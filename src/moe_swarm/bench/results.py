"""Benchmark rows and the environment they were measured in; reading and writing results.json.

A row is one measured (or derived) number next to the reference it was measured against in the
same process: ``ratio = value / reference_value``, and ``higher_is_better`` says which way is good.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from moe_swarm.bench.machine import CpuInfo

RESULTS_SCHEMA_VERSION = 1


@dataclass
class EnvInfo:
    """Where a run happened: stamped on every row so a row read alone is still interpretable."""

    torch_version: str
    device: str  # "cpu" or "cuda"
    device_name: str  # CPU model or GPU name
    threads: int  # torch intra-op threads (torch.get_num_threads() during the run)
    git_commit: str
    cpu: CpuInfo  # the host CPU, also on a CUDA run (it runs the Python side)

    @classmethod
    def collect(cls, device: torch.device, threads: int) -> EnvInfo:
        cpu = CpuInfo.collect(threads)
        return cls(
            torch_version=torch.__version__,
            device=device.type,
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu.model_name,
            threads=threads,
            git_commit=git_commit(),
            cpu=cpu,
        )


@dataclass
class Row:
    """One number. ``metric`` is ``<suite>/<config>/<name>``, e.g. ``moe_layer/E64k8_t4096_fp32/auto_speedup``."""

    suite: str
    metric: str
    value: float
    unit: str
    reference: str  # what the value is compared to, measured side by side (a metric name)
    reference_value: float
    ratio: float  # value / reference_value
    higher_is_better: bool
    config: dict
    torch_version: str
    device: str
    threads: int
    git_commit: str
    note: str = ""
    samples: list[float] = field(default_factory=list)  # per-repeat measurements, in `unit`

    def __post_init__(self) -> None:
        for name in ("value", "reference_value", "ratio"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(
                    f"row {self.metric!r}: {name}={v!r} must be a positive finite number "
                    "(a zero or NaN timing means the measurement is broken)"
                )

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity used by ``compare``: the same metric under the same configuration."""
        return (self.suite, self.metric, json.dumps(self.config, sort_keys=True))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Row:
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name not in d and f.name not in ("note", "samples")]
        if missing:
            raise ValueError(f"results row {d.get('metric', '?')!r} lacks fields {missing}")
        return cls(**{k: v for k, v in d.items() if k in known})


def make_row(
    env: EnvInfo,
    suite: str,
    metric: str,
    value: float,
    unit: str,
    *,
    reference: str,
    reference_value: float,
    higher_is_better: bool,
    config: dict,
    note: str = "",
    samples: list[float] | None = None,
) -> Row:
    """A row stamped with the run's environment; ``ratio`` is computed here, never passed in."""
    value, reference_value = float(value), float(reference_value)
    return Row(
        suite=suite,
        metric=f"{suite}/{metric}",
        value=value,
        unit=unit,
        reference=reference,
        reference_value=reference_value,
        ratio=value / reference_value if reference_value else float("nan"),
        higher_is_better=higher_is_better,
        config=dict(config),
        torch_version=env.torch_version,
        device=env.device,
        threads=env.threads,
        git_commit=env.git_commit,
        note=note,
        samples=[float(s) for s in samples or []],
    )


def write_results_json(path: Path, rows: list[Row], meta: dict, problems: list[dict]) -> None:
    payload = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "meta": meta,
        "rows": [r.to_dict() for r in rows],
        "problems": problems,  # suites skipped (not available) or failed, with the reason
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def load_results(path: str | Path) -> tuple[list[Row], dict]:
    """Rows and meta from a results.json written by ``moe-swarm-bench run``."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"no results file at {p}; pass a results.json or the run folder holding it")
    try:
        payload = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); was it written by moe-swarm-bench run?") from e
    if not isinstance(payload, dict) or "rows" not in payload:
        raise ValueError(f"{p} has no 'rows' list; was it written by moe-swarm-bench run?")
    return [Row.from_dict(d) for d in payload["rows"]], payload.get("meta", {})


def git_commit() -> str:
    """HEAD of the repository this package lives in, or 'unknown' outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
