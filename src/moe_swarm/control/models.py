"""The model repository: checkpoints held in memory for inference, and which one a request without a
model id gets.

A model is named by a loaded model id, a job id or run id of a training job, or a checkpoint path inside
the allowed roots (the training runs folder plus ``serve.inference.checkpoint_roots``). The default model
is explicit and never moves by itself: one pinned with ``make_default``, else ``serve.inference.default_model``,
else the first training job that succeeded (pinned automatically, so a seed-only client can train, then
infer, and a later smoke job never takes over). Every answer by the default says where it comes from.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moe_swarm.control.errors import FailedPrecondition, InvalidArgument, NotFound
from moe_swarm.control.registry import JobRegistry, JobState
from moe_swarm.control.settings import InferenceSettings
from moe_swarm.control.validation import ID_PATTERN, check_id, resolve_checkpoint_path
from moe_swarm.store.layout import RunLayout, is_checkpoint

if TYPE_CHECKING:
    from moe_swarm.data.tasks import Task
    from moe_swarm.data.tokenizer import Tokenizer
    from moe_swarm.model import MoETransformer
    from moe_swarm.swarm import StepChecker, StepSwarmConfig, SwarmConfig, ValueHead

TEXT_PROMPT_FORMAT = "text model: any text; the answer is the swarm's consensus continuation of it"
TEXT_EXAMPLE_PROMPT = "The list type"
MAX_LISTED_CHECKPOINTS = 200
AUTO_DEFAULT_SOURCE = (
    "the first training job that succeeded (pinned automatically; pin another with "
    "LoadModel make_default=true or serve.inference.default_model)"
)


@dataclass(frozen=True)
class ServableCheckpoint:
    """A checkpoint a request may name, read for its metadata only (ListModels.servable)."""

    model_id: str
    checkpoint: Path
    task: str
    prompt_format: str
    example_prompt: str
    global_step: int
    max_seq_len: int


@dataclass
class LoadedModel:
    """A checkpoint in memory with everything the swarm needs to answer with it."""

    model_id: str
    checkpoint: Path
    model: MoETransformer
    hparams: dict
    tokenizer: Tokenizer
    canonical: Callable[[str], str]  # answer normaliser of the model's task
    base_swarm: SwarmConfig
    value_head: ValueHead | None
    device: str
    loaded_unix: float
    task: str = ""  # the reasoning task it was trained on ("mul", ...); "" = a text model
    task_obj: Task | None = None  # when the task is known to this server version
    global_step: int = 0
    file_stamp: tuple[int, int] = (0, 0)
    step_checker: StepChecker | None = None  # from the swarm state, if any
    step_swarm: StepSwarmConfig | None = None  # from the swarm state, if any

    @property
    def prompt_format(self) -> str:
        """What a prompt for this model looks like (ModelInfo.prompt_format, error messages)."""
        return prompt_format_of(self.task, self.task_obj)

    @property
    def example_prompt(self) -> str:
        return example_prompt_of(self.task, self.task_obj)

    def param_counts(self) -> tuple[int, int]:
        pc = self.model.count_parameters()
        return int(pc.total), int(pc.active)


def prompt_format_of(task: str, task_obj: Task | None) -> str:
    if task_obj is not None:
        return f"task {task!r}: {task_obj.prompt_format()}"
    if task:
        return f"task {task!r} (unknown to this server version: prompts are not checked)"
    return TEXT_PROMPT_FORMAT


def example_prompt_of(task: str, task_obj: Task | None) -> str:
    if task_obj is not None:
        import random

        return task_obj.sample(random.Random(0)).prompt
    return TEXT_EXAMPLE_PROMPT if not task else ""


def read_servable(path: Path, model_id: str) -> ServableCheckpoint:
    """Blocking: a checkpoint's task and prompt format from its metadata (tensors memory-mapped, not read)."""
    from moe_swarm.store.checkpoint import model_config_from_hparams, read_checkpoint, task_spec

    ckpt = read_checkpoint(path, mmap=True)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    task, task_obj, _ = _task_of(task_spec(hparams))
    model_cfg = model_config_from_hparams(hparams, path)
    return ServableCheckpoint(
        model_id=model_id,
        checkpoint=path,
        task=task,
        prompt_format=prompt_format_of(task, task_obj),
        example_prompt=example_prompt_of(task, task_obj),
        global_step=int(ckpt.get("global_step") or hparams.get("global_step") or 0),
        max_seq_len=int(model_cfg.max_seq_len),
    )


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _task_of(spec: dict | None) -> tuple[str, Any, Any]:
    """(task name, Task or None, answer normaliser) from a checkpoint's task spec {"name", "kwargs"}."""
    from moe_swarm.swarm import default_canonical

    if not spec or not spec.get("name"):
        return "", None, default_canonical
    name = str(spec["name"])
    from moe_swarm.data.tasks import get_task

    try:
        task = get_task(name, **dict(spec.get("kwargs") or {}))
    except (ValueError, TypeError):
        return name, None, default_canonical
    return name, task, task.canonical


