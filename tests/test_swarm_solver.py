"""The swarm loop on tiny real models: greedy equivalence, batching, early exit, compute accounting,
thought injection, baselines and rollouts."""

import math

import pytest
import torch

from moe_swarm.data import ByteTokenizer, MultiplicationTask, Problem
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.swarm import (
    AgentBatch,
    AgentSpec,
    SwarmConfig,
    SwarmSolver,
    ThoughtBuffer,
    ValueHead,
    collect_rollouts,
    diversity_controls,
    embedding_scale,
    greedy,
    independent_vote_at_budget,
    summarise_results,
    vote,
)

TOK = ByteTokenizer()
A, C = ord("A"), ord("C")


def tiny(seed: int = 0, **kw) -> MoETransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=4, max_seq_len=64, moe=MoEConfig(num_experts=4, d_ff=32), **kw
    )
    return MoETransformer(cfg).eval()


def _orthonormal(n: int, d: int = 32) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n))
    return q.t()


def peaked_model() -> MoETransformer:
    """After the byte 'A' the model writes 'A' again with probability ~1 (even at temperature 1);
    after other bytes its next-token distribution is nearly flat."""
    model = tiny()
    (u,) = _orthonormal(1)
    with torch.no_grad():
        emb = model.embed.weight  # tied with the output head
        emb -= torch.outer(emb @ u, u)
        emb[A] = 4.0 * u
    return model


def chain_model() -> MoETransformer:
    """Untied head: greedy decoding writes EOS right after 'A', and 'A' right after 'C'.
    So a prompt ending in 'A' generates 1 token, one ending in 'C' generates 2 ('A', EOS)."""
    model = tiny(tie_weights=False)
    u, v = _orthonormal(2)
    with torch.no_grad():
        emb, head = model.embed.weight, model.lm_head.weight
        emb[A], emb[C] = 8.0 * u, 8.0 * v
        head[TOK.EOS], head[A] = 10.0 * u, 10.0 * v
    return model


def flat_model() -> MoETransformer:
    """Final norm weight 0: every logit is exactly 0, so greedy always writes token 0 and never EOS."""
    model = tiny()
    with torch.no_grad():
        model.norm.weight.zero_()
    return model


# --------------------------------------------------------------------------- equivalences


def test_single_greedy_agent_equals_greedy_decoding():
    model = tiny()
    prompts = ["12*34=", "7*8=", "hello world", ""]
    cfg = SwarmConfig(num_agents=1, rounds=0, diversity="none", max_new_tokens=10)
    results = SwarmSolver(model, cfg, TOK).solve(prompts)
    for prompt, res in zip(prompts, results):
        ids = torch.tensor([TOK.encode(prompt, bos=True)])
        out = model.generate(ids, 10, eos_id=TOK.EOS, pad_id=TOK.PAD)
        expected = TOK.decode(out.tokens[0]).strip()
        assert res.answer == expected
        assert res.vote_share == 1.0 and res.rounds_used == 1
        assert res.forward_passes == int(out.lengths[0])
        assert len(res.records) == 1 and res.records[0].text == TOK.decode(out.tokens[0])
    assert [r.answer for r in greedy(model, TOK, prompts, 10)] == [r.answer for r in results]


