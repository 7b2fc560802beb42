"""Reasoning tasks generated from seeds and scored by exact match.

Every task draws problems from a seeded RNG and keeps a problem only if a stable
hash of its canonical key (SHA-256, independent of PYTHONHASHSEED) puts it in the
requested split: 80% of all possible problems belong to ``train``, 10% to ``val``,
10% to ``test``. Splits are therefore disjoint by construction, whatever ``n`` and
``seed`` are, and ``generate(split, n, seed)`` is deterministic.

LM text format: ``[BOS] + bytes(prompt) + bytes(completion) + [EOS]``; the loss covers the
completion and the EOS only (see ``encode_problem``). The completion is the answer, or, for a task
built with ``scratchpad=True``, a scratchpad of checkable steps, one per line, then the answer line
``"=" + answer``:

    mul   "4321*5="       -> "4*5+0=20\n3*5+2=17\n2*5+1=11\n1*5+1=6\n=0716"   (digit x digit + carry)
    arith "3+4*5+6-7*8="  -> "4*5=20\n3+20=23\n23+6=29\n7*8=56\n29-56=-27\n=-27"  (evaluation order)
    reach "... is tobu a rupo or a nika?" -> "tobu>kemi\nkemi>rupo\n=rupo"    (the path hop by hop)

Every scratchpad task has an exact step oracle: ``solution_steps(problem)`` (the steps, answer line
last) and ``next_step(problem, prefix)`` (the correct next step after a correct prefix, None after a
wrong one). The problems, splits and answers do not depend on ``scratchpad``.
"""

from __future__ import annotations

import hashlib
import inspect
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


