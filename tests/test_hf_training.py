"""Training with Hugging Face models: ``model=hf model.init_from=DIR`` runs Lightning steps on an imported
Mixtral (and refuses a model config that disagrees with config.json); a model trained here for 200 steps,
exported, gets the same validation loss from transformers."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
import transformers  # a dev dependency: these tests must run, never skip
from conftest import TINY_MODEL, compose_cfg
from test_hf_tokenizer import mixtral_folder

from moe_swarm.cli.train import train
from moe_swarm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, HFTokenizer
from moe_swarm.hf import HFError, export_hf, load_hf_model
from moe_swarm.store.checkpoint import load_checkpoint

CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.precision=32-true",
    "module.compile=false",
    "data.block_size=32",
    "data.max_bytes=200000",
    "data.val_windows=8",
]
SMALL = [
    *CPU,
    "data.batch_size=4",
    "trainer.enable_progress_bar=false",
    "logger=csv",
]  # TINY_MODEL without model keys


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory) -> Path:
    """A tiny random Mixtral over the byte vocabulary, saved by transformers, with the byte tokenizer.json."""
    torch.manual_seed(0)
    return mixtral_folder(tmp_path_factory.mktemp("hf") / "mixtral", vocab_size=264, byte_tokenizer=True)


def test_three_lightning_steps_on_an_imported_mixtral(mixtral, tmp_path):
    overrides = ["model=hf", f"model.init_from={mixtral}", "model.max_seq_len=64", *SMALL]
    overrides += [
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "module.scheduler.warmup_steps=1",
        "run_id=hf3",
    ]
    summary = train(compose_cfg("train", overrides, tmp_path))
    assert summary["status"] == "succeeded" and summary["global_step"] == 3
    assert math.isfinite(summary["metrics"]["val/loss"])
    loaded = load_checkpoint(summary["checkpoint"])
    assert (
        loaded.hparams["hf"]["model_type"] == "mixtral"
        and "tokenizer.json" in loaded.hparams["hf"]["tokenizer"]
    )
    assert loaded.model.cfg.max_seq_len == 64 and loaded.model.cfg.kv_heads == 2
    start, _ = load_hf_model(mixtral)
    trained = loaded.model.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in start.state_dict().items())  # the weights moved
    out = export_hf(summary["checkpoint"], tmp_path / "out")  # fine-tuned model back out, with its tokenizer
    assert HFTokenizer.from_path(out).fingerprint() == ByteTokenizer().fingerprint()
    back = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    idx = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        gap = (back(idx).logits - loaded.model(idx).logits).abs().max().item()
    assert gap < 1e-5


@pytest.mark.parametrize("family", ["qwen2_moe", "qwen3_moe", "olmoe"])
def test_three_lightning_steps_on_each_other_imported_family(family, tmp_path):
    """Mixtral is covered above (with export); here each other family's own features (Qwen2's dense
    layer, q/k/v bias and gated shared expert; Qwen3's per-head q/k norm; OLMoE's whole-projection q/k
    norm and tied embeddings) take three optimizer steps and move the weights."""
    from test_hf_families import hf_model

    folder = tmp_path / family
    hf_model(
        family, vocab_size=264, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID
    ).save_pretrained(folder)
    for name, text in ByteTokenizer().tokenizer_files().items():
        (folder / name).write_text(text)
    overrides = ["model=hf", f"model.init_from={folder}", "model.max_seq_len=64", *SMALL, "run_id=f3"]
    overrides += ["trainer.max_steps=3", "trainer.val_check_interval=3", "module.scheduler.warmup_steps=1"]
    summary = train(compose_cfg("train", overrides, tmp_path))
    assert summary["status"] == "succeeded" and summary["global_step"] == 3
    assert math.isfinite(summary["metrics"]["val/loss"])
    loaded = load_checkpoint(summary["checkpoint"])
    assert loaded.hparams["hf"]["model_type"] == family
    start, _ = load_hf_model(folder)
    trained = loaded.model.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in start.state_dict().items())
    for k, v in start.state_dict().items():  # three small steps from the folder's weights, not from scratch
        assert (trained[k] - v).norm() <= 0.1 * v.norm() + 1e-6, k
    if loaded.model.cfg.tie_weights:
        assert torch.equal(trained["lm_head.weight"], trained["embed.weight"])


def test_init_from_with_model_keys_that_disagree_with_config_json_is_an_error(mixtral, tmp_path):
    overrides = [
        f"model.init_from={mixtral}",
        *SMALL,
        "trainer.max_steps=1",
        "run_id=clash",
    ]  # model=moe_small
    with pytest.raises(HFError, match=r"model\.d_model=128 \(config\.json: 32\).*use model=hf"):
        train(compose_cfg("train", overrides, tmp_path))
    with pytest.raises(HFError, match=r"model\.moe\.router\.top_k=1 \(config\.json: 2\)"):
        overrides = ["model=hf", f"model.init_from={mixtral}", "router=switch", *SMALL, "run_id=clash2"]
        train(compose_cfg("train", overrides, tmp_path))


def test_200_steps_trained_here_give_transformers_the_same_validation_loss(tmp_path):
    overrides = [*TINY_MODEL, *CPU, "model.max_seq_len=64", "trainer.max_steps=200"]
    overrides += ["trainer.val_check_interval=200", "module.scheduler.warmup_steps=20", "run_id=long"]
    cfg = compose_cfg("train", overrides, tmp_path)
    summary = train(cfg)
    assert summary["global_step"] == 200
    ours = summary["metrics"]["val/loss"]
    assert ours < summary["metrics_start"]["val/loss"] - 1.0  # it learned something
    out = export_hf(summary["checkpoint"], tmp_path / "exported")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    data = hydra.utils.instantiate(cfg.data, _convert_="all")  # the same held-out windows
    data.setup("validate")
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            logits = theirs(input_ids=batch["input_ids"]).logits
            targets = batch["targets"]
            nll += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((targets != -100).sum())
    print(
        f"val/loss after 200 steps: ours {ours:.7f}, transformers {nll / count:.7f}, diff {abs(nll / count - ours):.1e}"
    )
    assert count > 0 and abs(nll / count - ours) < 1e-4