def read_model(path: Path, model_id: str, device: str) -> LoadedModel:
    """Blocking: read a training checkpoint (weights only, never pickle code) and prepare it for the swarm."""
    from moe_swarm.hf.tokenizer_files import checkpoint_tokenizer
    from moe_swarm.store import checkpoint
    from moe_swarm.swarm import SwarmConfig, load_step_checker, load_swarm_state

    stamp = _stamp(path)
    ckpt = checkpoint.load_checkpoint(path, map_location=device)
    head, base = None, SwarmConfig()
    if ckpt.swarm_state is not None:
        try:
            head, base = load_swarm_state(ckpt.swarm_state, map_location=device)
        except (ValueError, KeyError, TypeError):
            head, base = None, SwarmConfig()
    if base.score in ("value", "both") and head is None:
        base = base.replace(score="logprob")
    step_checker, step_swarm = None, None
    if ckpt.swarm_state is not None and "step_swarm" in ckpt.swarm_state:
        step_checker, step_swarm = load_step_checker(ckpt.swarm_state, map_location=device)
    task, task_obj, canonical = _task_of(ckpt.task)
    return LoadedModel(
        model_id=model_id,
        checkpoint=path,
        model=ckpt.model,
        hparams=ckpt.hparams,
        tokenizer=checkpoint_tokenizer(ckpt.hparams),  # an imported model's tokenizer.json, else bytes
        canonical=canonical,
        base_swarm=base,
        value_head=head,
        device=device,
        loaded_unix=time.time(),
        task=task,
        task_obj=task_obj,
        global_step=int(ckpt.global_step or 0),
        file_stamp=stamp,
        step_checker=step_checker,
        step_swarm=step_swarm,
    )


def resolve_checkpoint_reference(
    ref: str, registry: JobRegistry, runs_dir: Path, roots: list[Path], id_for_path: Callable[[Path], str]
) -> tuple[Path, str]:
    """(checkpoint path, suggested id) for a training job id, a run id or a checkpoint path under ``roots``."""
    ref = ref.strip()
    if not ref:
        raise InvalidArgument("checkpoint is empty; pass a job id, run id or checkpoint path")
    if "/" in ref or "\\" in ref or ref.endswith((".ckpt", ".pt")):
        path = resolve_checkpoint_path(ref, roots)
        return path, id_for_path(path)
    check_id(ref, "model/checkpoint id", required=True)
    job = registry.get(ref)
    if job is not None:
        if job.kind != "training":
            raise InvalidArgument(f"job {ref} is a {job.kind} job; name a training job")
        if not job.checkpoint or not is_checkpoint(job.checkpoint):
            last = RunLayout(job.run_dir).existing_last_checkpoint() if job.run_dir else None
            if last is not None:
                return last, ref
            raise FailedPrecondition(
                f"training job {ref} ({job.state.value}) has no checkpoint yet; wait until it has "
                f"saved one (WatchJob) or name another job"
            )
        return Path(job.checkpoint), ref
    last = RunLayout.for_run(runs_dir, ref).existing_last_checkpoint()
    if last is not None:
        return last, ref
    raise NotFound(
        f"no loaded model, training job or run named {ref!r} (runs folder {runs_dir}); see "
        f"ListModels / ListJobs, or pass a checkpoint path under {[str(r) for r in roots]} "
        "(add folders with serve.inference.checkpoint_roots)"
    )


