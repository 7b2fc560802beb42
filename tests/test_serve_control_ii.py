"""Issue 21's defects in the control plane, each against a real sidecar on 127.0.0.1 (or the real CLI)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from serve_helpers import local_settings, tiny_checkpoint

from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer


class Conn:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = mcp_pb2_grpc.MCPControlStub(self.channel)


def test_a_typod_override_gets_the_clis_did_you_mean_not_hydras_plus_hint(tmp_path):
    """Defect 1: Hydra's "To append ... use +key" loops (the + form is refused remotely)."""
    settings = local_settings(tmp_path / "state", training__config_name="train")
    with BackgroundServer(settings) as srv:
        conn = Conn(srv.address)
        cases = {  # the model's own check names the key in its right place, as the CLI does
            "model.num_expert=16": "unknown model config key model.num_expert. Did you mean model.moe.num_experts",
            "trainer.max_stepz=5": "Did you mean ",
        }
        for override, expected in cases.items():
            with pytest.raises(grpc.RpcError) as err:
                conn.stub.StartTraining(
                    pb.TrainRequest(config_path="quickstart", overrides=[override]), timeout=60
                )
            details = err.value.details()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, details
            assert expected in details, details
            assert "To append to your config use +" not in details, details
        assert "trainer.max_steps" in details.split("Did you mean", 1)[1], details  # the last case
        conn.channel.close()


CHILD = Path(__file__).with_name("serve_child_train.py")


@pytest.fixture
def fake_server(tmp_path):
    """A sidecar whose training jobs are the stand-in child (real checkpoints, seconds per job)."""
    models = tmp_path / "models"
    tiny_checkpoint(models / "mul.ckpt", seed=1, task={"name": "mul", "kwargs": {}})
    s = local_settings(tmp_path / "state", training__command=["python", str(CHILD)], training__config_name=None,
                       training__extra_overrides=[], inference__checkpoint_roots=[str(models)])  # fmt: skip
    with BackgroundServer(s) as srv:
        srv.conn = Conn(srv.address)
        yield srv
        srv.conn.channel.close()


def _train(stub, run_id: str) -> str:
    job = stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=["fake.steps=2"], run_id=run_id),
                             timeout=30)  # fmt: skip
    final = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=90))[-1].job
    assert final.state == pb.SUCCEEDED, final.message
    return job.job_id


def test_the_default_model_is_pinned_shown_and_its_changes_are_announced(fake_server):
    """Defect 2: a later (smoke) job does not silently take over the default; every answer says which
    model answered and why; pinning another one is announced in the next answer."""
    stub = fake_server.conn.stub
    first = _train(stub, "first")
    out = stub.RunInference(pb.InferRequest(prompt="The ", max_new_tokens=2, agents=2), timeout=60)
    assert out.model_id == first and "first training job that succeeded" in out.default_model_source
    assert not out.default_model_notice
    second = _train(stub, "smoke")
    out = stub.RunInference(pb.InferRequest(prompt="The ", max_new_tokens=2, agents=2), timeout=60)
    assert out.model_id == first, "a newer job must not move the default silently"
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert listed.default_model_id == first and listed.default_model_source == out.default_model_source
    stub.LoadModel(pb.LoadModelRequest(checkpoint=second, make_default=True), timeout=60)
    out = stub.RunInference(pb.InferRequest(prompt="The ", max_new_tokens=2, agents=2), timeout=60)
    assert out.model_id == second and "LoadModel" in out.default_model_source
    assert f"changed from {first!r} to {second!r}" in out.default_model_notice
    named = stub.RunInference(
        pb.InferRequest(prompt="The ", max_new_tokens=2, agents=2, model_id=first), timeout=60
    )
    assert named.model_id == first and not named.default_model_source  # a named model is not the default


