"""Issue 21's MCP defects, against a real sidecar on 127.0.0.1 and the real moe-swarm-mcp process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from serve_helpers import local_settings

from moe_swarm.mcp.backend import Sidecar, SidecarConfig
from moe_swarm.mcp.http_transport import READY_PREFIX
from moe_swarm.mcp.server import build_server
from moe_swarm.serve.server import BackgroundServer

CHILD = Path(__file__).with_name("serve_child_train.py")


def _mcp_http(address: str, *extra: str, wait_s: float = 60) -> subprocess.CompletedProcess | str:
    """Run ``moe-swarm-mcp --http``; the finished process if it exits by itself, else its stderr up to the
    ready line (the process is then stopped)."""
    env = {**os.environ, "MOE_SWARM_TARGET": address, "PYTHONUNBUFFERED": "1"}
    env.pop("MOE_SWARM_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "moe_swarm.mcp", "--http", "--host", "127.0.0.1", "--port", "0",
                             *extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)  # fmt: skip
    seen = []
    watchdog = threading.Timer(wait_s, proc.kill)  # bounds the reads below
    watchdog.start()
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(READY_PREFIX):
                return "".join(seen)
        proc.wait(timeout=wait_s)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(seen))
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def test_http_against_a_sidecar_with_auth_off_refuses_to_start_and_says_why(tmp_path):
    """Defect 6: before, it started and answered every client with a bare 401."""
    with BackgroundServer(local_settings(tmp_path / "state")) as srv:  # auth off
        out = _mcp_http(srv.address)
        assert isinstance(out, subprocess.CompletedProcess), f"it started: {out}"
        assert out.returncode == 2 and "auth off" in out.stderr and "--no-auth" in out.stderr, out.stderr
        started = _mcp_http(srv.address, "--no-auth")  # the documented way for a trusted host
        assert isinstance(started, str) and READY_PREFIX in started


def test_http_start_prints_no_sdk_deprecation_warning(tmp_path):
    """Defect 6: the SDK's validate_token_resource warning printed at each start; it is configured now."""
    tokens = tmp_path / "tokens"
    tokens.write_text("a-token-0123456789abcdef\n")
    settings = local_settings(tmp_path / "state", auth__enabled=True, auth__token_file=str(tokens))
    with BackgroundServer(settings) as srv:
        out = _mcp_http(srv.address)
        assert isinstance(out, str), out.stderr
        assert "validate_token_resource" not in out and "Warning" not in out, out


@pytest.fixture
def open_sidecar(tmp_path):
    """A sidecar with auth off whose training jobs are the stand-in child (seconds per job)."""
    s = local_settings(tmp_path / "state", training__command=["python", str(CHILD)], training__config_name=None,
                       training__extra_overrides=[])  # fmt: skip
    with BackgroundServer(s) as srv:
        yield srv


def test_mcp_errors_name_mcp_tools_and_a_missing_resource_is_resource_not_found(open_sidecar):
    """Defect 8: no "ListJobs (moe-swarm-ctl list)" in MCP errors; a missing resource is not -32603."""

    async def go(mode: str):
        async with Client(build_server(Sidecar(SidecarConfig(target=open_sidecar.address))), mode=mode) as c:
            missing = await c.call_tool("get_job", {"job_id": "nope"})
            started = await c.call_tool(
                "start_training", {"experiment": "quickstart", "overrides": ["fake.steps=1"]}
            )
            inferred = await c.call_tool("run_inference", {"prompt": "The "})
            codes = []
            for uri in ("moe://jobs/nope", "moe://runs/nope/summary", "moe://experiments/nope"):
                with pytest.raises(MCPError) as err:
                    await c.read_resource(uri)
                codes.append(err.value.code)
            return missing, started, inferred, codes

    for mode, expected in (("legacy", -32002), ("auto", -32602)):
        missing, started, inferred, codes = anyio.run(go, mode)
        texts = [missing.content[0].text, inferred.content[0].text] + [json.dumps(started.structured_content)]
        assert missing.is_error and "list_jobs" in texts[0], texts[0]
        for text in texts:
            for rpc in ("ListJobs", "WatchJob", "TailLogs", "StartTraining", "LoadModel", "moe-swarm-ctl"):
                assert rpc not in text, (rpc, text)
        assert inferred.is_error and "start_training" in texts[1], texts[1]
        assert codes == [expected] * 3, (mode, codes)


