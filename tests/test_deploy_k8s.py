"""fly/k8s and moe-swarm-launch: render, validate, and check that sizes agree everywhere.

Rendering uses the real `kubectl kustomize` (offline) and validation the real
`kubernetes-validate --strict` (bundled schemas), both from the dev extra. The launcher's output
must equal the Kustomize tree for the same job, and its override lines must compose with the
repository's Hydra config the way a pod would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from moe_swarm.cli.launch import main
from moe_swarm.scale.cluster import ClusterSpec, check_matches_trainer
from moe_swarm.scale.k8s import LaunchError, compose_counts, expand_sweep, render_job, render_jobs

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "fly" / "k8s"
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ("cpu", "gpu", "fks")
JOB = "moe-swarm-train"
IMAGE = "moe-swarm:0.1.0"
# What each overlay in fly/k8s describes, as launcher arguments.
OVERLAY_JOBS = {
    "cpu": {"num_nodes": 2, "devices": 1, "overrides": ["trainer=cpu"]},
    "gpu": {"num_nodes": 2, "devices": 1, "overrides": ["trainer=gpu"]},
    "fks": {"num_nodes": 1, "devices": 1, "overrides": ["trainer=cpu"]},
}
FKS_UNSUPPORTED = {
    "fieldRef",
    "resourceFieldRef",
    "secretKeyRef",
    "emptyDir",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "securityContext",
    "ports",
    "initContainers",
    "lifecycle",
    "workingDir",
    "imagePullPolicy",
}


def _tool(name: str) -> Path:
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the dev extra (pip install -e '.[dev]').")
    return path


def _kustomize(folder: Path) -> str:
    result = subprocess.run(
        [str(_tool("kubectl")), "kustomize", str(folder)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _validate(manifests: str) -> None:
    result = subprocess.run(
        [str(_tool("kubernetes-validate")), "--strict", "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _docs(manifests: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(manifests) if d}


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {key for value in node.values() for key in _keys(value)}
    if isinstance(node, list):
        return {key for value in node for key in _keys(value)}
    return set()


def _override_lines(config_map: dict) -> list[str]:
    return [line for line in config_map["data"]["MOE_SWARM_OVERRIDES"].splitlines() if line.strip()]


def _override_value(lines: list[str], key: str) -> str:
    values = [line.split("=", 1)[1] for line in lines if line.split("=", 1)[0] == key]
    assert len(values) == 1, f"{key} set {len(values)} times in {lines}"
    return values[0]


def check_job_consistency(docs: dict[tuple[str, str], dict]) -> None:
    """The invariants every rendered training job must hold, whatever its size."""
    jobs = [d for (kind, _), d in docs.items() if kind == "Job"]
    assert jobs, "no Job rendered"
    for job in jobs:
        name = job["metadata"]["name"]
        spec = job["spec"]
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        config = docs[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]
        data = config["data"]
        lines = _override_lines(config)
        nodes, devices = int(data["NUM_NODES"]), int(data["DEVICES"])

        assert spec["completions"] == spec["parallelism"] == nodes
        assert _override_value(lines, "trainer.num_nodes") == str(nodes)
        assert _override_value(lines, "trainer.devices") == str(devices)
        assert _override_value(lines, "cluster") == "env"
        assert _override_value(lines, "run_id")
        gpu_limit = container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if gpu_limit is not None:
            assert int(gpu_limit) == devices, "GPU limit must equal the devices per node"
        assert spec["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
        assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
        assert container["args"] == ["train"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        claim = volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"]
        assert ("PersistentVolumeClaim", claim) in docs

        if spec["completionMode"] == "Indexed":
            service = docs[("Service", pod["subdomain"])]
            assert service["spec"]["clusterIP"] == "None"
            assert service["spec"]["publishNotReadyAddresses"] is True
            labels = spec["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
            assert data["MASTER_ADDR"] == f"{name}-0.{pod['subdomain']}"
            assert int(data["MASTER_PORT"]) == service["spec"]["ports"][0]["port"]
            shm = volumes[mounts["/dev/shm"]]["emptyDir"]
            assert shm["medium"] == "Memory"
        else:
            assert nodes == 1, "only an Indexed Job gives its pods ranks"
            assert data["MASTER_ADDR"] == "127.0.0.1"


# --- the Kustomize tree ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {name: _kustomize(K8S / "overlays" / name) for name in OVERLAYS} | {
        "base": _kustomize(K8S / "base")
    }


@pytest.mark.parametrize("name", [*OVERLAYS, "base"])
def test_kustomize_output_validates_strictly(rendered, name):
    _validate(rendered[name])


@pytest.mark.parametrize("name", [*OVERLAYS, "base"])
def test_kustomize_output_is_consistent(rendered, name):
    check_job_consistency(_docs(rendered[name]))


def test_validator_rejects_a_broken_manifest(rendered):
    # The strict validation above is only worth something if it can fail.
    broken = rendered["cpu"].replace("completions: 2", "completionz: 2")
    result = subprocess.run(
        [str(_tool("kubernetes-validate")), "--strict", "-"], input=broken, capture_output=True, text=True
    )
    assert result.returncode != 0 and "completionz" in result.stdout + result.stderr


def test_gpu_overlay_requests_one_gpu_per_device(rendered):
    docs = _docs(rendered["gpu"])
    container = docs[("Job", JOB)]["spec"]["template"]["spec"]["containers"][0]
    devices = int(docs[("ConfigMap", f"{JOB}-config")]["data"]["DEVICES"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == devices
    assert _override_value(_override_lines(docs[("ConfigMap", f"{JOB}-config")]), "trainer") == "gpu"
    assert docs[("ConfigMap", f"{JOB}-config")]["data"]["NCCL_DEBUG"] == "WARN"


def test_fks_overlay_uses_only_what_fks_supports(rendered):
    docs = _docs(rendered["fks"])
    used = _keys(list(docs.values()))
    assert not used & FKS_UNSUPPORTED, f"FKS does not support {sorted(used & FKS_UNSUPPORTED)}"
    assert not any(kind == "Service" for kind, _ in docs), "one pod needs no rendezvous Service"
    job = docs[("Job", JOB)]
    assert job["spec"]["completionMode"] == "NonIndexed"  # Indexed mode injects a fieldRef env var
    assert len(job["spec"]["template"]["spec"]["containers"]) == 1
    assert not _keys(job) & {"gpu.fly.io/a100-40gb", "nvidia.com/gpu"}
    claim = docs[("PersistentVolumeClaim", "moe-swarm-data")]["spec"]
    assert claim["storageClassName"] == "flyio-volume"
    assert claim["accessModes"] == ["ReadWriteOncePod"]
    region = job["spec"]["template"]["metadata"]["annotations"]["fly.io/region"]
    assert claim["selector"]["matchLabels"]["region"] == region


def test_other_overlays_run_as_the_image_user(rendered):
    for name in ("cpu", "gpu"):
        pod = _docs(rendered[name])[("Job", JOB)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001
        assert pod["enableServiceLinks"] is False


# --- moe-swarm-launch renders the same tree -----------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_launcher_matches_the_kustomize_tree(rendered, overlay):
    job = OVERLAY_JOBS[overlay]
    ours = render_job(JOB, IMAGE, overlay, job["num_nodes"], job["devices"], job["overrides"], JOB)
    assert _docs(ours) == _docs(rendered[overlay])


@pytest.mark.parametrize(("overlay", "nodes", "devices"), [("gpu", 4, 8), ("cpu", 3, 2), ("fks", 1, 4)])
def test_launcher_output_for_other_sizes_is_valid_and_consistent(overlay, nodes, devices):
    manifests = render_job("exp-a", "registry.example/moe:1", overlay, nodes, devices, ["seed=7"], "exp-a-r1")
    _validate(manifests)
    docs = _docs(manifests)
    check_job_consistency(docs)
    lines = _override_lines(docs[("ConfigMap", "exp-a-config")])
    assert lines[0] == "seed=7" and _override_value(lines, "run_id") == "exp-a-r1"


def test_launcher_renders_through_the_tree_it_is_given(tmp_path, monkeypatch):
    """One source of truth: a change to the Kustomize tree shows up in the launcher's output."""
    import shutil

    import moe_swarm.scale.k8s as k8s

    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    job_yaml = tree / "base" / "job.yaml"
    job_yaml.write_text(
        job_yaml.read_text().replace(
            "terminationGracePeriodSeconds: 120", "terminationGracePeriodSeconds: 77"
        )
    )
    monkeypatch.setattr(k8s, "k8s_dir", lambda: tree)
    docs = _docs(render_job("exp-b", "reg.example:5000/moe@sha256:" + "a" * 64, "gpu", 3, 4, [], "r"))
    pod = docs[("Job", "exp-b")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 77
    assert pod["containers"][0]["image"] == "reg.example:5000/moe@sha256:" + "a" * 64
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert docs[("ConfigMap", "exp-b-config")]["metadata"]["labels"]["app.kubernetes.io/instance"] == "exp-b"
    assert docs[("Service", "exp-b")]["spec"]["selector"]["app.kubernetes.io/instance"] == "exp-b"
    check_job_consistency(docs)


def test_launcher_sets_namespace_everywhere():
    docs = _docs(render_job("a", IMAGE, "cpu", 2, 1, [], "a", namespace="ml"))
    assert {d["metadata"]["namespace"] for d in docs.values()} == {"ml"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlay": "fks", "num_nodes": 2}, "the fks overlay runs one pod, but num_nodes=2"),
        ({"overlay": "tpu"}, "unknown overlay 'tpu'"),
        ({"job_name": "Exp_1"}, "job name 'Exp_1' is not usable"),
        ({"job_name": "a" * 62, "num_nodes": 10}, "within 61 characters"),
        ({"devices": 0}, "devices=0 must be a positive integer"),
        ({"image": ""}, "image '' is empty"),
        ({"run_id": "../x"}, "run_id '../x' must be"),
        ({"overrides": ["trainer.num_nodes=4"]}, "contradicts the job being rendered (trainer.num_nodes=2)"),
        ({"overrides": ["cluster=local"]}, "contradicts the job being rendered (cluster=env)"),
        ({"overrides": ["a=1\nb=2"]}, "is not one Hydra override"),
        ({"overrides": ["experiment"]}, "is not one Hydra override"),
        ({"namespace": "Bad NS"}, "namespace 'Bad NS'"),
    ],
)
def test_launcher_refuses_bad_requests(kwargs, message):
    args = {
        "job_name": "exp",
        "image": IMAGE,
        "overlay": "cpu",
        "num_nodes": 2,
        "devices": 1,
        "overrides": [],
        "run_id": "r",
    } | kwargs
    with pytest.raises(LaunchError) as err:
        render_job(**args)
    assert message in str(err.value)


