"""Jobs through the real server: real child processes (a stand-in training script), real files."""

import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_helpers import local_settings, wait_until

from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer

CHILD = Path(__file__).with_name("serve_child_train.py")


@pytest.fixture
def server(tmp_path, request):
    extra = getattr(request, "param", {})
    s = local_settings(tmp_path / "state", training__command=["python", str(CHILD)], training__config_name=None, training__extra_overrides=[],
                       **extra)  # fmt: skip
    with BackgroundServer(s) as srv:
        channel = grpc.insecure_channel(srv.address)
        srv.stub = mcp_pb2_grpc.MCPControlStub(channel)
        srv.health = health_pb2_grpc.HealthStub(channel)
        yield srv
        channel.close()


def start(stub, *overrides, config="quickstart", **kw):
    return stub.StartTraining(
        pb.TrainRequest(config_path=config, overrides=list(overrides), **kw), timeout=30
    )


def watch(stub, job_id, timeout=90):
    """All WatchJob events until the stream ends (the job finished); bounded by a gRPC deadline."""
    return list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout))


def assert_serving(srv):
    resp = srv.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert srv.stub.ListJobs(pb.ListJobsRequest(), timeout=10) is not None


def test_job_goes_pending_running_succeeded_with_metrics_and_checkpoint(server):
    resp = start(server.stub, "fake.steps=4")
    assert resp.success and resp.job_id in resp.log and resp.job.state == pb.PENDING
    events = watch(server.stub, resp.job_id)
    assert events[0].type == pb.JobEvent.SNAPSHOT
    states = [resp.job.state] + [e.job.state for e in events if e.type != pb.JobEvent.METRICS]
    seen = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    # RUNNING can only be missed if the whole job ended before the watch started
    assert seen in ([pb.PENDING, pb.RUNNING, pb.SUCCEEDED], [pb.PENDING, pb.SUCCEEDED])
    losses = [
        e.metrics["train/loss"] for e in events if e.type == pb.JobEvent.METRICS and "train/loss" in e.metrics
    ]
    assert losses, "metrics lines of the child must arrive as METRICS events"
    job = server.stub.GetJob(pb.GetJobRequest(job_id=resp.job_id), timeout=10)
    assert job.state == pb.SUCCEEDED and job.exit_code == 0 and job.pid > 0
    assert 0 < job.created_unix <= job.started_unix <= job.finished_unix
    assert job.metrics["train/loss"] == pytest.approx(0.25) and job.metrics["val/loss"] == 0.5
    assert "note" not in job.metrics  # non-numeric summary values are not metrics
    assert Path(job.checkpoint).is_file() and job.checkpoint.startswith(job.run_dir)
    assert job.run_id == resp.job_id  # no run_id given: the job id
    argv = server.call(_argv_of(server, resp.job_id))
    assert (
        argv[:2] == [sys.executable, str(CHILD)]
        and "experiment=quickstart" in argv
        and f"run_id={job.run_id}" in argv
        and f"paths.runs_dir='{Path(job.run_dir).parent}'" in argv
    )
    log = "".join(c.text for c in server.stub.TailLogs(pb.TailLogsRequest(job_id=resp.job_id), timeout=30))
    assert "step 1" in log and "done" in log and "MOE_SWARM_METRICS" in log


async def _argv_of(server, job_id):
    return server.running.jobs.registry.get(job_id).argv


def test_crashing_child_ends_failed_with_log_tail_and_server_stays_healthy(server):
    resp = start(server.stub, "fake.steps=5", "fake.crash_at=2")
    events = watch(server.stub, resp.job_id)
    job = events[-1].job
    assert job.state == pb.FAILED and job.exit_code == 1
    assert "exit code 1" in job.message and "synthetic crash at step 2" in job.message
    assert any("RuntimeError: synthetic crash at step 2" in line for line in job.log_tail)
    assert_serving(server)
    again = start(server.stub, "fake.steps=2")  # the slot is free again
    assert watch(server.stub, again.job_id)[-1].job.state == pb.SUCCEEDED


