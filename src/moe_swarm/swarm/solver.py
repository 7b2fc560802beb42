"""SwarmSolver: the propose -> score -> vote -> refine -> early-exit loop over a batch of problems.

Every round decodes all agents of all unfinished problems together: rows are bucketed by prompt
length (the decoding engine's ``generate`` needs equal-length prompts) and each bucket is one batched
``generate`` call with the KV cache. Agents' randomness is counter-based and keyed by their seeds, and each problem's
seeds derive from ``cfg.seed`` and the problem's own token ids, so a problem gets the same answer
whether it is solved alone or in a batch.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from moe_swarm.model import MoETransformer
from moe_swarm.model.decoding import generate
from moe_swarm.swarm.agents import AgentBatch, make_agents, mix_seed, resample_agents, seeded_generator
from moe_swarm.swarm.buffer import ThoughtBuffer, ThoughtRecord
from moe_swarm.swarm.compute import ModelCost
from moe_swarm.swarm.config import SwarmConfig
from moe_swarm.swarm.value import ValueHead
from moe_swarm.swarm.voting import VoteResult, vote

PromptLike = str | Sequence[int] | Tensor


def default_canonical(answer: str) -> str:
    """Surrounding whitespace removed (what the reasoning tasks compare)."""
    return answer.strip()


def embedding_scale(model: MoETransformer) -> Tensor:
    """Mean L2 norm of the token-embedding rows: the scale thought vectors are rescaled to."""
    return model.embed.weight.detach().float().norm(dim=1).mean()


def normalise_thoughts(hidden: Tensor, scale: Tensor) -> Tensor:
    """Rescale each row to L2 norm ``scale`` (final hidden states are far larger than embeddings)."""
    h = hidden.float()
    return h * (scale.to(h.device) / h.norm(dim=-1, keepdim=True).clamp_min(1e-12))


@dataclass
class SwarmResult:
    """The swarm's answer for one problem, its confidence and what it cost.

    ``answer`` is the winning canonical answer, ``vote_share`` its share of the vote, ``votes`` the
    tally per canonical answer. Compute (see ``moe_swarm.swarm.compute``): ``forward_passes`` are
    agent-forward-passes (row, decode step) attributed to this problem (= the tokens its agents wrote,
    EOS included, under KV-cache decoding), ``tokens_processed`` every position run through the model, ``flops``
    the estimate. ``rounds_used`` counts proposal rounds (1 = no refinement happened). ``text`` is the raw
    text of the highest-scoring record with the winning answer; ``records`` are this problem's records.
    """

    answer: str
    vote_share: float
    votes: dict[str, float]
    forward_passes: int
    flops: float
    rounds_used: int
    tokens_processed: int = 0
    exited_early: bool = False
    text: str = ""
    records: list[ThoughtRecord] = field(default_factory=list, repr=False)


@dataclass
class Proposals:
    """One round of decoded rows; row r is agent ``agents[r]`` working on problem ``problem_index[r]``."""

    problem_index: Tensor  # (R,) long, index into the prompt list
    agents: AgentBatch
    texts: list[str]  # raw decoded text up to EOS
    answers: list[str]  # canonical answers
    tokens: Tensor  # (R, max_new_tokens) generated ids (PAD after EOS), CPU
    lengths: Tensor  # (R,) generated tokens, EOS included
    logprob: Tensor  # (R,) length-normalised sequence log-prob
    thoughts: Tensor  # (R, d_model) normalised thought vectors
    context: Tensor  # (R,) prompt tokens + injected slots
    flops: Tensor  # (R,) float64

    @property
    def tokens_processed(self) -> Tensor:
        return self.context + self.lengths - 1


@torch.no_grad()
def score_weights(
    mode: str, logprob: Tensor, thoughts: Tensor, value_head: ValueHead | None = None
) -> Tensor:
    """The weight of each record under score ``mode`` (CPU float32, >= 0): ``exp(logprob)`` for
    ``"logprob"``, the value head's P(correct) of the thought for ``"value"``, their product for
    ``"both"``, 1 for ``"none"``. The one definition used by the solver and by re-votes of saved records."""
    weight = torch.ones(logprob.shape[0])
    if mode in ("logprob", "both"):
        weight = weight * logprob.float().cpu().exp()
    if mode in ("value", "both"):
        if value_head is None:
            raise ValueError(f"score mode {mode!r} needs a value head")
        head_dev = next(value_head.parameters()).device
        was_training = value_head.training
        value_head.eval()
        weight = weight * torch.sigmoid(value_head(thoughts.to(head_dev))).float().cpu()
        value_head.train(was_training)
    return weight


class SwarmSolver:
    """Runs the swarm loop for a model (see docs/swarm.md).

    ``tokenizer`` needs ``encode(text, bos=True)``, ``decode(ids, stop_at_eos=True)`` and the ``EOS``
    and ``PAD`` ids (``moe_swarm.data.tokenizer.load_tokenizer``: the byte tokenizer or a tokenizer.json). ``canonical`` maps a decoded answer to the form
    votes are counted in (e.g. ``task.canonical``). ``value_head`` is required when ``cfg.score`` is
    ``"value"`` or ``"both"``.
    """

    def __init__(
        self,
        model: MoETransformer,
        cfg: SwarmConfig,
        tokenizer,
        canonical: Callable[[str], str] = default_canonical,
        value_head: ValueHead | None = None,
    ) -> None:
        if not isinstance(cfg, SwarmConfig):
            raise TypeError(
                f"cfg must be a SwarmConfig, got {type(cfg).__name__} (use SwarmConfig.from_dict)"
            )
        if cfg.score in ("value", "both") and value_head is None:
            raise ValueError(f"cfg.score={cfg.score!r} needs a value_head; pass one or use score='logprob'")
        if value_head is not None and value_head.d_model != model.cfg.d_model:
            raise ValueError(
                f"value_head.d_model={value_head.d_model} does not match the model's d_model={model.cfg.d_model}"
            )
        self.model = model
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.canonical = canonical
        self.value_head = value_head
        self.cost = ModelCost.from_model(model)

    # ------------------------------------------------------------------ encoding
    def encode(self, prompts: Sequence[PromptLike]) -> list[list[int]]:
        """Strings become ``[BOS] + their token ids``; token-id lists/tensors are taken as they are (BOS included)."""
        vocab = self.model.cfg.vocab_size
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                ids = list(self.tokenizer.encode(p, bos=True))
            elif isinstance(p, Tensor):
                if p.dim() != 1:
                    raise ValueError(f"prompt {i}: a token tensor must be 1-D, got shape {tuple(p.shape)}")
                ids = [int(t) for t in p.tolist()]
            elif isinstance(p, Sequence):
                ids = [int(t) for t in p]
            else:
                raise TypeError(f"prompt {i}: expected a str or a list of token ids, got {type(p).__name__}")
            if not ids:
                raise ValueError(f"prompt {i} is empty; token prompts need at least one id (e.g. BOS)")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")
            out.append(ids)
        return out

    def check_lengths(self, ids: list[list[int]]) -> None:
        slots = 0
        if self.cfg.inject_top_k > 0 and self.cfg.rounds > 0:
            slots = 1 if self.cfg.inject_mode == "mean" else self.cfg.inject_top_k
        limit = self.model.cfg.max_seq_len
        for i, p in enumerate(ids):
            need = len(p) + slots + self.cfg.max_new_tokens
            if need > limit:
                raise ValueError(
                    f"prompt {i} needs {need} positions ({len(p)} prompt + {slots} thought slots + "
                    f"{self.cfg.max_new_tokens} new tokens) but the model's max_seq_len is {limit}; "
                    "shorten the prompt or lower swarm max_new_tokens"
                )

    # ------------------------------------------------------------------ propose
    def propose(
        self,
        prompt_ids: list[list[int]],
        problem_index: Tensor,
        agents: AgentBatch,
        prefixes: dict[int, Tensor] | None = None,
    ) -> Proposals:
        """Decode every row (agent ``agents[r]`` on prompt ``prompt_ids[problem_index[r]]``).

        Rows are bucketed by (prompt length, injected slots); each bucket is one ``generate`` call
        (split into chunks of ``cfg.max_batch_rows`` if set). Outputs come back in row order.
        """
        if self.model.training:
            raise RuntimeError(
                "the swarm decodes in eval mode (train mode turns on dropout and router jitter); call model.eval()"
            )
        cfg, model = self.cfg, self.model
        problem_index = problem_index.to(torch.long).cpu()
        rows = problem_index.shape[0]
        if rows != len(agents):
            raise ValueError(f"{rows} rows but {len(agents)} agents")
        prefixes = prefixes or {}
        dev = next(model.parameters()).device
        d = model.cfg.d_model
        n_prob = len(prompt_ids)
        prompt_len = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
        slots = torch.tensor([prefixes[p].shape[0] if p in prefixes else 0 for p in range(n_prob)])
        row_len, row_slots = prompt_len[problem_index], slots[problem_index]
        key = row_len * (int(slots.max()) + 1 if n_prob else 1) + row_slots
        scale = embedding_scale(model)

        new = cfg.max_new_tokens
        tokens = torch.full((rows, new), self.tokenizer.PAD, dtype=torch.long)
        token_lp = torch.zeros(rows, new)
        lengths = torch.zeros(rows, dtype=torch.long)
        hidden = torch.zeros(rows, d, device=dev)
        model_k = model.cfg.moe.router.top_k
        for k in torch.unique(key).tolist():
            bucket = (key == k).nonzero().squeeze(1)
            step = cfg.max_batch_rows or bucket.numel()
            for start in range(0, bucket.numel(), step):
                sel = bucket[start : start + step]
                probs, inverse = torch.unique(problem_index[sel], return_inverse=True)
                plist = probs.tolist()
                idx = torch.tensor([prompt_ids[p] for p in plist], dtype=torch.long, device=dev)[
                    inverse.to(dev)
                ]
                prefix = None
                if int(row_slots[sel[0]]) > 0:
                    prefix = torch.stack([prefixes[p] for p in plist]).to(dev)[inverse.to(dev)]
                part = agents.select(sel)
                out = generate(
                    model,
                    idx,
                    new,
                    temperature=part.temperature.to(dev),
                    seed=part.seed.to(dev),
                    routing=part.routing_control(model_k, dev),
                    eos_id=self.tokenizer.EOS,
                    pad_id=self.tokenizer.PAD,
                    prefix_embeds=prefix,
                )
                tokens[sel] = out.tokens.cpu()
                token_lp[sel] = out.token_logprobs.float().cpu()
                lengths[sel] = out.lengths.cpu()
                src = out.hidden_last if cfg.thought == "last" else out.hidden_mean
                hidden[sel.to(dev)] = src.float()
        thoughts = normalise_thoughts(hidden, scale)
        texts = [self.tokenizer.decode(row, stop_at_eos=True) for row in tokens.tolist()]
        answers = [self.canonical(t) for t in texts]
        context = row_len + row_slots
        return Proposals(
            problem_index=problem_index,
            agents=agents,
            texts=texts,
            answers=answers,
            tokens=tokens,
            lengths=lengths,
            logprob=token_lp.sum(1) / lengths.clamp_min(1),
            thoughts=thoughts,
            context=context,
            flops=self.cost.row_flops(context, lengths, agents.top_k),
        )

    # ------------------------------------------------------------------ score
    def score(self, proposals: Proposals) -> Tensor:
        """Non-negative weight per row (CPU float32) following ``cfg.score``."""
        return score_weights(self.cfg.score, proposals.logprob, proposals.thoughts, self.value_head)

    # ------------------------------------------------------------------ loop
    def problem_seed(self, ids: list[int]) -> int:
        return mix_seed(self.cfg.seed, zlib.crc32(",".join(map(str, ids)).encode()))

    def _prefix(self, buffer: ThoughtBuffer, key: Hashable) -> Tensor | None:
        top = buffer.top_k(key, self.cfg.inject_top_k)
        if not top:
            return None
        vecs = torch.stack([r.thought for r in top]).float()
        if self.cfg.inject_mode == "mean":
            vecs = vecs.mean(0, keepdim=True)
        scale = embedding_scale(self.model)
        return normalise_thoughts(vecs, scale).to(self.model.embed.weight.dtype)

    def _vote(self, records: list[ThoughtRecord]) -> VoteResult:
        if self.cfg.vote_rounds == "last":
            last = records[-1].round
            records = [r for r in records if r.round == last]
        weights = [r.score for r in records] if self.cfg.vote == "weighted" else None
        return vote([r.answer for r in records], weights)

    def solve(
        self,
        prompts: Sequence[PromptLike],
        *,
        buffer: ThoughtBuffer | None = None,
        problem_ids: Sequence[Hashable] | None = None,
    ) -> list[SwarmResult]:
        """Run the swarm on every prompt and return one ``SwarmResult`` per prompt, in order.

        ``buffer``: a (possibly shared) ThoughtBuffer to publish records to (a fresh one by default);
        thought injection reads peers from it. ``problem_ids``: the keys records are filed under
        (default: the prompt's index in this call).
        """
        cfg = self.cfg
        ids = self.encode(prompts)
        n = len(ids)
        if n == 0:
            return []
        self.check_lengths(ids)
        keys = list(range(n)) if problem_ids is None else list(problem_ids)
        if len(keys) != n:
            raise ValueError(f"got {n} prompts but {len(keys)} problem_ids")
        buffer = ThoughtBuffer() if buffer is None else buffer
        seeds = [self.problem_seed(p) for p in ids]
        population = {p: make_agents(cfg, cfg.num_agents, 0, seeds[p]) for p in range(n)}
        records: list[list[ThoughtRecord]] = [[] for _ in range(n)]
        passes = torch.zeros(n, dtype=torch.long)
        processed = torch.zeros(n, dtype=torch.long)
        flops = torch.zeros(n, dtype=torch.float64)
        rounds_used = [0] * n
        votes: list[VoteResult | None] = [None] * n
        active = list(range(n))
        for rnd in range(cfg.rounds + 1):
            prefixes = {}
            if cfg.inject_top_k > 0 and rnd > 0:
                for p in active:
                    pre = self._prefix(buffer, keys[p])
                    if pre is not None:
                        prefixes[p] = pre
            counts = torch.tensor([len(population[p]) for p in active])
            problem_index = torch.tensor(active).repeat_interleave(counts)
            agents = AgentBatch.cat([population[p] for p in active])
            props = self.propose(ids, problem_index, agents, prefixes)
            scores = self.score(props)
            passes.index_add_(0, problem_index, props.lengths)
            processed.index_add_(0, problem_index, props.tokens_processed)
            flops.index_add_(0, problem_index, props.flops)
            new_records = self.make_records(props, scores, keys, rnd, counts)
            buffer.extend(new_records)
            offsets = [0, *counts.cumsum(0).tolist()]
            still = []
            for j, p in enumerate(active):
                records[p].extend(new_records[offsets[j] : offsets[j + 1]])
                rounds_used[p] = rnd + 1
                votes[p] = self._vote(records[p])
                if votes[p].share < cfg.early_exit_share:
                    still.append(j)
            if rnd == cfg.rounds or not still:
                break
            for j in still:
                p = active[j]
                if cfg.refine == "resample":
                    gen = seeded_generator(seeds[p], rnd, 0x5EF1)
                    _, population[p] = resample_agents(
                        population[p], scores[offsets[j] : offsets[j + 1]], cfg.num_agents, gen
                    )
                else:
                    population[p] = make_agents(cfg, cfg.num_agents, rnd + 1, seeds[p])
            active = [active[j] for j in still]
        results = []
        for p in range(n):
            v = votes[p]
            best = max((r for r in records[p] if r.answer == v.answer), key=lambda r: r.score)
            results.append(
                SwarmResult(
                    answer=v.answer,
                    vote_share=v.share,
                    votes=v.votes,
                    forward_passes=int(passes[p]),
                    flops=float(flops[p]),
                    rounds_used=rounds_used[p],
                    tokens_processed=int(processed[p]),
                    exited_early=rounds_used[p] < cfg.rounds + 1,
                    text=best.text,
                    records=records[p],
                )
            )
        return results

    def make_records(
        self, props: Proposals, scores: Tensor, keys: list, rnd: int, counts: Tensor
    ) -> list[ThoughtRecord]:
        """One immutable record per row; agent numbers restart at 0 for each problem."""
        starts = counts.cumsum(0) - counts
        agent_no = (torch.arange(props.lengths.shape[0]) - starts.repeat_interleave(counts)).tolist()
        thoughts = props.thoughts.detach().cpu()
        pidx = props.problem_index.tolist()
        sc, lp, ln = scores.tolist(), props.logprob.tolist(), props.lengths.tolist()
        specs = props.agents.specs()
        return [
            ThoughtRecord(
                problem=keys[pidx[r]],
                agent=agent_no[r],
                round=rnd,
                thought=thoughts[r],
                answer=props.answers[r],
                score=sc[r],
                logprob=lp[r],
                text=props.texts[r],
                num_tokens=ln[r],
                spec=specs[r],
            )
            for r in range(len(pidx))
        ]
