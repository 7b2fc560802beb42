"""`moe-swarm-ctl sweep` and `sweep-results`: a Hydra grid or Optuna search as one sidecar job, and its
results table (per trial: swept overrides, objective value, status)."""

from __future__ import annotations

import argparse
import uuid

from moe_swarm.serve.client import Client
from moe_swarm.serve.ctl_commands import _dump, follow_job
from moe_swarm.serve.proto import mcp_pb2


def cmd_sweep(client: Client, args: argparse.Namespace) -> int:
    request = mcp_pb2.SweepRequest(config_path=args.config, params=args.param or [], overrides=args.overrides,
                                   search=args.search, trials=args.trials, sweep_id=args.sweep_id or "",
                                   request_id=args.request_id or uuid.uuid4().hex, priority=args.priority)  # fmt: skip
    job = client.call("StartSweep", request)
    if args.json:
        _dump(job)
    else:
        print(f"sweep job {job.job_id} started: trials are runs {job.run_id}-<n>; "
              f"results: moe-swarm-ctl sweep-results {job.job_id}")  # fmt: skip
    if not args.wait:
        return 0
    final = follow_job(client, job.job_id, args.json)
    results = client.call("GetSweepResults", mcp_pb2.GetJobRequest(job_id=job.job_id))
    _dump(results) if args.json else print(results.markdown, end="")
    return 0 if final.state == mcp_pb2.SUCCEEDED else 3


def cmd_sweep_results(client: Client, args: argparse.Namespace) -> int:
    results = client.call("GetSweepResults", mcp_pb2.GetJobRequest(job_id=args.job_id))
    _dump(results) if args.json else print(results.markdown, end="")
    return 0


def add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    """The two sub-commands, added to moe-swarm-ctl's parser."""
    sw = sub.add_parser("sweep", help="run a Hydra grid or an Optuna search as one job")
    sw.add_argument("config", help="experiment name (conf/experiment/) or a YAML path under the config roots")
    sw.add_argument("overrides", nargs="*", help="Hydra overrides fixed for every trial")
    sw.add_argument("--param", "-p", action="append", metavar="KEY=V1,V2",
                    help="a swept key and its values (repeatable), e.g. model.moe.num_experts=4,8")  # fmt: skip
    sw.add_argument("--search", choices=["grid", "optuna"], default="grid",
                    help="grid: every combination (default); optuna: hparams_search=optuna (TPE)")  # fmt: skip
    sw.add_argument("--trials", type=int, default=0, help="optuna: number of trials (0 = the config's)")
    sw.add_argument("--sweep-id", help="keys the trial run ids <sweep_id>-<n> (default: the job id)")
    sw.add_argument("--request-id", help="idempotency key (default: a new random id)")
    sw.add_argument("--priority", type=int, default=0, help="queue priority (default 0)")
    sw.add_argument("--wait", "-w", action="store_true", help="follow it, then print the results table")
    sw.set_defaults(func=cmd_sweep)
    r = sub.add_parser("sweep-results", help="the results table of a sweep job")
    r.add_argument("job_id")
    r.set_defaults(func=cmd_sweep_results)
