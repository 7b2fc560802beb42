"""The decoding engine: KV cache operations, the token loop's stop rule and captures, the decode modes,
and where decoding state lives."""

import gc
import re
import weakref
from pathlib import Path

import pytest
import torch

from moe_swarm.model import Decoder, KVCache, MoEConfig, MoETransformer, RoutingControl, TransformerConfig
from moe_swarm.model.decoding import CachedSteps, Sampler, extend, generate, run_token_loop

SRC = Path(__file__).resolve().parents[1] / "src" / "moe_swarm"
LOGIT_TOL = {"atol": 1e-4, "rtol": 1e-4}  # fp32 kernels over different shapes (chunk vs one token)


def tiny(seed: int = 0, **kw) -> MoETransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        d_model=32, n_layers=2, n_heads=4, max_seq_len=64, moe=MoEConfig(num_experts=4, d_ff=32), **kw
    )
    return MoETransformer(cfg).eval()


def prefilled(model: MoETransformer, prompt: torch.Tensor, room: int) -> KVCache:
    cache = KVCache(model.cfg, prompt.shape[0], prompt.shape[1] + room, "cpu", torch.float32)
    with torch.no_grad():
        extend(model, cache, prompt)
    return cache


def same_span(a, b) -> bool:
    return torch.equal(a.k, b.k) and torch.equal(a.v, b.v)  # copied values: bit-exact


# ------------------------------------------------------------------------------ cache operations
def test_fork_copies_the_chosen_rows_and_leaves_room():
    model = tiny()
    cache = prefilled(model, torch.randint(0, 256, (3, 6)), room=0)
    forked = cache.fork([2, 0, 2], room=4)
    assert (forked.batch_size, forked.length, forked.max_len) == (3, 6, 10)
    for r, src in enumerate([2, 0, 2]):
        assert same_span(forked.slice(r, 0, 6), cache.slice(src, 0, 6))
    assert not same_span(forked.slice(0, 0, 6), forked.slice(1, 0, 6))
    shorter = cache.fork(torch.tensor([1]), room=2, length=4)
    assert shorter.length == 4 and same_span(shorter.slice(0, 0, 4), cache.slice(1, 0, 4))


def test_slice_and_commit_move_a_span_between_rows_and_truncate_forgets():
    model = tiny()
    cache = prefilled(model, torch.randint(0, 256, (2, 8)), room=4)
    span, kept = cache.slice(0, 2, 5), cache.slice(1, 0, 8)
    assert span.num_positions == 3
    cache.commit(1, 8, span)
    assert same_span(cache.slice(1, 8, 11), span) and same_span(cache.slice(1, 0, 8), kept)
    assert not same_span(cache.slice(0, 8, 11), span), "other rows are untouched"
    with pytest.raises(ValueError, match="full"):
        cache.commit(1, 11, span)
    cache.truncate(5)
    assert cache.length == 5
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(6)


@pytest.mark.parametrize("attention", [{}, {"n_kv_heads": 1, "qk_norm": "head"}], ids=["mha", "gqa"])
def test_decoding_from_a_fork_equals_decoding_the_whole_sequence(attention):
    """A prefix cached once and forked into rows continues exactly like a full recompute (also with
    grouped-query attention, whose cache holds only the kv heads)."""
    model = tiny(1, **attention)
    prompt = torch.randint(0, 256, (1, 7))
    cont = torch.randint(0, 256, (3, 4))
    forked = prefilled(model, prompt, room=0).fork([0, 0, 0], room=4)
    assert forked.k.shape[2] == model.cfg.kv_heads
    with torch.no_grad():
        chunk = extend(model, forked, cont).logits[:, -1]
        full = model(torch.cat([prompt.expand(3, -1), cont], 1)).logits[:, -1]
    assert forked.length == 11
    torch.testing.assert_close(chunk, full, **LOGIT_TOL)


# ------------------------------------------------------------------------------ the token loop
def scripted_feed(next_tokens: list[int], vocab: int = 8):
    """A feed whose logits make greedy decoding write ``next_tokens`` in order (same for every row)."""
    calls = []

    def logits_for(i: int, rows: int) -> torch.Tensor:
        out = torch.zeros(rows, vocab)
        out[:, next_tokens[min(i, len(next_tokens) - 1)]] = 5.0
        return out

    def feed(token: torch.Tensor):
        calls.append(token[:, 0].tolist())
        return logits_for(len(calls), token.shape[0]), torch.full((token.shape[0], 2), float(len(calls)))

    return (lambda rows: (logits_for(0, rows), torch.zeros(rows, 2))), feed, calls


@pytest.mark.parametrize("capture", ["produced", "read"])
def test_the_stop_rule_ends_rows_pads_after_and_feeds_per_capture(capture):
    first, feed, calls = scripted_feed([3, 4, 7, 5, 5])
    greedy = Sampler.for_rows(2, 0.0, None, 0, "cpu")
    out = run_token_loop(
        lambda: first(2), feed, greedy, rows=2, hidden_size=2, device="cpu", start=0, max_new_tokens=5,
        pad_id=0, stop_ids=(7,), capture=capture,
    )  # fmt: skip
    assert out.tokens.tolist() == [[3, 4, 7, 0, 0]] * 2 and out.lengths.tolist() == [3, 3]
    torch.testing.assert_close(out.logprob_sum, out.token_logprobs.sum(1), atol=1e-6, rtol=1e-6)
    assert (out.token_logprobs[:, 3:] == 0).all()
    if capture == "produced":  # the stop token is not fed; hidden states are those the tokens came from
        assert calls == [[3, 3], [4, 4]] and out.logits_last is None
        assert out.hidden_last.tolist() == [[2.0, 2.0]] * 2 and out.hidden_sum.tolist() == [[3.0, 3.0]] * 2
    else:  # every written token is fed; the next logits after the stop token are kept
        assert calls == [[3, 3], [4, 4], [7, 7]]
        assert out.hidden_last.tolist() == [[3.0, 3.0]] * 2 and int(out.logits_last[0].argmax()) == 5


