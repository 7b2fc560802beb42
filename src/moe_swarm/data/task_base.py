"""The reasoning-task interface: ``Problem``, the ``Task`` base class and the LM encoding of problems.

A task family is a ``Task`` subclass: it draws problems from a seeded RNG (``sample``) and names each
problem's identity (``problem_key``); the base class turns that into disjoint, deterministic splits.
A problem is kept only if a stable hash of its key (SHA-256, independent of PYTHONHASHSEED) puts it in
the requested split: 80% of all possible problems belong to ``train``, 10% to ``val``, 10% to ``test``,
so ``generate(split, n, seed)`` is deterministic and the splits never overlap.

LM text format: ``[BOS] + bytes(prompt) + bytes(completion) + [EOS]``; the loss covers the
completion and the EOS only (see ``encode_problem``). The completion is the answer, or, for a task
built with ``scratchpad=True``, a scratchpad of checkable steps, one per line, then the answer line
``"=" + answer``. A scratchpad task has an exact step oracle: ``solution_steps(problem)`` (the steps,
answer line last) and ``next_step(problem, prefix)`` (the correct next step after a correct prefix,
None after a wrong one). The built-in families live in ``moe_swarm.data.task_families``; the loader
(names and ``package.module:Class`` plug-ins) in ``moe_swarm.data.tasks``.
"""

from __future__ import annotations

import hashlib
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import torch

from moe_swarm.data.tokenizer import ByteTokenizer

SPLITS = ("train", "val", "test")
STEP_SEPARATOR = "\n"  # ends every scratchpad step but the answer line (which ends with EOS)
ANSWER_MARK = "="  # starts the answer line of a scratchpad
IGNORE_INDEX = -100  # targets with this value carry no loss (torch cross_entropy's default ignore_index)
_SPLIT_BUCKETS = {"train": (0, 80), "val": (80, 90), "test": (90, 100)}  # of 100 hash buckets


@dataclass(frozen=True)
class Problem:
    """One exact-match problem: the model reads ``prompt`` and must write ``answer``.

    ``scratchpad``: the worked steps before the answer line ("" for answer-only tasks), each step
    followed by ``STEP_SEPARATOR``; ``completion`` is what the model is trained to write.
    """

    prompt: str
    answer: str
    difficulty: str
    scratchpad: str = ""

    @property
    def completion(self) -> str:
        return f"{self.scratchpad}{ANSWER_MARK}{self.answer}" if self.scratchpad else self.answer