def test_the_mcp_job_watcher_follows_watchjob_instead_of_polling_listjobs(open_sidecar):
    """Defect 10: the watcher polled ListJobs every second (half of the sidecar's log lines)."""
    from moe_swarm.serve.proto import mcp_pb2 as pb

    async def go():
        sidecar = Sidecar(SidecarConfig(target=open_sidecar.address))
        async with Client(build_server(sidecar), mode="legacy") as c:
            started = await c.call_tool(
                "start_training", {"experiment": "quickstart", "overrides": ["fake.steps=2"]}
            )
            job_id = started.structured_content["job_id"]
            with anyio.fail_after(90):
                while not (await c.call_tool("get_job", {"job_id": job_id})).structured_content["finished"]:
                    await anyio.sleep(0.5)
            await anyio.sleep(1.0)  # the watcher's stream ends with the job
            info = await sidecar.call("GetServerInfo", pb.GetServerInfoRequest())
            return {s.method: s.requests for s in info.rpc_stats}

    requests = anyio.run(go)
    assert requests.get("/mcp.MCPControl/ListJobs", 0) <= 1, requests  # one look for jobs started elsewhere
    assert requests.get("/mcp.MCPControl/WatchJob", 0) >= 1, requests  # the started job was followed


def test_tail_logs_leaves_out_the_metrics_lines(open_sidecar):
    """Defect 10: tail_logs was mostly raw MOE_SWARM_METRICS {json} lines (they are get_job's metrics)."""

    async def go():
        async with Client(
            build_server(Sidecar(SidecarConfig(target=open_sidecar.address))), mode="auto"
        ) as c:
            job = await c.call_tool(
                "start_training", {"experiment": "quickstart", "overrides": ["fake.steps=6"]}
            )
            job_id = job.structured_content["job_id"]
            await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 90})
            tail = await c.call_tool("tail_logs", {"job_id": job_id, "max_lines": 50})
            first = await c.call_tool("tail_logs", {"job_id": job_id, "max_lines": 2, "offset": 0})
            rest = await c.call_tool("tail_logs", {"job_id": job_id, "max_lines": 500,
                                                   "offset": first.structured_content["next_offset"]})  # fmt: skip
            return job_id, tail.structured_content, first.structured_content, rest.structured_content

    job_id, tail, first, rest = anyio.run(go)
    log_file = Path(open_sidecar.settings.state_path) / "logs" / f"{job_id}.log"
    raw = log_file.read_text()
    assert "MOE_SWARM_METRICS " in raw  # the child did print them
    readable = [ln for ln in raw.splitlines(keepends=True) if not ln.startswith("MOE_SWARM_METRICS ")]
    for page in (tail, first, rest):
        assert "MOE_SWARM_METRICS" not in page["text"]
    assert tail["text"] == "".join(readable[-50:])
    assert first["text"] + rest["text"] == "".join(readable) and not rest["more"]  # paging loses nothing


def test_an_oversized_prompt_gets_the_prompt_limit_not_grpcs_text(open_sidecar):
    """Defect 10: a prompt over 4 MiB never reaches the servicer; the caller still learns the limits."""

    async def go():
        async with Client(
            build_server(Sidecar(SidecarConfig(target=open_sidecar.address))), mode="auto"
        ) as c:
            return await c.call_tool("run_inference", {"prompt": "x" * (4 * 1024 * 1024 + 10)})

    result = anyio.run(go)
    text = result.content[0].text
    assert result.is_error and "max_prompt_chars" in text and "serve.max_message_bytes" in text, text
    assert "Received message larger than max" not in text


