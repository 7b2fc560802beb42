"""The step-level swarm: N agents propose each reasoning step of one shared trajectory (plain PyTorch).

Per problem there is one trajectory (the global context): the prompt and the steps committed so far,
held once in a KV cache. At each step every agent (a temperature and a seed) continues that prefix to
the end of one step (a ``"\\n"``, or EOS after the answer line). All agents of all problems whose
prefixes have the same length decode together in one batched loop that starts from copies of the
prefix's cached keys and values, so the prefix is never re-run per agent. Decoding a step ends by
feeding its last token, which gives the winner's next-step first-token distribution. The learned
step checker (``moe_swarm.swarm.checker``) keeps its own cache of the trajectory and reads each
proposal in one chunk forward.

Each proposal goes to the shared ``ThoughtBuffer`` (thought vector, canonical step, weight,
log-prob). Proposals are counted in waves of ``wave_agents``; after each wave the canonical step
strings are voted on (``plurality``; ``logprob``: exp of the mean token log-prob; ``checker``:
P(correct); ``checker_odds``: P / (1 - P); ``selector``: a learned choice, ``moe_swarm.swarm.selector``), and
the winner is committed as soon as its share reaches
``commit_share`` (early commit) or ``num_agents`` proposals are in; committing copies the winner's
keys and values into the trajectory's cache. A winner whose share is below ``confident_share`` (a
split vote) or whose checker probability is below ``checker_threshold`` (a failed check) triggers
backtracking, at most ``max_backtracks`` times per problem: the trajectory rolls back to the end of
the last confident step and is re-proposed from there with fresh seeds (a failed winner at the same
position is excluded). The trajectory stops at the answer line.

Compute (see ``moe_swarm.swarm.compute``): forward passes count (row, forward) evaluations: one per
prompt prefill (generator, and checker when there is one), one per fed step token of every proposal,
and one checker chunk forward per proposal; FLOPs add prefill, decode with attention over the cached
prefix, the checker's chunk and head; ``checker_evaluations`` counts checker calls. A checker that shares
the generator's trunk (``moe_swarm.swarm.trunk_checker``) keeps no cache and costs only its head.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moe_swarm.data.tasks import ANSWER_MARK, STEP_SEPARATOR
from moe_swarm.model import KVCache, KVSpan, MoETransformer
from moe_swarm.model.decoding import CachedSteps, Sampler, extend, run_token_loop
from moe_swarm.swarm.agents import SEED_LIMIT, mix_seed
from moe_swarm.swarm.buffer import ThoughtBuffer, ThoughtRecord
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.selector import StepSelector
from moe_swarm.swarm.solver import embedding_scale, normalise_thoughts
from moe_swarm.swarm.step_config import STEP_VOTES as STEP_VOTES  # re-exported: it lived here
from moe_swarm.swarm.step_config import StepSwarmConfig
from moe_swarm.swarm.voting import VoteResult, vote


@dataclass
class StepProposal:
    """One agent's proposal for step ``position`` of a problem (attempt ``attempt`` at that position)."""

    position: int
    attempt: int
    agent: int
    text: str
    tokens: list[int]  # the step's token ids as decoded, separator (or EOS) included
    step: str  # canonical step string (what is voted on)
    logprob: float  # mean token log-prob (temperature 1), separator included
    checker: float  # P(correct) from the checker, NaN without one
    thought: Tensor  # (d,) generator hidden state after the step's last token, at embedding scale
    num_tokens: int
    kv: KVSpan  # the cached keys/values of the step's tokens
    checker_kv: KVSpan | None  # the same in the checker's own cache
    next_logits: Tensor  # (V,) logits after the step's last token: the next step's first token
    ended_answer: bool  # the step ended with EOS (the answer line)


@dataclass
class StepSwarmResult:
    """The committed trajectory of one problem and what it cost."""

    answer: str
    completion: str
    steps: list[str]
    shares: list[float]
    committed: list[StepProposal]
    answer_votes: dict[str, float]  # the tally of the answer-line vote, by canonical answer
    forward_passes: int
    tokens_processed: int
    flops: float
    checker_evaluations: int
    backtracks: int
    proposals: list[StepProposal] = field(default_factory=list, repr=False)
    prefixes: list[list[str]] = field(default_factory=list, repr=False)  # the prefix each proposal saw


