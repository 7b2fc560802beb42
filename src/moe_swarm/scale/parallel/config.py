"""ParallelConfig: how a run is laid out over its processes (FSDP2 data parallel x expert parallel).

Every rank is a data-parallel rank (it reads its own slice of the global batch). Expert parallelism
borrows ``expert_parallel_size`` of those ranks to split the expert pool: each rank of an "ep"
group holds ``num_experts / expert_parallel_size`` experts, and tokens travel to their expert by
all-to-all. Non-expert weights are sharded by FSDP2 over all ranks; expert weights are sharded by
FSDP2 over the ``world_size / expert_parallel_size`` ranks that hold the same experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

__all__ = ["ParallelConfig", "ParallelConfigError"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ParallelConfigError(ValueError):
    """The parallel layout does not fit the world size or the model; the message says what to change."""


@dataclass(frozen=True)
class ParallelConfig:
    """Layout knobs (Hydra: ``module.parallel.*``).

    ``expert_parallel_size``: ranks that split one expert pool (1 = every rank holds every expert,
    FSDP2 only). ``data_parallel_size``: null = the world size; when set it must equal the world
    size (a guard against a launch with the wrong process count). ``param_dtype``/``reduce_dtype``:
    FSDP2 ``MixedPrecisionPolicy`` (null = keep the parameters' dtype; the router always computes
    in fp32). ``reshard_after_forward``: FSDP2's memory/communication trade (True = ZeRO-3-like).
    """

    expert_parallel_size: int = 1
    data_parallel_size: int | None = None
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        ep = self.expert_parallel_size
        if isinstance(ep, bool) or not isinstance(ep, int) or ep < 1:
            raise ParallelConfigError(f"parallel.expert_parallel_size={ep!r} must be an integer >= 1")
        dp = self.data_parallel_size
        if dp is not None and (isinstance(dp, bool) or not isinstance(dp, int) or dp < 1):
            raise ParallelConfigError(f"parallel.data_parallel_size={dp!r} must be null or an integer >= 1")
        for name in ("param_dtype", "reduce_dtype"):
            value = getattr(self, name)
            if value is not None and value not in _DTYPES:
                raise ParallelConfigError(
                    f"parallel.{name}={value!r} is not supported; use one of {sorted(_DTYPES)} or null"
                )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ParallelConfig:
        """Strict: an unknown key (a typo) is an error that lists the valid keys."""
        data = dict(data or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ParallelConfigError(f"unknown parallel config key(s) {unknown}; valid keys are {valid}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def torch_dtype(self, name: str) -> torch.dtype | None:
        value = getattr(self, name)
        return None if value is None else _DTYPES[value]

    def check_experts(self, num_experts: int) -> None:
        """Expert pools split evenly over the ep group, or not at all."""
        ep = self.expert_parallel_size
        if ep > 1 and num_experts % ep:
            divisors = [d for d in range(1, num_experts + 1) if num_experts % d == 0]
            raise ParallelConfigError(
                f"model.num_experts={num_experts} cannot be split over parallel.expert_parallel_size={ep} ranks "
                f"(each rank must hold the same number of experts). Use an expert_parallel_size that divides "
                f"{num_experts} (one of {divisors}) or change model.num_experts."
            )

    def check_world(self, world_size: int) -> None:
        """The world must be a whole number of ep groups, and match data_parallel_size when given."""
        ep = self.expert_parallel_size
        if self.data_parallel_size is not None and self.data_parallel_size != world_size:
            raise ParallelConfigError(
                f"parallel.data_parallel_size={self.data_parallel_size} but the run has {world_size} processes "
                f"(trainer.num_nodes x trainer.devices). Every process is a data-parallel rank here: set "
                f"data_parallel_size to {world_size} or null, or launch {self.data_parallel_size} processes."
            )
        if world_size % ep:
            raise ParallelConfigError(
                f"world size {world_size} is not a multiple of parallel.expert_parallel_size={ep}: the ranks "
                f"cannot be grouped into expert-parallel groups. Launch a multiple of {ep} processes "
                f"(trainer.num_nodes x trainer.devices) or pick an expert_parallel_size that divides {world_size}."
            )

    def check(self, world_size: int, num_experts: int) -> None:
        self.check_world(world_size)
        self.check_experts(num_experts)
