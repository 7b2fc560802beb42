"""The house rules of docs/architecture.md, checked on the source: imports point down the floors of
its table, no cycles, plain-PyTorch wings import no framework, the control core no transport,
console-script modules stay thin.

Every ``import moe_swarm...`` counts, also the deferred ones inside functions: a lazy import is
still an arrow.
"""

from __future__ import annotations

import ast
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "moe_swarm"
MAP = ROOT / "docs" / "architecture.md"


def _floor_table() -> dict[str, int]:
    """The floors table of docs/architecture.md: ``| floor | `wing`, `wing` | ...`` rows."""
    text = MAP.read_text()
    section = text[text.index("## Floors") :]
    section = section[: section.index("\n## ", 1)]
    floors: dict[str, int] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for wing in re.findall(r"`([a-z_]+)`", m.group(2)):
                floors[wing] = int(m.group(1))
    return floors


# Lower number = lower floor. An import may point to a lower floor or stay within its own wing.
LAYERS: dict[str, int] = _floor_table()
# Wings that a user can drop into their own loop: plain PyTorch, no framework.
PLAIN_PYTORCH = ("model", "data", "swarm", "hf")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        if "proto" in path.parts:
            continue  # generated gRPC code
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if not target or target == name or name.startswith(target + "."):
                    continue  # not ours, itself, or its own parent package
                edges[name].add(target)
    return edges


def test_the_map_has_a_floor_table():
    assert LAYERS, f"no floors table found in {MAP}"
    assert {"model", "swarm", "training", "control", "serve", "mcp"} <= set(LAYERS)


def test_the_map_names_only_wings_that_exist():
    units = {_unit(m) for m in _modules()}
    assert set(LAYERS) <= units, (
        f"{MAP.name} names wings that are not in src/moe_swarm: {sorted(set(LAYERS) - units)}"
    )


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules()} - {"moe_swarm"}
    assert units <= set(LAYERS), (
        f"give these a floor in docs/architecture.md (## Floors): {sorted(units - set(LAYERS))}"
    )


def test_imports_point_down_the_layers():
    mods = _modules()
    wrong = []
    for src, targets in _edges(mods).items():
        for dst in targets:
            a, b = _unit(src), _unit(dst)
            if a != b and LAYERS.get(a, 99) <= LAYERS.get(b, 99):
                wrong.append(f"{src} -> {dst}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    mods = _modules()
    edges = _edges(mods)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in mods:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _imports_from(path: Path, roots: tuple[str, ...]) -> list[str]:
    """``path: name`` for every absolute import in ``path`` of a package in ``roots``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in roots]
    return bad


def test_model_and_swarm_import_no_framework():
    frameworks = ("lightning", "hydra", "omegaconf", "grpc", "pytorch_lightning", "mcp")
    bad = []
    for path in [p for wing in PLAIN_PYTORCH for p in (SRC / wing).rglob("*.py")]:
        bad += _imports_from(path, frameworks)
    assert not bad, "framework imports in plain-PyTorch packages:\n" + "\n".join(bad)


def test_control_core_imports_no_transport():
    """control/ is the transport-free core: the gRPC servicer (serve/) and the MCP server translate."""
    bad = [
        b
        for path in (SRC / "control").rglob("*.py")
        for b in _imports_from(path, ("grpc", "grpc_health", "mcp"))
    ]
    assert not bad, "transport imports in the control core:\n" + "\n".join(bad)


def test_console_script_modules_are_thin():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    fat = []
    for name, target in scripts.items():
        module = target.split(":")[0]
        path = SRC.parent / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = SRC.parent / module.replace(".", "/") / "__init__.py"
        lines = len(path.read_text().splitlines())
        if lines > 100:
            fat.append(f"{name} ({path.relative_to(ROOT)}): {lines} lines")
    assert not fat, "entry points should compose, instantiate and run:\n" + "\n".join(fat)