def test_matching_managed_override_is_kept_once():
    docs = _docs(render_job("exp", IMAGE, "cpu", 2, 1, ["trainer.num_nodes=2", "run_id=r"], "r"))
    lines = _override_lines(docs[("ConfigMap", "exp-config")])
    assert lines.count("trainer.num_nodes=2") == 1 and lines.count("run_id=r") == 1


def test_several_jobs_share_one_data_claim():
    trials = [("exp-0", 2, 1, ["seed=1"], "exp-0"), ("exp-1", 2, 1, ["seed=2"], "exp-1")]
    manifests = render_jobs(trials, IMAGE, "cpu")
    _validate(manifests)
    kinds = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(manifests)]
    assert kinds.count(("PersistentVolumeClaim", "moe-swarm-data")) == 1
    assert {name for kind, name in kinds if kind == "Job"} == {"exp-0", "exp-1"}
    check_job_consistency(_docs(manifests))
    with pytest.raises(LaunchError, match="two trials render the same"):
        render_jobs([trials[0], trials[0]], IMAGE, "cpu")


def test_expand_sweep_is_a_cartesian_product():
    trials = expand_sweep(["experiment=quickstart", "seed=1,2", "model.num_experts=4,8"])
    assert trials == [
        ["experiment=quickstart", "seed=1", "model.num_experts=4"],
        ["experiment=quickstart", "seed=1", "model.num_experts=8"],
        ["experiment=quickstart", "seed=2", "model.num_experts=4"],
        ["experiment=quickstart", "seed=2", "model.num_experts=8"],
    ]
    assert expand_sweep(["a=[1,2]"]) == [["a=[1,2]"]]  # a list value is not a sweep