class ModelRepository:
    """Loaded models by id (at most ``max_loaded_models``, least recently used evicted)."""

    def __init__(self, settings: InferenceSettings, registry: JobRegistry, runs_dir: Path) -> None:
        self.settings = settings
        self.registry = registry
        self.runs_dir = Path(runs_dir)
        self.roots = [self.runs_dir, *(Path(r) for r in settings.checkpoint_roots)]
        self.device = self._pick_device(settings.device)
        self._models: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._default_id: str | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._aliases: dict[str, str] = {}  # reference (path, ...) -> the id it was loaded under
        self._last_default: str | None = None  # the default the previous default-using request got
        self._servable: dict[Path, tuple[tuple[int, int], ServableCheckpoint]] = {}

    @staticmethod
    def _pick_device(device: str) -> str:
        import torch

        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"serve.inference.device={device!r} but CUDA is not available here; use 'cpu' or 'auto'"
            )
        return device

    # ------------------------------------------------------------------ resolution
    def resolve_reference(self, ref: str) -> tuple[Path, str]:
        """(checkpoint path, suggested model id) for a job id, run id or checkpoint path."""
        return resolve_checkpoint_reference(ref, self.registry, self.runs_dir, self.roots, self._id_for_path)

    def _id_for_path(self, path: Path) -> str:
        try:
            rel = path.resolve().relative_to(self.runs_dir.resolve())
            base = f"{rel.parts[0]}.{path.stem}" if len(rel.parts) > 1 else path.stem
        except ValueError:
            base = path.stem
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", base).strip("._-") or "model"
        return base[:64] if ID_PATTERN.match(base[:64]) else "model"

    def default_reference(self) -> tuple[str, str] | None:
        """(reference, where it comes from) of the default model, or None when there is none yet."""
        if self._default_id and self._default_id in self._models:
            return self._default_id, "LoadModel(make_default=true)"
        if self.settings.default_model:
            return self.settings.default_model, "serve.inference.default_model"
        done = [
            j
            for j in self.registry.list(states={JobState.SUCCEEDED}, kind="training")
            if j.checkpoint and is_checkpoint(j.checkpoint)
        ]
        if done:
            first = min(done, key=lambda j: (j.finished_unix, j.job_id))
            return first.job_id, AUTO_DEFAULT_SOURCE
        return None

    def default_source(self) -> str:
        ref = self.default_reference()
        return ref[1] if ref else ""

    def note_default_use(self, model_id: str) -> str:
        """Called for each answer by the default model: a notice when the default changed since the
        previous such answer ("" otherwise), so callers are told instead of silently moved."""
        previous, self._last_default = self._last_default, model_id
        if previous is None or previous == model_id:
            return ""
        return (
            f"the default model changed from {previous!r} to {model_id!r} ({self.default_source()}); "
            "name a model to keep using one"
        )

    # ------------------------------------------------------------------ loading
    async def get(self, ref: str) -> LoadedModel:
        """The model for a request: a loaded id, a reference (loaded on first use), or the default."""
        if not ref:
            default = self.default_reference()
            if default is None:
                raise FailedPrecondition(
                    "no model to answer with: no training job has succeeded yet and none is loaded; "
                    "train one (StartTraining, e.g. `moe-swarm-ctl train quickstart`), load a checkpoint "
                    "(LoadModel) or set serve.inference.default_model"
                )
            ref = default[0]
        loaded = self._models.get(self._aliases.get(ref, ref))
        if loaded is not None:
            if self._fresh(loaded):
                self._models.move_to_end(loaded.model_id)
                return loaded
            return await self.load(loaded.checkpoint, loaded.model_id)  # the file changed: reload it
        path, model_id = self.resolve_reference(ref)
        loaded = await self.load(path, model_id)
        if ref != model_id:
            self._aliases[ref] = model_id
        return loaded

    @staticmethod
    def _fresh(loaded: LoadedModel) -> bool:
        try:
            return _stamp(loaded.checkpoint) == loaded.file_stamp
        except OSError:
            return True  # the file went away: keep serving what is in memory

    async def load_reference(self, ref: str, model_id: str = "", make_default: bool = False) -> LoadedModel:
        """Load a job id, run id or checkpoint path under ``model_id`` (default: one made from ``ref``)."""
        path, suggested = self.resolve_reference(ref)
        return await self.load(path, model_id or suggested, make_default=make_default)

    async def load(self, path: Path, model_id: str, make_default: bool = False) -> LoadedModel:
        """Load ``path`` under ``model_id`` (in a worker thread); reuse it if already loaded and unchanged."""
        check_id(model_id, "model_id", required=True)
        lock = self._locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            current = self._models.get(model_id)
            if current is not None and current.checkpoint == path and self._fresh(current):
                loaded = current
            else:
                try:
                    loaded = await asyncio.get_running_loop().run_in_executor(
                        None, read_model, path, model_id, self.device
                    )
                except (ValueError, OSError) as exc:
                    raise FailedPrecondition(f"cannot load checkpoint {str(path)!r}: {exc}") from exc
                self._models[model_id] = loaded
                self._evict()
            self._models.move_to_end(model_id)
            if make_default:
                self._default_id = model_id
            return loaded

    def _evict(self) -> None:
        while len(self._models) > max(1, self.settings.max_loaded_models):
            oldest = next(iter(self._models))
            if oldest == self._default_id and len(self._models) > 1:
                self._models.move_to_end(oldest)
                oldest = next(iter(self._models))
            del self._models[oldest]

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def _default_target(self) -> tuple[str, str]:
        """(model id, checkpoint) a request without model id gets now; ("", "") when there is none."""
        ref = self.default_reference()
        if ref is None:
            return "", ""
        model_id = self._aliases.get(ref[0], ref[0])
        if model_id in self._models:
            return model_id, str(self._models[model_id].checkpoint)
        try:
            path, model_id = self.resolve_reference(ref[0])
        except Exception:  # reported as unknown here; a request gets the precise error
            return ref[0], ""
        return model_id, str(path)

    def servable(self) -> list[ServableCheckpoint]:
        """Blocking: every checkpoint under the runs folder (each run's last.ckpt) and the checkpoint roots,
        with its task and prompt format (read once per file version)."""
        found: dict[Path, str] = {}
        if self.runs_dir.is_dir():
            for run in sorted(self.runs_dir.iterdir()):
                last = RunLayout(run).existing_last_checkpoint()
                if last is not None:
                    found.setdefault(last.resolve(), run.name)
        for root in self.roots[1:]:
            for path in sorted(Path(root).rglob("*")) if Path(root).is_dir() else []:
                if path.suffix in (".ckpt", ".pt") and is_checkpoint(path):
                    found.setdefault(path.resolve(), self._id_for_path(path))
        out = []
        for path, model_id in list(found.items())[:MAX_LISTED_CHECKPOINTS]:
            try:
                stamp = _stamp(path)
                cached = self._servable.get(path)
                if cached is None or cached[0] != stamp:
                    cached = (stamp, read_servable(path, model_id))
                    self._servable[path] = cached
                out.append(cached[1])
            except (ValueError, OSError):  # not a moe-swarm checkpoint, or it went away: not servable
                continue
        return out

    def default_id(self) -> str:
        return self._default_target()[0]

    def default_checkpoint(self) -> str:
        return self._default_target()[1]
