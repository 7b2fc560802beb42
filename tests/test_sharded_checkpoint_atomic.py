"""A sharded checkpoint survives a writer killed at any moment: the save goes to ``<path>.partial`` and
is swapped in whole (moe_swarm.store.sharded). Real processes, real SIGKILLs, real files."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from moe_swarm.store.layout import is_sharded_checkpoint
from moe_swarm.store.sharded import (
    ShardedCheckpointError,
    consolidated_checkpoint,
    prepare_sharded_save,
    publish_sharded,
    recover_sharded,
    save_sharded,
    staging_path,
)

# Saves the same model again and again, every tensor filled with the step number, and prints the
# step once its save returned. Big enough (~25 MB) that a save takes tens of milliseconds.
SAVER = """
import sys, torch
from torch import nn
from moe_swarm.store.sharded import save_sharded
path = sys.argv[1]
model = nn.Sequential(*[nn.Linear(512, 512) for _ in range(24)])
for step in range(1, 100000):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    save_sharded(path, model, meta={"global_step": step, "hyper_parameters": {"model": {}}})
    print(step, flush=True)
"""


def _check_whole(path: Path) -> int:
    """The checkpoint at ``path`` loads, and every tensor holds the step its meta.pt names."""
    ckpt = consolidated_checkpoint(path)
    step = ckpt["global_step"]
    assert ckpt["state_dict"], "no tensors"
    for name, tensor in ckpt["state_dict"].items():
        assert torch.all(tensor == step), f"{name} is from another save than meta.pt (step {step})"
    return step


@pytest.mark.parametrize("delay_s", [0.0, 0.011, 0.029, 0.047])
def test_a_saver_killed_mid_save_leaves_the_previous_checkpoint_whole(tmp_path, delay_s):
    path = tmp_path / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        ready, _, _ = select.select([saver.stdout], [], [], 60)  # bounded: a hung saver fails the test
        first = saver.stdout.readline() if ready else ""  # one save published
        assert first.strip() == "1", f"the saver did not finish a save within 60 s: {first!r}"
        time.sleep(delay_s)  # then kill it somewhere inside a later save
        os.kill(saver.pid, signal.SIGKILL)
    finally:
        saver.kill()
        saver.wait(timeout=30)
    recover_sharded(path)  # what a resuming run does first
    assert is_sharded_checkpoint(path)
    assert _check_whole(path) >= 1


def test_an_interrupted_swap_is_recovered_and_leftovers_are_cleared(tmp_path):
    path = tmp_path / "last.ckpt"
    model = torch.nn.Linear(4, 4)
    save_sharded(path, model, meta={"global_step": 3, "hyper_parameters": {"model": {}}})
    assert not staging_path(path).exists(), "the staging folder is renamed into place"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    # Killed between the two renames: only <path>.previous is there; the next reader restores it.
    path.rename(path.with_name("last.ckpt.previous"))
    assert recover_sharded(path) is True
    assert consolidated_checkpoint(path, weights=False)["global_step"] == 3
    assert recover_sharded(path) is False, "nothing to do when last.ckpt is there"

    # Killed mid-write: a half-written staging folder; the next save clears it, the last one stays.
    staging = staging_path(path)
    staging.mkdir()
    (staging / "__0_0.distcp").write_bytes(b"torn")
    with pytest.raises(ShardedCheckpointError, match="no finished sharded save"):
        publish_sharded(path)
    assert consolidated_checkpoint(path, weights=False)["global_step"] == 3
    assert prepare_sharded_save(path) == staging and not staging.exists()
    with torch.no_grad():
        model.weight.fill_(7.0)
    save_sharded(path, model, meta={"global_step": 7, "hyper_parameters": {"model": {}}})
    ckpt = consolidated_checkpoint(path)
    assert ckpt["global_step"] == 7 and torch.all(ckpt["state_dict"]["model.weight"] == 7.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
