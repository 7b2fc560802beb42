"""The tokenizer files of a Hugging Face folder: read and checked against the model at import, carried in
the checkpoint (``hyper_parameters["hf"]["tokenizer"]``: file name -> text), written back at export.

A checkpoint holds the files' text, not their path, so it stays usable when the source folder moves.
A model trained here on the byte tokenizer exports its tokenizer.json (see ``ByteTokenizer.tokenizer_files``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from moe_swarm.data.tokenizer import VOCAB_SIZE, ByteTokenizer, HFTokenizer, Tokenizer, TokenizerError
from moe_swarm.data.tokenizer import tokenizer_from_files as _from_files
from moe_swarm.hf.families import HFError


def read_tokenizer_files(folder: Path, model_vocab: int) -> dict[str, str] | None:
    """The tokenizer files of ``folder`` (None when it has no tokenizer.json); :class:`HFError` naming
    the file when they cannot be read or produce ids the model's embedding has no row for."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        tok = HFTokenizer.from_path(folder)
    except TokenizerError as exc:
        raise HFError(str(exc)) from None
    if tok.vocab_size > model_vocab:
        raise HFError(
            f"{path}: the tokenizer's vocabulary ({tok.vocab_size} ids) does not fit the model "
            f"(config.json vocab_size={model_vocab})"
        )
    return tok.tokenizer_files()


def export_tokenizer_files(model_vocab: int, hf_meta: Mapping[str, Any]) -> dict[str, str]:
    """What export writes: the imported tokenizer's files, else the byte tokenizer's for a model with the
    byte vocabulary, else nothing."""
    if hf_meta.get("tokenizer"):
        return dict(hf_meta["tokenizer"])
    if not hf_meta and model_vocab == VOCAB_SIZE:
        return ByteTokenizer().tokenizer_files()
    return {}


def checkpoint_tokenizer(hparams: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer a checkpoint was made with: its stored HF files, else the byte tokenizer."""
    meta = hparams.get("hf")
    files = meta.get("tokenizer") if isinstance(meta, Mapping) else None
    return _from_files(files, "checkpoint tokenizer")


__all__ = ["checkpoint_tokenizer", "export_tokenizer_files", "read_tokenizer_files"]
