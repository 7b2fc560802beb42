"""A scripted agent session through the MCP server, printed as a transcript (docs/mcp.md shows one run).

    python docs/mcp_session.py --target 127.0.0.1:50051          # against a running moe-swarm-serve
    python docs/mcp_session.py --local                           # starts a sidecar on 127.0.0.1 itself

It does what an agent host would: launch ``python -m moe_swarm.mcp`` over stdio, list the experiments,
start the quickstart training, wait with progress notifications, then ask the trained model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import anyio
from mcp import Client, StdioServerParameters


def show(label: str, payload: object) -> None:
    text = json.dumps(payload, indent=1, sort_keys=False) if not isinstance(payload, str) else payload
    print(f"{label}\n{text}\n", flush=True)


async def session(target: str, token: str, overrides: list[str], prompt: str) -> None:
    env = {**os.environ, "MOE_SWARM_TARGET": target, "MOE_SWARM_TOKEN": token}
    params = StdioServerParameters(command=sys.executable, args=["-m", "moe_swarm.mcp"], env=env)
    async with Client(params) as c:
        print(f"# connected over stdio, protocol {c.protocol_version}\n")
        exps = await c.call_tool("list_experiments", {})
        show("> list_experiments {}", exps.structured_content)
        args = {"experiment": "quickstart", "overrides": overrides, "run_id": f"agent-{int(time.time())}"}
        started = await c.call_tool("start_training", args)
        job = started.structured_content
        show(f"> start_training {json.dumps(args)}", {k: job[k] for k in ("job_id", "state", "run_id")})
        t0 = time.monotonic()

        async def progress(p: float, total: float | None, message: str | None) -> None:
            print(f"  progress {time.monotonic() - t0:6.1f} s: {p:g}/{total or '?'} {message}", flush=True)

        print(f'> wait_for_job {{"job_id": "{job["job_id"]}", "timeout_s": 600}}')
        waited = await c.call_tool("wait_for_job", {"job_id": job["job_id"], "timeout_s": 600},
                                   progress_callback=progress)  # fmt: skip
        final = waited.structured_content["job"]
        show("", {"state": final["state"], "waited_s": waited.structured_content["waited_s"],
                  "metrics": {k: round(v, 4) for k, v in final["metrics"].items() if k.startswith(("val/", "train/loss"))}})  # fmt: skip
        models = await c.call_tool("list_models", {})
        show("> list_models {}", models.structured_content)
        answer = await c.call_tool(
            "run_inference", {"prompt": prompt, "agents": 8, "max_new_tokens": 24, "seed": 0}
        )
        r = answer.structured_content if not answer.is_error else answer.content[0].text
        show(f"> run_inference {json.dumps({'prompt': prompt, 'agents': 8, 'max_new_tokens': 24, 'seed': 0})}",
             r if isinstance(r, str) else {k: r[k] for k in ("answer", "vote_share", "forward_passes", "model_id")})  # fmt: skip
        wrong = await c.call_tool("run_inference", {"prompt": "", "agents": 8})
        show('> run_inference {"prompt": ""}', {"isError": wrong.is_error, "text": wrong.content[0].text})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=os.environ.get("MOE_SWARM_TARGET", "127.0.0.1:50051"))
    p.add_argument("--token", default=os.environ.get("MOE_SWARM_TOKEN", ""))
    p.add_argument(
        "--local", action="store_true", help="start a sidecar on 127.0.0.1 (auth off) for the session"
    )
    p.add_argument("--prompt", default="The list type")
    p.add_argument("overrides", nargs="*", help="training overrides (default: none, the full quickstart)")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        target = args.target
        if args.local:
            from moe_swarm.serve.server import BackgroundServer
            from moe_swarm.serve.settings import ServeSettings

            state = stack.enter_context(tempfile.TemporaryDirectory(prefix="mcp-session-"))
            settings = ServeSettings(host="127.0.0.1", port=0, state_dir=state, log_rpcs=False)
            settings.auth.enabled = False
            srv = stack.enter_context(BackgroundServer(settings))
            target = srv.address
        anyio.run(session, target, args.token, args.overrides, args.prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
