"""The MCP server against a real sidecar on 127.0.0.1: SDK client sessions in both protocol eras, a real
quickstart training job followed with progress notifications, resources, inference with the trained
model, tool errors for bad input, the stdio transport as a subprocess (stdout purity), Streamable HTTP
with the sidecar's tokens (401 / 200 / a read-only token refused by start_training)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from serve_helpers import local_settings

from moe_swarm.mcp.backend import Sidecar, SidecarConfig
from moe_swarm.mcp.http_transport import READY_PREFIX
from moe_swarm.mcp.server import build_server
from moe_swarm.serve.server import BackgroundServer

FULL = "mcp-full-token-0123456789abcdef"
READER = "mcp-read-token-0123456789abcdef"
TINY = ["model.d_model=32", "data.batch_size=4", "data.block_size=32", "trainer.limit_val_batches=1",
        "validate_before_fit=false", "trainer.max_steps=6", "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1"]  # fmt: skip
TOOLS = {"list_experiments", "start_training", "list_runs", "delete_run", "start_evaluation", "get_job", "list_jobs", "wait_for_job", "cancel_job", "tail_logs",
         "run_benchmark", "run_inference", "list_models", "load_model", "start_sweep", "get_sweep_results"}  # fmt: skip
TEMPLATES = {"moe://jobs/{job_id}", "moe://jobs/{job_id}/logs", "moe://jobs/{job_id}/metrics",
             "moe://runs/{run_id}/config", "moe://runs/{run_id}/summary", "moe://runs/{run_id}/plots/{name}",
             "moe://bench/{job_id}/results", "moe://sweeps/{job_id}/results",
             "moe://experiments/{name}"}  # fmt: skip


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp")
    tokens = tmp / "tokens"
    tokens.write_text(f"{FULL}\n{READER}:read\n")
    settings = local_settings(tmp / "state", auth__enabled=True, auth__token_file=str(tokens), log_rpcs=False)
    with BackgroundServer(settings) as srv:
        yield srv


def mcp_server(address: str, token: str = FULL):
    return build_server(Sidecar(SidecarConfig(target=address, token=token)))


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


@pytest.fixture(scope="module")
def trained(sidecar):
    """One real quickstart training job (6 steps) started and followed through MCP (handshake era)."""
    updates: list[str] = []

    async def on_message(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", "") == "notifications/resources/updated":
            updates.append(str(root.params.uri))

    async def go():
        async with Client(mcp_server(sidecar.address), mode="legacy", message_handler=on_message) as c:
            started = await c.call_tool("start_training", {"experiment": "quickstart", "overrides": TINY,
                                                           "run_id": "mcp-run"})  # fmt: skip
            assert not started.is_error, started.content
            job = started.structured_content
            progress: list[tuple[float, float, float | None, str | None]] = []

            async def on_progress(p, total, message):
                progress.append((time.monotonic(), p, total, message))

            waited = await c.call_tool("wait_for_job", {"job_id": job["job_id"], "timeout_s": 400},
                                       progress_callback=on_progress)  # fmt: skip
            assert not waited.is_error, waited.content
            return job, waited.structured_content, progress

    job, waited, progress = run(go)
    return {"job": job, "waited": waited, "progress": progress, "updates": updates}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_tools_resources_and_prompts_are_listed_with_schemas(sidecar, mode):
    async def go():
        async with Client(mcp_server(sidecar.address), mode=mode) as c:
            assert c.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
            tools = {t.name: t for t in (await c.list_tools()).tools}
            templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
            prompts = {p.name: p for p in (await c.list_prompts()).prompts}
            exps = await c.call_tool("list_experiments", {})
            return tools, templates, prompts, exps

    tools, templates, prompts, exps = run(go)
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.description and "\n" not in t.description.strip(), t.name
        assert t.input_schema["type"] == "object" and t.output_schema and t.output_schema["type"] == "object"
        assert t.annotations is not None and t.annotations.read_only_hint is not None, t.name
    assert (
        tools["get_job"].annotations.read_only_hint and not tools["start_training"].annotations.read_only_hint
    )
    assert (
        tools["cancel_job"].annotations.destructive_hint and tools["cancel_job"].annotations.idempotent_hint
    )
    assert tools["start_training"].input_schema["required"] == ["experiment"]
    assert {"job_id", "state", "metrics", "checkpoint"} <= set(tools["get_job"].output_schema["properties"])
    assert templates == TEMPLATES
    assert set(prompts) == {"diagnose_run", "compare_runs"}
    assert [a.name for a in prompts["compare_runs"].arguments] == ["run_a", "run_b"]
    names = {e["name"]: e["description"] for e in exps.structured_content["experiments"]}
    assert "quickstart" in names and names["quickstart"]


def test_training_job_waits_with_progress_and_succeeds(trained):
    waited, progress = trained["waited"], trained["progress"]
    assert waited["finished"] and waited["job"]["state"] == "SUCCEEDED", waited["job"]["message"]
    assert waited["job"]["checkpoint"].endswith("last.ckpt") and "val/bpb" in waited["job"]["metrics"]
    assert progress, "wait_for_job sent no progress notification"
    last = progress[-1]
    assert last[1] == 6 and last[2] == 6 and "step 6/6" in last[3] and "train/loss" in last[3]
    assert "tokens/s" in last[3]  # throughput of the run (and an ETA while it runs, see test_mcp_control_ii)
    gaps = [b[0] - a[0] for a, b in zip(progress, progress[1:-1])]
    assert all(g >= 0.9 for g in gaps), gaps  # at most about one a second (the final one comes at once)
    assert f"moe://jobs/{trained['job']['job_id']}" in trained["updates"]  # state changes were announced


def test_resources_read_config_metrics_logs_and_summary(sidecar, trained):
    job_id = trained["job"]["job_id"]

    async def go():
        async with Client(mcp_server(sidecar.address), mode="auto") as c:
            out = {}
            for uri in ("moe://runs/mcp-run/config", "moe://runs/mcp-run/summary", f"moe://jobs/{job_id}/metrics",
                        f"moe://jobs/{job_id}/logs", f"moe://jobs/{job_id}", "moe://experiments/quickstart"):  # fmt: skip
                out[uri] = (await c.read_resource(uri)).contents[0].text
            page = await c.call_tool("tail_logs", {"job_id": job_id, "max_lines": 2, "offset": 0})
            nxt = await c.call_tool("tail_logs", {"job_id": job_id, "max_lines": 2,
                                                  "offset": page.structured_content["next_offset"]})  # fmt: skip
            diag = await c.get_prompt("diagnose_run", {"run_id": "mcp-run"})
            return out, page.structured_content, nxt.structured_content, diag

    out, page, nxt, diag = run(go)
    config = out["moe://runs/mcp-run/config"]
    assert "max_steps: 6" in config and "run_dir:" in config and "${" not in config.split("hydra")[0]
    assert json.loads(out["moe://runs/mcp-run/summary"])["run_id"] == "mcp-run"
    metrics = json.loads(out[f"moe://jobs/{job_id}/metrics"])
    assert metrics["trainer/global_step"] == 6 and metrics["val/bpb"] > 0
    assert json.loads(out[f"moe://jobs/{job_id}"])["state"] == "SUCCEEDED"
    assert out[f"moe://jobs/{job_id}/logs"].strip()
    assert "trainer:" in out["moe://experiments/quickstart"]
    assert (
        page["offset"] == 0 and page["lines"] == 2 and page["more"] and nxt["offset"] == page["next_offset"]
    )
    assert "mcp-run" in diag.messages[0].content.text and "summary.json" in diag.messages[0].content.text


def test_run_inference_answers_with_the_trained_model(sidecar, trained):
    job_id = trained["job"]["job_id"]

    async def go():
        async with Client(mcp_server(sidecar.address), mode="auto") as c:
            models = await c.call_tool("list_models", {})
            answer = await c.call_tool("run_inference", {"prompt": "The list type", "agents": 2, "max_new_tokens": 6,
                                                         "model": job_id, "seed": 1})  # fmt: skip
            return models, answer

    models, answer = run(go)
    assert not answer.is_error, answer.content
    result = answer.structured_content
    assert result["model_id"] == job_id and result["agents"] == 2 and result["forward_passes"] > 0
    assert (
        0 < result["vote_share"] <= 1 and result["votes"] and result["answer"] == result["votes"][0]["answer"]
    )
    assert not models.is_error


def test_every_bad_input_is_a_tool_error_and_the_server_keeps_serving(sidecar, trained):
    job_id = trained["job"]["job_id"]
    cases = [
        ("start_training", {"experiment": "no_such_experiment"}, "experiment 'no_such_experiment' does not exist"),
        ("start_training", {"experiment": "quickstart", "overrides": ["trainer.max_stepz=5"]},
         "Could not override 'trainer.max_stepz'"),
        ("start_training", {"experiment": "quickstart", "overrides": ["data.paths=[/etc/passwd]"]}, "outside"),
        ("start_training", {"experiment": "quickstart", "overrides": ["hydra.run.dir=/tmp"]}, "hydra"),
        ("get_job", {"job_id": "no-such-job"}, "job 'no-such-job' does not exist"),
        ("get_job", {"job_id": "../../etc"}, "is not valid"),
        ("cancel_job", {"job_id": "no-such-job"}, "does not exist"),
        ("wait_for_job", {"job_id": job_id, "timeout_s": 601}, "timeout_s=601"),
        ("tail_logs", {"job_id": job_id, "max_lines": 0}, "max_lines=0"),
        ("list_jobs", {"state": "DONE"}, "not a job state"),
        ("run_inference", {"prompt": "x" * 5000}, "limit is"),
        ("run_inference", {"prompt": ""}, "prompt is empty"),
        ("load_model", {"checkpoint": "/etc/passwd"}, "must be a .ckpt"),
        ("run_benchmark", {"suites": ["no_suite"]}, "unknown benchmark suite"),
        ("get_job", {"job_id": 5}, "validation error"),
    ]  # fmt: skip

    async def go():
        results = []
        async with Client(mcp_server(sidecar.address), mode="auto") as c:
            for name, args, _ in cases:
                results.append(await c.call_tool(name, args))
            after = await c.call_tool("get_job", {"job_id": job_id})
        async with Client(mcp_server("127.0.0.1:1"), mode="auto") as c:  # nothing listens on port 1
            unreachable = await c.call_tool("list_jobs", {})
        return results, after, unreachable

    results, after, unreachable = run(go)
    for (name, _, expected), r in zip(cases, results):
        text = r.content[0].text
        assert r.is_error, (name, text)
        assert expected in text, (name, text)
        assert "Traceback" not in text
    assert not after.is_error and after.structured_content["state"] == "SUCCEEDED"
    assert unreachable.is_error and "sidecar at 127.0.0.1:1 is unreachable" in unreachable.content[0].text


def _mcp_env(address: str, token: str = FULL) -> dict[str, str]:
    env = {**os.environ, "MOE_SWARM_TARGET": address, "MOE_SWARM_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    env.pop("MOE_SWARM_CA_CERT", None)
    return env


def test_stdio_subprocess_session(sidecar, trained):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "moe_swarm.mcp"], env=_mcp_env(sidecar.address)
    )

    async def go():
        async with Client(params, mode="legacy") as c:
            tools = await c.list_tools()
            job = await c.call_tool("get_job", {"job_id": trained["job"]["job_id"]})
            bad = await c.call_tool("get_job", {"job_id": "nope"})
            return tools, job, bad

    tools, job, bad = run(go)
    assert {t.name for t in tools.tools} == TOOLS
    assert job.structured_content["state"] == "SUCCEEDED"
    assert bad.is_error and "does not exist" in bad.content[0].text


def test_stdio_stdout_carries_only_json_rpc(sidecar, trained):
    """A whole session through the raw pipes: every stdout line is a JSON-RPC 2.0 message."""
    proc = subprocess.Popen([sys.executable, "-m", "moe_swarm.mcp", "--log-level", "DEBUG"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_mcp_env(sidecar.address))  # fmt: skip
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "list_experiments", "arguments": {}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "get_job", "arguments": {"job_id": "x y"}}},
        {"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "moe://runs/mcp-run/config"}},
        {"jsonrpc": "2.0", "id": 6, "method": "tools/call",
         "params": {"name": "run_inference", "arguments": {"prompt": "The ", "agents": 2, "max_new_tokens": 2}}},
    ]  # fmt: skip
    try:
        for req in requests:
            proc.stdin.write((json.dumps(req) + "\n").encode())
        proc.stdin.flush()
        answered: dict[int, dict] = {}
        lines: list[bytes] = []
        deadline = time.monotonic() + 120
        while len(answered) < 6 and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                msg = json.loads(line)  # every line is JSON ...
                assert msg["jsonrpc"] == "2.0", msg  # ... and JSON-RPC
                if "id" in msg:
                    answered[msg["id"]] = msg
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    assert set(answered) == {1, 2, 3, 4, 5, 6}, (answered, stderr[-2000:])
    assert answered[4]["result"]["isError"] is True
    assert "max_steps: 6" in answered[5]["result"]["contents"][0]["text"]
    assert answered[6]["result"].get("isError") is not True, answered[6]
    assert "DEBUG" in stderr  # the logs went to stderr


def _start_http(address: str, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "moe_swarm.mcp", "--http", "--host", "127.0.0.1", "--port", "0",
                             *extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_mcp_env(address, token=""))  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        if line.startswith(READY_PREFIX):
            return proc, line[len(READY_PREFIX) :].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"moe-swarm-mcp --http did not start: {proc.stderr.read().decode()[-2000:]}")


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}  # fmt: skip
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_streamable_http_with_the_sidecars_tokens(sidecar, trained):
    proc, url = _start_http(sidecar.address)
    try:
        with httpx2.Client(timeout=30) as http:
            assert http.post(url, json=INIT, headers=HEADERS).status_code == 401
            bad = http.post(
                url, json=INIT, headers={**HEADERS, "Authorization": "Bearer wrong-token-0123456789"}
            )
            assert bad.status_code == 401
            ok = http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {FULL}"})
            assert ok.status_code == 200, ok.text
            evil = http.post(
                url,
                json=INIT,
                headers={**HEADERS, "Authorization": f"Bearer {FULL}", "Host": "evil.example:80"},
            )
            assert evil.status_code == 421
            origin = http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {FULL}",
                                                        "Origin": "http://evil.example"})  # fmt: skip
            assert origin.status_code == 403

        async def session(token: str):
            async with (
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http,
                Client(streamable_http_client(url, http_client=http), mode="legacy") as c,
            ):
                job = await c.call_tool("get_job", {"job_id": trained["job"]["job_id"]})
                start = await c.call_tool("start_training", {"experiment": "quickstart", "overrides": TINY})
                return job, start

        job, start = run(session, READER)
        assert job.structured_content["state"] == "SUCCEEDED"
        assert (
            start.is_error
            and "PERMISSION_DENIED" in start.content[0].text
            and "'train' scope" in start.content[0].text
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()


def test_cancelling_a_wait_leaves_the_job_running_and_cancel_job_stops_it(sidecar, trained):
    """Also: a job's state changes reach a `subscriptions/listen` stream as resource-updated events."""

    async def steps(c, job_id):
        short = await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 1})
        with anyio.move_on_after(2):  # the agent host gives up on a wait: the request is cancelled
            await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 300})
        await anyio.sleep(1)
        after = await c.call_tool("get_job", {"job_id": job_id})
        cancelled = await c.call_tool("cancel_job", {"job_id": job_id})
        final = await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 300})
        return short, after, cancelled, final

    async def go():
        async with Client(mcp_server(sidecar.address), mode="auto") as c:
            started = await c.call_tool("start_training", {"experiment": "quickstart",
                                                           "overrides": [*TINY, "trainer.max_steps=100000"]})  # fmt: skip
            job_id = started.structured_content["job_id"]
            events: list[str] = []

            async def listen(task_status=anyio.TASK_STATUS_IGNORED):
                async with c.listen(resource_subscriptions=[f"moe://jobs/{job_id}"]) as sub:
                    task_status.started()
                    async for event in sub:
                        events.append(event.uri)

            async with anyio.create_task_group() as tg:
                await tg.start(listen)
                result = await steps(c, job_id)
                await anyio.sleep(1.5)  # the job watcher polls once a second
                tg.cancel_scope.cancel()
            return (*result, job_id, events)

    short, after, cancelled, final, job_id, events = run(go)
    assert not short.is_error and short.structured_content["finished"] is False
    assert after.structured_content["state"] in ("PENDING", "RUNNING")
    assert not after.structured_content["cancel_requested"]
    assert cancelled.structured_content["cancel_requested"]
    assert final.structured_content["job"]["state"] == "CANCELLED", final.structured_content["job"]["message"]
    assert f"moe://jobs/{job_id}" in events


