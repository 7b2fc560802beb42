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
P(correct); ``checker_odds``: P / (1 - P)), and the winner is committed as soon as its share reaches
``commit_share`` (early commit) or ``num_agents`` proposals are in; committing copies the winner's
keys and values into the trajectory's cache. A winner whose share is below ``confident_share`` (a
split vote) or whose checker probability is below ``checker_threshold`` (a failed check) triggers
backtracking, at most ``max_backtracks`` times per problem: the trajectory rolls back to the end of
the last confident step and is re-proposed from there with fresh seeds (a failed winner at the same
position is excluded). The trajectory stops at the answer line.

Compute (see ``moe_swarm.swarm.compute``): forward passes count (row, forward) evaluations: one per
prompt prefill (generator, and checker when there is one), one per fed step token of every proposal,
and one checker chunk forward per proposal; FLOPs add prefill, decode with attention over the cached
prefix, the checker's chunk and head; ``checker_evaluations`` counts checker calls.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moe_swarm.data.tasks import ANSWER_MARK, STEP_SEPARATOR
from moe_swarm.model import MoETransformer
from moe_swarm.model.transformer import KVCache, sample_next
from moe_swarm.swarm.agents import SEED_LIMIT, mix_seed
from moe_swarm.swarm.buffer import ThoughtBuffer, ThoughtRecord
from moe_swarm.swarm.checker import StepChecker
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.solver import embedding_scale, normalise_thoughts
from moe_swarm.swarm.voting import vote

STEP_VOTES = ("plurality", "logprob", "checker", "checker_odds")