# --- against the repository's Hydra config -------------------------------------------------------


def test_compose_counts_reads_the_trainer():
    assert compose_counts(["experiment=quickstart", "trainer.num_nodes=3"], "cpu") == (3, 1)
    assert compose_counts(["trainer=gpu", "trainer.devices=4"], "gpu") == (1, 4)
    with pytest.raises(LaunchError, match="accelerator='cpu'.*trainer=gpu"):
        compose_counts(["experiment=quickstart"], "gpu")
    with pytest.raises(LaunchError, match=r"trainer.devices=-1 .*trainer.devices=N"):
        compose_counts(["trainer=ddp"], "gpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_pod_of_a_kustomize_job_composes_and_agrees(rendered, restore_environ, overlay):
    """Play every pod: its ConfigMap env + its index, composed with its override lines."""
    from hydra import compose, initialize_config_dir

    from moe_swarm.config import config_dir

    docs = _docs(rendered[overlay])
    job = docs[("Job", JOB)]
    config = docs[("ConfigMap", f"{JOB}-config")]
    nodes = job["spec"]["completions"]
    for index in range(nodes):
        pod_env = {k: v for k, v in config["data"].items() if k != "MOE_SWARM_OVERRIDES"}
        restore_environ.update(pod_env)
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="train", overrides=_override_lines(config))
        hostname = f"{JOB}-{index}" if job["spec"]["completionMode"] == "Indexed" else f"{JOB}-x7k2p"
        index_env = {"JOB_COMPLETION_INDEX": str(index)} if job["spec"]["completionMode"] == "Indexed" else {}
        spec = ClusterSpec.from_config(cfg.cluster, pod_env | index_env, hostname)
        check_matches_trainer(spec, cfg.trainer.num_nodes, cfg.trainer.devices)
        assert spec.node_rank == index and spec.world_size == nodes * int(config["data"]["DEVICES"])
        assert cfg.run_id == JOB
        expected_accelerator = "gpu" if overlay == "gpu" else "cpu"
        assert cfg.trainer.accelerator == expected_accelerator


