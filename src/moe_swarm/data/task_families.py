"""The built-in reasoning-task families (``mul``, ``arith``, ``reach``, ``chase``), each a ``Task``.

Scratchpad formats (``scratchpad=True``; one checkable step per line, then ``"=" + answer``):

    mul   "4321*5="       -> "4*5+0=20\n3*5+2=17\n2*5+1=11\n1*5+1=6\n=0716"   (digit x digit + carry)
    arith "3+4*5+6-7*8="  -> "4*5=20\n3+20=23\n23+6=29\n7*8=56\n29-56=-27\n=-27"  (evaluation order)
    reach "... is tobu a rupo or a nika?" -> "tobu>kemi\nkemi>rupo\n=rupo"    (the path hop by hop)
    chase "c>f a>c f>d ...|a:d,k?" -> "a>c\nc>f\nf>d\n=d"                 (pointer chasing, one hop per step)

The problems, splits and answers do not depend on ``scratchpad``. A user-defined family needs no
entry here: ``task=package.module:Class`` loads it (``moe_swarm.data.tasks``).
"""

from __future__ import annotations

import random
import re

from moe_swarm.data.task_base import ANSWER_MARK, Problem, Task, check_bool, check_positive_int


class MultiplicationTask(Task):
    """Multiply a ``digits_a``-digit by a ``digits_b``-digit number, all digits reversed.

    Operands and product are written least-significant digit first, so the model
    produces digits in the order carries propagate. 123*45 = 5535 becomes the prompt
    ``"321*54="`` and the answer ``"5355"`` (the product's decimal digits reversed,
    no padding). Operands have exactly their number of digits (no leading zeros).
    """

    name = "mul"

    def __init__(self, digits_a: int = 3, digits_b: int = 2, scratchpad: bool = False) -> None:
        check_positive_int("digits_a", digits_a)
        check_positive_int("digits_b", digits_b)
        self.digits_a = digits_a
        self.digits_b = digits_b
        self.scratchpad = check_bool("scratchpad", scratchpad)

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
        check_positive_int("max_value", max_value)
        self.max_value = max_value
        self.scratchpad = check_bool("scratchpad", scratchpad)

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


class _ChainTask(Task):
    """What the two chain-following families (reach, chase) share: the hop range, the distractors and
    the scratchpad switch, checked and stored once, and the parameters a checkpoint records."""

    def _set_chain(self, min_hops: int, max_hops: int, num_distractors: int, scratchpad: bool) -> None:
        check_positive_int("min_hops", min_hops)
        check_positive_int("max_hops", max_hops)
        check_positive_int("num_distractors", num_distractors, minimum=0)
        if max_hops < min_hops:
            raise ValueError(f"max_hops ({max_hops}) must be >= min_hops ({min_hops})")
        self.min_hops, self.max_hops, self.num_distractors = min_hops, max_hops, num_distractors
        self.scratchpad = check_bool("scratchpad", scratchpad)

    def params(self) -> dict:
        return {
            "min_hops": self.min_hops,
            "max_hops": self.max_hops,
            "num_distractors": self.num_distractors,
            "scratchpad": self.scratchpad,
        }


class ReachabilityTask(_ChainTask):
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
        self._set_chain(min_hops, max_hops, num_distractors, scratchpad)

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


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class PointerChaseTask(_ChainTask):
    """Pointer chasing over single-letter names: follow ``x>y`` links from a subject to one of two ends.

    ``reach`` asks the same question in ~300 bytes of made-up words with dead-end branches (a search
    with look-ahead), and its base model stayed at 0% EM in the CPU budget; here every link is four
    bytes and each node has at most one outgoing link, so each step is one look-up (``"x>"`` in the
    prompt, copy the letter after it) and difficulty grows with the number of hops:

        "c>f a>c f>d e>k k>b k>f a?d,b="  ->  "a>c\\nc>f\\nf>d\\n=d"

    A true chain of ``hops`` links (subject ... answer), a wrong chain ending in the other candidate,
    and ``num_distractors`` links into the true chain from wrong-chain nodes or fresh letters (they
    never change the subject's path, but a look-up by the *target* letter finds them). ``difficulty`` is ``f"{hops}hop"``.
    """

    name = "chase"

    def __init__(
        self, min_hops: int = 2, max_hops: int = 4, num_distractors: int = 2, scratchpad: bool = False
    ) -> None:
        self._set_chain(min_hops, max_hops, num_distractors, scratchpad)
        if 2 * (max_hops + 1) > len(_LETTERS):
            raise ValueError(f"max_hops ({max_hops}) needs more than {len(_LETTERS)} letters; use <= 12")

    @staticmethod
    def _parse(prompt: str) -> tuple[dict[str, str], str, tuple[str, str]]:
        *links, question = prompt.rstrip("=").split(" ")
        subject, _, ends = question.partition("?")
        first, _, second = ends.partition(",")
        nxt: dict[str, str] = {}
        for link in links:
            x, _, y = link.partition(">")
            nxt.setdefault(x, y)
        return nxt, subject, (first, second)

    def solution_steps(self, problem: Problem) -> list[str]:
        """One ``"x>y"`` per link followed from the subject until a candidate is reached."""
        nxt, node, ends = self._parse(problem.prompt)
        steps = []
        while node not in ends:
            if node not in nxt or len(steps) > len(nxt):
                raise ValueError(f"no path from the subject to {ends} in {problem.prompt!r}")
            steps.append(f"{node}>{nxt[node]}")
            node = nxt[node]
        return [*steps, f"{ANSWER_MARK}{node}"]

    def prompt_pattern(self) -> str:
        return r"([a-z]>[a-z] )+[a-z]\?[a-z],[a-z]="

    def prompt_format(self) -> str:
        return "links 'x>y' separated by spaces, then 's?p,q=': e.g. 'a>c c>d b>e a?d,e=' (answer 'd')"

    def sample(self, rng: random.Random) -> Problem:
        hops = rng.randint(self.min_hops, self.max_hops)
        wrong_len = rng.randint(self.min_hops, self.max_hops)
        names = rng.sample(_LETTERS, hops + wrong_len + 2)
        true_chain, wrong_chain = names[: hops + 1], names[hops + 1 :]
        links = list(zip(true_chain, true_chain[1:])) + list(zip(wrong_chain, wrong_chain[1:]))
        spare = [x for x in _LETTERS if x not in names]
        for _ in range(self.num_distractors):  # into the true chain: the subject's path stays unique
            src = rng.choice(wrong_chain[:-1] + spare[:1])
            link = (src, rng.choice(true_chain[1:]))
            if link not in links:
                links.append(link)
                if spare and src == spare[0]:
                    spare.pop(0)
        rng.shuffle(links)
        answer, wrong = true_chain[-1], wrong_chain[-1]
        first, second = (answer, wrong) if rng.random() < 0.5 else (wrong, answer)
        text = " ".join(f"{x}>{y}" for x, y in links)
        return Problem(f"{text} {true_chain[0]}?{first},{second}=", answer, f"{hops}hop")

    def problem_key(self, problem: Problem) -> str:
        *links, question = problem.prompt.rstrip("=").split(" ")
        subject, _, ends = question.partition("?")
        return "|".join([*sorted(links), subject, *sorted(ends.split(","))])
