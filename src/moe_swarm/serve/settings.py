"""Typed settings of the sidecar. ``conf/serve.yaml`` is composed by Hydra and checked against these.

Tests and embedding programs build :class:`ServeSettings` directly; the command line goes through
:func:`from_config`, which rejects unknown keys and wrong types with the key's name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
class TrainingSettings:
    """How training jobs are started and what a remote request may change."""

    # argv prefix of the training child; a leading "python" is this interpreter (sys.executable)
    command: list[str] = field(default_factory=lambda: ["python", "-m", "moe_swarm.train"])
    # the Hydra config the command composes: requests are composed and validated against it at submit
    # time (INVALID_ARGUMENT for a typo). None: no submit-time check (a command that is not moe-swarm's)
    config_name: str | None = "train"
    conf_dir: str | None = None  # holds experiment/; None = moe_swarm.config.config_dir()
    runs_dir: str | None = None  # None = <state_dir>/runs
    cwd: str | None = None  # working directory of the children; None = the server's
    config_roots: list[str] = field(default_factory=list)
    default_experiment: str | None = "quickstart"
    max_concurrent: int = 1
    addable_keys: list[str] = field(default_factory=list)
    path_keys: list[str] = field(default_factory=lambda: ["data.paths", "data.bin_path"])
    data_roots: list[str] = field(default_factory=list)
    max_overrides: int = 64
    # overrides the server adds to every training job (before the client's)
    extra_overrides: list[str] = field(default_factory=lambda: ["trainer.enable_progress_bar=false"])
    env: dict[str, str] = field(default_factory=dict)
    cancel_grace_s: float = 120.0


@dataclass
class BenchmarkSettings:
    command: list[str] = field(default_factory=lambda: ["python", "-m", "moe_swarm.serve.bench_child"])
    suites: list[str] = field(default_factory=lambda: ["moe_layer"])
    quick: bool = True
    default_samples: int = 3
    max_samples: int = 50
    timeout_s: float = 900.0
    threads: int = 1


@dataclass
class BatchingSettings:
    enabled: bool = True
    max_batch_size: int = 32
    max_delay_ms: float = 5.0


@dataclass
class InferenceDefaults:
    max_new_tokens: int = 16
    agents: int = 8
    rounds: int = 1
    temperature: float = 0.7
    seed: int = 0


@dataclass
class InferenceSettings:
    default_model: str | None = None  # checkpoint path (or job/run id); None = newest succeeded training job
    checkpoint_roots: list[str] = field(default_factory=list)  # besides the training runs_dir
    device: str = "cpu"  # "cpu", "cuda", "auto"
    threads: int = 0  # torch intra-op threads for inference; 0 = leave torch's default
    workers: int = 1  # executor threads running solves
    max_prompt_chars: int = 2048
    max_new_tokens: int = 128
    max_agents: int = 64
    max_rounds: int = 8
    max_loaded_models: int = 4
    defaults: InferenceDefaults = field(default_factory=InferenceDefaults)
    batching: BatchingSettings = field(default_factory=BatchingSettings)


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    state_dir: str = "serve-state"
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
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @property
    def runs_path(self) -> Path:
        return Path(self.training.runs_dir).resolve() if self.training.runs_dir else self.state_path / "runs"

    @property
    def conf_path(self) -> Path:
        if self.training.conf_dir:
            return Path(self.training.conf_dir).resolve()
        from moe_swarm.config import config_dir

        return config_dir()


def resolve_command(command: list[str]) -> list[str]:
    """A leading ``python`` means the interpreter running the server (same venv, same packages)."""
    if not command:
        raise ValueError("a job command must not be empty")
    argv = [str(c) for c in command]
    if argv[0] == "python":
        argv[0] = sys.executable
    return argv


def from_config(cfg: DictConfig | dict[str, Any]) -> ServeSettings:
    """Typed settings from the ``serve`` node of the Hydra config (unknown keys and bad types raise)."""
    schema = OmegaConf.structured(ServeSettings)
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    merged = OmegaConf.merge(schema, node)
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
