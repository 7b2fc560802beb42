"""Tokenizers: the built-in byte tokenizer and Hugging Face ``tokenizer.json`` files, one interface.

Both give ``encode(text, bos=False, eos=False) -> list[int]``, ``decode(ids, stop_at_eos=True) -> str``,
``vocab_size``, ``bos_id``/``eos_id``/``pad_id`` (also as ``BOS``/``EOS``/``PAD``, the names the swarm
uses) and ``fingerprint()``: a stable hash of the vocabulary, merges and special ids, so data and a
model can be checked to agree. :func:`load_tokenizer` picks one from a spec ("byte"/None, a folder or a
tokenizer.json path).

The byte tokenizer: UTF-8 bytes are tokens 0..255, plus a few special tokens. Nothing to download or
train, every string round-trips, and the vocabulary is tiny (264 rows in the embedding table), which
suits small CPU-trained models. It exports as a tokenizer.json (byte-level BPE without merges) that
the ``tokenizers`` library loads and that encodes to the same ids (its reserved ids 259..263 decode
there as their names, ``<|reserved_0|>``...; here as nothing).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 264  # 256 bytes + PAD/BOS/EOS + 5 reserved ids (259..263), a multiple of 8
# Names of the special ids in the exported tokenizer.json; unlikely in text, so text never hits them.
BYTE_SPECIALS = ("<|pad|>", "<|bos|>", "<|eos|>", *(f"<|reserved_{i}|>" for i in range(5)))
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file. (A ValueError, not
    ``moe_swarm.errors.UserError``: errors.py shares floor 0 with data/; callers that report user
    errors wrap it, as import does in ``HFError``.)"""


