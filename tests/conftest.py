"""Shared test settings: one intra-op thread (2-core CI machines), deterministic seeds."""

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Hydra overrides that shrink any experiment to a model and batch that train in seconds on a CPU.
TINY_MODEL = [
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.moe.d_ff=32",
    "model.moe.num_experts=4",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "module.eval_problems=4",
    "logger=csv",
]
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# The files whose tests take longest, longest first, from `--durations` of `make test` on 2 cores
# (2026-12-07): each file's seconds summed over its tests, 50-160 s for these. The compile tests count
# as in a fresh clone, whose inductor cache is cold as CI's is: test_compile.py took over 159 s there
# (54 s with a warm cache), test_bench_sizes.py 44 s for its compile case.
# `make test` hands whole files to its workers in collection order (--no-loadscope-reorder; xdist
# would otherwise order files by their number of tests and start the 126-second one-test DDP file
# last); starting the long ones first lets the workers end together.
LONGEST_FILES = (
    "test_compile.py",
    "test_train.py",
    "test_data_resume_ddp.py",
    "test_run_layer.py",
    "test_bench.py",
    "test_ddp.py",
    "test_fault_tolerance.py",
    "test_parallel.py",
    "test_serve_lifecycle.py",
    "test_swarm_train.py",
    "test_serve_job_queue.py",
    "test_mcp.py",
    "test_parallel_lightning.py",
    "test_parallel_elastic.py",
    "test_serve_training.py",
    "test_bench_sizes.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest files first; the rest keep their order (a stable sort keeps each file's own order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def python() -> str:
    return sys.executable


# A 1x1-digit multiplication MoE small enough to train in seconds (swarm training and eval tests).
TINY_MUL_BASE = [
    "experiment=reasoning_mul",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.moe.d_ff=32",
    "model.moe.num_experts=4",
    "model.max_seq_len=32",
    "data.task_kwargs.digits_a=1",
    "data.task_kwargs.digits_b=1",
    "data.n_train=30",
    "data.n_val=4",
    "data.n_test=4",
    "data.batch_size=32",
    "module.eval_problems=4",
    "module.optimizer.lr=0.01",
    "module.scheduler.warmup_steps=10",
    "trainer.max_steps=100",
    "trainer.val_check_interval=100",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "validate_before_fit=false",
    "logger=csv",
    "run_id=base",
]


def compose_cfg(name: str, overrides: list[str], runs_dir: Path):
    """Compose a primary config (train, eval, swarm_train, ...) with runs written under runs_dir."""
    from hydra import compose, initialize_config_dir

    from moe_swarm.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(name, overrides=[f"paths.runs_dir={runs_dir}", *overrides])


@pytest.fixture(scope="session")
def tiny_mul_base_ckpt(tmp_path_factory) -> Path:
    """A real training checkpoint of the tiny 1x1 multiplication model (trained once per session)."""
    from moe_swarm.cli.train import train

    runs = tmp_path_factory.mktemp("tiny_mul_base")
    return Path(train(compose_cfg("train", TINY_MUL_BASE, runs))["checkpoint"])


def run_entry_point(
    module: str, args: list[str], runs_dir: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args`` as a real child process with its runs under runs_dir."""
    env = {**os.environ, "MOE_SWARM_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "1"}
    env.pop("RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=runs_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def restore_environ():
    """For code that writes os.environ directly (cluster.apply_to_environ): put it back exactly as it was."""
    saved = dict(os.environ)
    yield os.environ
    os.environ.clear()
    os.environ.update(saved)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free TCP port for a rendezvous (MASTER_PORT, torchrun's endpoint) that a test binds seconds later.

    Drawn at random below the kernel's ephemeral range, so no process's outgoing connection can take it
    in the meantime (one from ``bind(0)`` is an ephemeral port: with two test workers, some other test's
    gloo or gRPC connection can be handed it before the rendezvous binds, EADDRINUSE)."""
    low = _ephemeral_low()
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found below the ephemeral range ({low})")
