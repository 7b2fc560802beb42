"""fly/fly.toml: checked against the fly.toml reference (superfly/docs, checked 2026-11).

`fly config validate` needs a Fly.io login and SchemaStore's fly.json rejects valid files, so this
module carries a small checker of its own: the keys and types of the documented schema, plus this
project's rules (gRPC over h2c, trainers never auto-stopped, a /data volume, no GPU guest).
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FLY_TOML = ROOT / "fly" / "fly.toml"

TOP_LEVEL_TYPES: dict[str, type | tuple[type, ...]] = {
    "app": str,
    "primary_region": str,
    "kill_signal": str,
    "kill_timeout": (int, str),
    "console_command": str,
    "swap_size_mb": int,
    "build": dict,
    "deploy": dict,
    "env": dict,
    "processes": dict,
    "http_service": dict,
    "services": list,
    "mounts": (dict, list),
    "vm": (dict, list),
    "restart": list,
    "checks": dict,
    "metrics": (dict, list),
    "statics": list,
    "files": list,
    "experimental": dict,
}
KILL_SIGNALS = {"SIGINT", "SIGTERM", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGSTOP"}
AUTO_STOP_VALUES = {"off", "stop", "suspend"}
RESTART_POLICIES = {"always", "never", "on-failure"}
# Fly's GPU presets (retired with GPU Machines on 2026-08-01) and the gpu_kind names.
GPU_SIZES = {"a10", "l40s", "a100-40gb", "a100-80gb", "a100-pcie-40gb", "a100-sxm4-80gb"}
CPU_SIZE = re.compile(r"(shared-cpu|performance)-(1|2|4|8|16)x")
DURATION = re.compile(r"(\d+)(ms|s|m)?")
TRAINER_GROUP = "train"
GRPC_PORT = 50051


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return float(value)
    match = DURATION.fullmatch(str(value))
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2) or "s"
    return number / 1000 if unit == "ms" else number * (60 if unit == "m" else 1)


def _as_list(value: Any) -> list[dict]:
    return value if isinstance(value, list) else [value]


def check_fly_config(cfg: dict[str, Any], config_dir: Path) -> list[str]:
    """Return every problem found in a parsed fly.toml (an empty list means it passes)."""
    problems: list[str] = []
    for key, value in cfg.items():
        if key not in TOP_LEVEL_TYPES:
            problems.append(f"unknown top-level key {key!r}")
        elif not isinstance(value, TOP_LEVEL_TYPES[key]):
            problems.append(f"{key} has type {type(value).__name__}")
    if not isinstance(cfg.get("app"), str) or not cfg.get("app"):
        problems.append("app name missing")
    if cfg.get("kill_signal", "SIGINT") not in KILL_SIGNALS:
        problems.append(f"kill_signal {cfg.get('kill_signal')!r} not one of {sorted(KILL_SIGNALS)}")
    if cfg.get("kill_signal") != "SIGTERM":
        problems.append(
            "kill_signal must be SIGTERM explicitly (the default SIGINT skips the checkpoint path)"
        )
    timeout = _seconds(cfg.get("kill_timeout", 5))
    if timeout is None or not 30 <= timeout <= 300:
        problems.append(f"kill_timeout {cfg.get('kill_timeout')!r} must be 30..300 s (Fly's maximum is 300)")

    processes = cfg.get("processes", {})
    for name, command in processes.items():
        if not isinstance(command, str) or not command.strip():
            problems.append(f"processes.{name} must be a command string")

    def check_groups(where: str, section: dict) -> None:
        for group in section.get("processes", []):
            if group not in processes:
                problems.append(f"{where} names process group {group!r}, which [processes] lacks")

    build = cfg.get("build", {})
    dockerfile = build.get("dockerfile")
    if dockerfile is None:
        problems.append("build.dockerfile missing")
    else:
        resolved = (config_dir / dockerfile).resolve()  # flyctl: relative to fly.toml's folder
        if not resolved.is_file():
            problems.append(f"build.dockerfile {dockerfile!r} resolves to {resolved}, which does not exist")
    for name, value in build.get("args", {}).items():
        if not isinstance(value, str):
            problems.append(f"build.args.{name} must be a string")

    for name, value in cfg.get("env", {}).items():
        if not isinstance(value, str):
            problems.append(f"env.{name} = {value!r} is not a string (Fly env values are strings)")
        if name.startswith("FLY_"):
            problems.append(f"env.{name}: names starting with FLY_ are reserved")

    services = []
    if "http_service" in cfg:
        services.append(("http_service", cfg["http_service"]))
    services += [(f"services[{i}]", s) for i, s in enumerate(cfg.get("services", []))]
    for where, service in services:
        check_groups(where, service)
        auto_stop = service.get("auto_stop_machines", "off")
        if isinstance(auto_stop, bool) or auto_stop not in AUTO_STOP_VALUES:
            problems.append(
                f"{where}.auto_stop_machines {auto_stop!r} must be one of {sorted(AUTO_STOP_VALUES)}"
            )
        groups = service.get("processes", list(processes) or ["app"])
        if auto_stop != "off":
            problems.append(
                f"{where}.auto_stop_machines must be 'off': autostop sees only proxy traffic, so it would stop "
                f"Machines of {groups} in the middle of training"
            )
    if "auto_stop_machines" in cfg.get("experimental", {}):
        problems.append("experimental.auto_stop_machines is silently ignored; set it on the service")

    http = cfg.get("http_service")
    if http is None:
        problems.append("http_service missing: the gRPC sidecar is not reachable")
    else:
        if http.get("internal_port") != GRPC_PORT:
            problems.append(f"http_service.internal_port must be {GRPC_PORT} (the gRPC sidecar)")
        if http.get("http_options", {}).get("h2_backend") is not True:
            problems.append("http_service.http_options.h2_backend must be true (gRPC speaks h2c)")
        if "h2" not in http.get("tls_options", {}).get("alpn", []):
            problems.append("http_service.tls_options.alpn must offer h2 for gRPC clients")
        if http.get("checks"):
            problems.append("http_service.checks are HTTP checks; a gRPC server fails them (use a tcp check)")

    checks = cfg.get("checks", {})
    tcp_on_grpc = False
    for name, check in checks.items():
        check_groups(f"checks.{name}", check)
        if check.get("type") not in ("tcp", "http"):
            problems.append(f"checks.{name}.type must be 'tcp' or 'http'")
        if not isinstance(check.get("port"), int):
            problems.append(f"checks.{name}.port is required and must be an integer")
        tcp_on_grpc |= check.get("type") == "tcp" and check.get("port") == GRPC_PORT
    if not tcp_on_grpc:
        problems.append(f"no tcp check on port {GRPC_PORT}")

    mounts = _as_list(cfg.get("mounts", []))
    for i, mount in enumerate(mounts):
        check_groups(f"mounts[{i}]", mount)
        if not mount.get("source") or not mount.get("destination"):
            problems.append(f"mounts[{i}] needs source and destination")
        if mount.get("destination") == "/":
            problems.append(f"mounts[{i}].destination cannot be /")
    if not any(m.get("destination") == "/data" for m in mounts):
        problems.append("no volume mounted at /data (checkpoints would be lost on restart)")

    for i, restart in enumerate(cfg.get("restart", [])):
        check_groups(f"restart[{i}]", restart)
        if restart.get("policy") not in RESTART_POLICIES:
            problems.append(f"restart[{i}].policy must be one of {sorted(RESTART_POLICIES)}")

    for i, vm in enumerate(_as_list(cfg.get("vm", []))):
        check_groups(f"vm[{i}]", vm)
        size = vm.get("size")
        if size in GPU_SIZES or "gpus" in vm or "gpu_kind" in vm:
            problems.append(
                f"vm[{i}] asks for a GPU ({size or vm.get('gpu_kind')}): Fly.io retired GPU Machines on 2026-08-01"
            )
        elif size is not None and not CPU_SIZE.fullmatch(size):
            problems.append(f"vm[{i}].size {size!r} is not a Fly CPU preset")
        if vm.get("cpu_kind", "performance") not in ("shared", "performance"):
            problems.append(f"vm[{i}].cpu_kind must be 'shared' or 'performance'")
    return problems


def _load() -> dict[str, Any]:
    with FLY_TOML.open("rb") as handle:
        return tomllib.load(handle)


def test_fly_toml_passes_the_checker():
    assert check_fly_config(_load(), FLY_TOML.parent) == []


def test_fly_toml_runs_the_sidecar_and_a_trainer():
    cfg = _load()
    assert cfg["processes"]["serve"].split()[0] == "serve"
    assert cfg["processes"][TRAINER_GROUP].split()[0] == "train"
    assert "cluster=env" in cfg["processes"][TRAINER_GROUP].split()
    assert cfg["http_service"]["processes"] == ["serve"]
    assert set(cfg["mounts"][0]["processes"]) == {"serve", TRAINER_GROUP}
    # The dockerfile path is relative to fly/, and lands on the repository's Dockerfile.
    assert (FLY_TOML.parent / cfg["build"]["dockerfile"]).resolve() == ROOT / "docker" / "Dockerfile"


def test_serve_process_composes_with_the_sidecar_config():
    # The sidecar's command line goes through conf/serve.yaml and its typed settings, as on the Machine.
    from hydra import compose, initialize_config_dir

    from moe_swarm.config import config_dir
    from moe_swarm.serve.settings import from_config

    words = _load()["processes"]["serve"].split()
    assert words[0] == "serve"
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="serve", overrides=words[1:])
    settings = from_config(cfg.serve)
    assert settings.host == "0.0.0.0", "Fly's proxy cannot reach a sidecar bound to 127.0.0.1"
    assert settings.state_dir.startswith("/data/"), "job state must live on the volume"
    assert settings.port == _load()["http_service"]["internal_port"]
    assert settings.auth.enabled, (
        "a public sidecar needs bearer tokens (fly secrets set MOE_SWARM_TOKENS=...)"
    )


def test_train_process_composes_and_runs_as_one_node(monkeypatch):
    from hydra import compose, initialize_config_dir

    from moe_swarm.config import config_dir
    from moe_swarm.scale.cluster import ClusterSpec, check_matches_trainer

    cfg_toml = _load()
    words = cfg_toml["processes"][TRAINER_GROUP].split()
    for name in ("DEVICES", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in cfg_toml["env"].items():
        monkeypatch.setenv(name, value)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=words[1:])
    # A Fly Machine's hostname is its id: no index, so the rank must come from NUM_NODES=1.
    spec = ClusterSpec.from_config(cfg.cluster, dict(cfg_toml["env"]), "3d8d9e1b2c4e78")
    check_matches_trainer(spec, cfg.trainer.num_nodes, cfg.trainer.devices)
    assert (spec.num_nodes, spec.node_rank) == (1, 0)
    assert cfg.run_id == "fly-train", "a fixed run_id lets a restarted trainer resume"


def test_gpu_size_survives_only_as_a_comment():
    text = FLY_TOML.read_text()
    assert "a100-40gb" in text and "2026-08-01" in text
    uncommented = [line for line in text.splitlines() if "a100" in line and not line.lstrip().startswith("#")]
    assert uncommented == []


def _mutated(change) -> list[str]:
    cfg = copy.deepcopy(_load())
    change(cfg)
    return check_fly_config(cfg, FLY_TOML.parent)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(vm=[{"size": "a100-40gb"}]), "retired GPU Machines"),
        (lambda c: c["vm"][1].update(gpu_kind="l40s"), "retired GPU Machines"),
        (lambda c: c["http_service"].update(auto_stop_machines="stop"), "must be 'off'"),
        (lambda c: c["http_service"].update(auto_stop_machines=False), "must be one of"),
        (lambda c: c.update(experimental={"auto_stop_machines": "off"}), "silently ignored"),
        (lambda c: c.update(kill_timeout=600), "must be 30..300"),
        (lambda c: c.update(kill_timeout="5s"), "must be 30..300"),
        (lambda c: c.pop("kill_signal"), "SIGTERM explicitly"),
        (lambda c: c["env"].update(NUM_NODES=1), "is not a string"),
        (lambda c: c["env"].update(FLY_REGION="ord"), "reserved"),
        (lambda c: c["mounts"][0].update(destination="/models"), "no volume mounted at /data"),
        (lambda c: c["http_service"]["http_options"].update(h2_backend=False), "h2_backend must be true"),
        (lambda c: c["http_service"]["tls_options"].update(alpn=["http/1.1"]), "must offer h2"),
        (lambda c: c["http_service"].update(checks=[{"path": "/"}]), "use a tcp check"),
        (lambda c: c["checks"]["grpc_port"].update(type="grpc"), "must be 'tcp' or 'http'"),
        (lambda c: c["checks"]["grpc_port"].update(processes=["web"]), "'web', which [processes] lacks"),
        (lambda c: c["build"].update(dockerfile="docker/Dockerfile"), "does not exist"),
        (lambda c: c.update(vm_size="performance-8x"), "unknown top-level key 'vm_size'"),
        (lambda c: c["restart"][0].update(policy="sometimes"), "policy must be one of"),
        (lambda c: c["vm"][0].update(size="huge-1x"), "not a Fly CPU preset"),
    ],
)
def test_checker_catches_each_mistake(change, expected):
    problems = _mutated(change)
    assert any(expected in problem for problem in problems), problems


def test_dotted_vm_size_is_parsed_and_checked():
    # `vm.size = "..."` is valid TOML for a [vm] table; flyctl accepts it, and so does the checker.
    cfg = _load()
    cfg.pop("vm")
    cfg.update(tomllib.loads('vm.size = "a100-40gb"'))
    assert any("retired GPU Machines" in p for p in check_fly_config(cfg, FLY_TOML.parent))
