"""The decoding engine: one token loop, its step functions and per-row sampling.

Every decoder of the project is a client of this module: ``MoETransformer.generate`` (a thin
delegate of :func:`generate`), the answer-level swarm (one :func:`generate` call per bucket of
agents) and the step swarm (:func:`run_token_loop` from forked trajectory caches). The loop samples
a token per row, records its log-prob, applies the stop rule and feeds the token back through a step
function: :class:`CachedSteps` (the plain forward over a :class:`KVCache`, or a static-shape
``decode_step``, compiled or captured as a CUDA graph) or :class:`RecomputeSteps` (the whole sequence
each step, the reference). Compiled steps and reusable static caches belong to a :class:`Decoder`,
one per model. Sampling noise is counter-based (keyed by seed and position), so a row's tokens do not
depend on its batch-mates.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from moe_swarm.model.kv_cache import KVCache
from moe_swarm.model.router import RoutingControl, counter_gumbel

DECODE_MODES = ("eager", "static", "compiled", "cudagraphs")
CAPTURE_MODES = ("produced", "read")
SAMPLING_STREAM = 0x5A17  # keeps sampling noise independent of the per-layer routing noise

# A step function, ``decode_step`` unbound: (model, token (B, 1), pos (1,), cache, routing) ->
# (logits (B, V), hidden (B, d)).
StepFunction = Callable[[nn.Module, Tensor, Tensor, KVCache, RoutingControl | None], tuple[Tensor, Tensor]]


def sample_next(
    logits: Tensor, temperature: Tensor, top_k: Tensor | None, seed: Tensor, position: Tensor
) -> Tensor:
    """Per-row next token: greedy where temperature <= 0, else Gumbel-max over top-k tempered logits."""
    greedy = logits.argmax(dim=-1)
    sampling = temperature > 0
    if not bool(sampling.any()):
        return greedy
    scaled = logits / temperature.clamp_min(1e-6)[:, None]
    if top_k is not None:
        k = top_k.clamp(1, logits.shape[-1])
        sorted_vals = scaled.sort(dim=-1, descending=True).values
        kth = sorted_vals.gather(1, (k - 1)[:, None])
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    noise = counter_gumbel(seed, position, SAMPLING_STREAM, logits.shape[-1]).to(logits.device)
    sampled = (scaled + noise).argmax(dim=-1)
    return torch.where(sampling, sampled, greedy)


@dataclass
class Sampler:
    """Per-row sampling settings: temperature (0 = greedy), optional top-k, and the noise seed."""

    temperature: Tensor  # (B,) float32
    top_k: Tensor | None  # (B,) int64
    seed: Tensor  # (B,) int64

    @classmethod
    def for_rows(
        cls, rows: int, temperature: float | Tensor, top_k: int | Tensor | None, seed: int | Tensor, device
    ) -> Sampler:
        """Scalars or (rows,) tensors, broadcast to ``rows`` on ``device``."""
        temp = torch.as_tensor(temperature, dtype=torch.float32, device=device).expand(rows)
        seeds = torch.as_tensor(seed, dtype=torch.int64, device=device).expand(rows)
        k = None if top_k is None else torch.as_tensor(top_k, dtype=torch.int64, device=device).expand(rows)
        return cls(temp, k, seeds)

    def __call__(self, logits: Tensor, position: Tensor) -> Tensor:
        return sample_next(logits, self.temperature, self.top_k, self.seed, position)


@dataclass
class GenerationResult:
    tokens: Tensor  # (B, max_new_tokens) generated ids; PAD after a row's EOS
    token_logprobs: Tensor  # (B, max_new_tokens) log p(token) under the model (temperature 1); 0 after EOS
    lengths: Tensor  # (B,) generated tokens per row, EOS included
    hidden_last: Tensor  # (B, d) final hidden state that produced the row's last token
    hidden_mean: Tensor  # (B, d) mean final hidden state over the row's generated span
    forward_passes: int  # batched forward calls made (prefill included)
    tokens_processed: int = 0  # token positions run through the model (prefill + decode), all rows

    @property
    def sequence_logprob(self) -> Tensor:
        return self.token_logprobs.sum(dim=1)


@dataclass
class DecodedTokens:
    """What :func:`run_token_loop` wrote; per row, positions after its stop token hold PAD / 0."""

    tokens: Tensor  # (B, max_new_tokens) long
    token_logprobs: Tensor  # (B, max_new_tokens) log p(token) at temperature 1
    logprob_sum: Tensor  # (B,) the same summed token by token
    lengths: Tensor  # (B,) tokens written, the stop token included
    hidden_sum: Tensor  # (B, d) sum of the captured hidden states over the written tokens
    hidden_last: Tensor  # (B, d) the captured hidden state of the row's last token
    logits_last: Tensor | None  # (B, V) logits after feeding the row's last token ("read" capture)


# ---------------------------------------------------------------------------------- step functions
def extend(
    model: nn.Module,
    cache: KVCache,
    tokens: Tensor,
    routing: RoutingControl | None = None,
    prefix_embeds: Tensor | None = None,
):
    """Run ``tokens`` (B, T) through ``model`` after the positions cached in ``cache`` (which grows by
    T, plus the prefix slots); the output's logits are those of the last position only."""
    return model(
        tokens, cache=cache, routing=routing, prefix_embeds=prefix_embeds, last_only=True, with_aux=False
    )


