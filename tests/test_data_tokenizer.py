"""ByteTokenizer: UTF-8 round trips, special tokens, clear errors."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from moe_swarm.data import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer

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
