"""The CPU a run measures on, and whether it has native bf16.

Machines of one kind do not all have the same CPU. Where bf16 is emulated (an AVX2-only x86 CPU:
no AVX-512 BF16, no AMX) a bf16 matmul runs ~50x slower than fp32, so a bf16 CPU case would time
the emulation, not our code: the suites leave those cases out there and say why in the report.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# /proc/cpuinfo flags of x86 CPUs whose bf16 matmuls run in hardware (oneDNN uses them).
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_capability() -> str:
    """torch's CPU kernel level: ``"AVX2"``, ``"AVX512"``, ``"DEFAULT"``, ``"SVE256"``..."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (x86 ``flags``, Arm ``Features``) of the first core in /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def has_native_bf16(capability: str, flags: frozenset[str]) -> bool:
    """x86: torch runs AVX-512 kernels and the CPU has AVX-512 BF16 or AMX; Arm: the ``bf16`` feature."""
    if capability.startswith("AVX512"):
        return bool(X86_BF16_FLAGS & flags)
    return "bf16" in flags


@dataclass(frozen=True)
class CpuInfo:
    """Written into every results.json (``meta.cpu``) and report header."""

    capability: str
    model_name: str
    threads: int  # torch intra-op threads during the run
    cores: int  # os.cpu_count()
    native_bf16: bool
    bf16_flags: list[str]  # which of the native-bf16 flags the CPU has (empty: bf16 is emulated)

    @classmethod
    def collect(cls, threads: int) -> CpuInfo:
        capability, flags = cpu_capability(), cpu_flags()
        return cls(
            capability=capability,
            model_name=cpu_model_name(),
            threads=threads,
            cores=os.cpu_count() or 1,
            native_bf16=has_native_bf16(capability, flags),
            bf16_flags=sorted((X86_BF16_FLAGS | {"bf16"}) & flags),
        )

    def describe(self) -> str:
        """One line for a report header, e.g. ``AMD EPYC, torch CPU capability AVX2, 2 cores, 1 thread(s),
        bf16 emulated``."""
        bf16 = f"native bf16 ({', '.join(self.bf16_flags)})" if self.native_bf16 else "bf16 emulated"
        return (
            f"{self.model_name}, torch CPU capability {self.capability}, {self.cores} cores, "
            f"{self.threads} thread(s), {bf16}"
        )

    def bf16_skip_reason(self) -> str:
        """Why the bf16 and bf16-mixed CPU cases were left out on this CPU."""
        return (
            f"CPU capability {self.capability} without avx512_bf16/amx_bf16: bf16 is emulated here "
            "(a bf16 matmul ~50x slower than fp32), so a bf16 case would time the emulation, not our code"
        )

    def to_dict(self) -> dict:
        return asdict(self)
