"""The step checker that shares the generator's trunk: same scores from decoding and from text, no
forward pass per check, and a state that round-trips."""

import math

import torch

from moe_swarm.data import ByteTokenizer, get_task
from moe_swarm.model import MoEConfig, MoETransformer, TransformerConfig
from moe_swarm.swarm import StepSwarm, StepSwarmConfig, TrunkStepChecker, load_step_checker
from moe_swarm.swarm.checker import StepChecker, pad_rows
from moe_swarm.swarm.state import step_swarm_state

TOK = ByteTokenizer()
TASK = get_task("mul", digits_a=2, digits_b=1, scratchpad=True)
PROMPTS = [p.prompt for p in TASK.generate("train", 4, seed=0)]
CFG = StepSwarmConfig(num_agents=4, wave_agents=2, vote="checker", max_step_tokens=10, max_steps=6, seed=1)


def tiny(seed: int = 0) -> MoETransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=4, max_seq_len=96, moe=MoEConfig(num_experts=4, d_ff=32)
    )
    return MoETransformer(cfg).eval()


def trunk_checker(seed: int = 2) -> TrunkStepChecker:
    torch.manual_seed(seed)
    return TrunkStepChecker(32, hidden=16).eval()


def test_scores_from_decoding_equal_teacher_forced_scores_of_the_same_text():
    model, checker = tiny(), trunk_checker()
    results = StepSwarm(model, CFG, TOK, TASK, checker).solve(PROMPTS)
    rows, starts, ends, decoded = [], [], [], []
    for prompt, r in zip(PROMPTS, results):  # token ids, not text: a random model writes any bytes
        for p in r.proposals:
            ctx = TOK.encode(prompt, bos=True) + [x for c in r.committed[: p.position] for x in c.tokens]
            rows.append(ctx + p.tokens)
            starts.append(len(ctx))
            ends.append(len(ctx) + len(p.tokens) - 1)
            decoded.append(p.checker)
    assert len(decoded) > 8
    idx, mask = pad_rows(rows, TOK.PAD)
    batch = {"idx": idx, "mask": mask, "starts": torch.tensor(starts), "ends": torch.tensor(ends)}
    with torch.no_grad():
        forced = torch.sigmoid(checker.logits(batch))
    gap = (forced - torch.tensor(decoded)).abs().max()
    assert torch.allclose(forced, torch.tensor(decoded), atol=1e-4), gap  # float32 reductions differ


def test_a_trunk_check_costs_the_head_and_no_forward_pass():
    model = tiny()
    plain = StepSwarm(model, CFG.replace(vote="plurality"), TOK, TASK).solve(PROMPTS)
    checker = trunk_checker()
    trunk = StepSwarm(model, CFG.replace(vote="plurality"), TOK, TASK, checker).solve(PROMPTS)
    full = StepSwarm(model, CFG.replace(vote="plurality"), TOK, TASK, StepChecker(tiny(3), 16)).solve(PROMPTS)
    for a, b, c in zip(plain, trunk, full):
        assert a.steps == b.steps == c.steps  # the plurality vote ignores the scores: same trajectory
        assert b.forward_passes == a.forward_passes and b.checker_evaluations == len(b.proposals)
        assert math.isclose(b.flops, a.flops + b.checker_evaluations * checker.head_flops(), rel_tol=1e-12)
        assert c.forward_passes > a.forward_passes and c.flops > 1.5 * a.flops  # the full copy re-reads


def test_trunk_checker_state_round_trips_and_binds_to_the_swarms_model():
    model, checker = tiny(), trunk_checker()
    state = step_swarm_state(checker, CFG)
    loaded, steps = load_step_checker(state)
    assert isinstance(loaded, TrunkStepChecker) and steps == CFG
    for k, v in checker.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not any(k.startswith("model") for k in state["step_checker"]["state_dict"])  # no trunk copy
    a = StepSwarm(model, CFG, TOK, TASK, checker).solve(PROMPTS[:2])
    b = StepSwarm(model, CFG, TOK, TASK, loaded).solve(PROMPTS[:2])
    assert [r.steps for r in a] == [r.steps for r in b] and loaded.model is model