def _ids_list(ids: Iterable[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(
                f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}"
            )
        return ids.tolist()
    return [int(i) for i in ids]


def _fingerprint(vocab: Mapping[str, int], merges: Sequence[str], specials: Sequence[int | None]) -> str:
    """sha256 (16 hex digits) of the vocabulary, merges and (bos, eos, pad) ids, independent of file layout."""
    payload = json.dumps(
        {
            "vocab": sorted(vocab.items(), key=lambda kv: kv[1]),
            "merges": list(merges),
            "specials": list(specials),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what a byte-level BPE vocabulary holds)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class ByteTokenizer:
    """Maps text to UTF-8 byte ids and back.

    Ids 0..255 are the raw bytes, ``PAD``/``BOS``/``EOS`` are 256/257/258 and
    259..263 are reserved (decoded as nothing).
    """

    PAD = pad_id = PAD_ID
    BOS = bos_id = BOS_ID
    EOS = eos_id = EOS_ID
    vocab_size = VOCAB_SIZE
    chat_template = None

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
        out = bytearray()
        for i in _ids_list(ids):
            if i < 0 or i >= VOCAB_SIZE:
                raise ValueError(f"token id {i} is outside the byte vocabulary [0, {VOCAB_SIZE})")
            if i == EOS_ID and stop_at_eos:
                break
            if i < 256:
                out.append(i)
        return out.decode("utf-8", errors="replace")

    def vocabulary(self) -> dict[str, int]:
        """Token string -> id as the exported tokenizer.json holds it."""
        vocab = {ch: b for b, ch in byte_to_unicode().items()}
        vocab.update({name: 256 + i for i, name in enumerate(BYTE_SPECIALS)})
        return vocab

    def fingerprint(self) -> str:
        """Equal to the fingerprint of its exported tokenizer.json loaded as an :class:`HFTokenizer`."""
        return _fingerprint(self.vocabulary(), [], (BOS_ID, EOS_ID, PAD_ID))

    def tokenizer_files(self) -> dict[str, str]:
        """tokenizer.json and tokenizer_config.json (file name -> text) that ``tokenizers`` and
        transformers load, encoding to the same ids."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        # The special ids are plain vocabulary entries, not "added tokens": tokenizers would cut added
        # tokens out of the text, and the byte tokenizer encodes "<|eos|>" in text as its 7 bytes. With no
        # merges, BPE never produces a multi-character entry, so text never encodes to them.
        tok = Tokenizer(models.BPE(vocab=self.vocabulary(), merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BYTE_SPECIALS[1],
            "eos_token": BYTE_SPECIALS[2],
            "pad_token": BYTE_SPECIALS[0],
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
        }
        return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(config, indent=2)}

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={VOCAB_SIZE}, PAD={PAD_ID}, BOS={BOS_ID}, EOS={EOS_ID})"


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A Hugging Face tokenizer.json (read with ``tokenizers``) with its special tokens and chat template.

    BOS/EOS/PAD come from tokenizer_config.json, then special_tokens_map.json; a tokenizer without a
    pad token pads with EOS (then id 0). ``encode`` adds no special tokens of its own: ``bos``/``eos``
    say which to add (a tokenizer without a BOS token adds none, as transformers does for Qwen).
    """

    def __init__(self, files: Mapping[str, str], source: str = "tokenizer.json") -> None:
        from tokenizers import Tokenizer

        self.source = source
        self.files = {name: files[name] for name in TOKENIZER_FILES if name in files}
        if "tokenizer.json" not in files:
            raise TokenizerError(f"{source}: no tokenizer.json")
        try:
            self.tokenizer = Tokenizer.from_str(files["tokenizer.json"])
        except Exception as exc:
            raise TokenizerError(f"{source}: tokenizer.json cannot be read by tokenizers ({exc})") from None
        config = self._json("tokenizer_config.json")
        specials = {
            **self._json("special_tokens_map.json"),
            **{k: v for k, v in config.items() if v is not None},
        }
        self.bos_token, self.eos_token, self.pad_token = (
            _token_text(specials.get(k)) for k in ("bos_token", "eos_token", "pad_token")
        )
        self.bos_id, self.eos_id = (
            self._id_of("bos_token", self.bos_token),
            self._id_of("eos_token", self.eos_token),
        )
        pad = self._id_of("pad_token", self.pad_token)
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        template = files.get("chat_template.jinja") or config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default")
        self.chat_template: str | None = template
        self.special_tokens = {
            k: _token_text(v)
            for k, v in specials.items()
            if k.endswith("_token") and _token_text(v) is not None
        }

    def _json(self, name: str) -> dict[str, Any]:
        if name not in self.files:
            return {}
        try:
            value = json.loads(self.files[name])
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{self.source}: {name} is not valid JSON ({exc})") from None
        return value if isinstance(value, dict) else {}

    def _id_of(self, key: str, token: str | None) -> int | None:
        if token is None:
            return None
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{self.source}: {key}={token!r} is not in the vocabulary of tokenizer.json")
        return i

    # The names the swarm and the task helpers use.
    BOS = property(lambda self: self.bos_id)
    EOS = property(lambda self: self.eos_id)
    PAD = property(lambda self: self.pad_id)

    @classmethod
    def from_path(cls, path: str | Path) -> HFTokenizer:
        """A folder holding tokenizer.json (and its config files), or a tokenizer.json path (its folder's
        tokenizer_config.json is read too)."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        main = path / "tokenizer.json" if path.is_dir() else path
        if not main.is_file():
            raise TokenizerError(f"{main}: no such tokenizer file")
        files = {"tokenizer.json": main.read_text(encoding="utf-8")}
        for name in TOKENIZER_FILES[1:]:
            if (folder / name).is_file():
                files[name] = (folder / name).read_text(encoding="utf-8")
        return cls(files, str(main))

    @property
    def vocab_size(self) -> int:
        """Ids this tokenizer can produce: one more than its largest id (added tokens included)."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"HFTokenizer.encode expects a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor, stop_at_eos: bool = True) -> str:
        """Text of ``ids`` without special tokens; with ``stop_at_eos`` it ends at the first EOS."""
        ids = _ids_list(ids)
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        specials = {self.bos_id, self.eos_id, self.pad_id}  # skipped even where not marked special
        return self.tokenizer.decode([i for i in ids if i not in specials], skip_special_tokens=True)

    def fingerprint(self) -> str:
        model = json.loads(self.tokenizer.to_str()).get("model", {})
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        return _fingerprint(vocab, merges, (self.bos_id, self.eos_id, self.pad_id))

    def tokenizer_files(self) -> dict[str, str]:
        """The files it was read from (file name -> text), to store in a checkpoint or write out."""
        return dict(self.files)

    def render_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kw: Any
    ) -> str:
        """The chat prompt as text, rendered from the tokenizer's chat template the way transformers'
        ``apply_chat_template(tokenize=False)`` does (sandboxed Jinja, trim/lstrip blocks, special tokens)."""
        if not self.chat_template:
            raise TokenizerError(f"{self.source}: the tokenizer has no chat template")
        return _compiled_template(self.chat_template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **kw},
        )

    def __repr__(self) -> str:
        return (
            f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size}, "
            f"BOS={self.bos_id}, EOS={self.eos_id}, PAD={self.pad_id})"
        )


@cache
def _compiled_template(template: str) -> Any:
    from datetime import datetime

    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


Tokenizer = ByteTokenizer | HFTokenizer


def load_tokenizer(spec: str | Path | None = None) -> Tokenizer:
    """``None``/``"byte"``: the byte tokenizer; a folder or a tokenizer.json path: that HF tokenizer."""
    if spec is None or str(spec) == "byte":
        return ByteTokenizer()
    return HFTokenizer.from_path(spec)


def tokenizer_from_files(files: Mapping[str, str] | None, source: str = "checkpoint") -> Tokenizer:
    """The tokenizer stored as file texts (a checkpoint's ``hyper_parameters["hf"]["tokenizer"]``);
    the byte tokenizer when there are none."""
    return HFTokenizer(files, source) if files else ByteTokenizer()
