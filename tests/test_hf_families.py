"""Hugging Face import/export per family: a tiny random model built with transformers' own classes.

For Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE: import matches transformers' fp32 logits on a padded
batch, greedy decoding agrees between our eager and static KV-cached paths (and with transformers'
``generate``), export loads back in transformers with the same logits, and import(export(x)) is
bit-identical.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # a dev dependency: these tests must run, never skip
from safetensors.torch import save_file

from moe_swarm.hf import export_model, import_hf, load_hf_model
from moe_swarm.model import MoETransformer, TransformerConfig
from moe_swarm.store.checkpoint import load_checkpoint

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention in every family
    num_experts_per_tok=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# Each family exercises its own features (see docs/models.md for the matrix).
FAMILIES = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, intermediate_size=48)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        # layer 0 dense (decoder_sparse_step=2), q/k/v bias, gated shared expert, no top-k renormalising
        dict(
            num_experts=4,
            moe_intermediate_size=24,
            intermediate_size=40,
            shared_expert_intermediate_size=48,
            decoder_sparse_step=2,
            norm_topk_prob=False,
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        # per-head q/k norm, head_dim != hidden/heads, renormalised top-k, another rope base
        dict(num_experts=4, moe_intermediate_size=24, head_dim=16, norm_topk_prob=True, rope_theta=5e4),
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        # q/k norm over the whole projection, tied embeddings
        dict(num_experts=4, intermediate_size=24, norm_topk_prob=False, tie_word_embeddings=True),
    ),
}


def hf_model(family: str, **overrides):
    config_cls, model_cls, extra = FAMILIES[family]
    kwargs = {**COMMON, **extra, **overrides}
    rope_theta = kwargs.pop("rope_theta", None)
    cfg = getattr(transformers, config_cls)(**kwargs)
    if rope_theta is not None:
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": rope_theta}
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # weights large enough that routing and norms matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return model


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(3, VOCAB, (3, 12), generator=g)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0  # right padding: pads never precede a real token (causal attention)
    mask[2, 5:] = 0
    return idx.masked_fill(mask == 0, 0), mask


def logits_gap(ours: MoETransformer, theirs, idx: torch.Tensor, mask: torch.Tensor) -> float:
    with torch.no_grad():
        a = ours(idx, pad_mask=mask.bool()).logits
        b = theirs(input_ids=idx, attention_mask=mask).logits
    real = mask.bool()
    return (a[real] - b[real]).abs().max().item()


@pytest.fixture(params=list(FAMILIES))
def family_folder(request, tmp_path):
    family = request.param
    model = hf_model(family)
    model.save_pretrained(tmp_path / "hf")
    return family, model, tmp_path


def test_import_matches_transformers_logits_and_decodes_the_same_eager_static_and_hf(family_folder):
    family, theirs, tmp = family_folder
    ckpt = import_hf(tmp / "hf", tmp / "imported.ckpt")
    ours = load_checkpoint(ckpt).model
    assert ours.cfg.kv_heads == 2 and ours.cfg.n_heads == 4
    idx, mask = padded_batch()
    gap = logits_gap(ours, theirs, idx, mask)
    print(f"{family}: max |logit difference| vs transformers = {gap:.3e}")
    assert gap < 1e-5
    prompt = idx[:1, :8]
    eager = ours.generate(prompt, 32, decode="eager").tokens
    static = ours.generate(prompt, 32, decode="static").tokens
    assert eager.shape == (1, 32)
    assert torch.equal(eager, static)
    greedy = transformers.GenerationConfig(
        max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(theirs.generate(prompt, generation_config=greedy)[:, 8:], eager)


def test_export_loads_in_transformers_and_reimports_bit_identically(family_folder):
    family, theirs, tmp = family_folder
    ours, _ = load_hf_model(tmp / "hf")
    out = export_model(ours, tmp / "exported", {"model_type": family, "bos_token_id": 1, "eos_token_id": 2})
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    assert not list(tmp.glob(".exported.*"))  # the temporary folder was renamed into place
    back = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    idx, mask = padded_batch()
    assert logits_gap(ours, back, idx, mask) < 1e-5
    assert logits_gap(ours, theirs, idx, mask) < 1e-5
    again, _ = load_hf_model(out)
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_expert_layout_and_shards_with_index_import_the_same_model(tmp_path):
    theirs = hf_model("mixtral")
    theirs.save_pretrained(tmp_path / "per_expert")
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "config.json").write_text((tmp_path / "per_expert" / "config.json").read_text())
    # transformers 5 holds experts fused in memory (experts.gate_up_proj / experts.down_proj).
    state = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in state)
    save_file(state, str(fused / "model.safetensors"))
    a, _ = load_hf_model(tmp_path / "per_expert")
    b, _ = load_hf_model(fused)
    sharded = export_model(a, tmp_path / "sharded", {"model_type": "mixtral"}, max_shard_bytes=20_000)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    c, _ = load_hf_model(sharded)
    for other in (b, c):
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in a.state_dict().items())


def test_import_can_cast_the_dtype(tmp_path):
    hf_model("qwen3_moe").save_pretrained(tmp_path / "hf")
    model, _ = load_hf_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_model_trained_here_exports_as_mixtral(tmp_path):
    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=2, max_seq_len=64, moe={"num_experts": 4, "d_ff": 32}
    )
    ours = MoETransformer(cfg).eval()
    out = export_model(ours, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "mixtral" and config["eos_token_id"] == 258
    back = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    idx = torch.randint(0, 256, (2, 10))
    mask = torch.ones_like(idx)
    assert logits_gap(ours, back, idx, mask) < 1e-5