def test_main_prints_a_job_for_kubectl(capsys):
    assert (
        main(["--overlay", "cpu", "--image", "r/moe:2", "experiment=quickstart", "trainer.num_nodes=2"]) == 0
    )
    manifests = capsys.readouterr().out
    _validate(manifests)
    docs = _docs(manifests)
    check_job_consistency(docs)
    lines = _override_lines(docs[("ConfigMap", f"{JOB}-config")])
    assert lines == [
        "experiment=quickstart",
        "cluster=env",
        "trainer.num_nodes=2",
        "trainer.devices=1",
        f"run_id={JOB}",
    ]
    assert docs[("Job", JOB)]["spec"]["template"]["spec"]["containers"][0]["image"] == "r/moe:2"


def test_main_sweep_renders_one_job_per_trial(capsys):
    argv = [
        "--overlay",
        "cpu",
        "--sweep",
        "--name",
        "lr",
        "--run-id",
        "lr-sweep",
        "seed=1,2",
        "trainer.num_nodes=2",
    ]
    assert main(argv) == 0
    docs = _docs(capsys.readouterr().out)
    check_job_consistency(docs)
    assert {name for kind, name in docs if kind == "Job"} == {"lr-0", "lr-1"}
    assert _override_value(_override_lines(docs[("ConfigMap", "lr-1-config")]), "run_id") == "lr-sweep-1"
    assert _override_value(_override_lines(docs[("ConfigMap", "lr-1-config")]), "seed") == "2"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--overlay", "gpu", "experiment=quickstart"], "accelerator='cpu'"),
        (["--overlay", "fks", "trainer.num_nodes=2"], "the fks overlay runs one pod"),
        (["--overlay", "cpu", "trainer=nope"], "Could not find 'trainer/nope'"),
    ],
)
def test_main_reports_errors_without_a_traceback(capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "Traceback" not in captured.err
