"""Where a task family is chosen: built-in names and ``package.module:Class`` plug-ins, one loader.

Every place that picks a task (base-model training ``data.task``, checker training and the swarm
evaluation ``task=``, ``make swarm SWARM_TASK=...``, the sidecar reading a checkpoint's task) calls
``get_task(name, **kwargs)`` or ``task_from_spec(spec)``. ``name`` is a built-in family (``TASKS``:
``mul``, ``arith``, ``reach``, ``chase``) or ``"package.module:Class"``: the module is imported and
``Class`` (a ``Task`` subclass, see ``moe_swarm.data.task_base``) is built with ``kwargs``, so a user's
family needs no change to the project. A checkpoint records the name as given, so evaluation and
serving load the same class again (its module must be importable there: installed or on PYTHONPATH).

The interface and the built-in families are re-exported here, so ``moe_swarm.data.tasks`` stays the
one import for task code.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from moe_swarm.data.task_base import (
    ANSWER_MARK,
    IGNORE_INDEX,
    SPLITS,
    STEP_SEPARATOR,
    Problem,
    Task,
    check_bool,
    check_positive_int,
    decode_answer,
    encode_problem,
    encode_prompt,
    greedy_exact_match,
)
from moe_swarm.data.task_families import (
    ArithmeticTask,
    MultiplicationTask,
    PointerChaseTask,
    ReachabilityTask,
)

__all__ = [
    "ANSWER_MARK",
    "IGNORE_INDEX",
    "SPLITS",
    "STEP_SEPARATOR",
    "TASKS",
    "ArithmeticTask",
    "MultiplicationTask",
    "PointerChaseTask",
    "Problem",
    "ReachabilityTask",
    "Task",
    "check_bool",
    "check_positive_int",
    "decode_answer",
    "encode_problem",
    "encode_prompt",
    "get_task",
    "greedy_exact_match",
    "load_task_class",
    "task_from_spec",
    "task_spec",
]

TASKS: dict[str, type[Task]] = {
    MultiplicationTask.name: MultiplicationTask,
    ReachabilityTask.name: ReachabilityTask,
    ArithmeticTask.name: ArithmeticTask,
    PointerChaseTask.name: PointerChaseTask,
}


def is_plugin(name: str) -> bool:
    """Whether ``name`` is a ``package.module:Class`` path rather than a built-in family name."""
    return ":" in name


def load_task_class(name: str) -> type[Task]:
    """The ``Task`` subclass that ``name`` names: a built-in family or ``"package.module:Class"``.

    Raises ValueError (what config validation reports) for an unknown name, a module that does not
    import, a missing attribute, or a class that is not a ``Task`` with a ``name``."""
    if not is_plugin(name):
        if name not in TASKS:
            raise ValueError(
                f"unknown task {name!r}; valid names: {', '.join(TASKS)}, or 'package.module:Class' "
                "for a Task subclass of your own"
            )
        return TASKS[name]
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"task {name!r} must be 'package.module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"task {name!r}: cannot import module {module_name!r} ({exc}); install it or put its folder "
            "on PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"task {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, Task)):
        raise ValueError(f"task {name!r} is {obj!r}, not a subclass of moe_swarm.data.tasks.Task")
    if inspect.isabstract(obj):
        missing = sorted(obj.__abstractmethods__)
        raise ValueError(f"task {name!r} does not implement {missing} of the Task interface")
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        raise ValueError(f"task {name!r} must set a class attribute `name` (it seeds the splits)")
    return obj


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a task by name (``mul``, ``reach``, ``arith``, ``chase`` or ``package.module:Class``) with
    its constructor arguments; an argument the constructor does not take is a ValueError naming it."""
    cls = load_task_class(str(name))
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(f"task {name!r} got unknown arguments {unknown}; it accepts {accepted}")
    return cls(**kwargs)


def task_spec(spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` as ``{"name", "kwargs"}``: a bare name (``"mul"``, ``"pkg.mod:Class"``) has no kwargs."""
    if isinstance(spec, str):
        return {"name": spec, "kwargs": {}}
    if isinstance(spec, Mapping) and spec.get("name"):
        return {"name": str(spec["name"]), "kwargs": dict(spec.get("kwargs") or {})}
    raise ValueError(f"a task is a name or {{name: ..., kwargs: {{...}}}}, got {spec!r}")


def task_from_spec(spec: str | Mapping[str, Any]) -> tuple[Task, dict[str, Any]]:
    """The task and its normalised spec (what a checkpoint or report records)."""
    plain = task_spec(spec)
    return get_task(plain["name"], **plain["kwargs"]), plain
