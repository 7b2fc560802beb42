"""Where this process sits in a multi-node run: node rank, node count, rendezvous address.

Kubernetes Indexed Jobs, Fly Machines and plain shells describe a node's place in different ways
(``NODE_RANK``, ``JOB_COMPLETION_INDEX``, a hostname such as ``trainer-3``). This module turns them
into one validated :class:`ClusterSpec` and writes exactly the variables that Lightning's default
``LightningEnvironment`` reads, so a wrong node count fails at start-up instead of letting one pod
train alone. Plain Python on purpose: no Lightning import, so the container entrypoint's rules,
``moe-swarm-launch`` and the tests can all use it cheaply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "APPLIED_MARKER",
    "STRAY_RANK_VARS",
    "ClusterConfigError",
    "ClusterSpec",
    "apply_to_environ",
    "check_matches_trainer",
    "check_world_size",
    "clean_env",
    "resolve_node_rank",
]

DEFAULT_MASTER_ADDR = "127.0.0.1"

# Variables that make Lightning pick another cluster environment, or change how the default one
# behaves, when a platform (torchrun, a Kubeflow PyTorchJob, SLURM + enroot) leaves them behind:
# - TORCHELASTIC_RUN_ID: Lightning then picks TorchElasticEnvironment, which takes ranks and world
#   size from RANK/WORLD_SIZE/... instead of num_nodes x devices.
# - LOCAL_RANK: LightningEnvironment then assumes the processes were started externally and does not
#   start one process per device (a 2-GPU pod would run one process and hang at rendezvous).
# - GROUP_RANK: LightningEnvironment reads it as the node rank when NODE_RANK is absent.
# - RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_WORLD_SIZE, ROLE_RANK, ROLE_WORLD_SIZE: torchrun's view
#   of the world; read by torch.distributed's env:// rendezvous and by TorchElasticEnvironment.
# - SLURM_NTASKS: Lightning then picks SLURMEnvironment (ranks from SLURM_PROCID and friends).
# docker/entrypoint.sh clears the same list; tests/test_deploy_docker.py checks that they agree.
STRAY_RANK_VARS: tuple[str, ...] = (
    "TORCHELASTIC_RUN_ID",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "SLURM_NTASKS",
)

# Set by apply_to_environ. Lightning starts one child process per extra device by re-running the
# command with LOCAL_RANK, NODE_RANK, WORLD_SIZE and MASTER_PORT set for it; the children inherit
# this marker, so apply_to_environ leaves their (Lightning-made) variables alone.
APPLIED_MARKER = "MOE_SWARM_CLUSTER_APPLIED"

_CONFIG_KEYS = ("num_nodes", "devices", "master_addr", "master_port", "node_rank", "clean_stray_env")
_HOSTNAME_INDEX = re.compile(r"^.+-(\d+)$")


class ClusterConfigError(ValueError):
    """The cluster description is inconsistent; the message names the values and the fix."""


def _parse_int(source: str, value: Any, *, minimum: int, hint: str = "") -> int:
    """Parse an int from a config value or an environment string, naming ``source`` on failure."""
    if isinstance(value, bool):  # bool is an int subclass; True is never a node count
        raise ClusterConfigError(f"{source}={value!r} is not an integer. {hint}".strip())
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ClusterConfigError(f"{source}={value!r} is not an integer. {hint}".strip())
        number = int(text)
    if number < minimum:
        raise ClusterConfigError(f"{source}={number} must be >= {minimum}. {hint}".strip())
    return number


def _parse_port(source: str, value: Any) -> int:
    hint = (
        "Use a free TCP port in 1..65535 (29500 is the usual choice). On Kubernetes, a Service named "
        "'master' injects MASTER_PORT=tcp://...; set enableServiceLinks: false or rename it."
    )
    port = _parse_int(source, value, minimum=1, hint=hint)
    if port > 65535:
        raise ClusterConfigError(f"{source}={port} is not a TCP port. {hint}")
    return port


def _is_lightning_auto(value: Any) -> bool:
    """Lightning's "every visible device" spellings: devices=-1 or devices="auto"."""
    return not isinstance(value, bool) and str(value).strip().lower() in ("-1", "auto")