@dataclass
class _Trajectory:
    ids: list[int]
    seed: int
    row: int  # this trajectory's row in the solve's caches
    cache: KVCache  # the generator's keys/values of every trajectory, ``length`` positions of row ``row``
    checker_cache: KVCache | None = None  # the checker model's cache of the same positions
    length: int = 0
    boundaries: list[tuple[int, Tensor]] = field(default_factory=list)  # (length, next logits) per step
    steps: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    committed: list[StepProposal] = field(default_factory=list)
    last_votes: dict[str, float] = field(default_factory=dict)
    shares: list[float] = field(default_factory=list)
    confident: list[bool] = field(default_factory=list)
    pool: list[StepProposal] = field(default_factory=list)  # proposals at the current position
    attempt: int = 0
    banned: set[str] = field(default_factory=set)
    backtracks: int = 0
    done: bool = False
    forward_passes: int = 0
    tokens_processed: int = 0
    flops: float = 0.0
    checks: int = 0
    all_proposals: list[StepProposal] = field(default_factory=list)
    all_prefixes: list[list[str]] = field(default_factory=list)


class StepSwarm:
    """Runs the step-level swarm for a model, a task (canonical steps and answers) and an optional checker."""

    def __init__(
        self,
        model: MoETransformer,
        cfg: StepSwarmConfig,
        tokenizer,
        task,
        checker: StepChecker | None = None,
        buffer: ThoughtBuffer | None = None,
        selector: StepSelector | None = None,
    ) -> None:
        if cfg.vote == "selector" and selector is None:
            raise ValueError(
                "vote='selector' needs a fitted StepSelector (moe_swarm.swarm.selector.fit_selector)"
            )
        if cfg.vote.startswith("checker") and checker is None:
            raise ValueError(
                "vote='checker' needs a trained StepChecker; train one with moe-swarm-swarm-train"
            )
        if checker is not None and checker.d_model != model.cfg.d_model:
            raise ValueError(
                f"checker d_model={checker.d_model} does not match the model's {model.cfg.d_model}"
            )
        self.model, self.cfg, self.tok, self.task, self.checker = model, cfg, tokenizer, task, checker
        self.selector = selector
        # a checker that shares the generator's trunk reads the decoded states: no cache, no forward pass
        self.trunk = bool(getattr(checker, "shares_trunk", False))
        if self.trunk:
            checker.bind(model)
        self.buffer = buffer if buffer is not None else ThoughtBuffer()
        self.cost = ModelCost.from_model(model)
        sep = tokenizer.encode(STEP_SEPARATOR)
        if len(sep) != 1:  # steps end at this one token (a tokenizer.json may merge or split it)
            raise ValueError(
                f"the step swarm needs {STEP_SEPARATOR!r} to be one token; {tokenizer!r} gives {sep}"
            )
        self.sep = sep[0]

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def _prefill(self, trajs: list[_Trajectory]) -> None:
        """Run each prompt once (problems with equal prompt lengths together) into its trajectory cache."""
        model, dev = self.model, next(self.model.parameters()).device
        by_len: dict[int, list[_Trajectory]] = {}
        for t in trajs:
            by_len.setdefault(len(t.ids), []).append(t)
        for n, group in by_len.items():
            ids = torch.tensor([t.ids for t in group], device=dev)
            cache = KVCache(model.cfg, len(group), n, dev, group[0].cache.dtype)
            out = extend(model, cache, ids)
            flops = float(self.cost.row_flops(torch.tensor([n]), torch.tensor([1]))[0])
            ccache = None
            if self.checker is not None and not self.trunk:
                ccache = KVCache(self.checker.model.cfg, len(group), n, dev, group[0].cache.dtype)
                extend(self.checker.model, ccache, ids)
            for i, t in enumerate(group):
                t.cache.commit(t.row, 0, cache.slice(i, 0, n))
                if ccache is not None:
                    t.checker_cache.commit(t.row, 0, ccache.slice(i, 0, n))
                    t.forward_passes += 1
                    t.tokens_processed += n
                    t.flops += flops
                t.length = n
                t.boundaries = [(n, out.logits[i, -1].float())]
                t.forward_passes += 1
                t.tokens_processed += n
                t.flops += flops

    @torch.no_grad()
    def _decode(self, group: list[_Trajectory], per: int) -> list[list[StepProposal]]:
        """``per`` proposals for each trajectory of ``group`` (all at the same prefix length), batched."""
        model, cfg, dev = self.model, self.cfg, next(self.model.parameters()).device
        length = group[0].length
        rows = len(group) * per
        owner = torch.arange(len(group)).repeat_interleave(per)
        traj_rows = torch.tensor([t.row for t in group])[owner]
        cache = group[0].cache.fork(traj_rows, cfg.max_step_tokens, length)
        logits = torch.stack([t.boundaries[-1][1] for t in group])[owner.to(dev)]
        temps, seeds = [], []
        for t in group:
            for a in range(per):
                agent = len(t.pool) + a
                temps.append(cfg.temperature[agent % len(cfg.temperature)])
                seeds.append(mix_seed(t.seed, len(t.steps), t.attempt, agent) % SEED_LIMIT)
        sampler = Sampler(
            torch.tensor(temps, device=dev), None, torch.tensor(seeds, dtype=torch.int64, device=dev)
        )
        decoded = run_token_loop(  # each step token is fed, so the winner's next logits are known
            lambda: (logits, None),
            CachedSteps(model, cache),
            sampler,
            rows=rows,
            hidden_size=model.cfg.d_model,
            device=dev,
            start=length,
            max_new_tokens=cfg.max_step_tokens,
            pad_id=self.tok.PAD,
            stop_ids=(self.sep, self.tok.EOS),
            capture="read",
        )
        tokens, lengths = decoded.tokens.cpu(), decoded.lengths
        probs = torch.full((rows,), math.nan)
        ccache = None
        if self.trunk:  # the head reads the hidden states and log-probs decoding just produced
            probs = self.checker.score_decoded(decoded, lengths).cpu()
        elif self.checker is not None:  # one chunk forward over each proposal, from the checker's own cache
            width = int(lengths.max())
            ccache = group[0].checker_cache.fork(traj_rows, width, length)
            probs = self.checker.score_chunk(ccache, tokens[:, :width].to(dev), lengths).cpu()
        thoughts = normalise_thoughts(decoded.hidden_last, embedding_scale(model)).cpu()
        lp_mean = (decoded.logprob_sum / lengths.clamp_min(1)).cpu().tolist()
        lens = lengths.cpu().tolist()
        ctx = torch.full((rows,), length)
        flops = self.cost.decode_flops(ctx, lengths.cpu()).tolist()
        out_lists: list[list[StepProposal]] = [[] for _ in group]
        for r in range(rows):
            j, n = int(owner[r]), lens[r]
            t = group[j]
            ids = [x for x in tokens[r, :n].tolist() if x not in (self.tok.EOS, self.sep)]
            text = self.tok.decode(ids, stop_at_eos=True)
            prop = StepProposal(
                position=len(t.steps),
                attempt=t.attempt,
                agent=len(t.pool) + len(out_lists[j]),
                text=text,
                tokens=tokens[r, :n].tolist(),
                step=self.task.canonical_step(text),
                logprob=lp_mean[r],
                checker=float(probs[r]),
                thought=thoughts[r],
                num_tokens=n,
                kv=cache.slice(r, length, length + n),
                checker_kv=None if ccache is None else ccache.slice(r, length, length + n),
                next_logits=decoded.logits_last[r].clone(),
                ended_answer=tokens[r, n - 1].item() == self.tok.EOS,
            )
            out_lists[j].append(prop)
            t.forward_passes += n
            t.tokens_processed += n
            t.flops += flops[r]
            if self.trunk:
                t.checks += 1
                t.flops += self.checker.head_flops(n)
            elif self.checker is not None:
                t.checks += 1
                t.forward_passes += 1
                t.tokens_processed += n
                t.flops += flops[r] + self.checker.head_flops(n)
        return out_lists

    # ------------------------------------------------------------------ voting and committing
    def weight(self, p: StepProposal) -> float:
        if self.cfg.vote == "logprob":
            return math.exp(p.logprob)
        if self.cfg.vote == "checker":
            return p.checker
        if (
            self.cfg.vote == "checker_odds"
        ):  # p / (1 - p): one confident proposal outweighs several doubtful ones
            return p.checker / max(1.0 - p.checker, 1e-6)
        return 1.0

    def _decide(self, t: _Trajectory, key: int) -> None:
        """After a wave: commit, ask for another wave, or backtrack."""
        cfg = self.cfg
        pool = [p for p in t.pool if p.step not in t.banned] or t.pool
        if cfg.vote == "selector":  # the learned choice among the candidates; its probability is the share
            v = VoteResult(*self.selector.select(pool))
        else:
            v = vote([p.step for p in pool], [self.weight(p) for p in pool])
        attempt_props = [p for p in t.pool if p.attempt == t.attempt]
        if v.share < cfg.commit_share and len(attempt_props) < cfg.num_agents:
            return  # no early commit yet: another wave
        winners = [p for p in pool if p.step == v.answer]
        check = sum(p.checker for p in winners) / len(winners)
        failed = v.share < cfg.confident_share or (self.checker is not None and check < cfg.checker_threshold)
        if failed and t.backtracks < cfg.max_backtracks:
            t.backtracks += 1
            target = max((i + 1 for i, c in enumerate(t.confident) if c), default=0)
            if target == len(t.steps):
                t.banned.add(v.answer)  # re-propose here, without the winner that failed
            else:
                self._rollback(t, target)
            t.attempt += 1
            return
        t.last_votes = v.votes
        self._commit(t, winners[0], v.share, not failed, key)

    def _rollback(self, t: _Trajectory, target: int) -> None:
        t.steps, t.texts, t.committed = t.steps[:target], t.texts[:target], t.committed[:target]
        t.shares, t.confident = t.shares[:target], t.confident[:target]
        t.boundaries = t.boundaries[: target + 1]
        t.length = t.boundaries[-1][0]
        t.pool, t.banned = [], set()

    def _commit(self, t: _Trajectory, p: StepProposal, share: float, confident: bool, key: int) -> None:
        t.cache.commit(t.row, t.length, p.kv)
        if p.checker_kv is not None:
            t.checker_cache.commit(t.row, t.length, p.checker_kv)
        t.length += p.num_tokens
        t.boundaries.append((t.length, p.next_logits))
        t.steps.append(p.step)
        t.texts.append(p.text)
        t.committed.append(p)
        t.shares.append(share)
        t.confident.append(confident)
        t.pool, t.banned, t.attempt = [], set(), 0
        answer_line = p.ended_answer or p.step.startswith(ANSWER_MARK)
        if (
            answer_line
            or len(t.steps) >= self.cfg.max_steps
            or t.length + self.cfg.max_step_tokens > t.cache.max_len
        ):
            t.done = True

    def _answer_votes(self, votes: dict[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for step, weight in votes.items():
            answer = self.task.canonical(step)
            out[answer] = out.get(answer, 0.0) + weight
        return out

    # ------------------------------------------------------------------ loop
    def solve(self, prompts: Sequence[str]) -> list[StepSwarmResult]:
        """Solve each prompt; problems are batched whenever their prefixes have equal length."""
        model, cfg = self.model, self.cfg
        if model.training:
            raise RuntimeError("the step swarm decodes in eval mode; call model.eval()")
        dev = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        max_len = model.cfg.max_seq_len
        encoded = []
        for prompt in prompts:
            ids = self.tok.encode(prompt, bos=True)
            if len(ids) + cfg.max_step_tokens > max_len:
                raise ValueError(
                    f"prompt of {len(ids)} tokens + max_step_tokens={cfg.max_step_tokens} exceeds the model's "
                    f"max_seq_len={max_len}"
                )
            encoded.append(ids)
        if not encoded:
            return []
        cache = KVCache(model.cfg, len(encoded), max_len, dev, dtype)  # one row per trajectory
        checker_cache = None
        if self.checker is not None and not self.trunk:
            checker_cache = KVCache(self.checker.model.cfg, len(encoded), max_len, dev, dtype)
        trajs = [
            _Trajectory(
                ids, mix_seed(cfg.seed, zlib.crc32(",".join(map(str, ids)).encode())), i, cache, checker_cache
            )
            for i, ids in enumerate(encoded)
        ]
        self._prefill(trajs)
        while True:
            active = [i for i, t in enumerate(trajs) if not t.done]
            if not active:
                break
            by_len: dict[int, list[int]] = {}
            for i in active:
                by_len.setdefault(trajs[i].length, []).append(i)
            per = cfg.wave_agents
            chunk = max(1, cfg.max_batch_rows // per)
            for idx in by_len.values():
                for start in range(0, len(idx), chunk):
                    part = idx[start : start + chunk]
                    group = [trajs[i] for i in part]
                    props = self._decode(group, per)
                    for i, t, new in zip(part, group, props):
                        prefix = list(t.steps)
                        t.pool.extend(new)
                        t.all_proposals.extend(new)
                        t.all_prefixes.extend([prefix] * len(new))
                        self.buffer.extend(
                            ThoughtRecord(
                                problem=(i, p.position),
                                agent=p.agent,
                                round=p.attempt,
                                thought=p.thought,
                                answer=p.step,
                                score=self.weight(p),
                                logprob=p.logprob,
                                text=p.text,
                                num_tokens=p.num_tokens,
                            )
                            for p in new
                        )
                        self._decide(t, i)
        results = []
        for t in trajs:
            completion = "\n".join(t.texts)
            results.append(
                StepSwarmResult(
                    answer=self.task.canonical(completion),
                    completion=completion,
                    steps=list(t.steps),
                    shares=list(t.shares),
                    committed=list(t.committed),
                    answer_votes=self._answer_votes(t.last_votes),
                    forward_passes=t.forward_passes,
                    tokens_processed=t.tokens_processed,
                    flops=t.flops,
                    checker_evaluations=t.checks,
                    backtracks=t.backtracks,
                    proposals=t.all_proposals,
                    prefixes=t.all_prefixes,
                )
            )
        return results
