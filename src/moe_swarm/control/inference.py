"""The inference service: answers a prompt with a loaded model and the swarm; no transport.

A request is checked and given its defaults here, its model comes from the model repository, and
requests with the same model and settings share one batched solve (:mod:`moe_swarm.control.batching`).
The unit of the vote is a policy: ``answers`` votes on whole answers (:class:`~moe_swarm.swarm.SwarmSolver`),
``steps`` on each reasoning step (:class:`~moe_swarm.swarm.StepSwarm`); both go through the same path
and give the same :class:`InferenceResult`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

from moe_swarm.control.batching import DynamicBatcher
from moe_swarm.control.errors import InvalidArgument
from moe_swarm.control.models import LoadedModel, ModelRepository
from moe_swarm.control.settings import InferenceSettings
from moe_swarm.control.validation import check_range
from moe_swarm.swarm import StepSwarmConfig, SwarmOutcome, SwarmSolver, mix_seed
from moe_swarm.swarm.policies import StepVote, answer_outcome

MAX_SEED = 2**62


@dataclass(frozen=True)
class InferenceRequest:
    """A prompt and the swarm settings asked for; 0 / None = the server's default."""

    prompt: str
    model_id: str = ""
    max_new_tokens: int = 0
    agents: int = 0
    rounds: int | None = None
    temperature: float | None = None
    seed: int | None = None
    mode: str = ""  # "answers" (or "") | "steps"
    messages: tuple[tuple[str, str], ...] = ()  # (role, content): a chat instead of a prompt


@dataclass(frozen=True)
class InferParams:
    """Swarm settings of one request except its seed; requests with equal params (and model) share a batch."""

    max_new_tokens: int
    agents: int
    rounds: int
    temperature: float
    mode: str = "answers"  # "answers" | "steps" (the step-level swarm)


@dataclass(frozen=True)
class Vote:
    answer: str
    weight: float


@dataclass(frozen=True)
class Step:
    text: str
    vote_share: float


@dataclass(frozen=True)
class InferenceResult:
    """The swarm's answer, its vote and the compute it took (for both units of the vote)."""

    answer: str
    vote_share: float = field(metadata={"doc": "share of the vote the answer got (0..1)"})
    votes: list[Vote] = field(default_factory=list)
    forward_passes: int = 0
    generated_tokens: int = 0
    flops: float = 0.0
    rounds_used: int = 0
    agents: int = 0
    model_id: str = ""
    batch_size: int = 1
    steps: list[Step] = field(
        default_factory=list,
        metadata={"doc": "mode 'steps': the committed reasoning steps with their vote shares"},
    )