def _device_count(source: str, value: Any, num_nodes: int) -> int | None:
    """Devices per node from a count, a list of device ids, "0,1", or -1/"auto" (None: Lightning decides).

    "Lightning decides" is allowed on one node only: with several nodes every node must state the
    same count, or the world size cannot be checked.
    """
    if _is_lightning_auto(value):
        if num_nodes > 1:
            raise ClusterConfigError(
                f"{source}={value!r} with num_nodes={num_nodes}: every node must state its device count, or the "
                f"world size cannot be checked. Set trainer.devices=N (and DEVICES=N) to the devices per node."
            )
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        return _parse_int(source, len(value), minimum=1, hint="Give at least one device id.")
    if isinstance(value, str) and "," in value:
        ids = [item for item in value.split(",") if item.strip()]
        return _parse_int(source, len(ids), minimum=1, hint="Give at least one device id.")
    return _parse_int(source, value, minimum=1, hint="Use a device count, a list of device ids, or -1/auto.")


def resolve_node_rank(env: Mapping[str, str], hostname: str, num_nodes: int = 1) -> int:
    """Return this node's rank from, in order: NODE_RANK, JOB_COMPLETION_INDEX, the hostname.

    With a single node the hostname is not consulted and the rank is 0: a laptop named ``ws-3``
    must not become rank 3. With several nodes the hostname must end in ``-<index>``, which is
    what Kubernetes Indexed Jobs (``<job>-<index>``) and StatefulSets (``<name>-<index>``) give.
    The result is not range-checked here; :class:`ClusterSpec` does that against ``num_nodes``.
    """
    for name in ("NODE_RANK", "JOB_COMPLETION_INDEX"):
        raw = env.get(name, "")
        if raw.strip():
            return _parse_int(
                name, raw, minimum=0, hint=f"It must be this node's index, 0..{max(num_nodes - 1, 0)}."
            )
    if num_nodes == 1:
        return 0
    short = hostname.split(".", 1)[0]
    match = _HOSTNAME_INDEX.match(short)
    if match:
        return int(match.group(1))
    raise ClusterConfigError(
        f"cannot tell this node's rank: num_nodes={num_nodes}, NODE_RANK and JOB_COMPLETION_INDEX "
        f"are unset, and hostname {hostname!r} does not end in '-<index>' (like 'trainer-3'). "
        f"Set NODE_RANK=0..{num_nodes - 1} on each node, or run the pods as a Kubernetes Indexed Job."
    )