class Task(ABC):
    """A generator of problems with disjoint, deterministic train/val/test splits."""

    name: ClassVar[str]
    scratchpad: bool = False  # write checkable steps before the answer (see the module docstring)

    def solution_steps(self, problem: Problem) -> list[str]:
        """The exact steps of ``problem``'s scratchpad, the answer line ``"=" + answer`` last."""
        raise NotImplementedError(f"task {self.name!r} has no scratchpad format")

    def next_step(self, problem: Problem, prefix: list[str]) -> str | None:
        """The step oracle: the correct step after the steps ``prefix``, or None when ``prefix`` already
        holds a wrong step (no correct continuation) or is the whole solution."""
        steps = self.solution_steps(problem)
        prefix = [self.canonical_step(x) for x in prefix]
        if len(prefix) >= len(steps) or prefix != steps[: len(prefix)]:
            return None
        return steps[len(prefix)]

    def step_is_correct(self, problem: Problem, prefix: list[str], step: str) -> bool:
        """Whether ``step`` is the correct next step after ``prefix`` (the oracle's label)."""
        return self.next_step(problem, prefix) == self.canonical_step(step)

    @staticmethod
    def canonical_step(step: str) -> str:
        """The form steps are compared and voted in: surrounding whitespace removed."""
        return step.strip()

    @staticmethod
    def split_steps(completion: str) -> list[str]:
        """A written completion as a list of steps (lines; the answer line included, empty lines dropped)."""
        return [x.strip() for x in completion.split(STEP_SEPARATOR) if x.strip()]

    def with_scratchpad(self, problem: Problem) -> Problem:
        """``problem`` with its scratchpad filled in (unchanged for an answer-only task)."""
        if not self.scratchpad:
            return problem
        steps = self.solution_steps(problem)
        return Problem(
            problem.prompt,
            problem.answer,
            problem.difficulty,
            "".join(x + STEP_SEPARATOR for x in steps[:-1]),
        )

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem (any split) from ``rng``."""

    @abstractmethod
    def problem_key(self, problem: Problem) -> str:
        """Canonical identity of a problem: equal keys mean the same problem (decides its split)."""

    def space_size(self) -> int | None:
        """Number of distinct problems, when it is small enough to matter (else None)."""
        return None

    def params(self) -> dict:
        """Constructor arguments, for reproducibility records and seeding."""
        return {}

    # What a prompt of this task looks like (for users of a trained model): a regular expression a
    # prompt must match in full, and a one-line description with an example.
    def prompt_pattern(self) -> str:
        return ".+"

    def prompt_format(self) -> str:
        return f"a prompt like {self.sample(random.Random(0)).prompt!r}"

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError saying the expected format when ``prompt`` cannot be a problem of this task."""
        if re.fullmatch(self.prompt_pattern(), prompt) is None:
            raise ValueError(f"{prompt!r} is not a {self.name!r} prompt; expected {self.prompt_format()}")

    def split_of(self, problem: Problem) -> str:
        """The split a problem belongs to, from a stable hash of its key."""
        digest = hashlib.sha256(f"{self.name}|{self.problem_key(problem)}".encode()).digest()
        bucket = int.from_bytes(digest[:8], "big") % 100
        for split, (lo, hi) in _SPLIT_BUCKETS.items():
            if lo <= bucket < hi:
                return split
        raise AssertionError("unreachable: buckets cover 0..99")

    def generate(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """``n`` distinct problems of ``split``; the same (split, n, seed) gives the same list."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        same_problems = {k: v for k, v in self.params().items() if k != "scratchpad"}  # format only
        rng = random.Random(f"{self.name}|{sorted(same_problems.items())}|{split}|{seed}")
        seen: set[str] = set()
        problems: list[Problem] = []
        max_draws = 20 * n + 10_000
        draws = 0
        while len(problems) < n:
            if draws >= max_draws:
                raise ValueError(self._exhausted_message(split, n, len(problems), draws))
            draws += 1
            problem = self.sample(rng)
            if self.split_of(problem) != split:
                continue
            key = self.problem_key(problem)
            if key in seen:
                continue
            seen.add(key)
            problems.append(self.with_scratchpad(problem))
        return problems

    def canonical(self, answer: str) -> str:
        """The form answers are compared (and voted) in: surrounding whitespace removed. For a scratchpad
        task a written completion's answer is its answer line (after ``ANSWER_MARK``); a multi-line text
        without one has no answer (""); a one-line text is taken as a bare answer."""
        text = answer.strip()
        if not self.scratchpad:
            return text
        last = text.rsplit(STEP_SEPARATOR, 1)[-1].strip()
        if last.startswith(ANSWER_MARK):
            return last[len(ANSWER_MARK) :].strip()
        return "" if STEP_SEPARATOR in text else text

    def score(self, prediction: str, answer: str) -> bool:
        """Exact match of canonical forms."""
        return self.canonical(prediction) == self.canonical(answer)

    def _exhausted_message(self, split: str, n: int, got: int, draws: int) -> str:
        lo, hi = _SPLIT_BUCKETS[split]
        size = self.space_size()
        space = (
            f" {self!r} has {size} distinct problems, about {size * (hi - lo) // 100} in {split!r};"
            if size
            else ""
        )
        return (
            f"could only generate {got} of {n} distinct {split!r} problems in {draws} draws;{space} "
            "ask for fewer problems or make the task harder (more digits / larger values)"
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def check_bool(name: str, value: bool) -> bool:
    """A boolean constructor argument (config values are easy to get wrong: 'false' is a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    """An integer constructor argument >= ``minimum``, with an error that names it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def encode_prompt(problem: Problem, tok: ByteTokenizer) -> list[int]:
    """``[BOS] + bytes(prompt)``: what generation starts from."""
    return tok.encode(problem.prompt, bos=True)


def encode_problem(problem: Problem, tok: ByteTokenizer) -> tuple[list[int], list[int]]:
    """Next-token training pair for one problem.

    ``tokens = [BOS] + prompt + completion + [EOS]`` (completion = scratchpad + answer line, or the
    answer); ``input_ids = tokens[:-1]`` and ``targets[i] = tokens[i + 1]`` where ``tokens[i + 1]`` is a
    completion byte or the EOS, ``IGNORE_INDEX`` (-100) elsewhere, so the prompt carries no loss.
    """
    prompt_ids = encode_prompt(problem, tok)
    answer_ids = tok.encode(problem.completion, eos=True)
    tokens = prompt_ids + answer_ids
    input_ids = tokens[:-1]
    targets = [IGNORE_INDEX] * (len(prompt_ids) - 1) + answer_ids
    return input_ids, targets


def decode_answer(generated_ids: Iterable[int] | torch.Tensor, tok: ByteTokenizer) -> str:
    """Text of the generated continuation (the ids after the prompt) up to the first EOS.

    Special ids (PAD/BOS/reserved) are skipped, so a malformed generation is scored, never raised.
    """
    if isinstance(generated_ids, torch.Tensor):
        generated_ids = generated_ids.reshape(-1).tolist()
    return tok.decode(generated_ids, stop_at_eos=True)


def greedy_exact_match(
    model, problems: list[Problem], task: Task, tok: ByteTokenizer, max_new_tokens: int, batch_size: int = 256
) -> list[bool]:
    """Exact match of greedy KV-cache answers, one bool per problem.

    ``model`` is anything with ``MoETransformer.generate``'s signature. Prompts are bucketed by
    length because ``generate`` needs equal-length prompts; each bucket decodes in chunks of
    ``batch_size`` rows on the model's device.
    """
    device = next(model.parameters()).device
    prompts = [encode_prompt(p, tok) for p in problems]
    buckets: dict[int, list[int]] = {}
    for i, ids in enumerate(prompts):
        buckets.setdefault(len(ids), []).append(i)
    correct = [False] * len(problems)
    for idxs in buckets.values():
        for start in range(0, len(idxs), batch_size):
            chunk = idxs[start : start + batch_size]
            batch = torch.tensor([prompts[i] for i in chunk], device=device)
            out = model.generate(batch, max_new_tokens, eos_id=tok.EOS, pad_id=tok.PAD)
            for row, i in enumerate(chunk):
                correct[i] = task.score(decode_answer(out.tokens[row], tok), problems[i].answer)
    return correct
