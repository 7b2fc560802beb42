"""Typed settings of the sidecar. ``conf/serve.yaml`` is composed by Hydra and checked against these.

The transport's own settings live here; the jobs and inference settings are the control core's
(:mod:`moe_swarm.control.settings`).

Tests and embedding programs build :class:`ServeSettings` directly; the command line goes through
:func:`from_config`, which rejects unknown keys and wrong types with the key's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moe_swarm.control.settings import (
    BenchmarkSettings,
    EvaluationSettings,
    InferenceSettings,
    SweepSettings,
    TrainingSettings,
)

# The line `moe-swarm-serve` prints on stdout once it accepts RPCs, followed by its address.
READY_PREFIX = "moe-swarm serving on "


@dataclass
class AuthSettings:
    """Bearer tokens from ``token_env`` (comma-separated) and/or ``token_file`` (one per line)."""

    enabled: bool = True
    token_env: str = "MOE_SWARM_TOKENS"
    token_file: str | None = None
    exempt_methods: list[str] = field(
        default_factory=lambda: ["/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"]
    )


@dataclass
class TLSSettings:
    cert: str | None = None
    key: str | None = None


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    state_dir: str = "serve-state"
    job_store: str = "sqlite"  # "sqlite" (<state_dir>/jobs.sqlite3) or "json" (one file per job)
    max_message_bytes: int = 4 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    grace_s: float = 10.0
    shutdown_delay_s: float = 0.0  # NOT_SERVING is reported this long before the port closes
    log_rpcs: bool = True
    metrics_port: int | None = None  # Prometheus text endpoint; None = off, 0 = a free port
    metrics_host: str = "127.0.0.1"
    auth: AuthSettings = field(default_factory=AuthSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    benchmark: BenchmarkSettings = field(default_factory=BenchmarkSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    sweep: SweepSettings = field(default_factory=SweepSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @property
    def runs_path(self) -> Path:
        """The runs folder the CLI uses too (``paths.runs_dir``: ``$MOE_SWARM_RUNS_DIR`` or ``runs``, from
        the working directory), so runs trained with ``make train`` are served, unless set explicitly."""
        if self.training.runs_dir:
            return Path(self.training.runs_dir).resolve()
        return Path(os.environ.get("MOE_SWARM_RUNS_DIR") or "runs").resolve()

    @property
    def conf_path(self) -> Path:
        if self.training.conf_dir:
            return Path(self.training.conf_dir).resolve()
        from moe_swarm.config import config_dir

        return config_dir()


def from_config(cfg: DictConfig | dict[str, Any]) -> ServeSettings:
    """Typed settings from the ``serve`` node of the Hydra config (unknown keys and bad types raise)."""
    schema = OmegaConf.structured(ServeSettings)
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    merged = OmegaConf.merge(schema, node)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
