"""Real training jobs (`python -m moe_swarm.cli.train`) through the sidecar: success, graceful cancel."""

from pathlib import Path

import grpc
import pytest
from serve_helpers import local_settings, wait_until

from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer

TINY = ["model.d_model=32", "data.batch_size=4", "data.block_size=32", "trainer.limit_val_batches=1",
        "validate_before_fit=false"]  # fmt: skip


@pytest.fixture
def server(tmp_path):
    # a state folder whose path needs quoting in Hydra overrides (space, comma, quote)
    with (
        BackgroundServer(local_settings(tmp_path / "state dir, it's")) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        srv.stub = mcp_pb2_grpc.MCPControlStub(ch)
        yield srv


def test_real_training_job_succeeds_and_its_checkpoint_answers_inference(server):
    from moe_swarm.store.checkpoint import load_model

    resp = server.stub.StartTraining(pb.TrainRequest(
        config_path="quickstart", overrides=[*TINY, "trainer.max_steps=4", "trainer.val_check_interval=2",
                                             "trainer.log_every_n_steps=1"]), timeout=30)  # fmt: skip
    assert resp.success and resp.job.state == pb.PENDING
    events = list(server.stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=300))
    # Metric events carry each validation result once, not a stale copy with every step's line.
    metric_events = [e.metrics for e in events if e.type == pb.JobEvent.METRICS]
    assert any("train/loss" in m for m in metric_events)
    seen: dict[str, float] = {}
    for m in metric_events:
        for k, v in m.items():
            if k.startswith("val/"):
                assert seen.get(k) != v, f"stale {k}={v} repeated in {metric_events}"
                seen[k] = v
    assert "val/bpb" in seen
    states = [e.job.state for e in events if e.type != pb.JobEvent.METRICS]
    job = events[-1].job
    assert job.state == pb.SUCCEEDED, "\n".join(job.log_tail) + job.message
    assert pb.RUNNING in states or events[0].job.state == pb.SUCCEEDED
    assert job.exit_code == 0 and job.checkpoint == str(Path(job.run_dir) / "checkpoints" / "last.ckpt")
    model, hparams = load_model(job.checkpoint)
    assert model.cfg.d_model == 32 and hparams["global_step"] == 4
    assert "val/bpb" in job.metrics and job.metrics["val/bpb"] > 0  # from the run's summary.json
    out = server.stub.RunInference(pb.InferRequest(prompt="The ", max_new_tokens=4, agents=2), timeout=120)
    assert out.model_id == resp.job_id and out.forward_passes > 0


def test_real_training_job_cancels_with_its_last_checkpoint_intact(server):
    from moe_swarm.store.checkpoint import load_model

    resp = server.stub.StartTraining(pb.TrainRequest(
        config_path="quickstart", overrides=[*TINY, "trainer.max_steps=100000", "trainer.val_check_interval=2"]),
        timeout=30)  # fmt: skip

    def checkpointed():
        job = server.stub.GetJob(pb.GetJobRequest(job_id=resp.job_id), timeout=10)
        assert job.state in (pb.PENDING, pb.RUNNING), job.message + "\n".join(job.log_tail)
        return (Path(job.run_dir) / "checkpoints" / "last.ckpt").is_file()

    wait_until(checkpointed, timeout=240, interval=0.2, what="first last.ckpt")
    cancel = server.stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=10)
    assert cancel.cancel_requested
    job = list(server.stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=240))[-1].job
    assert job.state == pb.CANCELLED, job.message
    assert job.exit_code == 143, job.message  # training's "stopped on request, checkpoint saved"
    assert job.checkpoint and "last checkpoint" in job.message
    model, hparams = load_model(job.checkpoint)
    assert hparams["global_step"] >= 2 and model.cfg.d_model == 32


def test_a_failed_job_reports_the_actual_error_not_hydras_trailer(tmp_path):
    """Without the submit-time check (config_name: null) a bad override fails in the child: the job's
    message quotes Hydra's error, not the "Set the environment variable HYDRA_FULL_ERROR=1" line."""
    settings = local_settings(tmp_path / "state", training__config_name=None)
    with BackgroundServer(settings) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = mcp_pb2_grpc.MCPControlStub(ch)
        resp = stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=["trainer.max_stepz=5"]),
                                  timeout=30)  # fmt: skip
        job = list(stub.WatchJob(pb.WatchJobRequest(job_id=resp.job_id), timeout=300))[-1].job
    assert job.state == pb.FAILED
    assert "Could not override 'trainer.max_stepz'" in job.message, job.message
    assert "HYDRA_FULL_ERROR" not in job.message


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_ctl_commands() -> list[list[str]]:
    """The `moe-swarm-ctl train/infer/models` lines of the README's Control plane section, in order."""
    import shlex

    section = README.read_text().split("## Control plane", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if line.startswith("moe-swarm-ctl ") and ";" not in line:
            words = shlex.split(line.split("  #", 1)[0])
            if words[1] in ("train", "infer", "models"):
                commands.append(words[1:])
    return commands


@pytest.mark.slow
def test_the_readme_serve_example_end_to_end(tmp_path):
    """Every train/infer/models command of the README's Control plane section, run as written (the server
    shrinks training with its extra overrides): a text model continues text, a reasoning model answers its
    own prompt format and refuses another with the expected format."""
    import os
    import subprocess
    import sys

    commands = _readme_ctl_commands()
    assert [c[0] for c in commands] == ["train", "infer", "models", "train", "infer", "infer"], commands
    tiny = ["model.d_model=32", "data.batch_size=4", "trainer.limit_val_batches=1", "validate_before_fit=false",
            "trainer.max_steps=2", "trainer.val_check_interval=2"]  # fits both experiments  # fmt: skip
    with BackgroundServer(local_settings(tmp_path / "state", training__extra_overrides=tiny)) as srv:
        env = {**os.environ, "MOE_SWARM_TARGET": srv.address}
        env.pop("MOE_SWARM_TOKEN", None)
        job_id, outputs = "", []
        for words in commands:
            words = [job_id if w == "<job_id>" else w for w in words]
            proc = subprocess.run([sys.executable, "-m", "moe_swarm.serve.ctl", *words], capture_output=True,
                                  text=True, timeout=600, env=env)  # fmt: skip
            outputs.append(proc)
            if words[0] == "train":
                assert proc.returncode == 0, proc.stdout + proc.stderr
                job_id = proc.stdout.split()[1]  # "job <id> started: ..."
    text_train, text_infer, models, mul_train, mul_infer, mul_wrong = outputs
    assert text_infer.returncode == 0 and text_infer.stdout.strip(), text_infer.stderr
    assert "prompt: text model: any text" in models.stdout
    assert mul_infer.returncode == 0, mul_infer.stderr
    assert mul_wrong.returncode == 1
    assert "INVALID_ARGUMENT" in mul_wrong.stderr and "trained on task 'mul'" in mul_wrong.stderr
    assert "'321*54=' asks 123*45" in mul_wrong.stderr
