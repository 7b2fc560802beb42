"""Reasoning tasks: answers are right (checked independently), splits are disjoint, generation is deterministic."""

import hashlib
import os
import re
import subprocess
import sys
from collections import deque

import pytest
import torch

from moe_swarm.data import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    ArithmeticTask,
    ByteTokenizer,
    MultiplicationTask,
    Problem,
    ReachabilityTask,
    decode_answer,
    encode_problem,
    encode_prompt,
    get_task,
)

tok = ByteTokenizer()
SPLIT_SIZES = {"train": 3000, "val": 2000, "test": 2000}


def test_multiplication_answers_and_format():
    task = MultiplicationTask(3, 2)
    problems = task.generate("train", 500)
    for p in problems:
        m = re.fullmatch(r"(\d{3})\*(\d{2})=", p.prompt)
        assert m, p.prompt
        a, b = int(m.group(1)[::-1]), int(m.group(2)[::-1])  # digits are least-significant first
        assert 100 <= a <= 999 and 10 <= b <= 99  # no leading zeros in the true operand
        assert int(p.answer[::-1]) == a * b
        assert p.answer == str(a * b)[::-1]
        assert p.difficulty == "3x2"
    assert task.make(123, 45) == Problem("321*54=", "5355", "3x2")


def test_arithmetic_answers_match_python_evaluation():
    task = ArithmeticTask(max_value=12)
    problems = task.generate("train", 500)
    for p in problems:
        assert re.fullmatch(r"\d+\+\d+\*\d+\+\d+-\d+\*\d+=", p.prompt), p.prompt
        operands = [int(x) for x in re.findall(r"\d+", p.prompt)]
        assert all(0 <= x <= 12 for x in operands)
        assert int(p.answer) == eval(p.prompt[:-1])  # Python's own precedence rules
        assert p.difficulty == f"{len(str(max(operands)))}d"
    assert {p.difficulty for p in problems} == {"1d", "2d"}
    assert any(p.answer.startswith("-") for p in problems)


def parse_reach(prompt):
    m = re.fullmatch(r"(.*) is (\w+) a (\w+) or a (\w+)\?", prompt)
    assert m, prompt
    facts = re.findall(r"every (\w+) is a (\w+)\.", m.group(1))
    assert " ".join(f"every {x} is a {y}." for x, y in facts) == m.group(1)
    return facts, m.group(2), m.group(3), m.group(4)


def shortest_distances(edges, source):
    graph = {}
    for x, y in edges:
        graph.setdefault(x, []).append(y)
    dist = {source: 0}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        for nxt in graph.get(node, []):
            if nxt not in dist:
                dist[nxt] = dist[node] + 1
                queue.append(nxt)
    return dist


def is_acyclic(edges):
    nodes = {n for e in edges for n in e}
    indegree = dict.fromkeys(nodes, 0)
    for _, y in edges:
        indegree[y] += 1
    ready = [n for n in nodes if indegree[n] == 0]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for x, y in edges:
            if x == node:
                indegree[y] -= 1
                if indegree[y] == 0:
                    ready.append(y)
    return seen == len(nodes)


@pytest.mark.parametrize("min_hops,max_hops,distractors", [(3, 6, 4), (1, 2, 0), (2, 3, 9)])
def test_reachability_exactly_one_option_is_reachable_at_the_stated_distance(min_hops, max_hops, distractors):
    task = ReachabilityTask(min_hops=min_hops, max_hops=max_hops, num_distractors=distractors)
    problems = task.generate("train", 300)
    first_is_answer = 0
    for p in problems:
        facts, subject, first, second = parse_reach(p.prompt)
        assert len(set(facts)) == len(facts)  # no repeated fact
        assert 2 * min_hops + distractors <= len(facts) <= 2 * max_hops + distractors
        assert is_acyclic(facts)
        dist = shortest_distances(facts, subject)
        reachable = [o for o in (first, second) if o in dist]
        assert reachable == [p.answer], p.prompt
        assert p.difficulty == f"{dist[p.answer]}hop"
        assert min_hops <= dist[p.answer] <= max_hops
        sources = {x for x, _ in facts}
        assert first not in sources and second not in sources  # both candidates are sinks
        assert re.fullmatch(r"[a-z]{4}", p.answer)
        first_is_answer += first == p.answer
    assert 0.3 < first_is_answer / len(problems) < 0.7  # the answer's position is no cue


def key_sets(task, problems_by_split):
    return {s: {task.problem_key(p) for p in ps} for s, ps in problems_by_split.items()}


SMALL_SPACE_SIZES = {"train": 3000, "val": 350, "test": 350}  # mul 2x2 has only 4,095 problems, ~409 in val


