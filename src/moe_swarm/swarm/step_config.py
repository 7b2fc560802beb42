"""Settings of the step-level swarm (``moe_swarm.swarm.steps``): what each field means is in that module's
docstring and in docs/swarm.md; the preset is ``conf/steps/default.yaml``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

STEP_VOTES = ("plurality", "logprob", "checker", "checker_odds", "selector")


@dataclass
class StepSwarmConfig:
    """Settings of the step-level swarm (see ``moe_swarm.swarm.steps``)."""

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
