"""docker/: the Dockerfile passes hadolint, and the entrypoint maps ranks and dispatches commands.

The entrypoint runs for real under bash, with stand-ins for moe-swarm-train/serve on PATH that
record their arguments, uid and environment. No Docker engine is needed (nothing is built here).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from moe_swarm.scale.cluster import STRAY_RANK_VARS, ClusterConfigError, resolve_node_rank

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
VENV_BIN = Path(sys.executable).parent
FAKE_COMMANDS = ("moe-swarm-train", "moe-swarm-serve", "moe-swarm-launch", "probe")


def _tool(name: str) -> Path:
    """A linter from the dev extra, installed next to the interpreter; missing means a broken install."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the dev extra (pip install -e '.[dev]').")
    return path


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [str(_tool("hadolint")), "--no-color", "-t", "warning", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_passes_shellcheck():
    result = subprocess.run(
        [str(_tool("shellcheck")), "--shell=bash", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _final_stage(text: str) -> str:
    return re.split(r"(?m)^FROM ", text)[-1]


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"(?m)^FROM (\S+)(?: AS (\S+))?", text)
    assert len(stages) >= 2, "multi-stage: build the wheel in one stage, run from another"
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)$", text).group(1)
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), (
        f"base image {base} is not pinned to a patch release"
    )
    final = _final_stage(text)
    assert re.search(r"(?m)^COPY docker/entrypoint\.sh /usr/local/bin/moe-swarm-entrypoint$", final)
    entrypoint = re.search(r"(?m)^ENTRYPOINT (\[.*\])$", final).group(1)
    assert entrypoint.endswith('"/usr/local/bin/moe-swarm-entrypoint"]')
    assert re.search(r"chown moe:moe /data", final), "/data must belong to the app user"
    assert "pip install -e" not in text and "--editable" not in text


# --- .dockerignore ---------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """Parse .dockerignore the way Docker does: later patterns win, '!' re-includes."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line[1:] if negate else line
        glob = glob.strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif glob.startswith("**", i):
                regex += ".*"
                i += 2
            elif glob[i] == "*":
                regex += "[^/]*"
                i += 1
            elif glob[i] == "?":
                regex += "[^/]"
                i += 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex += glob[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(glob[i])
                i += 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def _sent_to_docker(relpath: str) -> bool:
    parts = relpath.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, pattern in _dockerignore_patterns():
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not negate
    return not excluded


def test_dockerignore_sends_every_copy_source():
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            sources += line.split()[1:-1]
    assert sources, "no COPY lines found"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY source {source} does not exist"
        assert _sent_to_docker(source), f"COPY source {source} is excluded by .dockerignore"
    for path in ("src/moe_swarm/scale/cluster.py", "conf/cluster/env.yaml", "docker/Dockerfile"):
        assert _sent_to_docker(path), path


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "outputs/2026-11-27/run/.hydra/config.yaml",
        "multirun/0/x",
        "runs/default/checkpoints/last.ckpt",
        "lightning_logs/version_0/metrics.csv",
        "bench-results/moe.json",
        "checkpoints/last.ckpt",
        "src/moe_swarm/__pycache__/cluster.cpython-311.pyc",
        "src/moe_swarm.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        ".env",
        "tests/test_cluster.py",
    ],
)
def test_dockerignore_keeps_junk_out(path):
    assert not _sent_to_docker(path)


# --- entrypoint ---------------------------------------------------------------------------------------


@pytest.fixture
def fakes():
    """A PATH folder with stand-ins that write what they were started with into ``out/``.

    Made under /tmp with open permissions so the stand-ins also run after a drop to `nobody`.
    """
    folder = Path(tempfile.mkdtemp(prefix="moe-entrypoint-", dir="/tmp"))
    out = folder / "out"
    out.mkdir()
    for name in FAKE_COMMANDS:
        script = folder / name
        script.write_text(
            "#!/bin/sh\n"
            f"printf '%s' '{name}' > '{out}/command'\n"
            f"id -u > '{out}/uid'\n"
            f"for a in \"$@\"; do printf '%s\\0' \"$a\"; done > '{out}/args'\n"
            f"env -0 > '{out}/env'\n"
        )
        script.chmod(0o755)
    folder.chmod(0o755)
    out.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


def _run_entrypoint(fakes: Path, args: list[str], env: dict[str, str]):
    full_env = {"PATH": f"{fakes}:/usr/bin:/bin", "HOSTNAME": "laptop"} | env
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env=full_env, capture_output=True, text=True, timeout=30
    )
    out = fakes / "out"
    if result.returncode != 0 or not (out / "command").exists():
        return result, None
    record = {
        "command": (out / "command").read_text(),
        "uid": int((out / "uid").read_text()),
        "args": [a for a in (out / "args").read_text().split("\0") if a]
        if (out / "args").stat().st_size
        else [],
        "env": dict(item.split("=", 1) for item in (out / "env").read_text().split("\0") if "=" in item),
    }
    return result, record


