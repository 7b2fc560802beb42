"""SwarmConfig: every knob of the swarm loop in one plain dataclass (Hydra/YAML friendly)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

DIVERSITY_MODES = ("temperature", "routing", "both", "none")
AGENT_SAMPLING = ("grid", "choice", "uniform")
SCORE_MODES = ("logprob", "value", "both", "none")
VOTE_MODES = ("plurality", "weighted")
VOTE_ROUNDS = ("all", "last")
REFINE_MODES = ("resample", "redraw")
THOUGHT_SOURCES = ("last", "mean")
INJECT_MODES = ("mean", "slots")


def _as_tuple(value: Any) -> tuple:
    """A scalar becomes a 1-tuple; any non-string sequence (list, tuple, OmegaConf ListConfig) a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(value)
    return (value,)


@dataclass
class SwarmConfig:
    """Settings of one swarm run.

    Agents (see ``agents.make_agents``):
      ``num_agents`` rows per problem per round. ``diversity`` picks which perturbations are on:
      ``"temperature"`` (sampling only, router untouched), ``"routing"`` (greedy decoding with router
      noise on the non-top-1 experts and the optional top-k override), ``"both"``, or ``"none"``
      (identical greedy agents). Values the mode switches off are ignored.
      ``temperature``, ``routing_noise`` and ``top_k_override`` are a scalar or a list of values;
      ``agent_sampling`` says how an agent gets its values: ``"grid"`` walks the cartesian product in
      order (balanced coverage), ``"choice"`` draws each value independently and uniformly from its list,
      ``"uniform"`` draws temperature and routing noise uniformly from ``[low, high]`` (lists of exactly
      two values) and top-k from its list. ``top_k_override`` ``None`` means the model's own k.
    Loop: ``rounds`` refinement rounds after the first proposal round (0 = propose once).
      ``refine="resample"`` draws the next agents from the current ones in proportion to score and gives
      them new seeds; ``"redraw"`` draws fresh independent agents (the no-refinement control).
    Scoring and voting: ``score`` is the per-record weight (``"logprob"``: exp of the length-normalised
      sequence log-prob, ``"value"``: value-head probability, ``"both"``: their product, ``"none"``: 1).
      ``vote`` is ``"plurality"`` (one record, one vote) or ``"weighted"`` (sum of scores). ``vote_rounds``:
      ``"all"`` (every record of every round votes; the default, see docs/swarm.md) or ``"last"``.
      A problem stops when the winner's vote share is >= ``early_exit_share`` (> 1 disables early exit).
    Thoughts: ``thought="last"`` (hidden state that produced the last token) or ``"mean"`` (mean over the
      generated span), rescaled to the mean token-embedding norm. ``inject_top_k`` > 0 prepends the top
      scoring peer thoughts of the problem as input-embedding slots in later rounds (``inject_mode``:
      ``"mean"`` = one pooled slot, ``"slots"`` = one slot each). Off by default: a model must be trained
      to read such slots (docs/swarm.md).
    ``max_batch_rows`` caps the rows of one ``generate`` call (None = one call per prompt-length bucket).
    """

    num_agents: int = 8
    rounds: int = 2
    diversity: str = "temperature"
    temperature: Any = (1.0,)
    routing_noise: Any = (1.0,)
    top_k_override: Any = (None,)
    agent_sampling: str = "grid"
    refine: str = "resample"
    score: str = "logprob"
    vote: str = "weighted"
    vote_rounds: str = "all"
    early_exit_share: float = 0.8
    max_new_tokens: int = 16
    thought: str = "last"
    inject_top_k: int = 0
    inject_mode: str = "mean"
    max_batch_rows: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.temperature = tuple(float(t) for t in _as_tuple(self.temperature))
        self.routing_noise = tuple(float(s) for s in _as_tuple(self.routing_noise))
        self.top_k_override = tuple(None if k is None else int(k) for k in _as_tuple(self.top_k_override))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad field and the accepted values."""
        choices = {
            "diversity": DIVERSITY_MODES,
            "agent_sampling": AGENT_SAMPLING,
            "refine": REFINE_MODES,
            "score": SCORE_MODES,
            "vote": VOTE_MODES,
            "vote_rounds": VOTE_ROUNDS,
            "thought": THOUGHT_SOURCES,
            "inject_mode": INJECT_MODES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"SwarmConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name in ("num_agents", "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SwarmConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("rounds", "inject_top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"SwarmConfig.{name} must be an integer >= 0, got {value!r}")
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise ValueError(f"SwarmConfig.max_batch_rows must be >= 1 or None, got {self.max_batch_rows}")
        if not self.temperature or not self.routing_noise or not self.top_k_override:
            raise ValueError("temperature, routing_noise and top_k_override need at least one value each")
        if any(not math.isfinite(t) or t < 0 for t in self.temperature):
            raise ValueError(f"temperatures must be finite and >= 0 (0 = greedy), got {self.temperature}")
        if any(not math.isfinite(s) or s < 0 for s in self.routing_noise):
            raise ValueError(f"routing_noise values must be finite and >= 0, got {self.routing_noise}")
        if any(k is not None and k < 1 for k in self.top_k_override):
            raise ValueError(f"top_k_override values must be >= 1 or None, got {self.top_k_override}")
        if self.agent_sampling == "uniform":
            for name in ("temperature", "routing_noise"):
                value = getattr(self, name)
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(
                        f"agent_sampling='uniform' needs {name} as [low, high] with low <= high, got {list(value)}"
                    )
        if not isinstance(self.early_exit_share, (int, float)) or math.isnan(self.early_exit_share):
            raise ValueError(
                f"early_exit_share must be a number (a vote share in [0, 1]; > 1 disables early exit), "
                f"got {self.early_exit_share!r}"
            )

    def replace(self, **changes: Any) -> SwarmConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict of builtins (lists instead of tuples): safe for YAML, JSON and torch.load(weights_only)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SwarmConfig:
        """Build from a dict (e.g. a Hydra/OmegaConf node turned into a dict); unknown keys are an error."""
        if not isinstance(data, dict):
            raise TypeError(f"SwarmConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SwarmConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)
