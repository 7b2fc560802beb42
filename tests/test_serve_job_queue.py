"""The durable job queue (issue 21): queued training jobs with positions and priorities, kept in SQLite
across a sidecar restart, and a job the SIGKILLed sidecar was running resumed to SUCCEEDED."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import grpc
from serve_helpers import ServerProcess, local_settings, wait_until

from moe_swarm.serve.proto import mcp_pb2 as pb
from moe_swarm.serve.proto import mcp_pb2_grpc
from moe_swarm.serve.server import BackgroundServer
from moe_swarm.store.layout import parse_metrics_line

LONG = ["fake.steps=100000", "fake.step_s=0.05"]


def _start(stub, *overrides: str, **kw) -> pb.TrainResponse:
    return stub.StartTraining(
        pb.TrainRequest(config_path="quickstart", overrides=list(overrides), **kw), timeout=60
    )


def _job(stub, job_id: str) -> pb.Job:
    return stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def test_a_second_training_job_is_queued_with_a_position_and_priority(tmp_path):
    from serve_helpers import FAKE_CHILD

    s = local_settings(tmp_path / "state", training__command=["python", str(FAKE_CHILD)], training__config_name=None,
                       training__extra_overrides=[])  # fmt: skip
    with BackgroundServer(s) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = mcp_pb2_grpc.MCPControlStub(ch)
        running = _start(stub, *LONG)
        wait_until(
            lambda: _job(stub, running.job_id).state == pb.RUNNING, timeout=60, what="first job running"
        )
        low = _start(stub, "fake.steps=2")
        high = _start(stub, "fake.steps=2", priority=5)
        assert low.success and "queued at position 1" in low.log, low.log
        assert _job(stub, low.job_id).state == pb.PENDING
        assert (_job(stub, high.job_id).queue_position, _job(stub, low.job_id).queue_position) == (1, 2)
        assert _job(stub, high.job_id).priority == 5 and _job(stub, running.job_id).queue_position == 0
        stub.CancelJob(pb.CancelJobRequest(job_id=low.job_id), timeout=10)  # leaves the queue at once
        cancelled = _job(stub, low.job_id)
        assert cancelled.state == pb.CANCELLED and "while queued" in cancelled.message
        stub.CancelJob(pb.CancelJobRequest(job_id=running.job_id), timeout=10)
        final = list(stub.WatchJob(pb.WatchJobRequest(job_id=high.job_id), timeout=120))[-1].job
        assert final.state == pb.SUCCEEDED and final.started_unix >= _job(stub, running.job_id).finished_unix


def test_jobs_their_queue_and_log_offsets_survive_a_sidecar_sigkill(tmp_path):
    with contextlib.ExitStack() as stack:
        state = tmp_path / "state"
        srv = stack.enter_context(ServerProcess(state))
        running = _start(srv.stub, *LONG, run_id="long-run")
        queued = _start(srv.stub, "fake.steps=2", run_id="next-run")
        job = wait_until(lambda: (j := _job(srv.stub, running.job_id)).state == pb.RUNNING and j,
                         timeout=60, what="job running")  # fmt: skip
        wait_until(
            lambda: "step 3\n" in (state / "logs" / f"{running.job_id}.log").read_text(),
            timeout=60,
            what="steps",
        )
        size_before = os.path.getsize(state / "logs" / f"{running.job_id}.log")
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)
        assert (state / "jobs.sqlite3").is_file()

        again = stack.enter_context(ServerProcess(state))
        assert not _alive(job.pid), "the new sidecar stops the old child before it resumes the run"
        resumed = wait_until(lambda: (j := _job(again.stub, running.job_id)).state == pb.RUNNING and j.pid != job.pid and j,
                             timeout=60, what="job resumed")  # fmt: skip
        assert resumed.restarts == 1 and "queued again after a sidecar restart" in resumed.message
        waiting = _job(again.stub, queued.job_id)
        assert waiting.state == pb.PENDING and waiting.queue_position == 1

        # the log goes on in the same file: a reader resumes from the byte offset it had
        def page():
            request = pb.TailLogsRequest(job_id=running.job_id, offset=size_before)
            return list(again.stub.TailLogs(request, timeout=30))

        chunks = wait_until(page, timeout=60, what="the resumed child's first output")
        assert chunks[0].offset == size_before and "fake training" in "".join(c.text for c in chunks)
        again.stub.CancelJob(pb.CancelJobRequest(job_id=running.job_id), timeout=10)
        final = list(again.stub.WatchJob(pb.WatchJobRequest(job_id=queued.job_id), timeout=120))[-1].job
        assert final.state == pb.SUCCEEDED, final.message


REAL_TRAINING = (
    "serve.training.command=['python','-m','moe_swarm.cli.train']",
    "serve.training.config_name=train",
)
TINY = ["model.d_model=32", "data.batch_size=4", "data.block_size=32", "trainer.limit_val_batches=1",
        "validate_before_fit=false", "trainer.max_steps=60", "trainer.val_check_interval=60",
        "trainer.log_every_n_steps=1", "callbacks.last_checkpoint.every_n_steps=1"]  # fmt: skip


def _steps(log_text: str) -> list[int]:
    out = []
    for line in log_text.splitlines():
        metrics = parse_metrics_line(line)
        # the per-step lines (a validation's line repeats its step with the val/ metrics)
        if metrics and "train/loss" in metrics and not any(k.startswith("val/") for k in metrics):
            out.append(int(metrics["trainer/global_step"]))
    return out


def test_a_real_training_job_survives_a_sigkill_of_its_sidecar_and_ends_at_max_steps(tmp_path):
    """A real sidecar, a real `python -m moe_swarm.cli.train` child, a real SIGKILL: the restarted sidecar
    resumes the run from its last checkpoint; it ends SUCCEEDED at max_steps, no step trained twice."""
    with contextlib.ExitStack() as stack:
        state = tmp_path / "state"
        extra = "serve.training.extra_overrides=[" + ",".join(f"'{o}'" for o in TINY) + "]"
        srv = stack.enter_context(ServerProcess(state, extra, training=REAL_TRAINING))
        job = _start(srv.stub, run_id="survivor")
        first = wait_until(lambda: (j := _job(srv.stub, job.job_id)).metrics.get("trainer/global_step", 0) >= 5 and j,
                           timeout=240, what="training under way")  # fmt: skip
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(timeout=30)

        again = stack.enter_context(ServerProcess(state, extra, training=REAL_TRAINING))
        assert not _alive(first.pid)
        final = list(again.stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=400))[-1].job
        assert final.state == pb.SUCCEEDED, (final.message, final.log_tail)
        assert final.restarts == 1 and final.metrics["trainer/global_step"] == 60
        from moe_swarm.store.checkpoint import read_checkpoint

        assert read_checkpoint(final.checkpoint, mmap=True)["global_step"] == 60
        steps = _steps((state / "logs" / f"{job.job_id}.log").read_text())
        # one sequence across both children: the second went on from the checkpoint, nothing trained twice
        assert steps == sorted(set(steps)) and steps[-1] == 60, steps
        assert first.metrics["trainer/global_step"] in steps
        summary = json.loads((Path(final.run_dir) / "summary.json").read_text())
        assert summary["global_step"] == 60
