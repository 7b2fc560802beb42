"""The Makefile says what it does: every target in `make help`, `clean` removes what it names,
`test-fast` runs fewer tests than `test`."""

import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

MAKEFILE = (REPO_ROOT / "Makefile").read_text()
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _make(*args: str) -> str:
    out = subprocess.run(["make", "-s", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_lists_every_documented_target_without_unexpanded_variables():
    documented = re.findall(r"^([A-Za-z0-9_-]+):.*?## ", MAKEFILE, re.M)
    shown = [line.split()[0] for line in _make("help").splitlines() if line.strip()]
    assert shown == documented
    assert {"k8s-render", "k8s-apply"} <= set(shown)
    assert "$(" not in _make("help")


def test_clean_removes_exactly_what_its_help_names(tmp_path):
    help_line = next(line for line in _make("help").splitlines() if line.split()[0] == "clean")
    commands = _make("-n", "clean")
    removed = re.search(r"rm -rf (.*)", commands).group(1).split()
    for path in removed:
        if not path.startswith("."):  # caches are covered by the word "caches"
            assert path in help_line, f"clean removes {path} but its help does not say so"
    for kept in ("runs", "serve-state", ".venv"):
        assert kept not in removed and "keeps .venv, runs/ and serve-state/" in help_line


def test_test_fast_deselects_the_slow_tests():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:xdist",
            "-m",
            "not slow",
            "tests/test_ddp.py",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # one collection gives both counts: "4/8 tests collected (4 deselected)"
    selected, total = map(int, re.search(r"(\d+)/(\d+) tests? collected", out.stdout).groups())
    assert 0 < selected < total, out.stdout[-500:]
    assert '-m "not slow"' in MAKEFILE.split("test-fast:", 1)[1].splitlines()[1]