def test_cancel_is_graceful_repeatable_and_keeps_the_checkpoint(server):
    from moe_swarm.store.checkpoint import load_model

    resp = start(server.stub, "fake.steps=100000", "fake.step_s=0.05")
    run_ckpt = None

    def checkpoint_written():
        job = server.stub.GetJob(pb.GetJobRequest(job_id=resp.job_id), timeout=10)
        path = Path(job.run_dir) / "checkpoints" / "last.ckpt"
        return job.state == pb.RUNNING and path.is_file() and path

    run_ckpt = wait_until(checkpoint_written, timeout=60, what="first checkpoint")
    first = server.stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=10)
    assert first.cancel_requested and first.state in (pb.RUNNING, pb.CANCELLED)
    second = server.stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=10)
    assert second.cancel_requested
    final = watch(server.stub, resp.job_id)[-1].job
    assert final.state == pb.CANCELLED and final.exit_code == 143
    assert final.checkpoint == str(run_ckpt) and "last checkpoint" in final.message
    model, _ = load_model(final.checkpoint)  # intact and loadable
    assert model.cfg.d_model == 32
    third = server.stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=10)
    assert third.state == pb.CANCELLED and third.finished_unix == final.finished_unix
    assert_serving(server)


@pytest.mark.parametrize("server", [{"training__cancel_grace_s": 1.0}], indirect=True)
def test_child_ignoring_sigterm_is_killed_after_the_grace_period(server):
    resp = start(server.stub, "fake.steps=100000", "fake.step_s=0.05", "fake.ignore_sigterm=true")
    wait_until(lambda: server.stub.GetJob(pb.GetJobRequest(job_id=resp.job_id), timeout=10).metrics,
               timeout=60, what="child running")  # fmt: skip
    server.stub.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=10)
    final = watch(server.stub, resp.job_id)[-1].job
    assert final.state == pb.CANCELLED and final.exit_code == -9 and "SIGKILL" in final.message