RANK_CASES = [
    # (environment, hostname) -> same answer from bash and from moe_swarm.scale.cluster
    ({"NUM_NODES": "4", "NODE_RANK": "1", "JOB_COMPLETION_INDEX": "2"}, "trainer-3"),
    ({"NUM_NODES": "4", "JOB_COMPLETION_INDEX": "2"}, "trainer-3"),
    ({"NUM_NODES": "4"}, "trainer-3"),
    ({"NUM_NODES": "16"}, "moe-swarm-train-12.moe-swarm-train.default.svc"),
    ({"NUM_NODES": "1"}, "ws-3"),
    ({}, "mypod-abc"),
    ({"NUM_NODES": "2"}, "mypod-abc"),
    ({"NUM_NODES": "2", "NODE_RANK": "x"}, "trainer-0"),
    ({"NUM_NODES": "2"}, "trainer-2"),
]


@pytest.mark.parametrize(("env", "hostname"), RANK_CASES)
def test_entrypoint_rank_matches_python_rules(fakes, env, hostname):
    result, record = _run_entrypoint(fakes, ["train"], env | {"HOSTNAME": hostname})
    num_nodes = int(env.get("NUM_NODES", "1"))
    try:
        expected = resolve_node_rank(env, hostname, num_nodes)
        if expected >= num_nodes:
            raise ClusterConfigError("out of range")
    except ClusterConfigError:
        expected = None
    if expected is None:
        assert result.returncode == 64, result.stderr
        assert "moe-swarm-entrypoint:" in result.stderr
        assert record is None, "the trainer must not start"
    else:
        assert result.returncode == 0, result.stderr
        assert record["command"] == "moe-swarm-train"
        assert record["env"]["NODE_RANK"] == str(expected)


def test_entrypoint_error_messages_say_what_to_do(fakes):
    result, _ = _run_entrypoint(fakes, ["train"], {"NUM_NODES": "2", "HOSTNAME": "mypod-abc"})
    assert "hostname 'mypod-abc'" in result.stderr and "NODE_RANK=0..1" in result.stderr
    result, _ = _run_entrypoint(fakes, ["train"], {"NUM_NODES": "2", "HOSTNAME": "trainer-2"})
    assert "node rank 2 is outside 0..1" in result.stderr
    result, _ = _run_entrypoint(fakes, ["train"], {"NUM_NODES": "zero"})
    assert "NUM_NODES='zero' must be a positive integer" in result.stderr


def test_entrypoint_clears_the_same_stray_variables_as_python(fakes):
    strays = dict.fromkeys(STRAY_RANK_VARS, "5")
    _, record = _run_entrypoint(fakes, ["train"], strays | {"NUM_NODES": "2", "JOB_COMPLETION_INDEX": "1"})
    assert not set(STRAY_RANK_VARS) & set(record["env"])
    assert record["env"]["NODE_RANK"] == "1"
    # ...and the shell list has nothing Python's lacks.
    shell_list = re.search(r"STRAY_RANK_VARS=\(([^)]*)\)", ENTRYPOINT.read_text()).group(1).split()
    assert tuple(shell_list) == STRAY_RANK_VARS


def test_entrypoint_passes_overrides_from_configmap_then_args(fakes):
    overrides = "experiment=tiny\n\n  # a comment\n  trainer.max_steps=10  \nmodel.name=has space\n"
    _, record = _run_entrypoint(fakes, ["train", "seed=3"], {"MOE_SWARM_OVERRIDES": overrides})
    assert record["args"] == ["experiment=tiny", "trainer.max_steps=10", "model.name=has space", "seed=3"]


@pytest.mark.parametrize(
    ("command", "program"), [("serve", "moe-swarm-serve"), ("launch", "moe-swarm-launch")]
)
def test_entrypoint_serve_and_launch_are_not_ranks(fakes, command, program):
    # A sidecar in a pod without an index must start, and keeps whatever RANK it was given.
    result, record = _run_entrypoint(
        fakes, [command, "--flag"], {"NUM_NODES": "2", "HOSTNAME": "sidecar-abc", "RANK": "0"}
    )
    assert result.returncode == 0, result.stderr
    assert record["command"] == program and record["args"] == ["--flag"]
    assert record["env"]["RANK"] == "0" and "NODE_RANK" not in record["env"]


def test_entrypoint_defaults_to_serve(fakes):
    _, record = _run_entrypoint(fakes, [], {})
    assert record["command"] == "moe-swarm-serve"


def test_entrypoint_runs_any_other_command_with_ranks(fakes):
    _, record = _run_entrypoint(
        fakes, ["probe", "a", "b c"], {"NUM_NODES": "3", "HOSTNAME": "job-2", "LOCAL_RANK": "0"}
    )
    assert record["command"] == "probe" and record["args"] == ["a", "b c"]
    assert record["env"]["NODE_RANK"] == "2" and "LOCAL_RANK" not in record["env"]


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_entrypoint_as_root_hands_data_to_the_user_and_drops_root(fakes):
    data = fakes / "data"
    data.mkdir()
    assert data.stat().st_uid == 0
    _, record = _run_entrypoint(
        fakes, ["train"], {"MOE_SWARM_USER": "nobody", "MOE_SWARM_VOLUME_DIR": str(data)}
    )
    nobody_uid = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
    assert record["uid"] == nobody_uid
    assert data.stat().st_uid == nobody_uid
    assert stat.S_ISDIR(data.stat().st_mode)


def test_entrypoint_without_app_user_keeps_the_current_user(fakes):
    _, record = _run_entrypoint(fakes, ["train"], {})
    assert record["uid"] == os.geteuid()