def test_serve_and_bench_help_say_what_they_are(tmp_path):
    """Defect 10: `moe-swarm-serve --help` began "`__main__` is powered by Hydra" and listed the training
    groups; `moe-swarm-bench --help` showed a developer docstring."""
    serve = subprocess.run([sys.executable, "-m", "moe_swarm.serve", "--help"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)  # fmt: skip
    assert serve.returncode == 0, serve.stderr
    assert serve.stdout.startswith("moe-swarm-serve: the gRPC control sidecar"), serve.stdout[:300]
    assert "powered by Hydra" not in serve.stdout and "Configuration groups" not in serve.stdout
    assert "max_message_bytes:" in serve.stdout  # its own settings
    bench = subprocess.run([sys.executable, "-m", "moe_swarm.bench.cli", "--help"], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert ":data:" not in bench.stdout and ":mod:" not in bench.stdout and "Time the model" in bench.stdout


def test_the_readme_claude_desktop_config_names_the_venv_script_and_no_fixed_port():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Agents: the MCP server", 1)[1].split("\n## ", 1)[0]
    config = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    server = config["mcpServers"]["moe-swarm"]
    assert server["command"].startswith("/") and server["command"].endswith(".venv/bin/moe-swarm-mcp")
    assert server["env"]["MOE_SWARM_TARGET"] == "127.0.0.1:<port>"
    assert "-- moe-swarm-mcp" not in section


def test_runs_are_listed_over_grpc_mcp_and_resources_list(open_sidecar, tmp_path):
    """Run discovery: ListRuns / list_runs, and resources/list names runs and jobs."""
    from serve_helpers import tiny_checkpoint

    from moe_swarm.serve.proto import mcp_pb2 as pb

    runs = open_sidecar.settings.runs_path
    cli_run = runs / "from-the-cli"  # what `make train` leaves: a checkpoint and a summary
    (cli_run / "checkpoints").mkdir(parents=True)
    tiny_checkpoint(cli_run / "checkpoints" / "last.ckpt")
    (cli_run / "summary.json").write_text(json.dumps({"run_id": "from-the-cli", "status": "succeeded", "global_step": 7,
                                                      "optimized_metric": "val/bpb", "metric_end": 2.5}))  # fmt: skip

    async def go():
        sidecar = Sidecar(SidecarConfig(target=open_sidecar.address))
        async with Client(build_server(sidecar), mode="auto") as c:
            job = await c.call_tool("start_training", {"experiment": "quickstart", "overrides": ["fake.steps=2"],
                                                       "run_id": "served-run"})  # fmt: skip
            await c.call_tool("wait_for_job", {"job_id": job.structured_content["job_id"], "timeout_s": 90})
            listed = await c.call_tool("list_runs", {})
            resources = {str(r.uri) for r in (await c.list_resources()).resources}
            grpc_runs = await sidecar.call("ListRuns", pb.ListRunsRequest())
            return job.structured_content, listed, resources, grpc_runs

    job, listed, resources, grpc_runs = anyio.run(go)
    assert not listed.is_error, listed.content
    by_id = {r["run_id"]: r for r in listed.structured_content["runs"]}
    assert set(by_id) == {"from-the-cli", "served-run"}
    cli = by_id["from-the-cli"]
    assert (cli["status"], cli["global_step"], cli["metric"], cli["metric_value"]) == (
        "succeeded",
        7,
        "val/bpb",
        2.5,
    )
    assert cli["checkpoint"].endswith("from-the-cli/checkpoints/last.ckpt") and cli["job_ids"] == []
    served = by_id["served-run"]
    assert (
        served["job_ids"] == [job["job_id"]]
        and served["status"] == "succeeded"
        and served["experiment"] == "quickstart"
    )
    assert {r.run_id for r in grpc_runs.runs} == set(by_id)
    assert {
        "moe://runs/from-the-cli/summary",
        "moe://runs/served-run/summary",
        f"moe://jobs/{job['job_id']}",
    } <= resources


def test_wait_for_job_progress_carries_tokens_per_s_and_an_eta():
    from moe_swarm.control.job_view import JobView
    from moe_swarm.mcp.models import job_model
    from moe_swarm.mcp.server import _eta_s, _progress_message

    job = job_model(
        JobView(job_id="j", kind="training", state="RUNNING", metrics={"train/tokens_per_s": 5120.4})
    )
    eta = _eta_s((100.0, 10.0), 120.0, 30.0, 130)  # 20 steps in 20 s, 100 to go
    assert eta == 100.0
    assert _progress_message(job, 30, 130, eta) == "running, step 30/130, 5,120 tokens/s, ETA 1:40"
    assert _eta_s(None, 120.0, 30.0, 130) is None and _eta_s((100.0, 30.0), 120.0, 30.0, 130) is None


def test_plots_are_image_resources_and_deleting_a_run_needs_confirmation(open_sidecar):
    """A run's plots as image resources; delete_run refuses without confirm, then frees the folder."""
    import base64

    from moe_swarm.serve.proto import mcp_pb2 as pb

    run = open_sidecar.settings.runs_path / "plotted"
    (run / "plots").mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the bytes are served as they are
    (run / "plots" / "loss.png").write_bytes(png)
    (run / "summary.json").write_text(json.dumps({"run_id": "plotted", "status": "succeeded"}))

    async def go():
        sidecar = Sidecar(SidecarConfig(target=open_sidecar.address))
        async with Client(build_server(sidecar), mode="auto") as c:
            info = await sidecar.call("GetRun", pb.GetRunRequest(run_id="plotted"))
            image = (await c.read_resource("moe://runs/plotted/plots/loss.png")).contents[0]
            with pytest.raises(MCPError) as missing:
                await c.read_resource("moe://runs/plotted/plots/nope.png")
            refused = await c.call_tool("delete_run", {"run_id": "plotted"})
            kept = run.is_dir()
            deleted = await c.call_tool("delete_run", {"run_id": "plotted", "confirm": "plotted"})
            return info, image, missing.value.code, (refused, kept), deleted

    info, image, missing_code, (refused, kept), deleted = anyio.run(go)
    assert list(info.plots) == ["loss.png"]
    assert image.mime_type == "image/png" and base64.b64decode(image.blob) == png
    assert missing_code == -32602
    assert refused.is_error and "confirm='plotted'" in refused.content[0].text and kept
    assert not deleted.is_error and deleted.structured_content["bytes_freed"] >= len(png) and not run.exists()
