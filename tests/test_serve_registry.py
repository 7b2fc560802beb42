"""The job registry: state machine, atomic persistence, restart recovery."""

import json

import pytest

from moe_swarm.control.registry import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    JobRecord,
    JobRegistry,
    JobState,
    new_job_id,
)

S = JobState


def _job(reg, kind="training", **kw):
    return reg.create(JobRecord(job_id=new_job_id(kind), kind=kind, **kw))


def test_happy_path_is_persisted(tmp_path):
    reg = JobRegistry(tmp_path)
    job = _job(reg, run_id="r1", overrides=["a=1"])
    assert job.state is S.PENDING and job.created_unix > 0
    reg.transition(job.job_id, S.RUNNING, pid=1234)
    reg.update(job.job_id, metrics={"train/loss": 1.5})
    reg.transition(job.job_id, S.SUCCEEDED, exit_code=0, checkpoint="/x/last.ckpt")
    on_disk = json.loads((tmp_path / f"{job.job_id}.json").read_text())
    assert (
        on_disk["state"] == "SUCCEEDED"
        and on_disk["pid"] == 1234
        and on_disk["metrics"] == {"train/loss": 1.5}
    )
    assert on_disk["started_unix"] > 0 and on_disk["finished_unix"] >= on_disk["started_unix"]
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


@pytest.mark.parametrize("terminal", [S.SUCCEEDED, S.FAILED, S.CANCELLED])
def test_terminal_states_never_change(tmp_path, terminal):
    reg = JobRegistry(tmp_path)
    job = _job(reg)
    reg.transition(job.job_id, S.RUNNING)
    reg.transition(job.job_id, terminal)
    for target in S:
        with pytest.raises(InvalidTransition):
            reg.transition(job.job_id, target)
    with pytest.raises(InvalidTransition):
        reg.update(job.job_id, message="changed")
    assert reg.get(job.job_id).state is terminal


def test_transition_table(tmp_path):
    reg = JobRegistry(tmp_path)
    assert ALLOWED_TRANSITIONS[S.PENDING] == {S.RUNNING, S.FAILED, S.CANCELLED}
    job = _job(reg)
    with pytest.raises(InvalidTransition):
        reg.transition(job.job_id, S.SUCCEEDED)  # a job cannot succeed without running
    with pytest.raises(InvalidTransition):
        reg.transition(job.job_id, S.PENDING)
    reg.transition(job.job_id, S.CANCELLED)  # cancelled before it started
    assert reg.get(job.job_id).finished_unix > 0


def test_create_rules(tmp_path):
    reg = JobRegistry(tmp_path)
    job = _job(reg)
    with pytest.raises(ValueError, match="already exists"):
        reg.create(JobRecord(job_id=job.job_id, kind="training"))
    with pytest.raises(ValueError, match="kind"):
        reg.create(JobRecord(job_id="x1", kind="shell"))
    with pytest.raises(InvalidTransition):
        reg.create(JobRecord(job_id="x2", kind="training", state=S.RUNNING))
    with pytest.raises(AttributeError):
        reg.update(job.job_id, state=S.SUCCEEDED)  # state only moves through transition()


def test_restart_recovery(tmp_path):
    reg = JobRegistry(tmp_path)
    done = _job(reg, run_id="done")
    reg.transition(done.job_id, S.RUNNING, pid=11)
    reg.transition(done.job_id, S.SUCCEEDED, exit_code=0, message="finished")
    running = _job(reg, run_id="live")
    reg.transition(running.job_id, S.RUNNING, pid=4242)
    pending = _job(reg, kind="benchmark")
    (tmp_path / "garbage.json").write_text("{not json")

    fresh = JobRegistry(tmp_path)  # a new sidecar process
    marked = fresh.recover()
    assert {j.job_id for j in marked} == {running.job_id, pending.job_id}
    assert fresh.get(done.job_id).state is S.SUCCEEDED and fresh.get(done.job_id).message == "finished"
    r = fresh.get(running.job_id)
    assert r.state is S.FAILED and "sidecar stopped while this job was RUNNING (pid 4242)" in r.message
    assert "run_id=live" in r.message and r.finished_unix > 0
    assert fresh.get(pending.job_id).state is S.FAILED
    # the FAILED marks are on disk: a third start sees the same and marks nothing
    again = JobRegistry(tmp_path)
    assert again.recover() == []
    assert {j.job_id for j in again.list()} == {done.job_id, running.job_id, pending.job_id}


def test_list_filters_and_request_ids(tmp_path):
    reg = JobRegistry(tmp_path)
    a = _job(reg, request_id="req-a", created_unix=1.0)
    b = _job(reg, kind="benchmark", created_unix=2.0)
    c = _job(reg, created_unix=3.0)
    reg.transition(c.job_id, S.CANCELLED)
    assert [j.job_id for j in reg.list()] == [c.job_id, b.job_id, a.job_id]
    assert [j.job_id for j in reg.list(kind="benchmark")] == [b.job_id]
    assert [j.job_id for j in reg.list(states={S.CANCELLED})] == [c.job_id]
    assert [j.job_id for j in reg.list(limit=1)] == [c.job_id]
    assert reg.find_by_request_id("req-a").job_id == a.job_id
    assert reg.find_by_request_id("") is None
    assert {j.job_id for j in reg.active()} == {a.job_id, b.job_id}
