"""The four Hugging Face MoE families: config.json <-> ``TransformerConfig``, and which family a model fits.

Field names are transformers' own (``MixtralConfig``, ``Qwen2MoeConfig``, ``Qwen3MoeConfig``,
``OlmoeConfig``). Anything a family's config asks for that the model cannot honour (a sliding window,
rope scaling, a dense layer list, a bias on the output projection, ...) is an :class:`HFError` that
names each field and value: nothing is approximated silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moe_swarm.errors import UserError
from moe_swarm.model.config import MoEConfig, RouterConfig, TransformerConfig

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
ARCHITECTURES = {
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "olmoe": "OlmoeForCausalLM",
}
# Name of the sparse block inside a layer in published checkpoints.
MOE_BLOCK = {"mixtral": "block_sparse_moe", "qwen2_moe": "mlp", "qwen3_moe": "mlp", "olmoe": "mlp"}
# Per-expert projection names (gate, up, down) -> our ExpertPool w1, w3, w2.
EXPERT_NAMES = {
    "mixtral": ("w1", "w3", "w2"),
    "qwen2_moe": ("gate_proj", "up_proj", "down_proj"),
    "qwen3_moe": ("gate_proj", "up_proj", "down_proj"),
    "olmoe": ("gate_proj", "up_proj", "down_proj"),
}


class HFError(UserError, ValueError):
    """A Hugging Face folder or export request this model cannot honour; the message names the file/key."""


def _rope_base(hf: Mapping[str, Any], default: float) -> tuple[float, list[str]]:
    """RoPE base from ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4.x)."""
    bad = []
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    for source, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if isinstance(value, Mapping):
            kind = value.get("rope_type", value.get("type", "default"))
            if kind != "default":
                bad.append(f"{source}.rope_type={kind!r}")
        elif value is not None:
            bad.append(f"{source}={value!r}")
    base = params.get("rope_theta", hf.get("rope_theta", default)) if isinstance(params, Mapping) else default
    return float(base), bad


def _require(hf: Mapping[str, Any], bad: list[str], **allowed: Any) -> None:
    """Record ``field=value`` for each field present with a value other than the allowed one."""
    for key, ok in allowed.items():
        if hf.get(key, ok) != ok:
            bad.append(f"{key}={hf[key]!r}")


def config_from_hf(hf: Mapping[str, Any], source: str = "config.json") -> TransformerConfig:
    """Our model config for a transformers config.json dict; :class:`HFError` naming every field the
    model cannot honour."""
    family = hf.get("model_type")
    if family not in FAMILIES:
        raise HFError(f"{source}: model_type={family!r} is not supported; supported: {', '.join(FAMILIES)}")
    bad: list[str] = []
    rope_base, rope_bad = _rope_base(hf, 1e6 if family == "mixtral" else 1e4)
    bad += rope_bad
    _require(hf, bad, hidden_act="silu", quantization_config=None)
    if hf.get("use_sliding_window") or (family == "mixtral" and hf.get("sliding_window") is not None):
        bad.append(f"sliding_window={hf.get('sliding_window')!r}")
    if hf.get("mlp_only_layers"):  # Qwen: dense layers at arbitrary indices (we have only moe.every)
        bad.append(f"mlp_only_layers={hf['mlp_only_layers']!r}")
    if family in ("qwen3_moe", "olmoe"):
        _require(hf, bad, attention_bias=False)
    if family == "olmoe":
        _require(hf, bad, clip_qkv=None)
    if bad:
        raise HFError(f"{source}: {family} fields this model cannot honour: {', '.join(bad)}")

    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    # transformers writes either name (attribute_map aliases one to the other).
    experts = int(hf["num_local_experts"] if "num_local_experts" in hf else hf["num_experts"])
    d_ff = int(hf["intermediate_size"] if family in ("mixtral", "olmoe") else hf["moe_intermediate_size"])
    shared = int(hf.get("shared_expert_intermediate_size", 0)) if family == "qwen2_moe" else 0
    router = RouterConfig(
        top_k=int(hf["num_experts_per_tok"]),
        renormalize=True if family == "mixtral" else bool(hf.get("norm_topk_prob", False)),
        jitter_eps=float(hf.get("router_jitter_noise", 0.0)),
    )
    return TransformerConfig(
        vocab_size=int(hf["vocab_size"]),
        d_model=d_model,
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=None if head_dim in (None, d_model // n_heads) else int(head_dim),
        qk_norm={"qwen3_moe": "head", "olmoe": "full"}.get(family, "none"),
        qkv_bias=bool(hf.get("qkv_bias", True)) if family == "qwen2_moe" else False,
        max_seq_len=int(hf.get("max_position_embeddings", 4096)),
        ffn="moe",
        dense_d_ff=int(hf["intermediate_size"]) if family in ("qwen2_moe", "qwen3_moe") else None,
        rope_base=rope_base,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_weights=bool(hf.get("tie_word_embeddings", False)),
        moe=MoEConfig(
            num_experts=experts,
            d_ff=d_ff,
            every=int(hf.get("decoder_sparse_step", 1)),
            shared_expert_d_ff=shared,
            shared_expert_gate=shared > 0,
            router=router,
        ),
    )


def _unsupported_everywhere(cfg: TransformerConfig) -> list[str]:
    r = cfg.moe.router
    bad = []
    if cfg.ffn != "moe":
        bad.append(f"model.ffn={cfg.ffn!r}")
    if r.mode != "softmax_topk":
        bad.append(f"model.moe.router.mode={r.mode!r}")
    if r.capacity_factor is not None:
        bad.append(f"model.moe.router.capacity_factor={r.capacity_factor!r}")
    if r.route_scale != 1.0:
        bad.append(f"model.moe.router.route_scale={r.route_scale!r}")
    return bad


# What each family fixes, as (model config key, required value); keys absent from a family are free.
_FAMILY_FIXES: dict[str, dict[str, Any]] = {
    "mixtral": {
        "qk_norm": "none",
        "qkv_bias": False,
        "moe.shared_expert_d_ff": 0,
        "moe.every": 1,
        "moe.router.renormalize": True,
    },
    "qwen2_moe": {
        "qk_norm": "none",
        "head_dim": None,
        "moe.shared_expert_gate": True,
        "moe.router.jitter_eps": 0.0,
    },
    "qwen3_moe": {
        "qk_norm": "head",
        "qkv_bias": False,
        "moe.shared_expert_d_ff": 0,
        "moe.router.jitter_eps": 0.0,
    },
    "olmoe": {
        "qk_norm": "full",
        "qkv_bias": False,
        "moe.shared_expert_d_ff": 0,
        "moe.every": 1,
        "head_dim": None,
        "moe.router.jitter_eps": 0.0,
    },
}


def _get(cfg: TransformerConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def family_misfits(cfg: TransformerConfig, family: str) -> list[str]:
    """The ``model.<key>=value`` settings that ``family`` cannot express (empty: it fits)."""
    bad = [
        f"model.{key}={_get(cfg, key)!r}"
        for key, want in _FAMILY_FIXES[family].items()
        if _get(cfg, key) != want
    ]
    if family == "qwen2_moe" and cfg.moe.shared_expert_d_ff <= 0:  # its shared expert is not optional
        bad.append(f"model.moe.shared_expert_d_ff={cfg.moe.shared_expert_d_ff!r}")
    return bad


def choose_family(cfg: TransformerConfig, prefer: str | None = None) -> str:
    """The family a model exports as: ``prefer`` (the one it was imported from) when it fits, else the
    first that fits (Mixtral for the default architecture); :class:`HFError` naming the settings if none."""
    everywhere = _unsupported_everywhere(cfg)
    if everywhere:
        raise HFError(f"no Hugging Face family has an equivalent of {', '.join(everywhere)}")
    order = ([prefer] if prefer in FAMILIES else []) + [f for f in FAMILIES if f != prefer]
    for family in order:
        if not family_misfits(cfg, family):
            return family
    reasons = "; ".join(f"{f}: {', '.join(family_misfits(cfg, f))}" for f in FAMILIES)
    raise HFError(f"the model fits no Hugging Face family ({reasons})")


def config_to_hf(cfg: TransformerConfig, family: str, special: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' config.json for ``cfg`` as ``family`` (which must fit: see :func:`choose_family`)."""
    m = cfg.moe
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "tie_word_embeddings": cfg.tie_weights,
        "num_experts_per_tok": m.router.top_k,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "output_router_logits": False,
        **{k: special.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
    }
    if family == "mixtral":
        out.update(
            num_local_experts=m.num_experts,
            intermediate_size=m.d_ff,
            head_dim=cfg.resolved_head_dim,
            sliding_window=None,
            router_jitter_noise=m.router.jitter_eps,
        )
    elif family == "olmoe":
        out.update(num_experts=m.num_experts, intermediate_size=m.d_ff, norm_topk_prob=m.router.renormalize)
        out.update(clip_qkv=None, attention_bias=False)
    else:
        out.update(
            num_experts=m.num_experts,
            moe_intermediate_size=m.d_ff,
            intermediate_size=cfg.resolved_dense_d_ff,
            norm_topk_prob=m.router.renormalize,
            decoder_sparse_step=m.every,
            mlp_only_layers=[],
            use_sliding_window=False,
            sliding_window=None,
        )
        if family == "qwen2_moe":
            # n shared experts of width d are one of width n * d (concatenated hidden units; MoELayer).
            out.update(shared_expert_intermediate_size=m.shared_d_ff, qkv_bias=cfg.qkv_bias)
        else:
            out.update(head_dim=cfg.resolved_head_dim, attention_bias=False)
    return out