@pytest.mark.parametrize(
    "task,sizes",
    [
        (MultiplicationTask(3, 2), SPLIT_SIZES),
        (MultiplicationTask(2, 2), SMALL_SPACE_SIZES),
        (ArithmeticTask(9), SPLIT_SIZES),
        (ReachabilityTask(), SPLIT_SIZES),
    ],
    ids=["mul3x2", "mul2x2", "arith", "reach"],
)
def test_splits_are_disjoint_over_thousands_of_problems(task, sizes):
    by_split = {s: task.generate(s, n, seed=0) for s, n in sizes.items()}
    by_split_other_seed = {s: task.generate(s, n // 3, seed=7) for s, n in sizes.items()}
    keys = key_sets(task, by_split)
    other = key_sets(task, by_split_other_seed)
    for split, problems in by_split.items():
        assert len(problems) == sizes[split]
        assert len(keys[split]) == len(problems)  # de-duplicated within the split
        assert len({p.prompt for p in problems}) == len(problems)
        assert all(task.split_of(p) == split for p in problems)
    for a in SPLIT_SIZES:
        for b in SPLIT_SIZES:
            if a != b:
                assert not keys[a] & keys[b], (a, b)
                assert not keys[a] & other[b], (a, b)  # a different seed never crosses splits either
                assert not {p.prompt for p in by_split[a]} & {p.prompt for p in by_split_other_seed[b]}


def test_commutative_multiplication_stays_in_one_split():
    task = MultiplicationTask(2, 2)
    for p in task.generate("val", 300):
        a, b = (int(x[::-1]) for x in p.prompt[:-1].split("*"))
        assert task.split_of(task.make(b, a)) == "val"


def test_split_buckets_are_80_10_10_over_a_whole_problem_space():
    task = MultiplicationTask(2, 1)
    counts = {"train": 0, "val": 0, "test": 0}
    for a in range(10, 100):
        for b in range(1, 10):
            counts[task.split_of(task.make(a, b))] += 1
    total = sum(counts.values())
    assert total == task.space_size() == 810
    assert 0.74 < counts["train"] / total < 0.86
    assert 0.06 < counts["val"] / total < 0.14 and 0.06 < counts["test"] / total < 0.14


def test_small_space_exhaustion_is_a_clear_error():
    task = MultiplicationTask(1, 1)
    with pytest.raises(
        ValueError,
        match=r"could only generate \d+ of 100 distinct 'train' problems.*has 45 distinct problems",
    ):
        task.generate("train", 100)


@pytest.mark.parametrize("name", ["mul", "reach", "arith"])
def test_generation_is_deterministic_and_seed_dependent(name):
    task = get_task(name)
    assert task.generate("val", 200, seed=3) == get_task(name).generate("val", 200, seed=3)
    assert task.generate("val", 200, seed=3) != task.generate("val", 200, seed=4)
    assert task.generate("val", 50, seed=3) == task.generate("val", 200, seed=3)[:50]  # prefix-stable


def test_generation_does_not_depend_on_pythonhashseed():
    code = (
        "import hashlib; from moe_swarm.data.tasks import get_task\n"
        "ps = [p for n in ('mul', 'reach', 'arith') for p in get_task(n).generate('test', 100, seed=5)]\n"
        "print(hashlib.sha256(repr(ps).encode()).hexdigest())\n"
    )
    child_hash_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # differs from this process
    env = {**os.environ, "PYTHONHASHSEED": child_hash_seed}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    local = [p for n in ("mul", "reach", "arith") for p in get_task(n).generate("test", 100, seed=5)]
    assert out.stdout.strip() == hashlib.sha256(repr(local).encode()).hexdigest()


def test_score_is_exact_match_of_stripped_answers():
    task = get_task("arith")
    assert task.score(" -27\n", "-27")
    assert not task.score("-27.0", "-27")
    assert not task.score("27", "-27")
    assert not task.score("", "-27")
    assert task.canonical("  5355 ") == "5355"


def test_get_task_errors_list_valid_choices():
    with pytest.raises(ValueError, match="unknown task 'div'; valid names: mul, reach, arith"):
        get_task("div")
    with pytest.raises(ValueError, match=r"unknown arguments \['digits'\].*digits_a"):
        get_task("mul", digits=3)
    with pytest.raises(ValueError, match="max_hops"):
        get_task("reach", min_hops=4, max_hops=2)
    with pytest.raises(ValueError, match="digits_a must be an integer >= 1"):
        get_task("mul", digits_a=0)
    with pytest.raises(ValueError, match="unknown split"):
        get_task("mul").generate("dev", 3)
    assert isinstance(get_task("mul", digits_a=4, digits_b=4), MultiplicationTask)


def test_encode_problem_masks_everything_but_answer_and_eos():
    p = Problem(prompt="321*54=", answer="5355", difficulty="3x2")
    input_ids, targets = encode_problem(p, tok)
    tokens = [BOS_ID, *b"321*54=", *b"5355", EOS_ID]
    assert input_ids == tokens[:-1]
    assert len(targets) == len(input_ids) == len(tokens) - 1
    n_prompt = 1 + len("321*54=")
    for i, t in enumerate(targets):
        if i + 1 >= n_prompt:
            assert t == tokens[i + 1]
        else:
            assert t == IGNORE_INDEX
    assert [t for t in targets if t != IGNORE_INDEX] == [*b"5355", EOS_ID]
    assert encode_prompt(p, tok) == tokens[:n_prompt]


def test_decode_answer_stops_at_eos_and_round_trips_every_task():
    for name in ("mul", "reach", "arith"):
        task = get_task(name)
        for p in task.generate("val", 20):
            input_ids, _ = encode_problem(p, tok)
            generated = input_ids[len(encode_prompt(p, tok)) :] + [EOS_ID, 65, 66]
            assert task.score(decode_answer(generated, tok), p.answer)
            assert decode_answer(torch.tensor(generated), tok) == p.answer
    assert decode_answer([BOS_ID, 52, 258, 53], tok) == "4"


# ------------------------------------------------------------------------------------ scratchpads
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("mul", {"digits_a": 4, "digits_b": 1}),
        ("mul", {"digits_a": 3, "digits_b": 2}),
        ("arith", {}),
        ("reach", {}),
    ],
)
def test_scratchpad_steps_are_checkable_and_leave_problems_and_splits_unchanged(name, kwargs):
    plain, pad = get_task(name, **kwargs), get_task(name, scratchpad=True, **kwargs)
    problems = pad.generate("val", 50, seed=2)
    assert [(p.prompt, p.answer, p.difficulty) for p in problems] == [
        (p.prompt, p.answer, p.difficulty) for p in plain.generate("val", 50, seed=2)
    ]
    for p in problems:
        steps = pad.solution_steps(p)
        assert pad.split_steps(p.completion) == steps and steps[-1] == "=" + p.answer
        assert p.completion == "".join(s + "\n" for s in steps[:-1]) + "=" + p.answer
        assert pad.score(p.completion, p.answer) and pad.split_of(p) == "val"
        for k in range(len(steps)):  # the oracle walks the solution, and nothing follows a wrong step
            assert pad.next_step(p, steps[:k]) == steps[k] and pad.step_is_correct(
                p, steps[:k], f" {steps[k]} "
            )
        assert pad.next_step(p, steps) is None and pad.next_step(p, ["0*0+0=1"]) is None
        assert not pad.step_is_correct(p, [], steps[0] + "1")


