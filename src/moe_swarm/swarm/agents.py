"""Agents: per-row decoding settings that stay fixed along one trajectory.

An agent is one row of a batched ``generate`` call (``moe_swarm.model.decoding``). Its settings are a sampling temperature, a
router-noise scale (Gumbel noise on the selection scores of the non-top-1 experts: the model never
perturbs the top-1 choice), an optional per-row router top-k, and a seed that keys the model's
counter-based noise. A population is stored as a struct of tensors (``AgentBatch``) so building a
round, resampling and handing rows to ``generate`` (``Sampler`` settings and a ``RoutingControl``)
never loops over agents in Python.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from moe_swarm.model import RoutingControl
from moe_swarm.swarm.config import SwarmConfig

SEED_LIMIT = 2**31 - 1  # agent seeds are non-negative int32 values (the model hashes 32 bits)
_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 chain): stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


def seeded_generator(*values: int) -> torch.Generator:
    """A CPU torch.Generator seeded by ``mix_seed(*values)``."""
    return torch.Generator().manual_seed(mix_seed(*values))


@dataclass(frozen=True)
class AgentSpec:
    """One agent's settings. ``top_k`` None = the model's own router k."""

    temperature: float
    routing_noise: float
    top_k: int | None
    seed: int


@dataclass
class AgentBatch:
    """A population of agents as (n,) CPU tensors. ``top_k`` 0 means "the model's own k"."""

    temperature: Tensor  # float32
    routing_noise: Tensor  # float32
    top_k: Tensor  # int64, 0 = no override
    seed: Tensor  # int64 in [0, SEED_LIMIT)

    def __post_init__(self) -> None:
        n = self.seed.shape[0]
        for name in ("temperature", "routing_noise", "top_k", "seed"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape[0] != n:
                raise ValueError(f"AgentBatch.{name} must have shape ({n},), got {tuple(t.shape)}")

    def __len__(self) -> int:
        return int(self.seed.shape[0])

    def __getitem__(self, i: int) -> AgentSpec:
        k = int(self.top_k[i])
        return AgentSpec(
            temperature=float(self.temperature[i]),
            routing_noise=float(self.routing_noise[i]),
            top_k=None if k == 0 else k,
            seed=int(self.seed[i]),
        )

    def __iter__(self):
        return iter(self.specs())

    def specs(self) -> list[AgentSpec]:
        """All agents as ``AgentSpec``s (one conversion per field, not per agent)."""
        cols = zip(
            self.temperature.tolist(), self.routing_noise.tolist(), self.top_k.tolist(), self.seed.tolist()
        )
        return [AgentSpec(t, s, None if k == 0 else k, sd) for t, s, k, sd in cols]

    def select(self, index: Tensor) -> AgentBatch:
        """Rows ``index`` (a long tensor or slice) as a new batch."""
        return AgentBatch(
            self.temperature[index], self.routing_noise[index], self.top_k[index], self.seed[index]
        )

    @classmethod
    def from_specs(cls, specs: list[AgentSpec]) -> AgentBatch:
        """Build from explicit specs (tests, hand-made populations)."""
        return cls(
            temperature=torch.tensor([s.temperature for s in specs], dtype=torch.float32),
            routing_noise=torch.tensor([s.routing_noise for s in specs], dtype=torch.float32),
            top_k=torch.tensor([0 if s.top_k is None else s.top_k for s in specs], dtype=torch.long),
            seed=torch.tensor([s.seed for s in specs], dtype=torch.long),
        )

    @classmethod
    def cat(cls, batches: list[AgentBatch]) -> AgentBatch:
        if not batches:
            return cls.from_specs([])
        return cls(
            temperature=torch.cat([b.temperature for b in batches]),
            routing_noise=torch.cat([b.routing_noise for b in batches]),
            top_k=torch.cat([b.top_k for b in batches]),
            seed=torch.cat([b.seed for b in batches]),
        )

    @property
    def uses_routing(self) -> bool:
        """Whether any row perturbs the router (else ``generate`` can skip the routing control)."""
        return bool((self.routing_noise > 0).any() or (self.top_k > 0).any())

    def routing_control(self, model_top_k: int, device) -> RoutingControl | None:
        """The rows' router perturbation for the decoding engine (None when no row perturbs it);
        rows without a top-k override get ``model_top_k`` when another row has one."""
        if not self.uses_routing:
            return None
        top_k = None
        if bool((self.top_k > 0).any()):
            top_k = torch.where(self.top_k > 0, self.top_k, torch.full_like(self.top_k, model_top_k)).to(
                device
            )
        return RoutingControl(self.routing_noise.to(device), self.seed.to(device), top_k)


def _active_values(cfg: SwarmConfig) -> tuple[tuple, tuple, tuple]:
    """The value lists the diversity mode leaves on; switched-off dimensions collapse to one neutral value."""
    temps, noises, ks = cfg.temperature, cfg.routing_noise, cfg.top_k_override
    if cfg.diversity in ("routing", "none"):
        temps = (0.0,)
    if cfg.diversity in ("temperature", "none"):
        noises, ks = (0.0,), (None,)
    return temps, noises, ks


def make_agents(cfg: SwarmConfig, n: int, round: int, seed: int) -> AgentBatch:
    """``n`` agents for one problem and round, deterministic in (cfg, n, round, seed).

    ``"grid"`` gives agent i the ((round * n + i) mod G)-th point of the product
    temperature x routing_noise x top_k (so redraw rounds continue along the grid); ``"choice"`` and
    ``"uniform"`` draw from a generator keyed by (seed, round). Seeds are always fresh draws.
    """
    if n < 0:
        raise ValueError(f"number of agents must be >= 0, got {n}")
    gen = seeded_generator(seed, round, 0xA6E7)
    temps, noises, ks = _active_values(cfg)
    k_codes = [0 if k is None else k for k in ks]
    if cfg.agent_sampling == "grid":
        grid = list(itertools.product(temps, noises, k_codes))
        idx = (torch.arange(n) + round * n) % len(grid)
        table_t = torch.tensor([g[0] for g in grid], dtype=torch.float32)
        table_s = torch.tensor([g[1] for g in grid], dtype=torch.float32)
        table_k = torch.tensor([g[2] for g in grid], dtype=torch.long)
        temperature, noise, top_k = table_t[idx], table_s[idx], table_k[idx]
    else:
        top_k = torch.tensor(k_codes, dtype=torch.long)[torch.randint(len(k_codes), (n,), generator=gen)]
        if cfg.agent_sampling == "choice":
            temperature = torch.tensor(temps)[torch.randint(len(temps), (n,), generator=gen)]
            noise = torch.tensor(noises)[torch.randint(len(noises), (n,), generator=gen)]
        else:  # uniform on [low, high]; a switched-off dimension has the single value 0
            lo_t, hi_t = temps[0], temps[-1]
            lo_s, hi_s = noises[0], noises[-1]
            temperature = lo_t + (hi_t - lo_t) * torch.rand(n, generator=gen)
            noise = lo_s + (hi_s - lo_s) * torch.rand(n, generator=gen)
        temperature, noise = temperature.float(), noise.float()
    seeds = torch.randint(0, SEED_LIMIT, (n,), generator=gen, dtype=torch.long)
    return AgentBatch(temperature=temperature, routing_noise=noise, top_k=top_k, seed=seeds)


def resample_agents(
    agents: AgentBatch, weights: Tensor, n: int, generator: torch.Generator
) -> tuple[Tensor, AgentBatch]:
    """Draw ``n`` children with replacement, parent i with probability weights[i] / sum(weights).

    Children keep their parent's temperature, noise scale and top-k and get new seeds, so each one
    re-draws its perturbation. Non-finite or negative weights are an error; all-zero weights mean
    uniform. Returns (parent indices, children).
    """
    w = weights.detach().to("cpu", torch.float64)
    if w.shape != (len(agents),):
        raise ValueError(f"need one weight per agent ({len(agents)}), got shape {tuple(w.shape)}")
    if len(agents) == 0:
        raise ValueError("cannot resample from an empty population")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"resampling weights must be finite and >= 0, got {w.tolist()}")
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    parents = torch.multinomial(w, n, replacement=True, generator=generator)
    children = agents.select(parents)
    children.seed = torch.randint(0, SEED_LIMIT, (n,), generator=generator, dtype=torch.long)
    return parents, children
