"""Model configuration: ``TransformerConfig`` holds ``moe: MoEConfig`` which holds ``router: RouterConfig``.

One name per setting end to end: the Hydra key ``model.moe.router.noise_std`` is the dataclass field
``TransformerConfig.moe.router.noise_std`` and the attribute ``Router.cfg.noise_std``; the config
objects are passed whole to the layers (as torchtitan passes its MoE args), never unpacked.

``TransformerConfig.from_dict`` is strict: an unknown or misspelt key raises ``ValueError`` naming
its full path and the valid keys. It also reads the flat layout that checkpoints written before the
nested config carried (``router_mode``, ``num_experts``, ``top_k``, ...).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar, get_type_hints

ROUTING_MODES = ("softmax_topk", "sigmoid_bias")
DISPATCH_IMPLS = ("auto", "grouped_mm", "gather_bmm", "sorted_split", "reference_loop")
# q/k RMSNorm before RoPE: none, per head over head_dim (Qwen3), or over the whole projection (OLMoE).
QK_NORMS = ("none", "head", "full")
# Byte-level vocabulary: 256 bytes + specials (PAD 256, BOS 257, EOS 258), padded to 264.
DEFAULT_VOCAB_SIZE = 264

# Flat keys of the pre-nested layout (checkpoints written before the nested config) -> new path.
LEGACY_KEYS: dict[str, str] = {
    "d_ff": "moe.d_ff",
    "num_experts": "moe.num_experts",
    "top_k": "moe.router.top_k",
    "moe_every": "moe.every",
    "router_mode": "moe.router.mode",
    "renormalize": "moe.router.renormalize",
    "capacity_factor": "moe.router.capacity_factor",
    "jitter_eps": "moe.router.jitter_eps",
    "router_noise_std": "moe.router.noise_std",
    "route_scale": "moe.router.route_scale",
    "shared_expert_d_ff": "moe.shared_expert_d_ff",
    "dispatch": "moe.dispatch",
}


@dataclass
class RouterConfig:
    """Token-choice gating. ``mode``: ``softmax_topk`` (Mixtral/Switch) or ``sigmoid_bias`` (DeepSeek-V3).

    ``capacity_factor`` None = dropless; ``jitter_eps`` multiplicative input jitter and ``noise_std``
    Gaussian logit noise apply in training only; ``route_scale`` multiplies the combine weights.
    """

    mode: str = "softmax_topk"
    top_k: int = 2
    renormalize: bool = True
    capacity_factor: float | None = None
    jitter_eps: float = 0.0
    noise_std: float = 0.0
    route_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in ROUTING_MODES:
            raise ValueError(f"unknown router mode {self.mode!r}; choose one of {ROUTING_MODES}")
        if self.top_k < 1:
            raise ValueError(f"router top_k must be >= 1, got {self.top_k}")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be > 0 or None (dropless), got {self.capacity_factor}")


@dataclass
class MoEConfig:
    """Sparse FFN: ``num_experts`` SwiGLU experts of hidden size ``d_ff``, the router, and optional
    always-on shared experts. Layer i is MoE when ``(i + 1) % every == 0``.
    ``dispatch`` picks the expert implementation (see ``ExpertPool``).

    ``granularity`` g (fine-grained experts, Krajewski et al. 2024; DeepSeekMoE) splits each expert
    into g narrower ones at equal active and total parameters: it is folded in at construction into
    ``num_experts * g`` experts, ``top_k * g`` of them per token, each ``d_ff // g`` wide, and then
    reads 1. Folding once makes the stored config the network's real shape (checkpoints, HF export,
    expert parallelism see plain E/k/d_ff), and ``to_dict -> from_dict`` is the identity.

    Shared experts: ``num_shared_experts`` SwiGLU experts of width ``shared_expert_d_ff`` run on every
    token. ``None`` (the default) means today's layout: one when ``shared_expert_d_ff > 0``, else none;
    ``shared_expert_d_ff = 0`` with ``num_shared_experts > 0`` means "as wide as a routed expert"
    (DeepSeekMoE). n experts of width d are one SwiGLU of width n*d (their hidden units concatenated),
    which is how the layer holds them. ``shared_expert_gate`` scales their sum per token by
    ``sigmoid(x . g)`` (Qwen2-MoE).
    """

    num_experts: int = 8
    d_ff: int = 256
    every: int = 1
    granularity: int = 1
    num_shared_experts: int | None = None
    shared_expert_d_ff: int = 0
    shared_expert_gate: bool = False
    dispatch: str = "auto"
    router: RouterConfig = field(default_factory=RouterConfig)

    def __post_init__(self) -> None:
        if isinstance(self.router, Mapping):  # plain construction from a dict
            self.router = _build(RouterConfig, self.router, "model.moe.router")
        if self.dispatch not in DISPATCH_IMPLS:
            raise ValueError(f"unknown dispatch {self.dispatch!r}; choose one of {DISPATCH_IMPLS}")
        if self.granularity < 1:
            raise ValueError(f"moe granularity must be >= 1, got {self.granularity}")
        if self.granularity > 1:
            g = self.granularity
            if self.d_ff % g:
                raise ValueError(f"moe d_ff={self.d_ff} must be divisible by granularity={g}")
            self.num_experts *= g
            self.d_ff //= g
            self.router = replace(self.router, top_k=self.router.top_k * g)
            self.granularity = 1
        if not 1 <= self.router.top_k <= self.num_experts:
            raise ValueError(
                f"router top_k must be in [1, num_experts={self.num_experts}], got {self.router.top_k}"
            )
        if self.every < 1:
            raise ValueError(f"moe every must be >= 1, got {self.every}")
        if self.shared_expert_d_ff < 0:
            raise ValueError(f"moe shared_expert_d_ff must be >= 0, got {self.shared_expert_d_ff}")
        if self.num_shared_experts is None:
            self.num_shared_experts = 1 if self.shared_expert_d_ff > 0 else 0
        if self.num_shared_experts < 0:
            raise ValueError(f"moe num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.num_shared_experts == 0 and self.shared_expert_d_ff > 0:
            raise ValueError(
                f"moe shared_expert_d_ff={self.shared_expert_d_ff} with num_shared_experts=0: set "
                "num_shared_experts >= 1, or shared_expert_d_ff=0 for no shared expert"
            )
        if self.num_shared_experts > 0 and self.shared_expert_d_ff == 0:
            self.shared_expert_d_ff = self.d_ff  # DeepSeekMoE: shared experts as wide as routed ones
        if self.shared_expert_gate and self.num_shared_experts == 0:
            raise ValueError("moe shared_expert_gate needs a shared expert (num_shared_experts >= 1)")

    @property
    def shared_d_ff(self) -> int:
        """Total hidden width of the shared experts (``num_shared_experts * shared_expert_d_ff``)."""
        return (self.num_shared_experts or 0) * self.shared_expert_d_ff


@dataclass
class TransformerConfig:
    """Model hyper-parameters. ``ffn="dense"`` gives the dense baseline (see ``dense_equivalent``).

    Attention: ``n_kv_heads`` key/value heads shared by groups of query heads (None = ``n_heads``,
    multi-head); ``head_dim`` None = ``d_model // n_heads``; ``qk_norm`` one of ``QK_NORMS``;
    ``qkv_bias`` adds biases to the q/k/v projections (Qwen2).
    """

    vocab_size: int = DEFAULT_VOCAB_SIZE
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    qk_norm: str = "none"
    qkv_bias: bool = False
    max_seq_len: int = 256
    ffn: str = "moe"  # "moe" | "dense"
    # Dense FFN hidden size; None = top_k * moe.d_ff + the shared experts' width (equal active params).
    dense_d_ff: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_weights: bool = True
    moe: MoEConfig = field(default_factory=MoEConfig)

    def __post_init__(self) -> None:
        if isinstance(self.moe, Mapping):
            self.moe = _build(MoEConfig, self.moe, "model.moe")
        if self.ffn not in ("moe", "dense"):
            raise ValueError(f"ffn must be 'moe' or 'dense', got {self.ffn!r}")
        if self.head_dim is None and (self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2):
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads} with an even head size (RoPE)"
            )
        if self.head_dim is not None and (self.head_dim < 2 or self.head_dim % 2):
            raise ValueError(f"head_dim must be a positive even number (RoPE), got {self.head_dim}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"unknown qk_norm {self.qk_norm!r}; choose one of {QK_NORMS}")

    @property
    def kv_heads(self) -> int:
        """Key/value heads (``n_kv_heads``, or ``n_heads`` when unset)."""
        return self.n_kv_heads or self.n_heads

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def resolved_dense_d_ff(self) -> int:
        return self.dense_d_ff or self.moe.router.top_k * self.moe.d_ff + self.moe.shared_d_ff

    def is_moe_layer(self, i: int) -> bool:
        return self.ffn == "moe" and (i + 1) % self.moe.every == 0

    def dense_equivalent(self) -> TransformerConfig:
        """The dense model with the same active FFN parameters per token (router weights aside)."""
        return replace(self, ffn="dense", dense_d_ff=self.resolved_dense_d_ff)

    def to_dict(self) -> dict:
        """The nested plain dict (what checkpoints store and ``from_dict`` reads back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "model") -> TransformerConfig:
        """Build from a (possibly nested) mapping, strictly: unknown keys raise ``ValueError``.

        A mapping without a ``moe`` key in the flat pre-nested layout (old checkpoints) is mapped
        into the nested structure first. ``path`` prefixes key names in error messages.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"{path} must be a mapping of model settings, got {type(d).__name__}")
        return _build(cls, _from_legacy(dict(d), path), path)


T = TypeVar("T")


def _from_legacy(d: dict[str, Any], path: str) -> dict[str, Any]:
    """Map the flat pre-nested layout into the nested one; mixing both layouts is an error."""
    legacy = [k for k in d if k in LEGACY_KEYS]
    if not legacy:
        return d
    if "moe" in d:
        k = legacy[0]
        raise ValueError(
            f"unknown model config key {path}.{k}: it is now {path}.{LEGACY_KEYS[k]} "
            f"(the flat layout is read only from old checkpoints, never mixed with '{path}.moe')"
        )
    out = {k: v for k, v in d.items() if k not in LEGACY_KEYS}
    moe: dict[str, Any] = {}
    for k in legacy:
        parts = LEGACY_KEYS[k].split(".")[1:]
        node = moe
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = d[k]
    out["moe"] = moe
    return out


def _leaf_paths(cls: type, prefix: str) -> list[str]:
    hints = get_type_hints(cls)
    out = []
    for f in fields(cls):
        sub = hints[f.name]
        if is_dataclass(sub):
            out.extend(_leaf_paths(sub, f"{prefix}.{f.name}"))
        else:
            out.append(f"{prefix}.{f.name}")
    return out


def _root(path: str) -> str:
    return path.split(".")[0]


def _build(cls: type[T], d: Mapping[str, Any], path: str) -> T:
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        k = unknown[0]
        # Suggest close names at this level and anywhere in the model tree (a key in the wrong place).
        root = _root(path)
        everywhere = _leaf_paths(TransformerConfig, root) + [f"{root}.moe", f"{root}.moe.router"]
        by_leaf: dict[str, list[str]] = {}
        for p in everywhere:
            by_leaf.setdefault(p.rsplit(".", 1)[-1], []).append(p)
        close = difflib.get_close_matches(str(k), list(by_leaf), n=3, cutoff=0.6)
        hints_txt = sorted({p for leaf in close for p in by_leaf[leaf]})
        if str(k) in LEGACY_KEYS:
            hints_txt = [f"{root}.{LEGACY_KEYS[str(k)]}"]
        did_you_mean = f" Did you mean {' or '.join(hints_txt)}?" if hints_txt else ""
        raise ValueError(
            f"unknown model config key {path}.{k}.{did_you_mean} Valid keys under {path}: {', '.join(names)}."
        )
    kwargs = {}
    for name, value in d.items():
        sub = hints[name]
        if is_dataclass(sub) and not isinstance(value, sub):
            if not isinstance(value, Mapping):
                raise ValueError(f"{path}.{name} must be a mapping, got {value!r}")
            value = _build(sub, value, f"{path}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "DISPATCH_IMPLS",
    "LEGACY_KEYS",
    "QK_NORMS",
    "ROUTING_MODES",
    "MoEConfig",
    "RouterConfig",
    "TransformerConfig",
]
