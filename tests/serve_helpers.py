"""Helpers for the sidecar's tests: local settings, a tiny real checkpoint, bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moe_swarm.serve.settings import ServeSettings


def local_settings(state_dir: str | Path, **changes: Any) -> ServeSettings:
    """Settings for a server on 127.0.0.1 with a free port, auth off, state under ``state_dir``."""
    s = ServeSettings(host="127.0.0.1", port=0, state_dir=str(state_dir), grace_s=5.0)
    s.training.runs_dir = str(Path(state_dir) / "runs")  # not the working directory's runs/ (the default)
    s.auth.enabled = False
    s.training.cancel_grace_s = 60.0
    for dotted, value in changes.items():
        target = s
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = getattr(target, p)
        if not hasattr(target, leaf):
            raise AttributeError(f"ServeSettings has no setting {dotted.replace('__', '.')!r}")
        setattr(target, leaf, value)
    return s


def tiny_checkpoint(path: str | Path, seed: int = 0, task: dict | None = None, **model_kw: Any) -> Path:
    """Write a real (randomly initialised) small MoE model in the training checkpoint layout."""
    import torch

    from moe_swarm.model import MoETransformer, TransformerConfig
    from moe_swarm.store.checkpoint import save_model_checkpoint

    cfg = {
        "d_model": 32,
        "n_layers": 2,
        "n_heads": 2,
        "d_ff": 32,
        "num_experts": 4,
        "top_k": 2,
        "max_seq_len": 96,
    }
    cfg.update(model_kw)
    torch.manual_seed(seed)
    model = MoETransformer(TransformerConfig.from_dict(cfg))  # flat keys: the legacy layout
    hparams: dict[str, Any] = {"global_step": 0}
    if task is not None:
        hparams["task"] = task
    save_model_checkpoint(path, model, hparams)
    return Path(path)


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(interval)


FAKE_CHILD = Path(__file__).with_name("serve_child_train.py")
FAKE_TRAINING = (f"serve.training.command=[python,{FAKE_CHILD}]", "serve.training.config_name=null",
                 "serve.training.extra_overrides=[]")  # fmt: skip


class ServerProcess:
    """``moe-swarm-serve`` in a child process (auth off, a free port, state and runs under ``state_dir``;
    training jobs are the stand-in child unless ``training`` says otherwise); stdout lines are collected
    by a reader thread."""

    def __init__(self, state_dir: Path, *overrides: str, training: tuple[str, ...] = FAKE_TRAINING) -> None:
        import queue
        import subprocess
        import sys
        import threading

        import grpc
        from grpc_health.v1 import health_pb2_grpc

        from moe_swarm.serve.proto import mcp_pb2_grpc
        from moe_swarm.serve.server import READY_PREFIX

        argv = [sys.executable, "-c", "from moe_swarm.serve.__main__ import main; main()",
                "serve.port=0", "serve.auth.enabled=false", f"serve.state_dir={state_dir}",
                f"serve.training.runs_dir={state_dir}/runs", *training, *overrides]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        line = self.lines.get(timeout=60)
        assert line.startswith(READY_PREFIX), (line, self.stderr)
        self.address = line[len(READY_PREFIX) :].strip()
        self.channel = grpc.insecure_channel(self.address)
        self.stub = mcp_pb2_grpc.MCPControlStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    @staticmethod
    def _read(stream, sink):
        for line in stream:
            sink(line)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