def test_scratchpad_arithmetic_is_right():
    mul = get_task("mul", digits_a=3, digits_b=2, scratchpad=True)
    p = mul.make(458, 43)  # 458*43 = 19694; partial products 1374 and 18320, digits reversed
    assert mul.solution_steps(p) == [
        "8*3+0=24",
        "5*3+2=17",
        "4*3+1=13",
        "8*4+0=32",
        "5*4+3=23",
        "4*4+2=18",
        "4731+02381=49691",
        "=49691",
    ]
    arith = get_task("arith", scratchpad=True)
    assert arith.solution_steps(arith.make(3, 4, 5, 6, 7, 8)) == [
        "4*5=20",
        "3+20=23",
        "23+6=29",
        "7*8=56",
        "29-56=-27",
        "=-27",
    ]
    reach = get_task("reach", scratchpad=True)
    p = Problem(
        "every tobu is a kemi. every kemi is a rupo. every lasa is a nika. is tobu a nika or a rupo?",
        "rupo",
        "2hop",
    )
    assert reach.solution_steps(p) == ["tobu>kemi", "kemi>rupo", "=rupo"]


def test_scratchpad_answers_come_from_the_answer_line_only():
    t = get_task("mul", digits_a=4, digits_b=1, scratchpad=True)
    assert t.canonical("4*5+0=20\n=0716") == "0716" and t.canonical(" 0716 ") == "0716"
    assert t.canonical("4*5+0=20\n3*5+2=17") == ""  # no answer line: no answer
    assert t.score("4*5+0=20\n= 0716", "0716") and not t.score("4*5+0=20\n0716", "0716")
    with pytest.raises(ValueError, match="scratchpad must be true or false"):
        get_task("arith", scratchpad="yes")
    assert get_task("arith").params()["scratchpad"] is False


def test_encode_problem_puts_the_loss_on_scratchpad_and_answer():
    tok = ByteTokenizer()
    p = get_task("arith", scratchpad=True).generate("train", 1)[0]
    input_ids, targets = encode_problem(p, tok)
    supervised = [t for t in targets if t != IGNORE_INDEX]
    assert supervised == tok.encode(p.completion, eos=True) and len(input_ids) == len(targets)
