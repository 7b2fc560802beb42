"""TransformerConfig: nested MoE/router config, strict keys, the legacy flat layout of old checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL, compose_cfg, run_entry_point
from omegaconf import OmegaConf

from moe_swarm.model import MoEConfig, MoETransformer, RouterConfig, TransformerConfig
from moe_swarm.store.checkpoint import CheckpointError, load_checkpoint, save_model_checkpoint

DATA = Path(__file__).parent / "data"
# Written by the code before the nested config (commit 5422664): TransformerConfig().to_dict() and
# a real 2-step training checkpoint (1 layer, sigmoid_bias routing) with logits for a fixed input.
LEGACY_DICT = DATA / "legacy_transformer_config.json"
LEGACY_CKPT = DATA / "legacy_tiny_moe.ckpt"
LEGACY_LOGITS = DATA / "legacy_tiny_moe_logits.pt"


def test_nested_defaults_and_round_trip():
    cfg = TransformerConfig()
    d = cfg.to_dict()
    assert d["moe"]["router"] == {
        "mode": "softmax_topk",
        "top_k": 2,
        "renormalize": True,
        "capacity_factor": None,
        "jitter_eps": 0.0,
        "noise_std": 0.0,
        "route_scale": 1.0,
    }
    assert TransformerConfig.from_dict(d) == cfg
    partial = TransformerConfig.from_dict({"d_model": 64, "moe": {"router": {"top_k": 1}}})
    assert partial.d_model == 64 and partial.moe.router.top_k == 1 and partial.moe.num_experts == 8


def test_legacy_flat_dict_in_the_old_exact_layout_maps_into_the_nested_config():
    old = json.loads(LEGACY_DICT.read_text())
    assert "router_mode" in old and "moe" not in old  # really the old layout
    old.update(router_mode="sigmoid_bias", router_noise_std=0.5, num_experts=16, top_k=4, moe_every=2)
    cfg = TransformerConfig.from_dict(old)
    assert cfg.moe == MoEConfig(
        num_experts=16,
        d_ff=256,
        every=2,
        router=RouterConfig(mode="sigmoid_bias", top_k=4, noise_std=0.5),
    )
    assert cfg.d_model == old["d_model"] and cfg.vocab_size == old["vocab_size"]


def test_legacy_checkpoint_written_by_the_old_code_loads_and_reproduces_its_logits():
    loaded = load_checkpoint(LEGACY_CKPT)
    assert loaded.model.cfg.moe.router.mode == "sigmoid_bias"
    assert loaded.model.cfg.moe.num_experts == 4
    ref = torch.load(LEGACY_LOGITS, weights_only=True)
    with torch.no_grad():
        logits = loaded.model(ref["idx"]).logits
    # Computed by fp32 kernels, which differ in the last bits between CPUs of one machine kind (AVX2 vs
    # AVX-512: up to 1.5e-8 seen); a wrong load (weights, router mode, config) moves them far more.
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "d, path, suggestion",
    [
        ({"num_expert": 16}, "model.num_expert", "model.moe.num_experts"),
        ({"moe": {"nm_experts": 4}}, "model.moe.nm_experts", "model.moe.num_experts"),
        ({"moe": {"router": {"noise": 1.0}}}, "model.moe.router.noise", "model.moe.router.noise_std"),
        ({"moe": {"router": {"top_k": 1}}, "top_k": 2}, "model.top_k", "model.moe.router.top_k"),
    ],
)
def test_unknown_or_misplaced_keys_name_the_path_and_the_valid_keys(d, path, suggestion):
    with pytest.raises(ValueError) as err:
        TransformerConfig.from_dict(d)
    msg = str(err.value)
    assert path in msg and suggestion in msg
    if "it is now" not in msg:
        assert "Valid keys under" in msg


def test_bad_values_fail_in_the_config_not_in_the_layer():
    with pytest.raises(ValueError, match="top_k must be in"):
        TransformerConfig.from_dict({"moe": {"num_experts": 2, "router": {"top_k": 3}}})
    with pytest.raises(ValueError, match="router mode"):
        TransformerConfig.from_dict({"moe": {"router": {"mode": "hash"}}})
    with pytest.raises(ValueError, match="dispatch"):
        TransformerConfig.from_dict({"moe": {"dispatch": "magic"}})


def test_checkpoint_with_a_misspelt_model_key_is_refused(tmp_path):
    path = tmp_path / "bad.ckpt"
    model = MoETransformer(
        TransformerConfig(d_model=16, n_layers=1, n_heads=2, moe=MoEConfig(num_experts=2, d_ff=16))
    )
    save_model_checkpoint(path, model)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["model"]["moe"]["router"]["nosie_std"] = 0.1
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="model.moe.router.nosie_std"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (Path(__file__).parents[1] / "conf/experiment").glob("*.yaml"))
)
@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_bias", "switch"])
def test_every_experiment_and_router_group_composes_into_a_strict_config(tmp_path, experiment, router):
    cfg = compose_cfg("train", [f"experiment={experiment}", f"router={router}"], tmp_path)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    # init_from says where weights come from (a Hugging Face folder), not an architecture key
    assert model_cfg.pop("init_from") is None
    model = TransformerConfig.from_dict(model_cfg)
    assert model.moe.router.mode == {"switch": "softmax_topk"}.get(router, router)
    assert model.moe.router.top_k == (1 if router == "switch" else 2)


def test_train_entry_point_rejects_a_misspelt_model_key_before_training(tmp_path):
    proc = run_entry_point(
        "moe_swarm.cli.train",
        ["experiment=quickstart", "+model.num_expert=16", *TINY_MODEL, "run_id=typo"],
        tmp_path,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "model.num_expert" in proc.stderr and "model.moe.num_experts" in proc.stderr
    assert not list(tmp_path.rglob("*.ckpt")), "a checkpoint was written: training ran"
    assert not list(tmp_path.rglob("metrics.csv")), "metrics were logged: training ran"


def test_mfu_counts_training_flops_per_token_against_the_peak():
    from moe_swarm.training.lm_module import MoELanguageModel

    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=2, max_seq_len=64, moe=MoEConfig(num_experts=4, d_ff=32)
    )
    module = MoELanguageModel(model=cfg.to_dict())
    model = module.model
    count = model.count_parameters()
    # 6 x (active matmul params + output head) + 12 x layers x d_model x T (attention scores).
    expected = 6.0 * (count.active - count.embedding + cfg.vocab_size * 32) + 12.0 * 2 * 32 * 64
    assert model.train_flops_per_token(64) == expected
    assert module.mfu(1000.0, peak_flops=1e12) == pytest.approx(1000.0 * expected / 1e12)
    assert module.mfu(1000.0) is None  # no known peak for a CPU: no invented MFU
