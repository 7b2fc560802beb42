"""Shared test settings: one intra-op thread (2-core CI machines), deterministic seeds."""

import os
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
    "model.d_ff=32",
    "model.num_experts=4",
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "module.eval_problems=4",
    "logger=csv",
]
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def python() -> str:
    return sys.executable