@dataclass
class StepSwarmConfig:
    """Settings of the step-level swarm (see the module docstring)."""

    num_agents: int = 16
    wave_agents: int = 4
    temperature: tuple = (0.5, 1.0)
    vote: str = "plurality"
    commit_share: float = 0.75
    confident_share: float = 0.5
    checker_threshold: float = 0.5
    max_backtracks: int = 0
    max_step_tokens: int = 16
    max_steps: int = 24
    max_batch_rows: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        t = self.temperature
        self.temperature = tuple(float(x) for x in (t if isinstance(t, (list, tuple)) else [t]))
        if self.vote not in STEP_VOTES:
            raise ValueError(f"StepSwarmConfig.vote={self.vote!r} is not one of {STEP_VOTES}")
        for name in ("num_agents", "wave_agents", "max_step_tokens", "max_steps", "max_batch_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"StepSwarmConfig.{name} must be an integer >= 1, got {v!r}")
        if self.wave_agents > self.num_agents:
            raise ValueError(f"wave_agents ({self.wave_agents}) must be <= num_agents ({self.num_agents})")
        if self.max_backtracks < 0:
            raise ValueError(f"max_backtracks must be >= 0, got {self.max_backtracks}")
        if not self.temperature or any(not math.isfinite(x) or x < 0 for x in self.temperature):
            raise ValueError(f"temperatures must be finite and >= 0, got {self.temperature}")

    def replace(self, **changes) -> StepSwarmConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["temperature"] = list(self.temperature)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> StepSwarmConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown StepSwarmConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


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
    kv: tuple[Tensor, Tensor]  # (n_layers, H, num_tokens, hd) keys/values of the step's tokens
    checker_kv: tuple[Tensor, Tensor] | None  # the same in the checker's own cache
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
    k: Tensor  # (n_layers, H, max_len, hd)
    v: Tensor
    ck: Tensor | None = None  # the checker model's cache of the same positions
    cv: Tensor | None = None
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


def _prefix_cache(
    model_cfg, prefixes: list[tuple[Tensor, Tensor]], owner: Tensor, length: int, room: int
) -> KVCache:
    """A cache of ``len(owner)`` rows, row r starting from the first ``length`` cached positions of
    ``prefixes[owner[r]]`` (keys, values), with ``room`` free positions after them."""
    k0 = prefixes[0][0]
    cache = KVCache(model_cfg, len(owner), length + room, k0.device, k0.dtype)
    idx = owner.to(k0.device)
    cache.k[:, :, :, :length] = torch.stack([k[:, :, :length] for k, _ in prefixes], 1)[:, idx]
    cache.v[:, :, :, :length] = torch.stack([v[:, :, :length] for _, v in prefixes], 1)[:, idx]
    cache.length = length
    return cache


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
    ) -> None:
        if cfg.vote.startswith("checker") and checker is None:
            raise ValueError(
                "vote='checker' needs a trained StepChecker; train one with moe-swarm-swarm-train"
            )
        if checker is not None and checker.d_model != model.cfg.d_model:
            raise ValueError(
                f"checker d_model={checker.d_model} does not match the model's {model.cfg.d_model}"
            )
        self.model, self.cfg, self.tok, self.task, self.checker = model, cfg, tokenizer, task, checker
        self.buffer = buffer if buffer is not None else ThoughtBuffer()
        self.cost = ModelCost.from_model(model)
        self.sep = tokenizer.encode(STEP_SEPARATOR)[0]

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def _prefill(self, trajs: list[_Trajectory]) -> None:
        """Run each prompt once (problems with equal prompt lengths together) into its trajectory cache."""
        model, dev = self.model, next(self.model.parameters()).device
        by_len: dict[int, list[_Trajectory]] = {}
        for t in trajs:
            by_len.setdefault(len(t.ids), []).append(t)
        for n, group in by_len.items():
            cache = KVCache(model.cfg, len(group), n, dev, group[0].k.dtype)
            out = model(
                torch.tensor([t.ids for t in group], device=dev), cache=cache, last_only=True, with_aux=False
            )
            flops = float(self.cost.row_flops(torch.tensor([n]), torch.tensor([1]))[0])
            ccache = None
            if self.checker is not None:
                ccache = KVCache(self.checker.model.cfg, len(group), n, dev, group[0].k.dtype)
                ids = torch.tensor([t.ids for t in group], device=dev)
                self.checker.model(ids, cache=ccache, last_only=True, with_aux=False)
            for i, t in enumerate(group):
                t.k[:, :, :n] = cache.k[:, i]
                t.v[:, :, :n] = cache.v[:, i]
                if ccache is not None:
                    t.ck[:, :, :n] = ccache.k[:, i]
                    t.cv[:, :, :n] = ccache.v[:, i]
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
        cache = _prefix_cache(model.cfg, [(t.k, t.v) for t in group], owner, length, cfg.max_step_tokens)
        logits = torch.stack([t.boundaries[-1][1] for t in group])[owner.to(dev)]
        temps, seeds = [], []
        for t in group:
            for a in range(per):
                agent = len(t.pool) + a
                temps.append(cfg.temperature[agent % len(cfg.temperature)])
                seeds.append(mix_seed(t.seed, len(t.steps), t.attempt, agent) % SEED_LIMIT)
        temp = torch.tensor(temps, device=dev)
        seed = torch.tensor(seeds, dtype=torch.int64, device=dev)
        tokens = torch.full((rows, cfg.max_step_tokens), self.tok.PAD, dtype=torch.long)
        lp_sum = torch.zeros(rows, device=dev)
        hid_sum = torch.zeros(rows, model.cfg.d_model, device=dev)
        end_hidden = torch.zeros(rows, model.cfg.d_model, device=dev)
        end_logits = torch.zeros(rows, logits.shape[-1], device=dev)
        lengths = torch.zeros(rows, dtype=torch.long, device=dev)
        finished = torch.zeros(rows, dtype=torch.bool, device=dev)
        ended_eos = torch.zeros(rows, dtype=torch.bool, device=dev)
        for step in range(cfg.max_step_tokens):
            pos = torch.full((rows,), length + step, dtype=torch.int64, device=dev)
            nxt = sample_next(logits, temp, None, seed, pos)
            lp = logits.float().log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
            active = ~finished
            tokens[:, step] = torch.where(active, nxt, torch.full_like(nxt, self.tok.PAD)).cpu()
            lp_sum += torch.where(active, lp, torch.zeros_like(lp))
            lengths += active.long()
            stop = active & ((nxt == self.sep) | (nxt == self.tok.EOS) | (step == cfg.max_step_tokens - 1))
            ended_eos |= active & (nxt == self.tok.EOS)
            out = model(nxt[:, None], cache=cache, last_only=True, with_aux=False)  # feed the token
            h, logits = out.hidden[:, -1].float(), out.logits[:, -1].float()
            hid_sum += h * active[:, None]
            end_hidden = torch.where(stop[:, None], h, end_hidden)
            end_logits = torch.where(stop[:, None], logits, end_logits)
            finished |= stop
            if bool(finished.all()):
                break
        probs = torch.full((rows,), math.nan)
        ccache = None
        if self.checker is not None:  # one chunk forward over each proposal, from the checker's own cache
            width = int(lengths.max())
            ccache = _prefix_cache(
                self.checker.model.cfg, [(t.ck, t.cv) for t in group], owner, length, width
            )
            probs = self.checker.score_chunk(ccache, tokens[:, :width].to(dev), lengths).cpu()
        thoughts = normalise_thoughts(end_hidden, embedding_scale(model)).cpu()
        lp_mean = (lp_sum / lengths.clamp_min(1)).cpu().tolist()
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
                kv=(
                    cache.k[:, r, :, length : length + n].clone(),
                    cache.v[:, r, :, length : length + n].clone(),
                ),
                checker_kv=None
                if ccache is None
                else (
                    ccache.k[:, r, :, length : length + n].clone(),
                    ccache.v[:, r, :, length : length + n].clone(),
                ),
                next_logits=end_logits[r].clone(),
                ended_answer=bool(ended_eos[r]),
            )
            out_lists[j].append(prop)
            t.forward_passes += n
            t.tokens_processed += n
            t.flops += flops[r]
            if self.checker is not None:
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
        n = p.num_tokens
        t.k[:, :, t.length : t.length + n] = p.kv[0]
        t.v[:, :, t.length : t.length + n] = p.kv[1]
        if p.checker_kv is not None:
            t.ck[:, :, t.length : t.length + n] = p.checker_kv[0]
            t.cv[:, :, t.length : t.length + n] = p.checker_kv[1]
        t.length += n
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
            or t.length + self.cfg.max_step_tokens > t.k.shape[2]
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
        hd = model.cfg.d_model // model.cfg.n_heads
        max_len = model.cfg.max_seq_len
        trajs = []
        for prompt in prompts:
            ids = self.tok.encode(prompt, bos=True)
            if len(ids) + cfg.max_step_tokens > max_len:
                raise ValueError(
                    f"prompt of {len(ids)} tokens + max_step_tokens={cfg.max_step_tokens} exceeds the model's "
                    f"max_seq_len={max_len}"
                )
            shape = (model.cfg.n_layers, model.cfg.n_heads, max_len, hd)
            seed = mix_seed(cfg.seed, zlib.crc32(",".join(map(str, ids)).encode()))
            trajs.append(
                _Trajectory(
                    ids,
                    seed,
                    *[torch.zeros(shape, device=dev, dtype=dtype) for _ in range(4 if self.checker else 2)],
                )
            )
        if not trajs:
            return []
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


