"""Bad Hugging Face input and unexportable models: one-line errors naming the file/key, no partial output."""

from __future__ import annotations

import json

import pytest
import torch
import transformers  # a dev dependency: these tests must run, never skip
from safetensors.torch import load_file, save_file

from moe_swarm.cli import convert
from moe_swarm.hf import HFError, config_from_hf, export_model, load_hf_model
from moe_swarm.model import MoETransformer, TransformerConfig


@pytest.fixture
def folder(tmp_path):
    cfg = transformers.MixtralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=2,
        max_position_embeddings=32,
    )
    transformers.MixtralForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def run_convert(capsys, *argv: str) -> tuple[int, str]:
    rc = convert.main(list(argv))
    return rc, capsys.readouterr().err.strip()


def edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def assert_one_line_error(rc: int, err: str, *names: str) -> None:
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, err


def test_from_hf_writes_a_loadable_checkpoint(folder, tmp_path, capsys):
    rc, _ = run_convert(capsys, "from-hf", str(folder), str(tmp_path / "m.ckpt"))
    assert rc == 0 and (tmp_path / "m.ckpt").is_file()
    rc, _ = run_convert(capsys, "to-hf", str(tmp_path / "m.ckpt"), str(tmp_path / "back"))
    assert rc == 0 and (tmp_path / "back" / "model.safetensors").is_file()


def test_folder_without_config_json(folder, tmp_path, capsys):
    (folder / "config.json").unlink()
    rc, err = run_convert(capsys, "from-hf", str(folder), str(tmp_path / "m.ckpt"))
    assert_one_line_error(rc, err, "config.json")
    assert not (tmp_path / "m.ckpt").exists()


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"model_type": "deepseek_v3"}, ["model_type='deepseek_v3'"]),
        ({"sliding_window": 4096}, ["sliding_window=4096"]),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}, "hidden_act": "gelu"},
            ["rope_parameters.rope_type='yarn'", "hidden_act='gelu'"],
        ),
    ],
)
def test_config_fields_the_model_cannot_honour_are_named(folder, tmp_path, capsys, changes, named):
    edit_config(folder, **changes)
    rc, err = run_convert(capsys, "from-hf", str(folder), str(tmp_path / "m.ckpt"))
    assert_one_line_error(rc, err, "config.json", *named)
    assert not (tmp_path / "m.ckpt").exists()


def test_qwen_sliding_window_and_dense_layer_lists_are_refused():
    base = dict(
        model_type="qwen3_moe",
        vocab_size=8,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=8,
        intermediate_size=8,
    )
    with pytest.raises(HFError, match=r"sliding_window=128.*mlp_only_layers=\[0\]"):
        config_from_hf({**base, "use_sliding_window": True, "sliding_window": 128, "mlp_only_layers": [0]})
    with pytest.raises(HFError, match="clip_qkv=8.0"):
        config_from_hf({**base, "model_type": "olmoe", "num_experts": 2, "clip_qkv": 8.0})


def test_missing_shard_is_named(folder, tmp_path, capsys):
    model, _ = load_hf_model(folder)
    sharded = export_model(model, tmp_path / "sharded", {"model_type": "mixtral"}, max_shard_bytes=4096)
    victim = sorted(sharded.glob("model-*.safetensors"))[-1]
    victim.unlink()
    rc, err = run_convert(capsys, "from-hf", str(sharded), str(tmp_path / "m.ckpt"))
    assert_one_line_error(rc, err, victim.name, "shard missing")
    assert not (tmp_path / "m.ckpt").exists()


def test_tensor_of_the_wrong_shape_is_named(folder, tmp_path, capsys):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    key = "model.layers.1.self_attn.k_proj.weight"
    tensors[key] = torch.zeros(16, 16)  # two kv heads' worth; config.json says one
    save_file(tensors, str(path))
    rc, err = run_convert(capsys, "from-hf", str(folder), str(tmp_path / "m.ckpt"))
    assert_one_line_error(rc, err, "model.safetensors", key, "(16, 16)", "(8, 16)")
    assert not (tmp_path / "m.ckpt").exists()


def test_missing_and_unknown_tensors_are_named(folder, tmp_path, capsys):
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(path))
    rc, err = run_convert(capsys, "from-hf", str(folder), str(tmp_path / "m.ckpt"))
    assert_one_line_error(rc, err, "model.norm.weight", "missing")
    tensors["model.norm.weight"] = torch.ones(16)
    tensors["model.layers.0.mlp.extra.weight"] = torch.ones(2)
    save_file(tensors, str(path))
    rc, err = run_convert(capsys, "from-hf", str(folder), str(tmp_path / "m.ckpt"))
    assert_one_line_error(rc, err, "model.layers.0.mlp.extra.weight", "no place")


def test_settings_without_an_hf_equivalent_are_refused_by_name(tmp_path):
    cfg = TransformerConfig(
        d_model=16,
        n_layers=1,
        n_heads=2,
        moe={"num_experts": 2, "d_ff": 16, "router": {"mode": "sigmoid_bias", "top_k": 1}},
    )
    with pytest.raises(HFError, match="model.moe.router.mode='sigmoid_bias'"):
        export_model(MoETransformer(cfg), tmp_path / "out")
    ungated = TransformerConfig(
        d_model=16, n_layers=1, n_heads=2, moe={"num_experts": 2, "shared_expert_d_ff": 8}
    )
    with pytest.raises(HFError, match="fits no Hugging Face family.*model.moe.shared_expert_d_ff=8"):
        export_model(MoETransformer(ungated), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_to_hf_refuses_an_existing_folder_and_a_missing_checkpoint(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    ckpt = tmp_path / "m.ckpt"
    rc, err = run_convert(capsys, "to-hf", str(ckpt), str(tmp_path / "new"))
    assert_one_line_error(rc, err, str(ckpt))
    from moe_swarm.store.checkpoint import save_model_checkpoint

    save_model_checkpoint(ckpt, MoETransformer(TransformerConfig(d_model=16, n_layers=1, n_heads=2)))
    rc, err = run_convert(capsys, "to-hf", str(ckpt), str(tmp_path / "out"))
    assert_one_line_error(rc, err, "already exists")
