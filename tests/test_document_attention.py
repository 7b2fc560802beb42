"""Packed-document attention: the FlexAttention backend (block mask from the document ids) and the
scaled-dot-product fallback (a boolean mask) compute the same attention, with grouped-query heads, and
the model picks the fallback on the CPU."""

from __future__ import annotations

import pytest
import torch

from moe_swarm.model import MoETransformer, TransformerConfig
from moe_swarm.model.document_attention import document_attention, flex_available
from moe_swarm.model.transformer import document_layout

flex = pytest.importorskip("torch.nn.attention.flex_attention")  # in every torch this project supports


def _inputs(heads: int, kv_heads: int):
    g = torch.Generator().manual_seed(0)
    b, t, d = 2, 40, 16
    q = torch.randn(b, heads, t, d, generator=g)
    k = torch.randn(b, kv_heads, t, d, generator=g)
    v = torch.randn(b, kv_heads, t, d, generator=g)
    ids = torch.tensor([[0] * 7 + [1] * 20 + [2] * 13, [0] * 40])  # three documents; one
    return q, k, v, ids


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_flex_and_sdpa_backends_agree(heads, kv_heads):
    q, k, v, ids = _inputs(heads, kv_heads)
    _, mask = document_layout(ids)
    a = document_attention(q, k, v, ids, mask, backend="flex")
    b = document_attention(q, k, v, ids, mask, backend="sdpa")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # a token of document 1 does not see document 0: changing document 0's keys leaves it unchanged
    k2 = k.clone()
    k2[0, :, :7] += 5.0
    c = document_attention(q, k2, v, ids, mask, backend="flex")
    torch.testing.assert_close(c[0, :, 7:], a[0, :, 7:], atol=1e-6, rtol=0)
    assert not torch.allclose(c[0, :, :7], a[0, :, :7])


def test_the_model_uses_the_fallback_on_cpu_and_refuses_flex_with_dropout():
    assert not flex_available(torch.device("cpu"))
    q, k, v, ids = _inputs(2, 2)
    _, mask = document_layout(ids)
    with pytest.raises(ValueError, match="FlexAttention has no attention dropout"):
        document_attention(q, k, v, ids, mask, dropout_p=0.1, backend="flex")
    with pytest.raises(ValueError, match="attention backend must be one of"):
        document_attention(q, k, v, ids, mask, backend="xformers")
    cfg = TransformerConfig.from_dict(dict(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=64))
    model = MoETransformer(cfg).eval()
    idx = torch.randint(0, 256, (2, 40))
    with torch.no_grad():  # documents masked: the same as running each document on its own
        joint = model(idx, document_ids=ids).logits[0, 7:27]
        alone = model(idx[:1, 7:27]).logits[0]
    torch.testing.assert_close(joint, alone, atol=1e-5, rtol=1e-5)
