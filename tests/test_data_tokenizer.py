"""Tokenizers: ByteTokenizer round trips and errors; its tokenizer.json export; Hugging Face tokenizer.json
files (ids, specials, chat template) checked against transformers; fingerprints."""

import json

import pytest
import torch
import transformers  # a dev dependency: these tests must run, never skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moe_swarm.data import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer
from moe_swarm.data.tokenizer import HFTokenizer, TokenizerError, load_tokenizer

tok = ByteTokenizer()


def test_constants_agree():
    assert (
        (ByteTokenizer.PAD, ByteTokenizer.BOS, ByteTokenizer.EOS)
        == (PAD_ID, BOS_ID, EOS_ID)
        == (256, 257, 258)
    )
    assert ByteTokenizer.vocab_size == VOCAB_SIZE == 264


@pytest.mark.parametrize(
    "text", ["", "hello world", "héllo wörld", "日本語のテキスト", "emoji 🎉 ok", "tab\tnl\n\x00"]
)
def test_round_trip(text):
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == text


@given(st.text())
def test_round_trip_any_text(text):
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_bos_eos_wrap_and_specials_skipped():
    ids = tok.encode("é", bos=True, eos=True)
    assert ids == [BOS_ID, 0xC3, 0xA9, EOS_ID]
    assert tok.decode([BOS_ID, 104, PAD_ID, 105, 263]) == "hi"


def test_decode_stops_at_eos_unless_told_not_to():
    ids = tok.encode("ab", eos=True) + tok.encode("cd")
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, stop_at_eos=False) == "abcd"


def test_decode_accepts_tensor_and_replaces_invalid_utf8():
    assert tok.decode(torch.tensor([104, 105, EOS_ID, 106])) == "hi"
    assert tok.decode([0xFF, 97]) == "\ufffda"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a multibyte character cut short


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        tok.decode([VOCAB_SIZE])
    with pytest.raises(ValueError, match="outside the byte vocabulary"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))


# ---- the common interface, the byte tokenizer as tokenizer.json, Hugging Face tokenizers ----------------

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYS] {{ m['content'] | trim }}\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, 日本語 and emoji 🎉",
    "def f(x):\n    return x",
]


def test_byte_tokenizer_common_interface():
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert isinstance(load_tokenizer(None), ByteTokenizer) and isinstance(
        load_tokenizer("byte"), ByteTokenizer
    )
    assert tok.fingerprint() == ByteTokenizer().fingerprint() and len(tok.fingerprint()) == 16


@pytest.fixture(scope="module")
def byte_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("byte_tok")
    for name, text in tok.tokenizer_files().items():
        (folder / name).write_text(text)
    return folder


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_byte_tokenizer_json_encodes_and_decodes_the_same_ids(byte_folder, text):
    exported = Tokenizer.from_file(str(byte_folder / "tokenizer.json"))
    ids = exported.encode(text, add_special_tokens=False).ids
    assert ids == tok.encode(text)
    assert exported.decode(ids) == text


def test_byte_tokenizer_json_loads_as_hf_tokenizer_with_the_same_ids_and_fingerprint(byte_folder):
    hf = load_tokenizer(byte_folder)
    assert isinstance(hf, HFTokenizer)
    assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE)
    text = "<|eos|> is text here, not a token: é"
    assert hf.encode(text, bos=True, eos=True) == tok.encode(text, bos=True, eos=True)
    assert hf.decode(tok.encode("ab", eos=True) + tok.encode("cd")) == "ab"
    assert hf.fingerprint() == tok.fingerprint()
    fast = transformers.AutoTokenizer.from_pretrained(byte_folder, local_files_only=True)
    assert fast("héllo", add_special_tokens=False)["input_ids"] == tok.encode("héllo")
    assert fast.eos_token_id == EOS_ID and fast.pad_token_id == PAD_ID


def tiny_bpe(vocab_size: int = 300) -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 20, trainer)
    return bpe


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tok")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tiny_bpe(),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(folder)
    return folder, transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)


@pytest.mark.parametrize("text", CORPUS + ["", "unseen wörds ünd \t tabs"])
def test_hf_tokenizer_encodes_and_decodes_like_transformers(hf_folder, text):
    folder, fast = hf_folder
    ours = load_tokenizer(folder)
    assert ours.encode(text) == fast(text, add_special_tokens=False)["input_ids"]
    ids = ours.encode(text, bos=True, eos=True)
    assert ids[0] == fast.bos_token_id and ids[-1] == fast.eos_token_id
    assert ours.decode(ids) == fast.decode(ids, skip_special_tokens=True) == text
    assert ours.decode(ids + ours.encode("after")) == text  # stops at EOS
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        fast.bos_token_id,
        fast.eos_token_id,
        fast.pad_token_id,
    )
    assert ours.vocab_size == len(fast)


def test_hf_chat_template_renders_like_apply_chat_template(hf_folder):
    folder, fast = hf_folder
    ours = load_tokenizer(folder / "tokenizer.json")  # a tokenizer.json path reads its folder's config too
    messages = [
        {"role": "system", "content": "  be brief  "},
        {"role": "user", "content": "what is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
    ]
    for gen in (True, False):
        expected = fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert ours.render_chat(messages, add_generation_prompt=gen) == expected
    assert "<s>[SYS] be brief\n<|user|>" in ours.render_chat(messages)


def test_hf_specials_from_special_tokens_map_and_pad_falls_back_to_eos(tmp_path):
    tiny_bpe().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": {"content": "</s>"}})
    )
    ours = load_tokenizer(tmp_path)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 2)
    assert ours.chat_template is None
    with pytest.raises(TokenizerError, match="no chat template"):
        ours.render_chat([{"role": "user", "content": "hi"}])


def test_fingerprint_is_stable_and_tells_vocabularies_apart(hf_folder, tmp_path):
    folder, _ = hf_folder
    a, b = load_tokenizer(folder), load_tokenizer(folder)
    assert a.fingerprint() == b.fingerprint() != tok.fingerprint()
    tiny_bpe(290).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text())
    assert load_tokenizer(tmp_path).fingerprint() != a.fingerprint()


def test_bad_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="no such tokenizer file"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        load_tokenizer(tmp_path)
    tiny_bpe().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|missing|>"}))
    with pytest.raises(TokenizerError, match=r"eos_token='<\|missing\|>'"):
        load_tokenizer(tmp_path)