def clean_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``env`` without the variables in :data:`STRAY_RANK_VARS`."""
    return {name: value for name, value in env.items() if name not in STRAY_RANK_VARS}


@dataclass(frozen=True)
class ClusterSpec:
    """One node's view of the run. Lightning's world size is ``num_nodes * devices``.

    On a single node two things may be left to Lightning: ``devices=None`` (trainer.devices=-1 or
    "auto": every visible device) and ``master_port=None`` (a free port).
    """

    num_nodes: int
    devices: int | None
    node_rank: int
    master_addr: str = DEFAULT_MASTER_ADDR
    master_port: int | None = None
    clean_stray_env: bool = True

    def __post_init__(self) -> None:
        for name, minimum in (("num_nodes", 1), ("devices", 1), ("node_rank", 0)):
            value = getattr(self, name)
            if name == "devices" and value is None:
                if self.num_nodes != 1:
                    raise ClusterConfigError(
                        f"devices=None (let Lightning decide) needs num_nodes=1, got num_nodes={self.num_nodes}; "
                        f"state the device count per node."
                    )
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ClusterConfigError(
                    f"{name}={value!r} must be an int; use ClusterSpec.from_env/from_config to parse text."
                )
            _parse_int(name, value, minimum=minimum)
        if not self.node_rank < self.num_nodes:
            raise ClusterConfigError(
                f"node_rank={self.node_rank} is outside 0..{self.num_nodes - 1} for num_nodes={self.num_nodes}. "
                f"Either this node is one too many (lower the replica count, or raise num_nodes on every node "
                f"to at least {self.node_rank + 1}), or its NODE_RANK / JOB_COMPLETION_INDEX / hostname suffix is wrong."
            )
        if not isinstance(self.master_addr, str) or not self.master_addr.strip():
            raise ClusterConfigError(
                f"master_addr={self.master_addr!r} is empty. Set MASTER_ADDR to the host of node 0 "
                f"(on Kubernetes: <job>-0.<headless-service>)."
            )
        if self.master_port is None:
            if self.num_nodes > 1:
                raise ClusterConfigError(
                    f"master_port is unset but num_nodes={self.num_nodes}: every node must agree on one port. "
                    f"Set MASTER_PORT (or cluster.master_port), e.g. 29500, to the same value on all nodes."
                )
        elif isinstance(self.master_port, bool) or not isinstance(self.master_port, int):
            raise ClusterConfigError(f"master_port={self.master_port!r} must be an int or None.")
        else:
            _parse_port("master_port", self.master_port)
        if not isinstance(self.clean_stray_env, bool):
            raise ClusterConfigError(f"clean_stray_env={self.clean_stray_env!r} must be true or false.")

    @property
    def world_size(self) -> int | None:
        """Number of training processes in the whole run (None when Lightning picks the devices)."""
        return None if self.devices is None else self.num_nodes * self.devices

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        hostname: str,
        num_nodes: int | None = None,
        devices: int | None = None,
    ) -> ClusterSpec:
        """Build from NUM_NODES, DEVICES, MASTER_ADDR, MASTER_PORT and the node-rank rules.

        Explicit ``num_nodes``/``devices`` arguments win over the environment; both default to 1.
        """
        nodes = num_nodes if num_nodes is not None else _env_int(env, "NUM_NODES", default=1)
        nodes = _parse_int("num_nodes", nodes, minimum=1)
        raw_devices = env.get("DEVICES", "").strip() or 1
        devs = (
            _device_count("DEVICES", raw_devices, nodes)
            if devices is None
            else _parse_int("devices", devices, minimum=1)
        )
        raw_port = env.get("MASTER_PORT", "").strip()
        return cls(
            num_nodes=nodes,
            devices=devs,
            node_rank=resolve_node_rank(env, hostname, nodes),
            master_addr=env.get("MASTER_ADDR", "").strip() or DEFAULT_MASTER_ADDR,
            master_port=_parse_port("MASTER_PORT", raw_port) if raw_port else None,
        )

    @classmethod
    def from_config(
        cls, cluster_cfg: Mapping[str, Any], env: Mapping[str, str], hostname: str
    ) -> ClusterSpec:
        """Build from the Hydra ``cluster`` group (``conf/cluster/*.yaml``).

        Values may be strings (``${oc.env:...}`` yields strings). ``node_rank: null`` means
        "resolve it" with :func:`resolve_node_rank`.
        """
        unknown = sorted(set(cluster_cfg) - set(_CONFIG_KEYS))
        if unknown:
            raise ClusterConfigError(
                f"unknown cluster config key(s) {unknown}; the allowed keys are {list(_CONFIG_KEYS)}."
            )
        nodes = _parse_int("cluster.num_nodes", cluster_cfg.get("num_nodes", 1), minimum=1)
        devs = _device_count("cluster.devices", cluster_cfg.get("devices", 1), nodes)
        raw_rank = cluster_cfg.get("node_rank")
        if raw_rank is None or (isinstance(raw_rank, str) and not raw_rank.strip()):
            rank = resolve_node_rank(env, hostname, nodes)
        else:
            rank = _parse_int("cluster.node_rank", raw_rank, minimum=0)
        raw_port = cluster_cfg.get("master_port")
        if isinstance(raw_port, str) and not raw_port.strip():
            raw_port = None
        clean = cluster_cfg.get("clean_stray_env", True)
        if isinstance(clean, str) and clean.strip().lower() in ("true", "false"):
            clean = clean.strip().lower() == "true"
        addr = cluster_cfg.get("master_addr")
        return cls(
            num_nodes=nodes,
            devices=devs,
            node_rank=rank,
            master_addr=DEFAULT_MASTER_ADDR if addr is None else str(addr).strip(),
            master_port=None if raw_port is None else _parse_port("cluster.master_port", raw_port),
            clean_stray_env=clean,
        )


def _env_int(env: Mapping[str, str], name: str, *, default: int) -> int:
    raw = env.get(name, "").strip()
    return _parse_int(name, raw, minimum=1) if raw else default


def apply_to_environ(spec: ClusterSpec, environ: MutableMapping[str, str] | None = None) -> None:
    """Write MASTER_ADDR, MASTER_PORT and NODE_RANK for Lightning's LightningEnvironment.

    Clears :data:`STRAY_RANK_VARS` first (when ``spec.clean_stray_env``). In a child process that
    Lightning started for another device (it inherits :data:`APPLIED_MARKER`) nothing is changed:
    there LOCAL_RANK, WORLD_SIZE and MASTER_PORT were set by Lightning and must stay.
    """
    environ = os.environ if environ is None else environ
    if environ.get(APPLIED_MARKER) == "1":
        return
    if spec.clean_stray_env:
        for name in STRAY_RANK_VARS:
            environ.pop(name, None)
    environ["MASTER_ADDR"] = spec.master_addr
    if spec.master_port is None:
        environ.pop("MASTER_PORT", None)  # Lightning picks a free port on a single node
    else:
        environ["MASTER_PORT"] = str(spec.master_port)
    environ["NODE_RANK"] = str(spec.node_rank)
    environ[APPLIED_MARKER] = "1"


def check_world_size(expected: int, actual: int) -> None:
    """Fail fast when the initialised process group is not the size this node was told to expect."""
    if expected != actual:
        raise ClusterConfigError(
            f"world size mismatch: this node expects {expected} processes (num_nodes x devices) but the "
            f"process group has {actual}. Every node must run with the same num_nodes and devices; "
            f"check NUM_NODES/DEVICES and trainer.num_nodes/trainer.devices on all pods."
        )


def check_matches_trainer(spec: ClusterSpec, trainer_num_nodes: Any, trainer_devices: Any) -> None:
    """Fail when ``cluster.*`` and ``trainer.*`` disagree on nodes or devices per node."""
    problems = []
    if str(trainer_num_nodes).strip() != str(spec.num_nodes):
        problems.append(f"cluster.num_nodes={spec.num_nodes} but trainer.num_nodes={trainer_num_nodes}")
    if spec.devices is None:
        devices_agree = _is_lightning_auto(trainer_devices)
    else:
        try:
            devices_agree = _device_count("trainer.devices", trainer_devices, spec.num_nodes) == spec.devices
        except ClusterConfigError:
            devices_agree = False
    if not devices_agree:
        shown = "auto" if spec.devices is None else spec.devices
        problems.append(f"cluster.devices={shown} but trainer.devices={trainer_devices}")
    if problems:
        raise ClusterConfigError(
            "; ".join(problems)
            + ". Set both from one number (moe-swarm-launch does), e.g. trainer.num_nodes=2 NUM_NODES=2."
        )


# Node start-up check timeout when the trainer config sets no DDP timeout (trainer.strategy.timeout).
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0


def setup_cluster(cluster_cfg: Mapping[str, Any], trainer_cfg: Mapping[str, Any]) -> ClusterSpec:
    """Read the cluster config group, check it against the trainer's node/device counts, and export
    the rendezvous variables Lightning reads. Raises :class:`ClusterConfigError` on a mismatch."""
    import socket

    spec = ClusterSpec.from_config(cluster_cfg, os.environ, socket.gethostname())
    check_matches_trainer(spec, trainer_cfg.get("num_nodes", 1), trainer_cfg.get("devices", 1))
    apply_to_environ(spec)
    return spec


def rendezvous_timeout_s(trainer_cfg: Mapping[str, Any]) -> float:
    """The DDP timeout of the trainer config (``strategy.timeout.seconds``), else the default."""
    strategy = trainer_cfg.get("strategy")
    timeout = strategy.get("timeout") if isinstance(strategy, Mapping) else None
    seconds = timeout.get("seconds") if isinstance(timeout, Mapping) else None
    return float(seconds) if seconds is not None else DEFAULT_RENDEZVOUS_TIMEOUT_S
