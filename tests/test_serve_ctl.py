"""`moe-swarm-ctl` as a user runs it: a real process against a real server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import local_settings, tiny_checkpoint

from moe_swarm.serve.server import BackgroundServer

CHILD = Path(__file__).with_name("serve_child_train.py")
TOKEN = "ctl-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ctl")
    ckpt = tiny_checkpoint(tmp / "models" / "tiny.ckpt")
    token_file = tmp / "tokens"
    token_file.write_text(TOKEN + "\n")
    settings = local_settings(tmp / "state", training__command=["python", str(CHILD)], training__config_name=None, training__extra_overrides=[],
                              inference__checkpoint_roots=[str(tmp / "models")], inference__default_model=str(ckpt),
                              benchmark__suites=["moe_layer"], auth__enabled=True, auth__token_file=str(token_file))  # fmt: skip
    with BackgroundServer(settings) as srv:
        yield srv


def ctl(server, *args, token=TOKEN, timeout=300):
    env = {**os.environ, "MOE_SWARM_TARGET": server.address}
    env.pop("MOE_SWARM_TOKEN", None)
    if token:
        env["MOE_SWARM_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "moe_swarm.serve.ctl", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def test_train_wait_status_list_logs(server):
    r = ctl(server, "train", "quickstart", "fake.steps=3", "--wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[1]
    assert "SUCCEEDED" in r.stdout and "metrics train/loss=" in r.stdout
    status = ctl(server, "status", job_id)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "checkpoint" in status.stdout
    listed = ctl(server, "list", "--state", "succeeded")
    assert job_id in listed.stdout
    logs = ctl(server, "logs", job_id, "--tail", "1")
    assert logs.stdout == "done\n"
    as_json = json.loads(ctl(server, "--json", "status", job_id).stdout)
    assert as_json["state"] == "SUCCEEDED" and as_json["job_id"] == job_id


def test_failed_job_gives_exit_code_3_and_cancel_of_a_finished_job_is_harmless(server):
    r = ctl(server, "train", "quickstart", "fake.steps=2", "fake.crash_at=1", "--wait")
    assert r.returncode == 3 and "FAILED" in r.stdout
    job_id = r.stdout.split()[1]
    c = ctl(server, "cancel", job_id)
    assert c.returncode == 0 and "already FAILED" in c.stdout


def test_follow_logs_and_cancel(server):
    r = ctl(server, "train", "quickstart", "fake.steps=100000", "fake.step_s=0.05")
    job_id = r.stdout.split()[1]
    follower = subprocess.Popen([sys.executable, "-m", "moe_swarm.serve.ctl", "logs", "-f", job_id],
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "MOE_SWARM_TARGET": server.address, "MOE_SWARM_TOKEN": TOKEN})  # fmt: skip
    try:
        assert follower.stdout.readline().startswith("fake training")
        c = ctl(server, "cancel", job_id, "--wait")
        assert c.returncode == 0 and "CANCELLED" in c.stdout
        rest = follower.communicate(timeout=60)[0]
        assert "SIGTERM: saved" in rest and follower.returncode == 0
    finally:
        if follower.poll() is None:
            follower.kill()


def test_infer_models_info_health_bench(server):
    r = ctl(server, "infer", "12*34=", "--agents", "3", "--max-new-tokens", "4", "--seed", "5")
    assert r.returncode == 0, r.stderr
    assert "vote share" in r.stderr and "3 agents" in r.stderr
    models = ctl(server, "models")
    assert "default: tiny" in models.stdout
    info = ctl(server, "info")
    assert "auth on" in info.stdout and "/mcp.MCPControl/RunInference" in info.stdout
    assert ctl(server, "health", token=None).stdout.strip() == "SERVING"
    bench = ctl(server, "bench", "--num-samples", "1")
    assert bench.returncode == 0, bench.stderr
    assert "moe_layer/" in bench.stdout and "results" in bench.stdout


def test_refused_requests_exit_1_with_the_servers_message(server):
    r = ctl(server, "train", "../../etc/passwd.yaml")
    assert r.returncode == 1 and "INVALID_ARGUMENT" in r.stderr and "traversal" in r.stderr
    r = ctl(server, "list", token=None)
    assert r.returncode == 1 and "UNAUTHENTICATED" in r.stderr and "MOE_SWARM_TOKEN" in r.stderr
    r = ctl(server, "status", "no-such-job")
    assert r.returncode == 1 and "NOT_FOUND" in r.stderr


def test_list_into_a_closed_pipe_exits_quietly(server):
    """`moe-swarm-ctl list | head -2`: the reader has gone; no BrokenPipeError traceback, exit 141."""
    assert ctl(server, "train", "quickstart", "fake.steps=1", "--wait").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before ctl writes
    env = {**os.environ, "MOE_SWARM_TARGET": server.address, "MOE_SWARM_TOKEN": TOKEN}
    try:
        proc = subprocess.run([sys.executable, "-m", "moe_swarm.serve.ctl", "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_infer_help_documents_every_task_prompt_format():
    proc = subprocess.run([sys.executable, "-m", "moe_swarm.serve.ctl", "infer", "--help"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    from moe_swarm.data.tasks import TASKS

    for name in ("text", *TASKS):
        assert f"\n  {name} " in proc.stdout, proc.stdout
    assert "'321*54=' asks 123*45" in proc.stdout and "INVALID_ARGUMENT" in proc.stdout
