"""RunInference with mode="steps": the step-level swarm through a real gRPC sidecar on 127.0.0.1."""

import shutil
from pathlib import Path

import grpc
import pytest
from conftest import TINY_MUL_BASE, compose_cfg
from serve_helpers import local_settings, tiny_checkpoint

from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer
from moe_swarm.swarm import StepSwarm, load_step_checker


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A tiny 1x1 multiplication model trained with a scratchpad, with its step checker, plus a text model."""
    from moe_swarm.cli.swarm_train import swarm_train
    from moe_swarm.cli.train import train

    runs = tmp_path_factory.mktemp("serve-steps")
    base = [*TINY_MUL_BASE, "data.task_kwargs.scratchpad=true", "model.max_seq_len=48", "trainer.max_steps=150",
            "trainer.val_check_interval=150", "module.eval_max_new_tokens=24", "run_id=base"]  # fmt: skip
    ckpt = Path(train(compose_cfg("train", base, runs))["checkpoint"])
    checker = [f"checkpoint={ckpt}", "swarm_objective=step_checker", "run_id=checker", "data.n_train=24",
               "data.n_val=4", "data.rollout.num_agents=4", "data.rollout.wave_agents=4", "trainer.max_steps=10",
               "trainer.val_check_interval=10", "trainer.enable_progress_bar=false", "validate_before_fit=false"]  # fmt: skip
    summary = swarm_train(compose_cfg("swarm_train", checker, runs))
    models = runs / "models"
    models.mkdir()
    shutil.copy(summary["checkpoint"], models / "steps.ckpt")
    tiny_checkpoint(models / "text.ckpt", seed=1)
    return models


@pytest.fixture
def stub(models, tmp_path):
    settings = local_settings(
        tmp_path / "state",
        inference__checkpoint_roots=[str(models)],
        inference__default_model=str(models / "steps.ckpt"),
        benchmark__suites=["moe_layer"],
    )
    with BackgroundServer(settings) as srv:
        channel = grpc.insecure_channel(srv.address)
        yield mcp_pb2_grpc.MCPControlStub(channel)
        channel.close()


def test_steps_mode_returns_the_committed_steps_with_vote_shares(stub, models):
    request = pb.InferRequest(prompt="3*4=", mode="steps", agents=4, temperature=0.8, seed=5)
    r = stub.RunInference(request, timeout=120)
    assert r.steps and all(0 < s.vote_share <= 1 for s in r.steps)
    assert r.vote_share == pytest.approx(r.steps[-1].vote_share)
    assert r.votes and r.agents == 4 and sum(v.weight for v in r.votes) == pytest.approx(1.0)
    assert r.forward_passes > 0 and r.flops > 0 and r.generated_tokens > 0 and r.rounds_used >= 1
    # the same swarm run in-process gives the same trajectory (the server adds nothing of its own)
    from moe_swarm.store.checkpoint import load_checkpoint

    loaded = load_checkpoint(models / "steps.ckpt")
    checker, steps = load_step_checker(models / "steps.ckpt")
    cfg = steps.replace(num_agents=4, wave_agents=min(steps.wave_agents, 4), temperature=(0.8,), seed=5)
    task = get_task(loaded.task["name"], **loaded.task["kwargs"])
    local = StepSwarm(loaded.model, cfg, ByteTokenizer(), task, checker).solve(["3*4="])[0]
    assert [s.text for s in r.steps] == [p.text for p in local.committed] and r.output == local.answer
    assert [s.vote_share for s in r.steps] == pytest.approx(local.shares)
    assert r.forward_passes == local.forward_passes
    again = stub.RunInference(request, timeout=120)
    assert [(s.text, s.vote_share) for s in again.steps] == [(s.text, s.vote_share) for s in r.steps]


def test_answers_mode_is_unchanged_and_bad_modes_are_refused(stub, models):
    plain = stub.RunInference(
        pb.InferRequest(prompt="3*4=", agents=2, max_new_tokens=24, seed=1), timeout=120
    )
    assert not plain.steps and plain.votes  # the answer-level swarm, as before
    with pytest.raises(grpc.RpcError) as bad:
        stub.RunInference(pb.InferRequest(prompt="3*4=", mode="tree"), timeout=60)
    assert (
        bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'answers', 'steps'" in bad.value.details()
    )
    text = str(models / "text.ckpt")
    with pytest.raises(grpc.RpcError) as no_pad:
        stub.RunInference(pb.InferRequest(prompt="hello", mode="steps", model_id=text), timeout=60)
    assert no_pad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "scratchpad" in no_pad.value.details()