def test_request_id_makes_start_idempotent(server):
    a = start(server.stub, "fake.steps=2", request_id="req-1")
    b = start(server.stub, "fake.steps=2", request_id="req-1")
    assert a.job_id == b.job_id and "already started" in b.log
    with pytest.raises(grpc.RpcError) as info:
        start(server.stub, "fake.steps=3", request_id="req-1")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "new request_id" in info.value.details()
    watch(server.stub, a.job_id)
    assert len(server.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == 1


@pytest.mark.parametrize("server", [{"training__max_queued": 0}], indirect=True)  # no queue: refused
def test_concurrency_limit_and_run_id_conflicts(server):
    long = start(server.stub, "fake.steps=100000", "fake.step_s=0.05", run_id="shared")
    with pytest.raises(grpc.RpcError) as info:
        start(server.stub, "fake.steps=2")
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and long.job_id in info.value.details()
    server.stub.CancelJob(pb.CancelJobRequest(job_id=long.job_id), timeout=10)
    assert watch(server.stub, long.job_id)[-1].job.state == pb.CANCELLED
    resumed = start(server.stub, "fake.steps=2", run_id="shared")  # same run id once the first one stopped
    assert watch(server.stub, resumed.job_id)[-1].job.state == pb.SUCCEEDED


@pytest.mark.parametrize("server", [{"training__max_concurrent": 2}], indirect=True)
def test_one_run_id_cannot_run_twice(server):
    first = start(server.stub, "fake.steps=100000", "fake.step_s=0.05", run_id="r")
    with pytest.raises(grpc.RpcError) as info:
        start(server.stub, "fake.steps=2", run_id="r")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and first.job_id in info.value.details()
    server.stub.CancelJob(pb.CancelJobRequest(job_id=first.job_id), timeout=10)
    watch(server.stub, first.job_id)


def test_tail_logs_follow_and_last_lines(server):
    resp = start(server.stub, "fake.steps=6")
    followed = "".join(c.text for c in server.stub.TailLogs(
        pb.TailLogsRequest(job_id=resp.job_id, follow=True), timeout=60))  # fmt: skip
    assert followed.rstrip().endswith("done")
    for i in range(1, 7):
        assert f"step {i}\n" in followed
    last2 = "".join(c.text for c in server.stub.TailLogs(
        pb.TailLogsRequest(job_id=resp.job_id, tail_lines=2), timeout=30))  # fmt: skip
    assert last2 == "\n".join(followed.rstrip("\n").split("\n")[-2:]) + "\n"


def test_config_file_from_an_allowed_root(tmp_path):
    root = tmp_path / "configs"
    root.mkdir()
    (root / "mine.yaml").write_text("trainer:\n  max_steps: 3\n")
    s = local_settings(tmp_path / "state", training__command=["python", str(CHILD)], training__config_name=None, training__extra_overrides=[],
                       training__config_roots=[str(root)])  # fmt: skip
    with BackgroundServer(s) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = mcp_pb2_grpc.MCPControlStub(ch)
        resp = start(stub, "fake.steps=1", config="mine.yaml")
        assert watch(stub, resp.job_id)[-1].job.state == pb.SUCCEEDED
        argv = srv.call(_argv_of(srv, resp.job_id))
        copied = Path(s.state_dir) / "work" / resp.job_id / "conf" / "experiment" / f"{resp.job_id}.yaml"
        assert copied.read_text().startswith("# @package _global_\n") and "max_steps: 3" in copied.read_text()
        assert (
            f"hydra.searchpath=['file://{copied.parent.parent}']" in argv
            and f"experiment={resp.job_id}" in argv
        )


def test_list_get_and_unknown_jobs(server):
    a = start(server.stub, "fake.steps=1")
    watch(server.stub, a.job_id)
    b = start(server.stub, "fake.steps=1", "fake.crash_at=1")
    watch(server.stub, b.job_id)
    all_jobs = server.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    assert [j.job_id for j in all_jobs] == [b.job_id, a.job_id]
    failed = server.stub.ListJobs(pb.ListJobsRequest(states=[pb.FAILED]), timeout=10).jobs
    assert [j.job_id for j in failed] == [b.job_id]
    assert not server.stub.ListJobs(pb.ListJobsRequest(kind=pb.BENCHMARK), timeout=10).jobs
    for job_id, code in [("train-20990101-000000-000000", grpc.StatusCode.NOT_FOUND),
                         ("../../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
                         ("", grpc.StatusCode.INVALID_ARGUMENT)]:  # fmt: skip
        calls = (
            lambda j: server.stub.GetJob(pb.GetJobRequest(job_id=j), timeout=10),
            lambda j: server.stub.CancelJob(pb.CancelJobRequest(job_id=j), timeout=10),
            lambda j: list(server.stub.WatchJob(pb.WatchJobRequest(job_id=j), timeout=10)),
            lambda j: list(server.stub.TailLogs(pb.TailLogsRequest(job_id=j), timeout=10)),
        )
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call(job_id)
            assert info.value.code() == code, info.value.details()
    assert_serving(server)


def test_seed_flow_train_then_infer_with_the_default_model(server):
    """A client that only knows StartTraining and RunInference: train, then infer with no model id."""
    with pytest.raises(grpc.RpcError) as info:
        server.stub.RunInference(pb.InferRequest(prompt="12*34="), timeout=30)
    assert (
        info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "StartTraining" in info.value.details()
    )
    resp = start(server.stub, "fake.steps=2")
    assert watch(server.stub, resp.job_id)[-1].job.state == pb.SUCCEEDED
    out = server.stub.RunInference(pb.InferRequest(prompt="12*34=", max_new_tokens=4, agents=2), timeout=60)
    assert out.model_id == resp.job_id and out.forward_passes > 0 and 0 < out.vote_share <= 1
    models = server.stub.ListModels(pb.ListModelsRequest(), timeout=10)
    assert models.default_model_id == resp.job_id and models.models[0].checkpoint.endswith("last.ckpt")


def test_failure_reason_skips_hydras_trailer_and_log_records():
    from moe_swarm.control.exits import failure_reason

    hydra = ["INFO: Seed set to 1234", "[2026-11-28 23:18:01,289][lightning][INFO] - Seed set to 1234",
             "Error executing job with overrides: ['experiment=quickstart']",
             "Error locating target 'x.Y', set env var HYDRA_FULL_ERROR=1 to see chained exception.", "full_key: data",
             "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]  # fmt: skip
    assert (
        failure_reason(hydra)
        == "Error locating target 'x.Y', set env var HYDRA_FULL_ERROR=1 to see chained exception. | full_key: data"
    )
    traceback = ["step 1", "Traceback (most recent call last):", '  File "x.py", line 3, in <module>',
                 "    raise RuntimeError('boom')", "RuntimeError: boom"]  # fmt: skip
    assert failure_reason(traceback) == "RuntimeError: boom"
    assert failure_reason([]) == "no output (see the job's log)"
