"""The commands of ``moe-swarm-ctl``: one function per command, the printers, and the parser.

:mod:`moe_swarm.serve.ctl` is the entry point; :mod:`moe_swarm.serve.client` the client they call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from moe_swarm.serve.client import DEFAULT_TARGET, TERMINAL, Client
from moe_swarm.serve.proto import mcp_pb2


def _state(value: int) -> str:
    return mcp_pb2.JobState.Name(value)


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def print_job(job: mcp_pb2.Job) -> None:
    print(f"job        {job.job_id}")
    print(f"kind       {mcp_pb2.JobKind.Name(job.kind).lower()}")
    print(
        f"state      {_state(job.state)}{'  (cancel requested)' if job.cancel_requested and job.state not in TERMINAL else ''}"
    )
    print(f"config     {job.config_path} {' '.join(job.overrides)}".rstrip())
    if job.run_id:
        print(f"run        {job.run_id}  ({job.run_dir})")
    print(f"created    {_fmt_time(job.created_unix)}   started {_fmt_time(job.started_unix)}   "
          f"finished {_fmt_time(job.finished_unix)}")  # fmt: skip
    if job.HasField("exit_code"):
        print(f"exit code  {job.exit_code}")
    if job.message:
        print(f"message    {job.message}")
    if job.checkpoint:
        print(f"checkpoint {job.checkpoint}")
    for k in sorted(job.metrics):
        print(f"metric     {k} = {job.metrics[k]:.6g}")
    if job.log_tail:
        print("log tail:")
        for line in job.log_tail:
            print(f"  {line}")


def _dump(message: Any) -> None:
    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def _show(message: Any, as_json: bool, human: Callable[[Any], None]) -> int:
    """A command's reply: as JSON with ``--json`` (proto field names), else as ``human`` prints it."""
    _dump(message) if as_json else human(message)
    return 0


def follow_job(client: Client, job_id: str, as_json: bool) -> mcp_pb2.Job:
    """Print WatchJob events until the job is finished; returns its final state."""
    last = None
    for event in client.stream("WatchJob", mcp_pb2.WatchJobRequest(job_id=job_id)):
        last = event.job
        if as_json:
            _dump(event)
            continue
        stamp = time.strftime("%H:%M:%S", time.localtime(event.time_unix))
        if event.type == mcp_pb2.JobEvent.METRICS:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(event.metrics.items()))
            print(f"{stamp} {job_id} metrics {shown}", flush=True)
        else:
            print(f"{stamp} {job_id} {_state(event.job.state)} {event.job.message}".rstrip(), flush=True)
    if last is None:
        raise RuntimeError(f"WatchJob for {job_id} ended without events")
    return last


def cmd_train(client: Client, args: argparse.Namespace) -> int:
    request_id = args.request_id or uuid.uuid4().hex
    resp = client.call("StartTraining", mcp_pb2.TrainRequest(
        config_path=args.config, overrides=args.overrides, run_id=args.run_id or "", request_id=request_id,
        priority=args.priority))  # fmt: skip
    if args.json:
        _dump(resp)
    else:
        print(resp.log)
    if not args.wait:
        return 0
    final = follow_job(client, resp.job_id, args.json)
    return 0 if final.state == mcp_pb2.SUCCEEDED else 3


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    job = client.call("GetJob", mcp_pb2.GetJobRequest(job_id=args.job_id))
    return _show(job, args.json, print_job)


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    states = [mcp_pb2.JobState.Value(s.upper()) for s in args.state or []]
    kind = mcp_pb2.JobKind.Value(args.kind.upper()) if args.kind else 0
    resp = client.call("ListJobs", mcp_pb2.ListJobsRequest(states=states, kind=kind, limit=args.limit))
    return _show(resp, args.json, _print_jobs)


def _print_jobs(resp: mcp_pb2.ListJobsResponse) -> None:
    print(f"{'JOB':<32} {'KIND':<9} {'STATE':<10} {'CREATED':<19}  CONFIG / MESSAGE")
    for j in resp.jobs:
        what = f"{j.config_path} {' '.join(j.overrides)}".strip()
        if j.state in (mcp_pb2.FAILED, mcp_pb2.CANCELLED) and j.message:
            what += f"  -- {j.message[:100]}"
        print(f"{j.job_id:<32} {mcp_pb2.JobKind.Name(j.kind).lower():<9} {_state(j.state):<10} "
              f"{_fmt_time(j.created_unix):<19}  {what}")  # fmt: skip


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.call("CancelJob", mcp_pb2.CancelJobRequest(job_id=args.job_id))
    if args.json:
        _dump(job)
    elif job.state in TERMINAL:
        print(f"job {job.job_id} is already {_state(job.state)}")
    else:
        print(f"job {job.job_id}: asked to checkpoint and stop (state {_state(job.state)})")
    if args.wait and job.state not in TERMINAL:
        final = follow_job(client, job.job_id, args.json)
        return 0 if final.state in TERMINAL else 3
    return 0


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    request = mcp_pb2.TailLogsRequest(job_id=args.job_id, follow=args.follow, tail_lines=args.tail)
    for chunk in client.stream("TailLogs", request):
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    return 0


