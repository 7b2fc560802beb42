"""Byte-level tokenizer: UTF-8 bytes are tokens 0..255, plus a few special tokens.

Nothing to download or train, every string round-trips, and the vocabulary is tiny
(264 rows in the embedding table), which suits small CPU-trained models.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 264  # 256 bytes + PAD/BOS/EOS + 5 reserved ids (259..263), a multiple of 8


class ByteTokenizer:
    """Maps text to UTF-8 byte ids and back.

    Ids 0..255 are the raw bytes, ``PAD``/``BOS``/``EOS`` are 256/257/258 and
    259..263 are reserved (decoded as nothing).
    """

    PAD = PAD_ID
    BOS = BOS_ID
    EOS = EOS_ID
    vocab_size = VOCAB_SIZE

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """UTF-8 bytes of ``text`` as ids, optionally wrapped in BOS/EOS."""
        if not isinstance(text, str):
            raise TypeError(
                f"ByteTokenizer.encode expects a str, got {type(text).__name__}; decode bytes first"
            )
        ids = list(text.encode("utf-8"))
        if bos:
            ids.insert(0, BOS_ID)
        if eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, stop_at_eos: bool = True) -> str:
        """Text of the byte ids; special ids are skipped, invalid UTF-8 becomes U+FFFD.

        With ``stop_at_eos`` decoding ends at the first EOS (what generation wants).
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(
                    f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}"
                )
            ids = ids.tolist()
        out = bytearray()
        for i in ids:
            i = int(i)
            if i < 0 or i >= VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the byte vocabulary [0, {VOCAB_SIZE})")
            if i == EOS_ID and stop_at_eos:
                break
            if i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={VOCAB_SIZE}, PAD={PAD_ID}, BOS={BOS_ID}, EOS={EOS_ID})"