class CachedSteps:
    """Prefill and one-token feeds over a KV cache; ``step`` None runs the plain forward, else a
    static-shape step function (``decode_step``, maybe compiled). Counts forwards and positions run."""

    def __init__(
        self,
        model: nn.Module,
        cache: KVCache,
        routing: RoutingControl | None = None,
        step: StepFunction | None = None,
    ) -> None:
        self.model, self.cache, self.routing, self.step = model, cache, routing, step
        self.forward_passes = 0
        self.tokens_processed = 0

    def prefill(self, idx: Tensor, prefix_embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out = extend(self.model, self.cache, idx, self.routing, prefix_embeds)
        slots = 0 if prefix_embeds is None else prefix_embeds.shape[1]
        self.forward_passes += 1
        self.tokens_processed += idx.shape[0] * (idx.shape[1] + slots)
        return out.logits[:, -1], out.hidden[:, -1]

    def __call__(self, token: Tensor) -> tuple[Tensor, Tensor]:
        if self.step is None:
            out = extend(self.model, self.cache, token, self.routing)
            logits, hidden = out.logits[:, -1], out.hidden[:, -1]
        else:
            pos = torch.full((1,), self.cache.length, dtype=torch.int64, device=token.device)
            logits, hidden = self.step(self.model, token, pos, self.cache, self.routing)
            self.cache.advance(1)
        self.forward_passes += 1
        self.tokens_processed += token.shape[0]
        return logits, hidden


class RecomputeSteps:
    """Every feed reruns the whole sequence without a cache: the reference the cached steps match."""

    def __init__(self, model: nn.Module, routing: RoutingControl | None = None) -> None:
        self.model, self.routing = model, routing
        self.seq: Tensor | None = None
        self.prefix_embeds: Tensor | None = None
        self.forward_passes = 0
        self.tokens_processed = 0

    def prefill(self, idx: Tensor, prefix_embeds: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.seq, self.prefix_embeds = idx, prefix_embeds
        return self._run()

    def __call__(self, token: Tensor) -> tuple[Tensor, Tensor]:
        self.seq = torch.cat([self.seq, token], dim=1)
        return self._run()

    def _run(self) -> tuple[Tensor, Tensor]:
        out = self.model(
            self.seq, routing=self.routing, prefix_embeds=self.prefix_embeds, last_only=True, with_aux=False
        )
        slots = 0 if self.prefix_embeds is None else self.prefix_embeds.shape[1]
        self.forward_passes += 1
        self.tokens_processed += self.seq.shape[0] * (self.seq.shape[1] + slots)
        return out.logits[:, -1], out.hidden[:, -1]


_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


class Decoder:
    """The decoding state of one model: its compiled step functions (one per compile mode) and
    reusable static caches. Kept beside the model (``Decoder.of(model)``), not inside it."""

    def __init__(self) -> None:
        self._compiled: dict[str | None, StepFunction] = {}
        self._static_caches: dict[tuple, KVCache] = {}

    @classmethod
    def of(cls, model: nn.Module) -> Decoder:
        """The model's decoder (made on first use, released with the model)."""
        with _DECODERS_LOCK:
            decoder = _DECODERS.get(model)
            if decoder is None:
                decoder = _DECODERS[model] = cls()
            return decoder

    def step_function(self, model: nn.Module, decode: str) -> StepFunction | None:
        """The step of a decode mode: None (``eager``: the plain forward), the model class's
        ``decode_step`` (``static``), or that step under ``torch.compile`` (``cudagraphs``:
        ``mode="reduce-overhead"``), compiled once. The function is unbound (the model is its first
        argument), so the compiled step keeps no reference to the model."""
        if decode not in DECODE_MODES:
            raise ValueError(f"unknown decode {decode!r}; choose one of {DECODE_MODES}")
        if decode == "eager":
            return None
        step = type(model).decode_step
        if decode == "static":
            return step
        mode = "reduce-overhead" if decode == "cudagraphs" else None
        if mode not in self._compiled:
            self._compiled[mode] = torch.compile(step, dynamic=False, mode=mode)
        return self._compiled[mode]

    def static_cache(self, model: nn.Module, batch_size: int, device, dtype) -> KVCache:
        """One reusable ``max_seq_len`` KV cache per (batch size, device, dtype) for compiled decoding.

        Same shapes and addresses on every call: the compiled step is traced once for every prompt
        and output length, and CUDA graphs can capture its in-place cache writes. Positions past
        the current length are masked, so the cache is not cleared between calls. Not thread-safe:
        one compiled ``generate`` at a time per model and batch size.
        """
        key = (batch_size, torch.device(device), dtype)
        if key not in self._static_caches:
            cache = KVCache(model.cfg, batch_size, model.cfg.max_seq_len, device, dtype)
            cache.mark_static_address()
            self._static_caches[key] = cache
        cache = self._static_caches[key]
        cache.truncate(0)
        return cache

    def steps(
        self, model: nn.Module, decode: str, rows: int, max_len: int, device, routing: RoutingControl | None
    ) -> CachedSteps:
        """Cached steps for ``rows`` rows and ``max_len`` positions in decode mode ``decode``."""
        step = self.step_function(model, decode)
        dtype = next(model.parameters()).dtype
        if decode in ("compiled", "cudagraphs"):
            cache = self.static_cache(model, rows, device, dtype)
        else:
            cache = KVCache(model.cfg, rows, max_len, device, dtype)
        return CachedSteps(model, cache, routing, step)


# ---------------------------------------------------------------------------------- the token loop
def run_token_loop(
    first: Callable[[], tuple[Tensor, Tensor | None]],
    feed: Callable[[Tensor], tuple[Tensor, Tensor]],
    sampler: Sampler,
    *,
    rows: int,
    hidden_size: int,
    device,
    start: int,
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Sequence[int] = (),
    capture: str = "produced",
    on_token: Callable[[Tensor], None] | None = None,
) -> DecodedTokens:
    """Decode up to ``max_new_tokens`` per row: sample, record the log-prob, stop, feed.

    ``first()`` gives the logits (and hidden state) the first token is drawn from (a prefill, or
    logits the caller kept); ``feed(token (B, 1))`` runs the chosen tokens and gives the next ones.
    Token i of a row is drawn at absolute position ``start + i`` (the counter of its sampling noise).
    A row stops after writing one of ``stop_ids``; the loop ends when all rows stopped.
    ``capture`` picks the hidden state kept per token: ``"produced"`` (the state the token was drawn
    from; the last token is not fed) or ``"read"`` (the state after feeding the token, which is always
    fed, so ``logits_last`` holds each row's next-token logits after its last token).
    ``on_token(ids (B,))`` is called with each step's tokens (PAD for rows already stopped) as soon
    as they are drawn, so a caller can stream them; an exception it raises ends the loop.
    """
    if capture not in CAPTURE_MODES:
        raise ValueError(f"unknown capture {capture!r}; choose one of {CAPTURE_MODES}")
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(rows, max_new_tokens, device=device)
    logprob_sum = torch.zeros(rows, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    hid_sum = torch.zeros(rows, hidden_size, device=device)
    hid_last = torch.zeros(rows, hidden_size, device=device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    logits, hidden = first() if max_new_tokens > 0 else (None, None)
    logits_last = torch.zeros_like(logits.float()) if capture == "read" and logits is not None else None
    for step in range(max_new_tokens):
        logits = logits.float()
        pos = torch.full((rows,), start + step, dtype=torch.int64, device=device)
        nxt = sampler(logits, pos)
        lp = logits.log_softmax(-1).gather(1, nxt[:, None]).squeeze(1)
        active = ~finished
        tokens[:, step] = torch.where(active, nxt, torch.full_like(nxt, pad_id))
        logprobs[:, step] = torch.where(active, lp, torch.zeros_like(lp))
        logprob_sum += torch.where(active, lp, torch.zeros_like(lp))
        lengths += active.long()
        if on_token is not None:
            on_token(tokens[:, step])
        if capture == "produced":
            h = hidden.float()
            hid_sum += h * active[:, None]
            hid_last = torch.where(active[:, None], h, hid_last)
        done = False
        if stops is not None:
            finished = finished | (active & torch.isin(nxt, stops))
            done = bool(finished.all())
        if capture == "produced" and (done or step == max_new_tokens - 1):
            break
        logits, hidden = feed(nxt[:, None])
        if capture == "read":
            h, logits = hidden.float(), logits.float()
            hid_sum += h * active[:, None]
            hid_last = torch.where(active[:, None], h, hid_last)
            logits_last = torch.where(active[:, None], logits, logits_last)
            if done:
                break
    return DecodedTokens(tokens, logprobs, logprob_sum, lengths, hid_sum, hid_last, logits_last)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float | Tensor = 0.0,
    top_k: int | Tensor | None = None,
    seed: int | Tensor = 0,
    routing: RoutingControl | None = None,
    eos_id: int | None = None,
    pad_id: int = 256,
    prefix_embeds: Tensor | None = None,
    use_cache: bool = True,
    decode: str = "eager",
    on_token: Callable[[Tensor], None] | None = None,
) -> GenerationResult:
    """Decode up to ``max_new_tokens`` for a (B, T) batch of equal-length prompts.

    Per-row ``temperature`` (0 = greedy), ``top_k`` (sampling) and ``seed`` may be (B,) tensors.
    Sampling uses Gumbel-max with counter-based noise keyed by (seed, position), so a row's
    output does not depend on what else is in the batch. ``prefix_embeds`` (B, S, d) are input
    slots before the prompt (thought injection); ``routing`` perturbs the router per row.
    ``use_cache=False`` recomputes the full sequence each step (the reference for tests and
    benchmarks). ``decode`` picks how the KV-cached steps after the prefill run: ``"eager"`` (the
    plain forward), ``"static"`` (``decode_step``: fixed shapes over the whole cache), ``"compiled"``
    (that step under ``torch.compile``) or ``"cudagraphs"`` (compiled with ``mode="reduce-overhead"``).
    ``on_token`` receives each step's (B,) tokens as they are drawn (streaming; see run_token_loop).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"unknown decode {decode!r}; choose one of {DECODE_MODES}")
    b, t0 = idx.shape
    dev = idx.device
    sampler = Sampler.for_rows(b, temperature, top_k, seed, dev)
    s = 0 if prefix_embeds is None else prefix_embeds.shape[1]
    if use_cache:
        steps = Decoder.of(model).steps(model, decode, b, s + t0 + max_new_tokens, dev, routing)
    else:
        steps = RecomputeSteps(model, routing)
    out = run_token_loop(
        lambda: steps.prefill(idx, prefix_embeds),
        steps,
        sampler,
        rows=b,
        hidden_size=model.cfg.d_model,
        device=dev,
        start=s + t0,
        max_new_tokens=max_new_tokens,
        pad_id=pad_id,
        stop_ids=() if eos_id is None else (eos_id,),
        on_token=on_token,
    )
    return GenerationResult(
        tokens=out.tokens,
        token_logprobs=out.token_logprobs,
        lengths=out.lengths,
        hidden_last=out.hidden_last,
        hidden_mean=out.hidden_sum / out.lengths.clamp_min(1)[:, None],
        forward_passes=steps.forward_passes,
        tokens_processed=steps.tokens_processed,
    )