def _check_bool(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _check_positive_int(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class MultiplicationTask(Task):
    """Multiply a ``digits_a``-digit by a ``digits_b``-digit number, all digits reversed.

    Operands and product are written least-significant digit first, so the model
    produces digits in the order carries propagate. 123*45 = 5535 becomes the prompt
    ``"321*54="`` and the answer ``"5355"`` (the product's decimal digits reversed,
    no padding). Operands have exactly their number of digits (no leading zeros).
    """

    name = "mul"

    def __init__(self, digits_a: int = 3, digits_b: int = 2, scratchpad: bool = False) -> None:
        _check_positive_int("digits_a", digits_a)
        _check_positive_int("digits_b", digits_b)
        self.digits_a = digits_a
        self.digits_b = digits_b
        self.scratchpad = _check_bool("scratchpad", scratchpad)

    def params(self) -> dict:
        return {"digits_a": self.digits_a, "digits_b": self.digits_b, "scratchpad": self.scratchpad}

    def solution_steps(self, problem: Problem) -> list[str]:
        """Long multiplication, least significant digit first: for each digit ``y`` of b and each digit
        ``x`` of a, ``"x*y+c=v"`` (``c`` the carry in, ``v`` = x*y + c, carry out v // 10); with several
        digits in b, after each further partial product ``"S+P=T"`` (running sum plus shifted partial
        product, all reversed). The answer line is the reversed product."""
        left, right = problem.prompt.rstrip("=").split("*")
        a, b = int(left[::-1]), int(right[::-1])
        steps, total = [], 0
        for j, y in enumerate(int(ch) for ch in right):
            carry = 0
            for x in (int(ch) for ch in left):
                v = x * y + carry
                steps.append(f"{x}*{y}+{carry}={v}")
                carry = v // 10
            partial = a * y * 10**j
            if j > 0:
                steps.append(f"{str(total)[::-1]}+{str(partial)[::-1]}={str(total + partial)[::-1]}")
            total += partial
        return [*steps, f"{ANSWER_MARK}{str(a * b)[::-1]}"]

    def prompt_pattern(self) -> str:
        return rf"[0-9]{{{self.digits_a}}}\*[0-9]{{{self.digits_b}}}="

    def prompt_format(self) -> str:
        a, b = int("123456789"[: self.digits_a]), int("456789123"[: self.digits_b])
        ex = self.make(a, b)
        return (
            f"a {self.digits_a}-digit times a {self.digits_b}-digit number, digits reversed, ending in '=': "
            f"{ex.prompt!r} asks {a}*{b}, answer {ex.answer!r} (= {a * b} reversed)"
        )

    def make(self, a: int, b: int) -> Problem:
        """The problem for ``a * b`` in reversed-digit form."""
        return Problem(
            prompt=f"{str(a)[::-1]}*{str(b)[::-1]}=",
            answer=str(a * b)[::-1],
            difficulty=f"{self.digits_a}x{self.digits_b}",
        )

    def sample(self, rng: random.Random) -> Problem:
        a = rng.randint(10 ** (self.digits_a - 1), 10**self.digits_a - 1)
        b = rng.randint(10 ** (self.digits_b - 1), 10**self.digits_b - 1)
        return self.make(a, b)

    def problem_key(self, problem: Problem) -> str:
        left, right = problem.prompt.rstrip("=").split("*")
        a, b = int(left[::-1]), int(right[::-1])
        if self.digits_a == self.digits_b:  # a*b and b*a are the same problem: keep them in one split
            a, b = min(a, b), max(a, b)
        return f"{a}*{b}"

    def space_size(self) -> int:
        count_a = 9 * 10 ** (self.digits_a - 1)
        count_b = 9 * 10 ** (self.digits_b - 1)
        if self.digits_a == self.digits_b:
            return count_a * (count_a + 1) // 2
        return count_a * count_b


class ArithmeticTask(Task):
    """Evaluate ``a+b*c+d-e*f`` with integers in [0, max_value], usual precedence.

    Prompt ``"3+4*5+6-7*8="``, answer ``"-27"`` (plain decimal, ``-`` when negative).
    ``difficulty`` is the digit count of the largest operand, e.g. ``"2d"``.
    """

    name = "arith"
    _N_OPERANDS = 6

    def __init__(self, max_value: int = 9, scratchpad: bool = False) -> None:
        _check_positive_int("max_value", max_value)
        self.max_value = max_value
        self.scratchpad = _check_bool("scratchpad", scratchpad)

    def params(self) -> dict:
        return {"max_value": self.max_value, "scratchpad": self.scratchpad}

    def solution_steps(self, problem: Problem) -> list[str]:
        """Intermediate results in evaluation order: ``b*c``, ``a+bc``, ``+d``, ``e*f``, ``-ef``."""
        a, b, c, d, e, f = (int(x) for x in re.findall(r"[0-9]+", problem.prompt))
        bc, ef = b * c, e * f
        steps = [f"{b}*{c}={bc}", f"{a}+{bc}={a + bc}", f"{a + bc}+{d}={a + bc + d}", f"{e}*{f}={ef}"]
        steps.append(f"{a + bc + d}-{ef}={a + bc + d - ef}")
        return [*steps, f"{ANSWER_MARK}{a + bc + d - ef}"]

    def prompt_pattern(self) -> str:
        n = r"[0-9]+"
        return rf"{n}\+{n}\*{n}\+{n}-{n}\*{n}="

    def prompt_format(self) -> str:
        return f"'a+b*c+d-e*f=' with integers 0..{self.max_value}, e.g. '3+4*5+6-7*8=' (answer '-27')"

    def make(self, a: int, b: int, c: int, d: int, e: int, f: int) -> Problem:
        """The problem for the given operands."""
        return Problem(
            prompt=f"{a}+{b}*{c}+{d}-{e}*{f}=",
            answer=str(a + b * c + d - e * f),
            difficulty=f"{len(str(max(a, b, c, d, e, f)))}d",
        )

    def sample(self, rng: random.Random) -> Problem:
        return self.make(*(rng.randint(0, self.max_value) for _ in range(self._N_OPERANDS)))

    def problem_key(self, problem: Problem) -> str:
        return problem.prompt

    def space_size(self) -> int:
        return (self.max_value + 1) ** self._N_OPERANDS


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = tuple(c + v for c in _CONSONANTS for v in _VOWELS)  # 70 syllables -> 4,900 two-syllable names


class ReachabilityTask(Task):
    """ProsQA-like graph search: which of two concepts can be reached from a third?

    A random DAG over made-up two-syllable names is stated as facts
    ``"every X is a Y."`` in shuffled order, then a question:

        every tobu is a kemi. every lasa is a rupo. ... is tobu a rupo or a nika?

    The answer is the one name reachable from the subject (here e.g. ``"nika"``).
    Graph: a true chain of ``hops`` edges subject -> ... -> answer; a wrong chain of the
    same length distribution ending in the other candidate, which the subject cannot
    reach; and ``num_distractors`` extra facts: dead-end branches off the true chain,
    edges from the wrong chain into the true chain (so both candidates have rich
    ancestry), and side branches of the wrong chain. Both candidates are sinks; the
    true answer's shortest distance from the subject is exactly ``hops``.
    ``difficulty`` is ``f"{hops}hop"``.
    """

    name = "reach"

    def __init__(
        self, min_hops: int = 3, max_hops: int = 6, num_distractors: int = 4, scratchpad: bool = False
    ) -> None:
        _check_positive_int("min_hops", min_hops)
        _check_positive_int("max_hops", max_hops)
        _check_positive_int("num_distractors", num_distractors, minimum=0)
        if max_hops < min_hops:
            raise ValueError(f"max_hops ({max_hops}) must be >= min_hops ({min_hops})")
        self.min_hops = min_hops
        self.max_hops = max_hops
        self.num_distractors = num_distractors
        self.scratchpad = _check_bool("scratchpad", scratchpad)

    def params(self) -> dict:
        return {
            "min_hops": self.min_hops,
            "max_hops": self.max_hops,
            "num_distractors": self.num_distractors,
            "scratchpad": self.scratchpad,
        }

    def solution_steps(self, problem: Problem) -> list[str]:
        """The path from the subject to the reachable candidate, one ``"x>y"`` hop per step (breadth-first
        search over the stated facts; the generator makes that path unique)."""
        facts, _, question = problem.prompt.rpartition(". is ")
        edges: dict[str, list[str]] = {}
        for x, y in re.findall(r"every ([a-z]+) is a ([a-z]+)", facts + "."):
            edges.setdefault(x, []).append(y)
        subject, _, options = question.rstrip("?").partition(" a ")
        targets = set(options.split(" or a "))
        parent: dict[str, str | None] = {subject: None}
        queue = [subject]
        while queue:
            node = queue.pop(0)
            if node in targets:
                path = [node]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                path.reverse()
                return [*(f"{x}>{y}" for x, y in zip(path, path[1:])), f"{ANSWER_MARK}{node}"]
            for nxt in edges.get(node, ()):
                if nxt not in parent:
                    parent[nxt] = node
                    queue.append(nxt)
        raise ValueError(f"no path from {subject!r} to {sorted(targets)} in {problem.prompt!r}")

    def prompt_pattern(self) -> str:
        return r"(every [a-z]+ is a [a-z]+\. )+is [a-z]+ a [a-z]+ or a [a-z]+\?"

    def prompt_format(self) -> str:
        return (
            "facts 'every X is a Y.' then a question, e.g. 'every tobu is a kemi. every kemi is a rupo. "
            "is tobu a rupo or a nika?' (answer 'rupo')"
        )

    def sample(self, rng: random.Random) -> Problem:
        used: set[str] = set()

        def new_name() -> str:
            while True:
                word = rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)
                if word not in used:
                    used.add(word)
                    return word

        hops = rng.randint(self.min_hops, self.max_hops)
        wrong_len = rng.randint(self.min_hops, self.max_hops)
        true_chain = [new_name() for _ in range(hops + 1)]
        wrong_chain = [new_name() for _ in range(wrong_len + 1)]
        edges = list(zip(true_chain, true_chain[1:])) + list(zip(wrong_chain, wrong_chain[1:]))
        edge_set = set(edges)
        dead_ends: list[str] = []  # reachable from the subject, reach neither candidate

        for _ in range(self.num_distractors):
            kind = rng.randrange(3)
            if (
                kind == 1
            ):  # wrong-chain ancestor -> node on the true side (never makes the wrong answer reachable)
                edge = (rng.choice(wrong_chain[:-1]), rng.choice(true_chain[1:] + dead_ends))
                if edge not in edge_set:
                    edges.append(edge)
                    edge_set.add(edge)
                    continue
                kind = 0  # duplicate: fall back to a fresh dead end
            if kind == 0:  # wrong turn: true-chain node (not the answer) or dead end -> new dead end
                edge = (rng.choice(true_chain[:-1] + dead_ends), new_name())
                dead_ends.append(edge[1])
            else:  # side branch of the wrong chain -> new leaf
                edge = (rng.choice(wrong_chain[:-1]), new_name())
            edges.append(edge)
            edge_set.add(edge)

        rng.shuffle(edges)
        subject, answer, wrong = true_chain[0], true_chain[-1], wrong_chain[-1]
        first, second = (answer, wrong) if rng.random() < 0.5 else (wrong, answer)
        facts = " ".join(f"every {x} is a {y}." for x, y in edges)
        return Problem(
            prompt=f"{facts} is {subject} a {first} or a {second}?",
            answer=answer,
            difficulty=f"{hops}hop",
        )

    def problem_key(self, problem: Problem) -> str:
        facts, _, question = problem.prompt.rpartition(". is ")
        sentences = sorted(s.strip() for s in (facts + ".").split(".") if s.strip())
        subject, _, options = question.rstrip("?").partition(" a ")
        first, _, second = options.partition(" or a ")
        return "|".join([*sentences, subject, *sorted((first, second))])


TASKS: dict[str, type[Task]] = {
    MultiplicationTask.name: MultiplicationTask,
    ReachabilityTask.name: ReachabilityTask,
    ArithmeticTask.name: ArithmeticTask,
}


def get_task(name: str, **kwargs) -> Task:
    """Build a task by name (``mul``, ``reach``, ``arith``) with its constructor arguments."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")
    cls = TASKS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"task {name!r} got unknown arguments {unknown}; it accepts {accepted}")
    return cls(**kwargs)


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