def test_batched_agents_equal_the_same_agents_run_one_at_a_time():
    model = tiny()
    solver = SwarmSolver(model, SwarmConfig(max_new_tokens=8, thought="mean"), TOK)
    ids = solver.encode(["12*3=", "45*6=", "7*8=", "a"])  # two prompt lengths -> two buckets
    specs = [
        AgentSpec(0.0, 0.0, None, 1),
        AgentSpec(1.0, 0.0, None, 2),
        AgentSpec(0.0, 2.0, None, 3),
        AgentSpec(0.8, 1.0, 3, 4),
        AgentSpec(1.3, 0.5, 1, 5),
        AgentSpec(0.0, 0.0, 4, 6),
        AgentSpec(1.0, 0.0, None, 7),
    ]
    agents = AgentBatch.from_specs(specs)
    problem_index = torch.tensor([0, 1, 2, 3, 0, 2, 3])
    batched = solver.propose(ids, problem_index, agents)
    assert len({t for t in batched.texts}) > 1, "the agents should not all write the same text"
    for r in range(len(specs)):
        one = solver.propose(ids, problem_index[r : r + 1], agents.select(torch.tensor([r])))
        assert one.texts[0] == batched.texts[r], f"row {r}"
        assert int(one.lengths[0]) == int(batched.lengths[r])
        torch.testing.assert_close(one.logprob[0], batched.logprob[r], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(one.thoughts[0], batched.thoughts[r], atol=1e-4, rtol=1e-4)
        assert float(one.flops[0]) == float(batched.flops[r])
    # max_batch_rows only changes how rows are chunked, never what they produce.
    chunked = SwarmSolver(model, SwarmConfig(max_new_tokens=8, thought="mean", max_batch_rows=2), TOK)
    assert chunked.propose(ids, problem_index, agents).texts == batched.texts


def test_a_problem_gets_the_same_result_alone_or_in_a_batch():
    model = tiny()
    cfg = SwarmConfig(num_agents=4, rounds=2, diversity="both", max_new_tokens=6, early_exit_share=0.9)
    prompts = ["12*34=", "5*6=", "xyz"]
    together = SwarmSolver(model, cfg, TOK).solve(prompts)
    for prompt, res in zip(prompts, together):
        (alone,) = SwarmSolver(model, cfg, TOK).solve([prompt])
        assert (alone.answer, alone.votes, alone.forward_passes, alone.rounds_used) == (
            res.answer,
            res.votes,
            res.forward_passes,
            res.rounds_used,
        )


def test_pre_encoded_prompts_equal_string_prompts():
    model = tiny()
    cfg = SwarmConfig(num_agents=3, rounds=1, max_new_tokens=5)
    a = SwarmSolver(model, cfg, TOK).solve(["9*9="])
    b = SwarmSolver(model, cfg, TOK).solve([TOK.encode("9*9=", bos=True)])
    c = SwarmSolver(model, cfg, TOK).solve([torch.tensor(TOK.encode("9*9=", bos=True))])
    assert a[0].votes == b[0].votes == c[0].votes


# --------------------------------------------------------------------------- loop behaviour


def test_early_exit_per_problem_at_the_threshold():
    model = peaked_model()
    cfg = SwarmConfig(num_agents=8, rounds=3, temperature=1.0, max_new_tokens=6, early_exit_share=0.9)
    agree, split = SwarmSolver(model, cfg, TOK).solve(["xA", "xB"])
    assert agree.answer == "AAAAAA" and agree.vote_share == 1.0
    assert agree.rounds_used == 1 and agree.exited_early
    assert agree.forward_passes == 8 * 6  # one round of 8 agents x 6 tokens, no EOS
    assert {r.round for r in agree.records} == {0}
    assert split.vote_share < 0.9
    assert split.rounds_used == 4 and not split.exited_early
    assert {r.round for r in split.records} == {0, 1, 2, 3} and len(split.records) == 32
    assert split.forward_passes == sum(r.num_tokens for r in split.records)
    # A threshold above 1 can never be reached: every round runs.
    (never,) = SwarmSolver(model, cfg.replace(early_exit_share=1.01), TOK).solve(["xA"])
    assert never.vote_share == 1.0 and never.rounds_used == 4 and never.forward_passes == 4 * 8 * 6
    # Exactly at the threshold counts as passing it.
    (exact,) = SwarmSolver(model, cfg.replace(early_exit_share=1.0), TOK).solve(["xA"])
    assert exact.rounds_used == 1


def test_refinement_draws_new_agents_from_the_current_population():
    model = tiny()
    cfg = SwarmConfig(
        num_agents=6,
        rounds=2,
        diversity="both",
        temperature=[0.3, 0.9, 1.5],
        routing_noise=[0.5, 1.5],
        max_new_tokens=5,
        early_exit_share=2.0,
    )
    (res,) = SwarmSolver(model, cfg, TOK).solve(["3*4="])
    by_round = {r: [rec for rec in res.records if rec.round == r] for r in range(3)}
    for rnd in (1, 2):
        parents = {(s.spec.temperature, s.spec.routing_noise) for s in by_round[rnd - 1]}
        children = by_round[rnd]
        assert len(children) == 6
        assert {(s.spec.temperature, s.spec.routing_noise) for s in children} <= parents
        assert not {s.spec.seed for s in children} & {s.spec.seed for s in by_round[rnd - 1]}
    redraw = SwarmSolver(model, cfg.replace(refine="redraw"), TOK).solve(["3*4="])[0]
    assert len(redraw.records) == 18


def test_thoughts_are_rescaled_to_the_embedding_norm_and_published_to_the_buffer():
    model = tiny()
    buf = ThoughtBuffer()
    cfg = SwarmConfig(num_agents=3, rounds=1, max_new_tokens=4, early_exit_share=2.0)
    results = SwarmSolver(model, cfg, TOK).solve(["1*2=", "3*4="], buffer=buf, problem_ids=["p1", "p2"])
    scale = float(embedding_scale(model))
    assert len(buf) == 12 and sorted(buf.problems()) == ["p1", "p2"]
    for r in buf.snapshot():
        assert r.thought.shape == (32,)
        assert float(r.thought.norm()) == pytest.approx(scale, rel=1e-4)
    assert buf.snapshot("p2") == results[1].records


def test_value_head_scoring_and_weighted_vote_use_the_head():
    model = tiny()
    head = ValueHead(32, 16)
    cfg = SwarmConfig(num_agents=4, rounds=0, score="value", max_new_tokens=4)
    (res,) = SwarmSolver(model, cfg, TOK, value_head=head).solve(["2*2="])
    thoughts = torch.stack([r.thought for r in res.records])
    expected = torch.sigmoid(head(thoughts)).tolist()
    assert [r.score for r in res.records] == pytest.approx(expected)
    assert res.votes == pytest.approx(vote([r.answer for r in res.records], expected).votes)
    both = SwarmSolver(model, cfg.replace(score="both"), TOK, value_head=head).solve(["2*2="])[0]
    lp = torch.tensor([r.logprob for r in both.records]).exp()
    assert [r.score for r in both.records] == pytest.approx((lp * torch.tensor(expected)).tolist())


@pytest.mark.parametrize("mode, slots", [("mean", 1), ("slots", 2)])
def test_thought_injection_adds_prefix_slots_and_counts_them(mode, slots):
    model = flat_model()  # every row writes exactly max_new_tokens tokens
    cfg = SwarmConfig(
        num_agents=2,
        rounds=1,
        diversity="none",
        max_new_tokens=3,
        early_exit_share=2.0,
        inject_top_k=2,
        inject_mode=mode,
    )
    (res,) = SwarmSolver(model, cfg, TOK).solve(["ab"])  # 3 prompt tokens with BOS
    # round 0: 2 rows x (3 + 3 - 1); round 1: 2 rows x (3 + slots + 3 - 1)
    assert res.tokens_processed == 2 * 5 + 2 * (5 + slots)
    assert res.forward_passes == 2 * 3 * 2


def test_injected_thoughts_change_what_the_model_reads():
    model = tiny()
    cfg = SwarmConfig(num_agents=2, rounds=1, max_new_tokens=6, early_exit_share=2.0, diversity="none")
    plain = SwarmSolver(model, cfg, TOK).solve(["5*5="])[0]
    injected = SwarmSolver(model, cfg.replace(inject_top_k=1), TOK).solve(["5*5="])[0]
    r0 = [r.logprob for r in plain.records if r.round == 0]
    assert r0 == [r.logprob for r in injected.records if r.round == 0]
    r1_plain = [r.logprob for r in plain.records if r.round == 1]
    r1_inj = [r.logprob for r in injected.records if r.round == 1]
    assert r1_plain != pytest.approx(r1_inj)


# --------------------------------------------------------------------------- compute accounting


def test_compute_accounting_hand_computed():
    """chain_model: prompt "xA" (3 tokens with BOS) -> EOS (L=1); "yzC" (4 tokens) -> "A", EOS (L=2).

    Sizes: d=32, 2 layers, 4 experts of 3*32*32 = 3072 params, top-2, vocab 264, untied head.
    Active body params per token: per layer qkv 3072 + proj 1024 + 2 norms 64 + router 128 +
    2 experts 6144 = 10432; 2 layers + final norm 32 = 20896.
    FLOPs per row = 2*20896*M + 2*264*32*L + 4*2*32*M(M+1)/2, M = P + L - 1.
    """
    model = chain_model()
    assert model.count_parameters().active - 2 * 264 * 32 == 20896
    cfg = SwarmConfig(num_agents=3, rounds=1, diversity="none", max_new_tokens=5, early_exit_share=math.inf)
    first, second = SwarmSolver(model, cfg, TOK).solve(["xA", "yzC"])
    assert (first.answer, second.answer) == ("", "A")
    assert [r.num_tokens for r in first.records] == [1] * 6
    assert [r.num_tokens for r in second.records] == [2] * 6
    # 3 agents x 2 rounds = 6 rows per problem
    assert first.forward_passes == 6 * 1
    assert second.forward_passes == 6 * 2
    assert first.tokens_processed == 6 * 3  # M = 3 + 1 - 1
    assert second.tokens_processed == 6 * 5  # M = 4 + 2 - 1
    row_first = 2 * 20896 * 3 + 2 * 264 * 32 * 1 + 4 * 2 * 32 * 6  # = 143808
    row_second = 2 * 20896 * 5 + 2 * 264 * 32 * 2 + 4 * 2 * 32 * 15  # = 246592
    assert first.flops == 6 * row_first == 862848
    assert second.flops == 6 * row_second == 1479552


def test_compute_accounting_charges_router_top_k_overrides():
    model = chain_model()
    solver = SwarmSolver(model, SwarmConfig(max_new_tokens=5), TOK)
    ids = solver.encode(["xA"])
    agents = AgentBatch.from_specs([AgentSpec(0.0, 0.0, k, 1) for k in (None, 1, 4, 9)])
    props = solver.propose(ids, torch.zeros(4, dtype=torch.long), agents)
    assert props.lengths.tolist() == [1, 1, 1, 1]
    base = 2 * 20896 * 3 + 2 * 264 * 32 + 4 * 2 * 32 * 6
    expert = 3 * 32 * 32
    # Per token, 2 MoE layers x (k - 2) experts more or fewer; k=9 is clamped to the 4 experts.
    expected = [base, base - 2 * 3 * 2 * expert, base + 2 * 3 * 2 * 2 * expert, base + 2 * 3 * 2 * 2 * expert]
    assert props.flops.tolist() == expected


# --------------------------------------------------------------------------- baselines


def test_independent_vote_at_budget_keeps_the_nearest_number_of_agents():
    model = flat_model()  # greedy rows always write 4 tokens: cumulative passes 4, 8, 12, ...
    cfg = SwarmConfig(num_agents=2, diversity="none", max_new_tokens=4)
    r10, r11, r1 = independent_vote_at_budget(model, TOK, ["a", "b", "c"], [10, 11, 1], cfg)
    assert (r10.forward_passes, len(r10.records)) == (8, 2)  # |8-10| == |12-10|: fewer agents win
    assert (r11.forward_passes, len(r11.records)) == (12, 3)
    assert (r1.forward_passes, len(r1.records)) == (4, 1)  # at least one agent
    assert r11.rounds_used == 2  # the third agent came from the second wave of 2
    assert r10.tokens_processed == 2 * (2 + 4 - 1)


def test_independent_vote_matches_a_swarm_budget_with_plain_majority():
    model = tiny()
    cfg = SwarmConfig(num_agents=4, rounds=2, diversity="both", max_new_tokens=6, early_exit_share=2.0)
    prompts = ["12*34=", "5*6="]
    swarm = SwarmSolver(model, cfg, TOK).solve(prompts)
    control = independent_vote_at_budget(model, TOK, prompts, [r.forward_passes for r in swarm], cfg)
    for s, c in zip(swarm, control):
        lengths = [r.num_tokens for r in c.records]
        assert c.forward_passes == sum(lengths)
        assert abs(c.forward_passes - s.forward_passes) <= max(lengths)
        assert c.votes == vote([r.answer for r in c.records]).votes  # unweighted


def test_diversity_controls_and_summarise_results():
    controls = diversity_controls(SwarmConfig(num_agents=5))
    assert sorted(controls) == ["both", "routing", "temperature"]
    assert all(c.num_agents == 5 for c in controls.values())
    model = peaked_model()
    task = MultiplicationTask(1, 1)
    problems = [Problem("xA", "AAAA", "easy"), Problem("xB", "zz", "hard")]
    cfg = SwarmConfig(num_agents=4, rounds=0, max_new_tokens=4)
    results = SwarmSolver(model, cfg, TOK, canonical=task.canonical).solve([p.prompt for p in problems])
    stats = summarise_results(results, problems, task)
    assert stats["swarm"] == 0.5 and stats["pass_at_n"] == 0.5 and stats["coverage"] == 0.5
    assert stats["swarm_by_difficulty"] == {"easy": 1.0, "hard": 0.0}
    assert stats["forward_passes"] == sum(r.forward_passes for r in results) / 2


def test_collect_rollouts_labels_records_by_exact_match():
    model = peaked_model()
    task = MultiplicationTask(1, 1)
    problems = [Problem("xA", "AAAA", "1x1"), Problem("xB", "AAAA", "1x1")]
    cfg = SwarmConfig(num_agents=4, rounds=1, max_new_tokens=4, early_exit_share=2.0)
    ro = collect_rollouts(SwarmSolver(model, cfg, TOK), problems, task, group_offset=10)
    assert len(ro) == 16 and ro.thoughts.shape == (16, 32)
    assert ro.group_ids.tolist() == [10] * 8 + [11] * 8
    assert ro.rounds.tolist() == ([0] * 4 + [1] * 4) * 2
    assert ro.rewards[:8].tolist() == [1.0] * 8
    texts = [r.text for r in ro.results[1].records]
    assert ro.rewards[8:].tolist() == [1.0 if t == "AAAA" else 0.0 for t in texts]
    assert ro.advantages()[:8].abs().max() == 0  # all right: nothing to learn from that group
    thoughts, rewards, groups = ro
    assert thoughts is ro.thoughts and rewards is ro.rewards and groups is ro.group_ids


# --------------------------------------------------------------------------- errors


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    solver = SwarmSolver(model, SwarmConfig(max_new_tokens=8), TOK)
    with pytest.raises(ValueError, match="max_seq_len"):
        solver.solve(["x" * 60])
    with pytest.raises(ValueError, match="empty"):
        solver.solve([[]])
    with pytest.raises(ValueError, match="outside"):
        solver.solve([[1, 2, 999]])
    with pytest.raises(TypeError, match="str or a list"):
        solver.solve([3.5])
    with pytest.raises(ValueError, match="problem_ids"):
        solver.solve(["a", "b"], problem_ids=["only-one"])
    assert solver.solve([]) == []
    with pytest.raises(ValueError, match="value_head"):
        SwarmSolver(model, SwarmConfig(score="value"), TOK)
    with pytest.raises(ValueError, match="d_model"):
        SwarmSolver(model, SwarmConfig(score="value"), TOK, value_head=ValueHead(16))
    with pytest.raises(TypeError, match="SwarmConfig"):
        SwarmSolver(model, {"num_agents": 2}, TOK)
    model.train()
    with pytest.raises(RuntimeError, match="eval"):
        solver.solve(["a"])