@dataclass
class StepRollouts:
    """Every proposal of step-swarm runs, labelled by the task's step oracle (``Task.step_is_correct``).

    Row i: ``contexts[i] + steps[i]`` (what the checker reads), ``labels[i]`` (1 = the correct next step after its prefix),
    ``groups[i]`` (proposals made at one position from one prefix in one attempt: the set a vote picks
    from), ``vote_wrong[i]`` (its group's plurality winner is wrong although a right proposal is in the
    group: where a better scorer could change the outcome), ``logprobs[i]`` (the likelihood baseline),
    ``prefix_ok[i]`` (its prefix is right so far: after a wrong step every proposal is labelled wrong, which
    says nothing about the proposal itself).
    """

    labels: Tensor
    groups: Tensor
    vote_wrong: Tensor
    logprobs: Tensor
    prefix_ok: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))  # prefix is right
    contexts: list[str] = field(default_factory=list, repr=False)  # prompt + committed prefix, per row
    steps: list[str] = field(default_factory=list, repr=False)  # the proposed step text, per row
    answer_lines: list[bool] = field(default_factory=list, repr=False)  # the step ended with EOS

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def collect_step_rollouts(swarm: StepSwarm, problems: Sequence, task, group_offset: int = 0) -> StepRollouts:
    """Run ``swarm`` on ``problems`` (their ``prompt``) and label each proposal with the step oracle."""
    if not problems:
        raise ValueError("collect_step_rollouts needs at least one problem")
    return label_step_rollouts(problems, swarm.solve([p.prompt for p in problems]), task, group_offset)


def label_step_rollouts(
    problems: Sequence, results: Sequence[StepSwarmResult], task, group_offset: int = 0
) -> StepRollouts:
    """Every proposal of ``results`` (one per problem, in order) labelled with the step oracle; rows in
    proposal order, groups numbered from ``group_offset`` in order of first appearance."""
    labels, groups, logprobs, keys, prefix_ok = [], [], [], {}, []
    contexts, steps, answer_lines = [], [], []
    group_rows: dict[int, list[int]] = {}
    for n, (problem, res) in enumerate(zip(problems, results)):
        for prop, prefix in zip(res.proposals, res.prefixes):
            key = (n, prop.position, prop.attempt, tuple(prefix))
            g = keys.setdefault(key, group_offset + len(keys))
            group_rows.setdefault(g, []).append(len(labels))
            labels.append(float(task.step_is_correct(problem, prefix, prop.step)))
            groups.append(g)
            logprobs.append(prop.logprob)
            prefix_ok.append(task.next_step(problem, prefix) is not None)
            contexts.append(problem.prompt + "".join(x + "\n" for x in prefix))
            steps.append(prop.text)
            answer_lines.append(prop.ended_answer)
    vote_wrong = [False] * len(labels)
    all_props = [p for res in results for p in res.proposals]
    for rows in group_rows.values():
        winner = vote([all_props[r].step for r in rows]).answer
        right = {all_props[r].step for r in rows if labels[r] > 0.5}
        if right and winner not in right:
            for r in rows:
                vote_wrong[r] = True
    return StepRollouts(
        labels=torch.tensor(labels),
        groups=torch.tensor(groups, dtype=torch.long),
        vote_wrong=torch.tensor(vote_wrong),
        logprobs=torch.tensor(logprobs),
        prefix_ok=torch.tensor(prefix_ok, dtype=torch.bool),
        contexts=contexts,
        steps=steps,
        answer_lines=answer_lines,
    )