def cmd_watch(client: Client, args: argparse.Namespace) -> int:
    final = follow_job(client, args.job_id, args.json)
    return 0 if final.state == mcp_pb2.SUCCEEDED else 3


def cmd_bench(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("RunBenchmark", mcp_pb2.BenchmarkRequest(num_samples=args.num_samples, suites=args.suite or []),
                       timeout=args.timeout_bench)  # fmt: skip
    return _show(resp, args.json, _print_benchmark)


def _print_benchmark(resp: mcp_pb2.BenchmarkResponse) -> None:
    print(f"benchmark job {resp.job_id}: {len(resp.results)} results")
    width = max((len(r.metric) for r in resp.results), default=10)
    for r in resp.results:
        unit = r.labels.get("unit", "")
        print(f"  {r.metric:<{width}}  {r.value:>14.6g} {unit}")


def _chat_message(text: str) -> mcp_pb2.ChatMessage:
    """``--message user:Hello`` -> ChatMessage(role="user", content="Hello")."""
    role, sep, content = text.partition(":")
    if not sep or not role.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not ROLE:CONTENT (e.g. user:Hello)")
    return mcp_pb2.ChatMessage(role=role.strip(), content=content)


def cmd_infer(client: Client, args: argparse.Namespace) -> int:
    request = mcp_pb2.InferRequest(prompt=args.prompt or "", max_new_tokens=args.max_new_tokens, agents=args.agents,
                                   model_id=args.model or "", mode=args.mode or "",
                                   messages=args.message or [])  # fmt: skip
    if args.rounds is not None:
        request.rounds = args.rounds
    if args.temperature is not None:
        request.temperature = args.temperature
    if args.seed is not None:
        request.seed = args.seed
    if args.stream:
        return _stream_inference(client, request, args.json)
    resp = client.call("RunInference", request)
    return _show(resp, args.json, _print_inference)


def _stream_inference(client: Client, request: mcp_pb2.InferRequest, as_json: bool) -> int:
    """StreamInference: each piece of text is printed as it arrives (with --json: one JSON chunk per line)."""
    for chunk in client.stream("StreamInference", request):
        if as_json:
            print(json.dumps(MessageToDict(chunk, preserving_proto_field_name=True)), flush=True)
        elif chunk.HasField("final"):
            print(flush=True)
            print(
                f"# model {chunk.final.model_id}; {chunk.tokens} tokens streamed (one agent)", file=sys.stderr
            )
            if chunk.final.default_model_notice:
                print(f"# note: {chunk.final.default_model_notice}", file=sys.stderr)
        else:
            print(chunk.text, end="", flush=True)
    return 0


def _print_inference(resp: mcp_pb2.InferResponse) -> None:
    for k, step in enumerate(resp.steps, 1):
        print(f"# step {k}: {step.text!r} (vote share {step.vote_share:.2f})", file=sys.stderr)
    print(resp.output)
    votes = ", ".join(f"{v.answer!r}: {v.weight:.3g}" for v in resp.votes[:5])
    print(f"# model {resp.model_id}; vote share {resp.vote_share:.2f} ({votes}); {resp.agents} agents, "
          f"{resp.rounds_used} round(s), {resp.forward_passes} agent-forward-passes, {resp.flops:.3g} FLOPs, "
          f"batch of {resp.batch_size}", file=sys.stderr)  # fmt: skip
    if resp.default_model_source:
        print(f"# the default model: {resp.default_model_source}", file=sys.stderr)
    if resp.default_model_notice:
        print(f"# note: {resp.default_model_notice}", file=sys.stderr)


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("ListModels", mcp_pb2.ListModelsRequest())
    return _show(resp, args.json, _print_models)


def _print_models(resp: mcp_pb2.ListModelsResponse) -> None:
    print(f"default: {resp.default_model_id or '(none)'} {resp.default_checkpoint}".rstrip())
    if resp.default_model_source:
        print(f"  ({resp.default_model_source})")
    loaded = {m.checkpoint for m in resp.models}
    unloaded = [m for m in resp.servable if not m.loaded and m.checkpoint not in loaded]
    for m in list(resp.models) + unloaded:
        size = (
            f"{m.params_total:>12,} params ({m.params_active:,} active)" if m.params_total else "(not loaded)"
        )
        print(f"  {m.model_id:<40} {size}  step {m.global_step}  {m.task or 'text'}  {m.checkpoint}")
        print(
            f"      prompt: {m.prompt_format}" + (f"; e.g. {m.example_prompt!r}" if m.example_prompt else "")
        )


def cmd_experiments(client: Client, args: argparse.Namespace) -> int:
    resp = client.call("ListExperiments", mcp_pb2.ListExperimentsRequest())
    return _show(resp, args.json, _print_experiments)


def _print_experiments(resp: mcp_pb2.ListExperimentsResponse) -> None:
    width = max((len(e.name) for e in resp.experiments), default=10)
    for e in resp.experiments:
        print(f"{e.name:<{width}}  {e.description}")


def prompt_formats_help() -> str:
    """The prompt format of text models and of every reasoning task (for ``infer --help``)."""
    from moe_swarm.control.models import TEXT_PROMPT_FORMAT
    from moe_swarm.data.tasks import TASKS, get_task

    lines = ["What a prompt looks like depends on the model's task (see `moe-swarm-ctl models`):",
             f"  text   {TEXT_PROMPT_FORMAT}"]  # fmt: skip
    for name in TASKS:
        lines.append(f"  {name:<6} {get_task(name).prompt_format()} (default task size)")
    lines.append("A prompt that does not fit the model's task is refused with INVALID_ARGUMENT saying why.")
    return "\n".join(lines)


class _InferHelp(argparse.Action):
    """``infer --help``: also lists every task's prompt format (imports the task code only when asked)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, help="show this help (with prompt formats)")

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None
    ):
        parser.epilog = prompt_formats_help()
        parser.print_help()
        parser.exit()


def cmd_load(client: Client, args: argparse.Namespace) -> int:
    info = client.call("LoadModel", mcp_pb2.LoadModelRequest(checkpoint=args.checkpoint, model_id=args.id or "",
                                                             make_default=args.default), timeout=args.timeout * 4)  # fmt: skip
    return _show(info, args.json, lambda m: print(f"loaded {m.model_id} from {m.checkpoint}"))


def cmd_info(client: Client, args: argparse.Namespace) -> int:
    info = client.call("GetServerInfo", mcp_pb2.GetServerInfoRequest())
    return _show(info, args.json, _print_server_info)


def _print_server_info(info: mcp_pb2.ServerInfo) -> None:
    print(f"moe-swarm {info.version}  torch {info.torch_version}  grpc {info.grpc_version}")
    print(f"device {info.device} (cuda available: {info.cuda_available}, {info.cuda_device_count} GPU)  "
          f"uptime {info.uptime_s:.0f} s  auth {'on' if info.auth_enabled else 'off'}  "
          f"tls {'on' if info.tls_enabled else 'off'}")  # fmt: skip
    print(f"batching {'on' if info.batching_enabled else 'off'} (max {info.max_batch_size}, "
          f"{info.max_batch_delay_ms:g} ms)")  # fmt: skip
    print(f"models loaded: {', '.join(m.model_id for m in info.models) or '-'}")
    print(f"running jobs: {', '.join(j.job_id for j in info.running_jobs) or '-'}")
    print(f"{'RPC':<40} {'REQS':>6} {'ERRS':>6} {'P50 ms':>9} {'P99 ms':>9}")
    for s in info.rpc_stats:
        print(f"{s.method:<40} {s.requests:>6} {s.errors:>6} {s.p50_ms:>9.2f} {s.p99_ms:>9.2f}")


def cmd_health(client: Client, args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(client.channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=client.timeout)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(name)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 3


def build_parser(*extra: Callable[[Any], None]) -> argparse.ArgumentParser:
    """The parser; each of ``extra`` adds sub-commands to it (``ctl_sweep.add_sweep_commands``)."""
    p = argparse.ArgumentParser(
        prog="moe-swarm-ctl", description="Client of the moe-swarm gRPC control sidecar."
    )
    p.add_argument("--target", default=os.environ.get("MOE_SWARM_TARGET", DEFAULT_TARGET),
                   help="server host:port (env MOE_SWARM_TARGET)")  # fmt: skip
    p.add_argument(
        "--token", default=os.environ.get("MOE_SWARM_TOKEN"), help="bearer token (env MOE_SWARM_TOKEN)"
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    p.add_argument("--ca-cert", default=os.environ.get("MOE_SWARM_CA_CERT"),
                   help="connect with TLS, trusting this PEM certificate (env MOE_SWARM_CA_CERT)")  # fmt: skip
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per unary call (default 30)")
    p.add_argument("--json", action="store_true", help="print responses as JSON")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="start a training job")
    t.add_argument(
        "config", help="experiment name (conf/experiment/) or a YAML path under the server's config roots"
    )
    t.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.max_steps=200")
    t.add_argument("--run-id", help="run id (same id = resume from its last checkpoint)")
    t.add_argument("--request-id", help="idempotency key (default: a new random id)")
    t.add_argument(
        "--priority", type=int, default=0, help="queue priority when the slots are taken (default 0)"
    )
    t.add_argument("--wait", "-w", action="store_true", help="follow the job until it finishes")
    t.set_defaults(func=cmd_train)
    for add in extra:  # sub-commands that live in their own modules (ctl_sweep)
        add(sub)

    s = sub.add_parser("status", help="show one job")
    s.add_argument("job_id")
    s.set_defaults(func=cmd_status)

    ls = sub.add_parser("list", help="list jobs, newest first")
    ls.add_argument(
        "--state", action="append", choices=["pending", "running", "succeeded", "failed", "cancelled"]
    )
    ls.add_argument("--kind", choices=["training", "benchmark"])
    ls.add_argument("--limit", type=int, default=0)
    ls.set_defaults(func=cmd_list)

    c = sub.add_parser("cancel", help="ask a job to checkpoint and stop")
    c.add_argument("job_id")
    c.add_argument("--wait", "-w", action="store_true", help="wait until it has stopped")
    c.set_defaults(func=cmd_cancel)

    lg = sub.add_parser("logs", help="print a job's log")
    lg.add_argument("job_id")
    lg.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job finishes")
    lg.add_argument("--tail", type=int, default=0, help="start with the last N lines (0 = all)")
    lg.set_defaults(func=cmd_logs)

    w = sub.add_parser("watch", help="stream a job's state changes and metrics")
    w.add_argument("job_id")
    w.set_defaults(func=cmd_watch)

    b = sub.add_parser("bench", help="run the benchmark suites on the server")
    b.add_argument("--num-samples", type=int, default=0, help="timed repeats (0 = server default)")
    b.add_argument("--suite", action="append", help="suite name (repeatable; default: the server's set)")
    b.add_argument("--timeout-bench", type=float, default=1800.0, help="seconds to wait for the results")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("infer", help="answer a prompt with the swarm", add_help=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Answer a prompt with a model on the server and the swarm loop.")  # fmt: skip
    i.add_argument("-h", "--help", action=_InferHelp)
    i.add_argument("prompt", nargs="?", default="",
                   help="text for a text model, or a problem in the model's task format (below)")  # fmt: skip
    i.add_argument("--message", action="append", type=_chat_message, metavar="ROLE:CONTENT",
                   help="a chat message instead of the prompt (repeatable), rendered with the model's chat template")  # fmt: skip
    i.add_argument("--stream", action="store_true",
                   help="print the answer as it is decoded (StreamInference: one agent, no vote)")  # fmt: skip
    i.add_argument("--agents", type=int, default=0)
    i.add_argument("--rounds", type=int)
    i.add_argument("--temperature", type=float)
    i.add_argument("--seed", type=int)
    i.add_argument("--max-new-tokens", type=int, default=0)
    i.add_argument(
        "--model", help="model id, job id, run id or checkpoint path (default: the server's default)"
    )
    i.add_argument("--mode", choices=["answers", "steps"],
                   help="answers (default): vote on whole answers; steps: the step-level swarm (scratchpad models)")  # fmt: skip
    i.set_defaults(func=cmd_infer)

    m = sub.add_parser("models", help="list loaded models (task, prompt format) and the default")
    m.set_defaults(func=cmd_models)

    ex = sub.add_parser("experiments", help="list the experiments the server can train")
    ex.set_defaults(func=cmd_experiments)

    ld = sub.add_parser("load", help="load a checkpoint into the server")
    ld.add_argument("checkpoint", help="job id, run id or checkpoint path")
    ld.add_argument("--id", help="model id to load it under")
    ld.add_argument("--default", action="store_true", help="make it the default model")
    ld.set_defaults(func=cmd_load)

    inf = sub.add_parser("info", help="server version, device, jobs, RPC statistics")
    inf.set_defaults(func=cmd_info)

    h = sub.add_parser("health", help="standard gRPC health check")
    h.add_argument("--service", default="", help="service name ('' = the whole server)")
    h.set_defaults(func=cmd_health)
    return p
