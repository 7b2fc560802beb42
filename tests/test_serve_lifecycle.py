"""`moe-swarm-serve` as a real process: ready line, graceful SIGTERM, restart recovery of the job registry;
no gRPC "goaway" chatter on anyone's stderr (issue 21) while ctl and MCP clients are connected."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from serve_helpers import ServerProcess, wait_until

from moe_swarm.serve.proto import mcp_pb2 as pb


@pytest.fixture
def processes():
    started: list[ServerProcess] = []
    yield started
    for p in started:
        p.close()


def _running_with_checkpoint(stub, job_id):
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
    return job.state == pb.RUNNING and (Path(job.run_dir) / "checkpoints" / "last.ckpt").is_file() and job


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _goaway(text: str) -> list[str]:
    return [line for line in text.splitlines() if "goaway" in line.lower()]


class Clients:
    """moe-swarm-ctl following a job's log and its events, and an MCP stdio session, as real processes."""

    def __init__(self, address: str, job_id: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "MOE_SWARM_TOKEN")}
        ctl = [sys.executable, "-m", "moe_swarm.serve.ctl", "--target", address]
        pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.follow = subprocess.Popen([*ctl, "logs", "-f", job_id], **pipes)
        self.watch = subprocess.Popen([*ctl, "watch", job_id], **pipes)
        self.mcp = subprocess.Popen([sys.executable, "-m", "moe_swarm.mcp", "--target", address],
                                    stdin=subprocess.PIPE, **pipes)  # fmt: skip
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        }
        assert "result" in self.ask(1, "initialize", hello)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        waited = self.ask(
            2, "tools/call", {"name": "wait_for_job", "arguments": {"job_id": job_id, "timeout_s": 1}}
        )
        assert "result" in waited and not waited["result"].get("isError"), waited
        assert self.follow.stdout.readline().startswith("fake training")  # the log stream is open
        self.follow.send_signal(signal.SIGINT)  # a client that goes away mid-stream
        self.follow.wait(timeout=60)

    def send(self, message: dict) -> None:
        self.mcp.stdin.write(json.dumps(message) + "\n")
        self.mcp.stdin.flush()

    def ask(self, i: int, method: str, params: dict) -> dict:
        """The response to request ``i``; notifications the server sends first (a job's state change
        during ``wait_for_job`` is announced as notifications/resources/updated) are skipped. Bounded by
        a count of messages; a server that exits ends the read with EOF."""
        self.send({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
        for _ in range(200):
            line = self.mcp.stdout.readline()
            assert line, f"the MCP server closed its stdout before answering request {i} ({method})"
            msg = json.loads(line)
            if msg.get("id") == i:
                return msg
            assert "method" in msg and "id" not in msg, f"an unexpected message before the answer: {msg}"
        raise AssertionError(f"200 notifications and no answer to request {i} ({method})")

    def close(self) -> dict[str, str]:
        """After the sidecar stopped: the MCP session says it is unreachable; every client's stderr."""
        gone = self.ask(3, "tools/call", {"name": "list_jobs", "arguments": {}})
        assert gone["result"]["isError"] and "unreachable" in gone["result"]["content"][0]["text"], gone
        self.mcp.stdin.close()
        self.mcp.wait(timeout=60)
        self.watch.wait(timeout=60)
        return {"ctl logs -f": self.follow.stderr.read(), "ctl watch": self.watch.stderr.read(),
                "mcp": self.mcp.stderr.read()}  # fmt: skip


def test_the_grpc_verbosity_default_is_error_and_an_explicit_one_wins():
    code = "import os, moe_swarm.mcp; print(os.environ['GRPC_VERBOSITY'])"
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    default = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**env, "GRPC_VERBOSITY": "DEBUG"})  # fmt: skip
    assert (default.stdout.strip(), chosen.stdout.strip()) == ("ERROR", "DEBUG")


