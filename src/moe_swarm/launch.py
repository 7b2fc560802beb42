"""moe-swarm-launch: render the Kubernetes Job for a training run from its Hydra config.

The pod count, the per-pod device count (and GPU limit) and the trainer's ``num_nodes``/``devices``
must agree, or DDP hangs or trains on a subset. Here they are all written from one composed config:

    moe-swarm-launch --overlay gpu --image REGISTRY/moe-swarm:TAG experiment=X trainer.num_nodes=4 \\
        | kubectl apply -f -

The manifests are the ones in fly/k8s (base + overlays); tests/test_deploy_launch.py renders both
and checks that they are identical, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
from typing import Any

import yaml

__all__ = ["LaunchError", "OVERLAYS", "expand_sweep", "main", "render_job", "render_jobs"]

OVERLAYS = ("cpu", "gpu", "fks")
DEFAULT_IMAGE = "moe-swarm:0.1.0"
DEFAULT_JOB_NAME = "moe-swarm-train"
MASTER_PORT = 29500
DATA_CLAIM = "moe-swarm-data"
APP_UID = 10001
FKS_REGION = "ord"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MANAGED_KEYS = ("cluster", "trainer.num_nodes", "trainer.devices", "run_id")


class LaunchError(ValueError):
    """The requested job cannot be rendered; the message says why and what to change."""


def _override_key(override: str) -> str:
    key = override.split("=", 1)[0].strip()
    return key.lstrip("+~")


def _labels(job_name: str, component: bool = True) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "moe-swarm"}
    if component:
        labels["app.kubernetes.io/component"] = "trainer"
    labels["app.kubernetes.io/instance"] = job_name
    return labels


def _check_request(
    job_name: str, image: str, overlay: str, num_nodes: int, devices: int, run_id: str, overrides: list[str]
) -> None:
    if overlay not in OVERLAYS:
        raise LaunchError(f"unknown overlay {overlay!r}; choose one of {list(OVERLAYS)}.")
    for name, value in (("num_nodes", num_nodes), ("devices", devices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LaunchError(f"{name}={value!r} must be a positive integer (trainer.{name} in the config).")
    longest_suffix = len(f"-{num_nodes - 1}")
    if not _DNS_LABEL.fullmatch(job_name) or len(job_name) + longest_suffix > 63:
        raise LaunchError(
            f"job name {job_name!r} is not usable: it must be lowercase letters, digits and '-', start with a "
            f"letter, and stay within {63 - longest_suffix} characters so pod hostnames <job>-<index> are valid."
        )
    if not image or any(ch.isspace() for ch in image):
        raise LaunchError(f"image {image!r} is empty or contains whitespace; give REGISTRY/moe-swarm:TAG.")
    if not _RUN_ID.fullmatch(run_id):
        raise LaunchError(f"run_id {run_id!r} must be letters, digits, '.', '_' or '-' (it names a folder).")
    if overlay == "fks" and num_nodes != 1:
        raise LaunchError(
            f"the fks overlay runs one pod, but num_nodes={num_nodes}. FKS volumes are ReadWriteOncePod (one pod "
            "per volume), so several pods cannot share the checkpoints they resume from, and FKS cannot pass "
            "JOB_COMPLETION_INDEX. Use trainer.num_nodes=1 on FKS, or the cpu/gpu overlay on a cluster with "
            "ReadWriteMany storage."
        )
    for override in overrides:
        if "\n" in override or "=" not in override:
            raise LaunchError(f"override {override!r} is not one Hydra override of the form key=value.")


def _trainer_overrides(overrides: list[str], num_nodes: int, devices: int, run_id: str) -> list[str]:
    """User overrides, then the ones this launcher owns; a contradicting user value is an error."""
    managed = {
        "cluster": "cluster=env",
        "trainer.num_nodes": f"trainer.num_nodes={num_nodes}",
        "trainer.devices": f"trainer.devices={devices}",
        "run_id": f"run_id={run_id}",
    }
    kept = []
    for override in overrides:
        key = _override_key(override)
        if key in managed:
            given = override.split("=", 1)[1].strip()
            wanted = managed[key].split("=", 1)[1]
            if given != wanted:
                raise LaunchError(
                    f"override {override!r} contradicts the job being rendered ({managed[key]}); the launcher "
                    f"sets {', '.join(_MANAGED_KEYS)} itself, so drop it or change the matching option."
                )
            continue
        kept.append(override)
    return kept + list(managed.values())


def _documents(
    job_name: str,
    image: str,
    overlay: str,
    num_nodes: int,
    devices: int,
    overrides: list[str],
    run_id: str,
) -> list[dict[str, Any]]:
    fks = overlay == "fks"
    config_name = f"{job_name}-config"
    lines = _trainer_overrides(overrides, num_nodes, devices, run_id)
    data = {
        "NUM_NODES": str(num_nodes),
        "DEVICES": str(devices),
        "MASTER_ADDR": "127.0.0.1" if fks else f"{job_name}-0.{job_name}",
        "MASTER_PORT": str(MASTER_PORT),
        "MOE_SWARM_OVERRIDES": "".join(f"{line}\n" for line in lines),
    }
    if overlay == "gpu":
        data["NCCL_DEBUG"] = "WARN"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_name, "labels": _labels(job_name, component=False)},
        "data": data,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": job_name, "labels": _labels(job_name, component=False)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {"app.kubernetes.io/instance": job_name},
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOncePod" if fks else "ReadWriteMany"],
        "resources": {"requests": {"storage": "50Gi"}},
    }
    if fks:
        claim_spec["storageClassName"] = "flyio-volume"
        claim_spec["selector"] = {"matchLabels": {"region": FKS_REGION}}
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": DATA_CLAIM, "labels": {"app.kubernetes.io/name": "moe-swarm"}},
        "spec": claim_spec,
    }

    container: dict[str, Any] = {
        "name": "trainer",
        "image": image,
        "args": ["train"],
        "envFrom": [{"configMapRef": {"name": config_name}}],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 120,
        "containers": [container],
    }
    data_volume = {"name": "data", "persistentVolumeClaim": {"claimName": DATA_CLAIM}}
    if fks:
        container["resources"] = {"limits": {"cpu": "8", "memory": "16Gi"}}
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
        pod_spec["volumes"] = [data_volume]
    else:
        container["ports"] = [{"name": "rendezvous", "containerPort": MASTER_PORT}]
        container["volumeMounts"] = [
            {"name": "data", "mountPath": "/data"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ]
        container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        pod_spec["subdomain"] = job_name
        pod_spec["securityContext"] = {
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "runAsNonRoot": True,
            "fsGroup": APP_UID,
        }
        pod_spec["volumes"] = [
            data_volume,
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
        ]
    if overlay == "cpu":
        container["resources"] = {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    if overlay == "gpu":
        container["resources"] = {
            "requests": {"cpu": "8", "memory": "32Gi"},
            "limits": {"memory": "32Gi", "nvidia.com/gpu": devices},
        }
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

    template_metadata: dict[str, Any] = {"labels": _labels(job_name)}
    if fks:
        template_metadata["annotations"] = {"fly.io/region": FKS_REGION}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "labels": _labels(job_name)},
        "spec": {
            "completionMode": "NonIndexed" if fks else "Indexed",
            "completions": num_nodes,
            "parallelism": num_nodes,
            "backoffLimit": 0,
            "activeDeadlineSeconds": 172800,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": template_metadata, "spec": pod_spec},
        },
    }
    return [config_map, claim, job] if fks else [config_map, service, claim, job]


class _ManifestDumper(yaml.SafeDumper):
    """Writes multi-line strings (the override list) as literal blocks, as in fly/k8s."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def _dump(documents: list[dict[str, Any]], namespace: str | None) -> str:
    if namespace is not None:
        if not _DNS_LABEL.fullmatch(namespace):
            raise LaunchError(f"namespace {namespace!r} is not a valid Kubernetes namespace name.")
        for document in documents:
            document["metadata"]["namespace"] = namespace
    return yaml.dump_all(documents, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False)


