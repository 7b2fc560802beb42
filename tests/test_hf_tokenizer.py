"""Tokenizer files through import and export: a checkpoint carries its tokenizer.json, the sidecar's model
repository and export use it, a model trained here ships the byte tokenizer, a vocabulary that does not
fit is refused by name."""

from __future__ import annotations

import json

import transformers  # a dev dependency: these tests must run, never skip
from test_data_tokenizer import tiny_bpe
from test_hf_families import COMMON
from tokenizers import Tokenizer

from moe_swarm.cli import convert
from moe_swarm.control.models import read_model
from moe_swarm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, HFTokenizer
from moe_swarm.hf import export_hf, import_hf
from moe_swarm.store.checkpoint import load_checkpoint, save_model_checkpoint

TEXTS = ["3*4=12\nthe answer", "the quick brown fox", "a list type holds items"]


def mixtral_folder(path, vocab_size: int = 320, tokenizer_vocab: int = 300, byte_tokenizer: bool = False):
    """A tiny random Mixtral saved by transformers with a tokenizer: a BPE tokenizer.json (ids up to
    ``tokenizer_vocab``) with a chat template, or the byte tokenizer's tokenizer.json."""
    bos, eos, pad = (BOS_ID, EOS_ID, PAD_ID) if byte_tokenizer else (1, 2, 0)
    specials = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    sizes = dict(
        vocab_size=vocab_size, num_local_experts=4, intermediate_size=32, max_position_embeddings=128
    )
    cfg = transformers.MixtralConfig(**{**COMMON, **sizes, **specials})  # GQA: 4 heads, 2 kv heads
    transformers.MixtralForCausalLM(cfg).save_pretrained(path)
    if byte_tokenizer:
        for name, text in ByteTokenizer().tokenizer_files().items():
            (path / name).write_text(text)
        return path
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tiny_bpe(tokenizer_vocab),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template="{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}",
    )
    fast.save_pretrained(path)
    return path


def test_import_carries_the_tokenizer_and_export_writes_it_back(tmp_path):
    folder = mixtral_folder(tmp_path / "hf")
    ckpt = import_hf(folder, tmp_path / "m.ckpt")
    hparams = load_checkpoint(ckpt).hparams
    assert set(hparams["hf"]["tokenizer"]) >= {"tokenizer.json", "tokenizer_config.json"}
    loaded = read_model(ckpt, "m", "cpu")  # what the sidecar and MCP infer with
    assert isinstance(loaded.tokenizer, HFTokenizer)
    expected = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = expected(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert loaded.tokenizer.encode(TEXTS[0], bos=True) == [expected.bos_token_id, *ids]
    assert loaded.tokenizer.fingerprint() == HFTokenizer.from_path(folder).fingerprint()
    out = export_hf(ckpt, tmp_path / "out")
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    back = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert back(TEXTS[1])["input_ids"] == expected(TEXTS[1])["input_ids"]
    assert back.eos_token == "</s>" and back.chat_template == expected.chat_template


def test_a_model_trained_here_exports_the_byte_tokenizer(tmp_path):
    from moe_swarm.model import MoETransformer, TransformerConfig

    model = MoETransformer(
        TransformerConfig(d_model=16, n_layers=1, n_heads=2, moe={"num_experts": 2, "d_ff": 16})
    )
    save_model_checkpoint(tmp_path / "m.ckpt", model)
    out = export_hf(tmp_path / "m.ckpt", tmp_path / "out")
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = "héllo 🎉"
    assert tok.encode(text, add_special_tokens=False).ids == ByteTokenizer().encode(text)
    fast = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    config = json.loads((out / "config.json").read_text())
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (
        config["bos_token_id"],
        config["eos_token_id"],
        config["pad_token_id"],
    )
    reimported = import_hf(out, tmp_path / "again.ckpt")
    assert read_model(reimported, "b", "cpu").tokenizer.fingerprint() == ByteTokenizer().fingerprint()


def test_a_tokenizer_that_does_not_fit_the_model_is_refused_by_name(tmp_path, capsys):
    folder = mixtral_folder(tmp_path / "hf", vocab_size=264)
    ids = HFTokenizer.from_path(folder).vocab_size
    assert ids > 264
    capsys.readouterr()  # transformers' own progress output while saving the folder
    rc = convert.main(["from-hf", str(folder), str(tmp_path / "m.ckpt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert str(folder / "tokenizer.json") in err and "vocab_size=264" in err and f"({ids} ids)" in err
    assert not (tmp_path / "m.ckpt").exists()


def test_an_unreadable_tokenizer_is_refused_by_name(tmp_path, capsys):
    folder = mixtral_folder(tmp_path / "hf")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    capsys.readouterr()
    rc = convert.main(["from-hf", str(folder), str(tmp_path / "m.ckpt")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "eos_token='<|nope|>'" in err and str(folder) in err
    assert not (tmp_path / "m.ckpt").exists()