def test_without_a_stop_rule_every_row_writes_max_new_tokens():
    first, feed, calls = scripted_feed([1, 2, 3])
    out = run_token_loop(
        lambda: first(1), feed, Sampler.for_rows(1, 0.0, None, 0, "cpu"), rows=1, hidden_size=2,
        device="cpu", start=0, max_new_tokens=3, pad_id=0,
    )  # fmt: skip
    assert out.tokens.tolist() == [[1, 2, 3]] and len(calls) == 2
    empty = run_token_loop(
        lambda: pytest.fail("no token to draw, no prefill"), feed, Sampler.for_rows(1, 0.0, None, 0, "cpu"),
        rows=1, hidden_size=2, device="cpu", start=0, max_new_tokens=0, pad_id=0,
    )  # fmt: skip
    assert empty.tokens.shape == (1, 0)
    with pytest.raises(ValueError, match="capture"):
        run_token_loop(
            lambda: first(1), feed, Sampler.for_rows(1, 0.0, None, 0, "cpu"), rows=1, hidden_size=2,
            device="cpu", start=0, max_new_tokens=1, pad_id=0, capture="both",
        )  # fmt: skip


def test_sampling_noise_is_keyed_by_seed_and_position_not_by_batch_mates():
    logits = torch.randn(1, 50).expand(3, 50)
    sampler = Sampler.for_rows(3, torch.tensor([1.0, 1.0, 0.0]), None, torch.tensor([7, 7, 7]), "cpu")
    a = sampler(logits, torch.tensor([4, 4, 4]))
    assert a[0] == a[1] and a[2] == logits[0].argmax()
    alone = Sampler.for_rows(1, 1.0, None, 7, "cpu")(logits[:1], torch.tensor([4]))
    assert alone[0] == a[0]
    draws = {
        int(Sampler.for_rows(1, 1.0, None, 7, "cpu")(logits[:1], torch.tensor([p]))[0]) for p in range(30)
    }
    assert len(draws) > 1, "a new position draws new noise"


# ------------------------------------------------------------------------------ decode modes
def _modes():
    modes = ["static", pytest.param("compiled", marks=pytest.mark.slow)]
    if torch.cuda.is_available():
        modes.append(pytest.param("cudagraphs", marks=pytest.mark.slow))
    return modes


@pytest.mark.parametrize("decode", _modes())
def test_each_decode_mode_agrees_with_eager_and_with_recompute(decode):
    dev = "cuda" if decode == "cudagraphs" else "cpu"
    model = tiny(2).to(dev)
    prompt = torch.randint(0, 256, (3, 5), device=dev)
    routing = RoutingControl(
        noise_scale=torch.tensor([0.0, 1.0, 2.0], device=dev), seed=torch.tensor([1, 2, 3], device=dev)
    )
    kw = {
        "temperature": torch.tensor([0.0, 0.8, 1.2], device=dev),
        "seed": torch.tensor([4, 5, 6], device=dev),
    }
    eager = generate(model, prompt, 10, routing=routing, **kw)
    other = generate(model, prompt, 10, routing=routing, decode=decode, **kw)
    recompute = generate(model, prompt, 10, routing=routing, use_cache=False, **kw)
    assert torch.equal(other.tokens, eager.tokens) and torch.equal(recompute.tokens, eager.tokens)
    for out in (other, recompute):
        torch.testing.assert_close(out.token_logprobs, eager.token_logprobs, **LOGIT_TOL)
        torch.testing.assert_close(out.hidden_mean, eager.hidden_mean, **LOGIT_TOL)
    assert eager.forward_passes == other.forward_passes == recompute.forward_passes == 10
    assert eager.tokens_processed == other.tokens_processed == 3 * (5 + 9)


def test_cached_steps_count_forwards_and_positions():
    model = tiny()
    cache = KVCache(model.cfg, 2, 12, "cpu", torch.float32)
    steps = CachedSteps(model, cache)
    with torch.no_grad():
        steps.prefill(torch.randint(0, 256, (2, 4)), prefix_embeds=torch.randn(2, 3, 32))
        steps(torch.randint(0, 256, (2, 1)))
    assert (steps.forward_passes, steps.tokens_processed, cache.length) == (2, 2 * 7 + 2, 8)


# ------------------------------------------------------------------------------ where state lives
def test_decoder_state_lives_beside_the_model_and_goes_with_it():
    model = tiny()
    prompt = torch.randint(0, 256, (2, 5))
    before = set(model.__dict__)
    generate(model, prompt, 4, decode="static")
    decoder = Decoder.of(model)
    assert Decoder.of(model) is decoder and set(model.__dict__) == before
    cache = decoder.static_cache(model, 2, "cpu", torch.float32)
    assert decoder.static_cache(model, 2, "cpu", torch.float32) is cache and cache.length == 0
    with pytest.raises(ValueError, match="decode"):
        decoder.step_function(model, "fast")
    gone = weakref.ref(model)
    del model, decoder, cache
    gc.collect()
    assert gone() is None, "the decoder registry must not keep a model alive"


def test_nothing_outside_the_kv_cache_module_touches_cache_tensors():
    """A cache layout change (grouped-query attention, a paged cache) must touch only the engine."""
    pattern = re.compile(r"\.(k|v)\b")
    hits = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in SRC.rglob("*.py")
        if path.name != "kv_cache.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)