def test_list_models_lists_every_servable_checkpoint_before_any_inference(fake_server):
    """Defect 5: an agent can read each model's task and prompt format before loading anything."""
    stub = fake_server.conn.stub
    job_id = _train(stub, "text-run")
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert not listed.models  # nothing loaded yet
    by_task = {m.task: m for m in listed.servable}
    assert set(by_task) == {"", "mul"}, listed
    assert by_task["mul"].checkpoint.endswith("mul.ckpt") and "task 'mul'" in by_task["mul"].prompt_format
    assert by_task["mul"].example_prompt and not by_task["mul"].loaded
    text = by_task[""]
    assert (
        text.model_id == "text-run"
        and text.checkpoint.endswith("last.ckpt")
        and "text model" in text.prompt_format
    )
    assert text.is_default  # the first succeeded job
    stub.RunInference(pb.InferRequest(prompt="The ", max_new_tokens=2, agents=2), timeout=60)
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert [m.loaded for m in listed.servable if m.task == ""] == [True]
    assert job_id


def test_runs_trained_from_the_cli_are_served_by_their_readme_paths(tmp_path, monkeypatch):
    """Defect 3: one runs root (the CLI's ``runs/``) by default; README paths resolve; errors name the key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOE_SWARM_RUNS_DIR", raising=False)
    tiny_checkpoint(
        tmp_path / "runs" / "cli-run" / "checkpoints" / "last.ckpt", seed=2
    )  # as `make train` leaves it
    s = local_settings(tmp_path / "state", training__runs_dir=None)
    assert s.runs_path == (tmp_path / "runs").resolve()
    with BackgroundServer(s) as srv:
        stub = Conn(srv.address).stub
        info = stub.LoadModel(
            pb.LoadModelRequest(checkpoint="runs/cli-run/checkpoints/last.ckpt"), timeout=60
        )
        assert info.checkpoint == str((tmp_path / "runs" / "cli-run" / "checkpoints" / "last.ckpt").resolve())
        assert stub.LoadModel(pb.LoadModelRequest(checkpoint="cli-run"), timeout=60).model_id == "cli-run"
        assert "cli-run" in {m.model_id for m in stub.ListModels(pb.ListModelsRequest(), timeout=30).servable}
        for missing in ("runs/nope/checkpoints/last.ckpt", "nope", "/elsewhere/x.ckpt"):
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadModel(pb.LoadModelRequest(checkpoint=missing), timeout=30)
            assert "serve.inference.checkpoint_roots" in err.value.details(), err.value.details()


REAL_TINY = ["model.d_model=32", "data.batch_size=4", "data.block_size=32", "trainer.limit_val_batches=1",
             "validate_before_fit=false", "trainer.max_steps=2", "trainer.val_check_interval=2"]  # fmt: skip


def test_resuming_with_another_model_is_refused_at_submit_and_a_finished_run_says_nothing_ran(tmp_path):
    """Defect 9, with real `python -m moe_swarm.cli.train` children."""
    with BackgroundServer(local_settings(tmp_path / "state", training__extra_overrides=REAL_TINY)) as srv:
        stub = Conn(srv.address).stub

        def run(*overrides: str) -> pb.Job:
            job = stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=list(overrides),
                                                     run_id="r1"), timeout=60)  # fmt: skip
            return list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=300))[-1].job

        first = run()
        assert first.state == pb.SUCCEEDED and "nothing ran" not in first.message, first.message
        again = run()
        assert again.state == pb.SUCCEEDED and again.message.startswith(
            "nothing ran: run 'r1' is already complete"
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=["model.d_model=64"], run_id="r1"),
                               timeout=60)  # fmt: skip
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "model.d_model: 32 -> 64" in err.value.details() and "new run_id" in err.value.details()
        assert len(stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == 2  # the refused one made no job
        extended = run("trainer.max_steps=3")  # the same model, more steps: resumes
        assert extended.state == pb.SUCCEEDED and "nothing ran" not in extended.message, extended.message