class RequestSeededSolver(SwarmSolver):
    """A SwarmSolver whose per-problem seed comes from the request that sent the prompt.

    The base solver derives each problem's seed from ``cfg.seed`` and the prompt's ids; here the request's
    seed takes the place of ``cfg.seed``. Rows decode independently (counter-based sampling noise), so a
    request gets the same answer alone or batched with requests that carry other seeds.
    """

    def __init__(self, *args: Any, seeds: dict[tuple[int, ...], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeds = seeds

    def problem_seed(self, ids: list[int]) -> int:
        return mix_seed(self.seeds[tuple(ids)], zlib.crc32(",".join(map(str, ids)).encode()))


def answer_solver(
    loaded: LoadedModel, params: InferParams, seeds: dict[tuple[int, ...], int] | None = None
) -> RequestSeededSolver:
    """An answer-level solver for these settings (cheap to build: it only counts the model's parameters)."""
    cfg = loaded.base_swarm.replace(num_agents=params.agents, rounds=params.rounds,
                                    temperature=(params.temperature,), max_new_tokens=params.max_new_tokens)  # fmt: skip
    head = loaded.value_head if cfg.score in ("value", "both") else None
    return RequestSeededSolver(loaded.model, cfg, loaded.tokenizer, canonical=loaded.canonical, value_head=head,
                               seeds=seeds or {})  # fmt: skip


def _result(
    o: SwarmOutcome,
    vote_share: float,
    total: float,
    generated_tokens: int,
    rounds_used: int,
    steps: list[Step],
) -> InferenceResult:
    """One solve as a result: the vote sorted by weight (divided by ``total``) and the compute."""
    votes = sorted(o.votes.items(), key=lambda kv: (-kv[1], kv[0]))
    return InferenceResult(answer=o.answer, vote_share=float(vote_share),
                           votes=[Vote(a, float(w / total)) for a, w in votes],
                           forward_passes=int(o.compute.forward_passes), generated_tokens=int(generated_tokens),
                           flops=float(o.compute.flops), rounds_used=int(rounds_used), steps=steps)  # fmt: skip


class AnswerUnit:
    """Vote on whole answers: all agents of all prompts per round in one generate call (the seed of each
    prompt is its request's, so requests with different seeds still share the call)."""

    def check(self, loaded: LoadedModel, prompt: str) -> None:
        pass

    def solve(self, loaded: LoadedModel, params: InferParams, prompts: list[str], seeds: list[int]) -> list:
        """The same prompt sent with two different seeds needs two problem seeds, so such duplicates go
        to a second call; everything else shares one."""
        ids = [tuple(loaded.tokenizer.encode(p, bos=True)) for p in prompts]
        groups: list[tuple[dict[tuple[int, ...], int], list[int]]] = []
        for i, (key, seed) in enumerate(zip(ids, seeds)):
            for seed_of, members in groups:
                if seed_of.setdefault(key, seed) == seed:
                    members.append(i)
                    break
            else:
                groups.append(({key: seed}, [i]))
        solved = [(m, answer_solver(loaded, params, s).solve([prompts[i] for i in m])) for s, m in groups]
        return [answer_outcome(r) for r in _scatter(len(prompts), solved)]

    def result(self, o: SwarmOutcome) -> InferenceResult:
        r = o.raw  # generated tokens equal forward passes under KV-cache decoding (wire field kept)
        return _result(o, r.vote_share, 1.0, o.compute.forward_passes, r.rounds_used, [])


class StepUnit:
    """Vote on each reasoning step (scratchpad models): the step policy of the ``Swarm`` protocol, one
    solve per distinct seed."""

    def check(self, loaded: LoadedModel, prompt: str) -> None:
        if not getattr(loaded.task_obj, "scratchpad", False):
            raise InvalidArgument(
                f"mode 'steps' needs a model trained with a scratchpad task (steps to vote on); model "
                f"{loaded.model_id!r} was trained on {loaded.task or 'text'!r} without one. Use mode 'answers', or "
                "a checkpoint from experiment=reasoning_steps"
            )

    @staticmethod
    def config(loaded: LoadedModel, params: InferParams) -> StepSwarmConfig:
        """The checkpoint's step config (or the defaults) with the request's agents and temperature; the
        checker vote only when the checkpoint has a checker."""
        base = loaded.step_swarm or StepSwarmConfig()
        vote = base.vote if loaded.step_checker is not None else "plurality"
        temps = (params.temperature,) if params.temperature > 0 else base.temperature
        return base.replace(num_agents=params.agents, wave_agents=min(base.wave_agents, params.agents),
                            temperature=temps, vote=vote)  # fmt: skip

    def solve(self, loaded: LoadedModel, params: InferParams, prompts: list[str], seeds: list[int]) -> list:
        cfg = self.config(loaded, params)
        checker = loaded.step_checker if cfg.vote.startswith("checker") else None
        swarm = StepVote(loaded.model, loaded.tokenizer, loaded.task_obj, cfg, checker)
        by_seed: dict[int, list[int]] = {}
        for i, seed in enumerate(seeds):
            by_seed.setdefault(seed, []).append(i)
        solved = [(m, swarm.solve([prompts[i] for i in m], seed)) for seed, m in by_seed.items()]
        return _scatter(len(prompts), solved)

    def result(self, o: SwarmOutcome) -> InferenceResult:
        """The committed steps with their vote shares, the answer line's vote (as shares), and compute
        (generator and checker forward passes)."""
        r = o.raw
        steps = [Step(p.text, float(s)) for p, s in zip(r.committed, r.shares)]
        tokens = sum(p.num_tokens for p in r.proposals)
        total = sum(o.votes.values()) or 1.0
        return _result(o, r.shares[-1] if r.shares else 0.0, total, tokens, 1 + r.backtracks, steps)


def _scatter(n: int, solved: list[tuple[list[int], list]]) -> list:
    """Results of grouped solves back in request order."""
    results: list = [None] * n
    for members, group in solved:
        for i, r in zip(members, group):
            results[i] = r
    return results


VOTE_UNITS: dict[str, AnswerUnit | StepUnit] = {"answers": AnswerUnit(), "steps": StepUnit()}


class InferenceService:
    """``await infer(request)`` -> :class:`InferenceResult`; concurrent requests are batched."""

    def __init__(
        self,
        settings: InferenceSettings,
        models: ModelRepository,
        executor: Executor | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        b = settings.batching
        self.batcher: DynamicBatcher = DynamicBatcher(self._run_batch, max_batch_size=b.max_batch_size,
                                                      max_delay_s=b.max_delay_ms / 1000.0, executor=executor,
                                                      enabled=b.enabled, on_batch=on_batch)  # fmt: skip

    def params(self, request: InferenceRequest) -> tuple[InferParams, int]:
        """The request's swarm settings (defaults filled in, limits checked) and its seed."""
        s = self.settings
        d = s.defaults
        max_new = request.max_new_tokens or d.max_new_tokens
        agents = request.agents or d.agents
        rounds = d.rounds if request.rounds is None else request.rounds
        temperature = d.temperature if request.temperature is None else request.temperature
        seed = d.seed if request.seed is None else request.seed
        check_range(max_new, "max_new_tokens", 1, s.max_new_tokens)
        check_range(agents, "agents", 1, s.max_agents)
        check_range(rounds, "rounds", 0, s.max_rounds)
        if not (0.0 <= temperature <= 10.0):  # also rejects NaN
            raise InvalidArgument(
                f"temperature={temperature} is out of range; use a value in [0, 10] (0 = greedy)"
            )
        check_range(seed, "seed", 0, MAX_SEED)
        mode = request.mode or "answers"
        if mode not in VOTE_UNITS:
            raise InvalidArgument(
                f"mode={request.mode!r} is not one of 'answers', 'steps' (or empty = 'answers')"
            )
        params = InferParams(max_new_tokens=max_new, agents=agents, rounds=rounds,
                             temperature=float(temperature), mode=mode)  # fmt: skip
        return params, int(seed)

    async def infer(
        self, request: InferenceRequest, on_model: Callable[[str], None] | None = None
    ) -> InferenceResult:
        """Check the request, pick its model (``on_model`` is told which), solve it in a batch."""
        loaded, prompt, params, seed = await self.prepare(request, on_model)
        key = (loaded.model_id, loaded.file_stamp, params)
        raw, batch_size = await self.batcher.submit(key, (loaded, prompt, seed))
        result = VOTE_UNITS[params.mode].result(raw)
        return replace(result, agents=params.agents, model_id=loaded.model_id, batch_size=batch_size)

    async def prepare(
        self, request: InferenceRequest, on_model: Callable[[str], None] | None = None
    ) -> tuple[LoadedModel, str, InferParams, int]:
        """Every check a request gets before decoding, in order (size, parameters, model, prompt), shared
        by ``infer`` and the streamed path: (the loaded model, the prompt text, parameters, seed)."""
        self.check_size(request)
        params, seed = self.params(request)
        loaded = await self.models.get(request.model_id)
        if on_model is not None:
            on_model(loaded.model_id)
        prompt = self.prompt_text(loaded, request)
        self.check_prompt(loaded, prompt, params)
        return loaded, prompt, params, seed

    def check_size(self, request: InferenceRequest) -> None:
        """A prompt (or chat) is there and within ``max_prompt_chars``; checked before any model loads."""
        limit = self.settings.max_prompt_chars
        if request.prompt and request.messages:
            raise InvalidArgument("the request has both a prompt and chat messages; send one of them")
        size = len(request.prompt) + sum(len(role) + len(content) for role, content in request.messages)
        if not size:
            raise InvalidArgument("prompt is empty; pass the text to answer (or chat messages)")
        if size > limit:
            what = "prompt is" if request.prompt else "the chat messages are"
            raise InvalidArgument(f"{what} {size} characters; this server's limit is {limit}")

    @staticmethod
    def prompt_text(loaded: LoadedModel, request: InferenceRequest) -> str:
        """The request's prompt, or its chat rendered with the model's chat template."""
        if not request.messages:
            return request.prompt
        from moe_swarm.cli.generate import chat_prompt
        from moe_swarm.errors import UserError

        messages = [{"role": role, "content": content} for role, content in request.messages]
        try:
            return chat_prompt(loaded.tokenizer, messages, loaded.model_id)
        except UserError as exc:
            raise InvalidArgument(str(exc)) from None
        except Exception as exc:  # the template itself failed (jinja's raise_exception, ...)
            raise InvalidArgument(
                f"model {loaded.model_id!r}'s chat template refused the messages: {exc}"
            ) from None

    @staticmethod
    def check_prompt(loaded: LoadedModel, prompt: str, params: InferParams) -> None:
        """Reject a prompt that does not fit the model's task or context before it joins a batch."""
        VOTE_UNITS[params.mode].check(loaded, prompt)
        if loaded.task_obj is not None:
            try:
                loaded.task_obj.check_prompt(prompt)
            except ValueError as exc:
                raise InvalidArgument(
                    f"model {loaded.model_id!r} was trained on task {loaded.task!r} and cannot answer this prompt: "
                    f"{exc}. Ask a text model (ListModels: task '') for free text."
                ) from exc
        solver = answer_solver(loaded, params)
        try:
            solver.check_lengths(solver.encode([prompt]))
        except ValueError as exc:
            raise InvalidArgument(f"prompt does not fit model {loaded.model_id!r}: {exc}") from exc

    @staticmethod
    def _run_batch(key: tuple, items: list) -> list:
        """One batched solve (in a worker thread): every item shares the key's model and params."""
        import torch

        params: InferParams = key[2]
        loaded = items[0][0]
        with torch.inference_mode():
            return VOTE_UNITS[params.mode].solve(
                loaded, params, [p for _, p, _ in items], [s for _, _, s in items]
            )

    async def close(self) -> None:
        await self.batcher.close()