def test_sigterm_drains_rpcs_stops_jobs_with_a_checkpoint_and_exits_zero(tmp_path, processes, monkeypatch):
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)  # every process gets the project's own default
    state = tmp_path / "state"
    srv = ServerProcess(state, "serve.grace_s=30", "serve.job_store=json")  # reads the JSON record below
    processes.append(srv)
    job = srv.stub.StartTraining(pb.TrainRequest(config_path="quickstart",
                                                 overrides=["fake.steps=100000", "fake.step_s=0.05"]), timeout=30)  # fmt: skip
    running = wait_until(
        lambda: _running_with_checkpoint(srv.stub, job.job_id), timeout=60, what="job running"
    )

    health_seen: list[int] = []
    health_stream = srv.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=90)
    threading.Thread(
        target=lambda: [health_seen.append(r.status) for r in health_stream], daemon=True
    ).start()
    wait_until(lambda: health_seen, timeout=30, what="first health status")
    events: list = []
    errors: list = []

    def follow():
        try:
            events.extend(srv.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=90))
        except grpc.RpcError as e:
            errors.append(e)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    wait_until(lambda: events or errors, timeout=30, what="watch snapshot")
    clients = Clients(srv.address, job.job_id)

    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=90) == 0, "".join(srv.stderr)
    stderr = {**clients.close(), "sidecar": "".join(srv.stderr)}
    assert {name: _goaway(text) for name, text in stderr.items()} == {name: [] for name in stderr}
    watcher.join(timeout=30)
    assert not errors, errors
    assert events[-1].job.state == pb.CANCELLED  # the in-flight stream finished normally
    assert "shutting down" in events[-1].job.message and events[-1].job.checkpoint
    assert health_seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in health_seen
    assert not _alive(running.pid)
    record = json.loads((state / "jobs" / f"{job.job_id}.json").read_text())
    assert record["state"] == "CANCELLED" and record["exit_code"] == 143
    assert Path(record["checkpoint"]).is_file()
    log = "".join(srv.stderr)
    assert "NOT_SERVING" in log and "stopped" in log

    # a restarted sidecar still lists the finished job, unchanged
    again = ServerProcess(state)  # the SQLite store (the default) carries the JSON records over
    processes.append(again)
    listed = again.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    assert [(j.job_id, j.state) for j in listed] == [(job.job_id, pb.CANCELLED)]


def test_restart_after_a_crash_marks_running_jobs_failed_and_keeps_finished_ones(tmp_path, processes):
    """With serve.training.resume_after_restart=false (the behaviour before the durable queue)."""
    state = tmp_path / "state"
    no_resume = "serve.training.resume_after_restart=false"
    srv = ServerProcess(state, no_resume)
    processes.append(srv)
    done = srv.stub.StartTraining(
        pb.TrainRequest(config_path="quickstart", overrides=["fake.steps=1"]), timeout=30
    )
    final = list(srv.stub.WatchJob(pb.WatchJobRequest(job_id=done.job_id), timeout=60))[-1].job
    assert final.state == pb.SUCCEEDED
    live = srv.stub.StartTraining(pb.TrainRequest(config_path="quickstart", run_id="live-run",
                                                  overrides=["fake.steps=100000", "fake.step_s=0.05"]), timeout=30)  # fmt: skip
    running = wait_until(
        lambda: _running_with_checkpoint(srv.stub, live.job_id), timeout=60, what="job running"
    )
    srv.proc.kill()  # a crash: no graceful shutdown
    srv.proc.wait(timeout=30)
    try:
        # the orphaned child loses its stdout pipe and dies on its next write
        wait_until(lambda: not _alive(running.pid), timeout=30, what="orphan child exit")
    finally:
        if _alive(running.pid):
            os.kill(running.pid, signal.SIGKILL)

    again = ServerProcess(state, no_resume)
    processes.append(again)
    jobs = {j.job_id: j for j in again.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}
    assert jobs[done.job_id].state == pb.SUCCEEDED and jobs[done.job_id].checkpoint == final.checkpoint
    failed = jobs[live.job_id]
    assert failed.state == pb.FAILED
    assert f"sidecar stopped while this job was RUNNING (pid {running.pid})" in failed.message
    assert "run_id=live-run" in failed.message
    # the run can be resumed under the same run id
    resumed = again.stub.StartTraining(pb.TrainRequest(config_path="quickstart", run_id="live-run",
                                                       overrides=["fake.steps=1"]), timeout=30)  # fmt: skip
    assert (
        list(again.stub.WatchJob(pb.WatchJobRequest(job_id=resumed.job_id), timeout=60))[-1].job.state
        == pb.SUCCEEDED
    )


def test_bad_configuration_exits_with_a_message(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from moe_swarm.serve.__main__ import main; main()",
                           f"serve.state_dir={tmp_path}", "+serve.no_such_key=1"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "no_such_key" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", "from moe_swarm.serve.__main__ import main; main()",
                           f"serve.state_dir={tmp_path}", "serve.port=0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "MOE_SWARM_TOKENS": ""})  # fmt: skip
    assert proc.returncode == 2 and "no token is configured" in proc.stderr


def test_the_console_server_composes_requests_at_submit(tmp_path, processes):
    """`moe-swarm-serve` runs under @hydra.main; composing a request's config must still work in it."""
    srv = ServerProcess(tmp_path / "state", "serve.training.config_name=train")
    processes.append(srv)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            srv.stub.StartTraining(pb.TrainRequest(config_path="quickstart", overrides=["trainer.max_stepz=5"]),
                                   timeout=60)  # fmt: skip
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "Could not override 'trainer.max_stepz'" in err.value.details()
    ok = srv.stub.StartTraining(
        pb.TrainRequest(config_path="quickstart", overrides=["trainer.max_steps=2"]), timeout=60
    )
    assert ok.success