def render_job(
    job_name: str,
    image: str,
    overlay: str,
    num_nodes: int,
    devices: int,
    overrides: list[str],
    run_id: str,
    namespace: str | None = None,
) -> str:
    """YAML (ConfigMap, headless Service, PVC, Job) for ``kubectl apply -f -``.

    ``overrides`` are the Hydra overrides the pods pass to moe-swarm-train; ``cluster``,
    ``trainer.num_nodes``, ``trainer.devices`` and ``run_id`` are set here from the arguments
    (an override that contradicts them is an error).
    """
    return render_jobs([(job_name, num_nodes, devices, list(overrides), run_id)], image, overlay, namespace)


def render_jobs(
    trials: list[tuple[str, int, int, list[str], str]],
    image: str,
    overlay: str,
    namespace: str | None = None,
) -> str:
    """Several jobs (``(job_name, num_nodes, devices, overrides, run_id)`` each) sharing one data PVC."""
    seen: set[tuple[str, str]] = set()
    documents: list[dict[str, Any]] = []
    for job_name, num_nodes, devices, overrides, run_id in trials:
        _check_request(job_name, image, overlay, num_nodes, devices, run_id, list(overrides))
        for document in _documents(job_name, image, overlay, num_nodes, devices, list(overrides), run_id):
            key = (document["kind"], document["metadata"]["name"])
            if key in seen:
                if document["kind"] == "PersistentVolumeClaim":
                    continue
                raise LaunchError(
                    f"two trials render the same {key[0]} {key[1]!r}; give them different names."
                )
            seen.add(key)
            documents.append(document)
    return _dump(documents, namespace)


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra's basic sweep syntax: ``a=1,2 b=x,y`` gives four override lists (cartesian product)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(trial) for trial in itertools.product(*choices)]


