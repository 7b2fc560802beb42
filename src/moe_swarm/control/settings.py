"""Typed settings of the control core: how jobs are started and what inference may use.

``conf/serve.yaml`` holds them under ``serve.training``, ``serve.benchmark`` and ``serve.inference``;
:class:`moe_swarm.serve.settings.ServeSettings` composes them with the transport's own settings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class TrainingSettings:
    """How training jobs are started and what a remote request may change."""

    # argv prefix of the training child; a leading "python" is this interpreter (sys.executable)
    command: list[str] = field(default_factory=lambda: ["python", "-m", "moe_swarm.cli.train"])
    # the Hydra config the command composes: requests are composed and validated against it at submit
    # time (INVALID_ARGUMENT for a typo). None: no submit-time check (a command that is not moe-swarm's)
    config_name: str | None = "train"
    conf_dir: str | None = None  # holds experiment/; None = moe_swarm.config.config_dir()
    runs_dir: str | None = None  # None = the CLI's: $MOE_SWARM_RUNS_DIR or runs (from the working directory)
    cwd: str | None = None  # working directory of the children; None = the server's
    config_roots: list[str] = field(default_factory=list)
    default_experiment: str | None = "quickstart"
    max_concurrent: int = 1
    # training requests beyond max_concurrent wait PENDING in a queue (priority, then age); 0 = refuse them
    max_queued: int = 16
    # after a sidecar crash, jobs it left PENDING/RUNNING are queued again and resume their run's last
    # checkpoint (false: they are marked FAILED, the behaviour before the queue)
    resume_after_restart: bool = True
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
    command: list[str] = field(default_factory=lambda: ["python", "-m", "moe_swarm.bench.child"])
    suites: list[str] = field(default_factory=lambda: ["moe_layer"])  # RunBenchmark's default suites
    # every suite name the benchmark child knows (checked against the bench registry by bench's tests)
    available_suites: list[str] = field(
        default_factory=lambda: ["moe_layer", "generate", "train_step", "swarm", "parallel", "serve"]
    )
    quick: bool = True
    default_samples: int = 3
    max_samples: int = 50
    timeout_s: float = 900.0
    threads: int = 1


@dataclass
class EvaluationSettings:
    """Evaluation jobs: ``moe-swarm-eval`` on a checkpoint the sidecar may name, as a child process."""

    command: list[str] = field(default_factory=lambda: ["python", "-m", "moe_swarm.cli.eval"])
    max_concurrent: int = 1
    max_queued: int = 8
    default_em_problems: int = 200  # exact-match problems of a reasoning run when a request says none
    max_em_problems: int = 5000


@dataclass
class SweepSettings:
    """Sweep jobs: ``moe-swarm-train -m`` (a grid or the Optuna search) as one child; its trials train in
    turn inside it, with the training settings' command, overrides policy and environment."""

    max_concurrent: int = 1
    max_queued: int = 4
    max_trials: int = 16  # grid combinations, or Optuna trials


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


def resolve_command(command: list[str]) -> list[str]:
    """A leading ``python`` means the interpreter running the server (same venv, same packages)."""
    if not command:
        raise ValueError("a job command must not be empty")
    argv = [str(c) for c in command]
    if argv[0] == "python":
        argv[0] = sys.executable
    return argv
