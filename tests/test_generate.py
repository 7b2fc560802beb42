"""`moe-swarm-generate`: one continuation streamed as it is decoded, through the one decoding engine, for
byte-tokenizer checkpoints and imported models with a tokenizer.json (and its chat template)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from serve_helpers import tiny_checkpoint

from moe_swarm.cli.generate import chat_prompt, stream_generate
from moe_swarm.data.tokenizer import ByteTokenizer
from moe_swarm.errors import UserError
from moe_swarm.hf.tokenizer_files import checkpoint_tokenizer
from moe_swarm.model.decoding import generate
from moe_swarm.store.checkpoint import load_checkpoint


def _reference(model, tok, prompt: str, n: int, **kw) -> str:
    """The same decode without streaming."""
    ids = torch.tensor([tok.encode(prompt, bos=True)])
    with torch.inference_mode():
        out = generate(model, ids, n, eos_id=tok.EOS, pad_id=tok.PAD, **kw)
    return tok.decode(out.tokens[0], stop_at_eos=True)


def test_text_streams_piece_by_piece_while_decoding_and_joins_to_the_whole(tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint(tmp_path / "t.ckpt", seed=3))
    tok = ByteTokenizer()
    pieces: list[tuple[str, int]] = []
    calls = {"forward": 0}
    hook = ckpt.model.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        text, n = stream_generate(ckpt.model, tok, "The list", lambda s, n: pieces.append((s, calls["forward"])),
                                  max_new_tokens=24, temperature=0.9, seed=5)  # fmt: skip
    finally:
        hook.remove()
    assert text == _reference(ckpt.model, tok, "The list", 24, temperature=0.9, seed=5)
    assert "".join(p for p, _ in pieces) == text and 0 < n <= 24
    assert len(pieces) > 1 and pieces[0][1] < calls["forward"]  # the first piece came before decoding ended
    assert not any(p.endswith("\ufffd") for p, _ in pieces[:-1])  # no half UTF-8 character was sent
    with pytest.raises(UserError, match="max_seq_len 96; shorten the prompt"):
        stream_generate(ckpt.model, tok, "x" * 90, print, max_new_tokens=10)
    with pytest.raises(UserError, match="has no chat template"):
        chat_prompt(tok, [{"role": "user", "content": "hi"}], "t.ckpt")


def test_the_cli_streams_an_imported_models_chat_answer_through_its_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from test_hf_tokenizer import mixtral_folder

    from moe_swarm.hf import import_hf

    torch.manual_seed(0)
    path = import_hf(mixtral_folder(tmp_path / "hf"), tmp_path / "mixtral.ckpt")
    ckpt = load_checkpoint(path)
    tok = checkpoint_tokenizer(ckpt.hparams)
    messages = [{"role": "user", "content": "the quick"}]
    prompt = chat_prompt(tok, messages, str(path))
    assert prompt == "<|user|>the quick\n"
    with pytest.raises(UserError, match="non-empty list of \\{role, content\\}"):
        chat_prompt(tok, [{"content": "no role"}], str(path))
    expected = _reference(ckpt.model, tok, prompt, 12)
    argv = [sys.executable, "-m", "moe_swarm.cli.generate", f"checkpoint={path}",
            "messages=[{role:user,content:the quick}]", "max_new_tokens=12"]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n" and expected.strip()
    assert "tokens/s]" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mixtral.ckpt"]  # Hydra wrote nothing