_ACCELERATORS = {"gpu": ("gpu", "cuda", "auto"), "cpu": ("cpu", "auto"), "fks": ("cpu", "auto")}


def compose_counts(overrides: list[str], overlay: str) -> tuple[int, int]:
    """Compose conf/train.yaml with ``overrides``; return (trainer.num_nodes, trainer.devices).

    Also checks that the trainer's accelerator fits the overlay (a CPU trainer in GPU pods would
    hold the GPUs idle; a GPU trainer in CPU pods fails at start).
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from moe_swarm.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    counts = []
    for key in ("num_nodes", "devices"):
        value = OmegaConf.select(cfg, f"trainer.{key}", default=None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LaunchError(
                f"trainer.{key}={value!r} in the composed config; a Kubernetes job needs a positive integer. "
                f"Add trainer.{key}=N to the overrides."
            )
        counts.append(value)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator not in _ACCELERATORS[overlay]:
        fix = (
            "choose a GPU trainer (trainer=gpu or a GPU experiment)"
            if overlay == "gpu"
            else "use --overlay gpu"
        )
        raise LaunchError(
            f"the composed trainer runs on accelerator={accelerator!r}, which the {overlay} overlay does not "
            f"provide; {fix}."
        )
    return counts[0], counts[1]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="moe-swarm-launch",
        description="Print the Kubernetes Job for a moe-swarm training run (pipe it to `kubectl apply -f -`).",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for moe-swarm-train")
    parser.add_argument(
        "--overlay", choices=OVERLAYS, required=True, help="target: cpu, gpu or fks (Fly Kubernetes)"
    )
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"container image (default: {DEFAULT_IMAGE})")
    parser.add_argument("--name", default=DEFAULT_JOB_NAME, help=f"job name (default: {DEFAULT_JOB_NAME})")
    parser.add_argument("--namespace", default=None, help="Kubernetes namespace for every object")
    parser.add_argument(
        "--run-id", default=None, help="run id (default: the job name): a re-applied job resumes"
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="expand Hydra sweep syntax (a=1,2 b=x,y) into one job per trial, named <name>-<i>",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    args = _parse_args(argv)
    try:
        trial_overrides = expand_sweep(args.overrides) if args.sweep else [list(args.overrides)]
        trials = []
        for index, overrides in enumerate(trial_overrides):
            name = f"{args.name}-{index}" if args.sweep else args.name
            given = [o.split("=", 1)[1].strip() for o in overrides if _override_key(o) == "run_id"]
            if args.run_id:
                run_id = f"{args.run_id}-{index}" if args.sweep else args.run_id
            else:
                run_id = given[-1] if given else name
            overrides = [o for o in overrides if _override_key(o) != "run_id"]
            num_nodes, devices = compose_counts(overrides, args.overlay)
            trials.append((name, num_nodes, devices, overrides, run_id))
        sys.stdout.write(render_jobs(trials, args.image, args.overlay, args.namespace))
    except (LaunchError, HydraException) as error:
        print(f"moe-swarm-launch: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
