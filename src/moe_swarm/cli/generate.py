"""`moe-swarm-generate checkpoint=... prompt=...`: one continuation streamed to the terminal as it is
decoded (``model.decoding.generate``'s per-token callback); no sidecar, no swarm. The sidecar's
StreamInference reuses :func:`stream_generate` and :func:`chat_prompt`."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from moe_swarm.cli.errors import user_errors
from moe_swarm.config import config_dir, register_resolvers
from moe_swarm.errors import UserError


def chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]], model: str) -> str:
    """``messages`` rendered with the model's chat template; a UserError when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"model {model!r} has no chat template (its tokenizer: {type(tokenizer).__name__}); "
                        "send a plain prompt instead of messages")  # fmt: skip
    bad = [m for m in messages if not isinstance(m, Mapping) or not {"role", "content"} <= set(m)]
    if not messages or bad:
        raise UserError("messages must be a non-empty list of {role, content} entries, e.g. "
                        "[{role: user, content: Hi}]")  # fmt: skip
    return tokenizer.render_chat([{"role": str(m["role"]), "content": str(m["content"])} for m in messages])


def stream_generate(model: Any, tokenizer: Any, prompt: str, on_text: Callable[[str, int], None], *,
                    max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
                    seed: int = 0) -> tuple[str, int]:  # fmt: skip
    """Decode one continuation, calling ``on_text(piece, tokens so far)`` with each newly decoded piece (held
    back while it ends in an unfinished UTF-8 character); returns (full text, tokens generated)."""
    import torch

    from moe_swarm.model.decoding import generate

    ids = tokenizer.encode(prompt, bos=True)
    limit = int(model.cfg.max_seq_len)
    if len(ids) + max_new_tokens > limit:
        raise UserError(f"the prompt is {len(ids)} tokens; with max_new_tokens={max_new_tokens} that exceeds "
                        f"the model's max_seq_len {limit}; shorten the prompt or lower max_new_tokens")  # fmt: skip
    out: list[int] = []
    sent = ""

    def on_token(step_ids: torch.Tensor) -> None:
        nonlocal sent
        if not out or out[-1] != tokenizer.EOS:
            out.append(int(step_ids[0]))
            text = tokenizer.decode(out, stop_at_eos=True)
            if not text.endswith("\ufffd") and text.startswith(sent) and text != sent:
                on_text(text[len(sent) :], len(out))
                sent = text

    device = next(model.parameters()).device
    with torch.inference_mode():
        generate(model, torch.tensor([ids], device=device), max_new_tokens, temperature=temperature,
                 top_k=top_k, seed=seed, eos_id=tokenizer.EOS, pad_id=tokenizer.PAD, on_token=on_token)  # fmt: skip
    text = tokenizer.decode(out, stop_at_eos=True)
    if text.startswith(sent) and text != sent:
        on_text(text[len(sent) :], len(out))
    return text, len(out)


@hydra.main(config_path=str(config_dir()), config_name="generate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    import torch

    from moe_swarm.hf.tokenizer_files import checkpoint_tokenizer
    from moe_swarm.store.checkpoint import load_checkpoint

    with user_errors():
        if OmegaConf.is_missing(cfg, "checkpoint") or (cfg.prompt is None) == (cfg.messages is None):
            raise UserError("usage: moe-swarm-generate checkpoint=runs/<run_id>/checkpoints/last.ckpt "
                            "prompt=TEXT (or messages=[{role:user,content:TEXT}]); see --help")  # fmt: skip
        path = str(cfg.checkpoint)
        device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        ckpt = load_checkpoint(path, map_location=device)
        tok = checkpoint_tokenizer(ckpt.hparams)
        messages = OmegaConf.to_container(cfg.messages) if cfg.messages is not None else None
        prompt = str(cfg.prompt) if messages is None else chat_prompt(tok, messages, path)
        start = time.perf_counter()
        _, n = stream_generate(ckpt.model, tok, prompt, lambda s, _: print(s, end="", flush=True),
                               max_new_tokens=int(cfg.max_new_tokens), temperature=float(cfg.temperature),
                               top_k=cfg.top_k, seed=int(cfg.seed))  # fmt: skip
        print(flush=True)
        print(f"[{n} tokens, {n / max(time.perf_counter() - start, 1e-9):.1f} tokens/s]", file=sys.stderr)


def main() -> None:
    register_resolvers()
    _hydra_main()


if __name__ == "__main__":
    main()