def test_run_benchmark_returns_rows_and_the_results_resource(sidecar):
    async def go():
        async with Client(mcp_server(sidecar.address), mode="auto") as c:
            result = await c.call_tool("run_benchmark", {"suites": ["moe_layer"], "repeats": 1})
            job_id = result.structured_content["job_id"]
            again = json.loads((await c.read_resource(f"moe://bench/{job_id}/results")).contents[0].text)
            return result.structured_content, again

    result, again = run(go)
    assert result["rows"] and all(
        r["metric"].startswith("moe_layer/") and r["value"] > 0 for r in result["rows"]
    )
    assert again == result


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate"
)
def test_streamable_http_over_tls(sidecar, trained, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    proc, url = _start_http(sidecar.address, "--certfile", str(cert), "--keyfile", str(key))
    try:
        assert url.startswith("https://127.0.0.1:")
        with httpx2.Client(timeout=30, verify=str(cert)) as http:
            assert http.post(url, json=INIT, headers=HEADERS).status_code == 401
            ok = http.post(url, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {FULL}"})
            assert ok.status_code == 200, ok.text
        with pytest.raises(httpx2.HTTPError), httpx2.Client(timeout=10) as plain:  # untrusted certificate
            plain.post(url, json=INIT, headers=HEADERS)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
