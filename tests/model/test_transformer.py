"""Transformer.forward(last_only=True), the prefill path: the last layer computes one query and one row of its
output projection and MLP, yet every position's keys and values reach the cache, so decoding continues as
after the full forward."""

from __future__ import annotations

import pytest
import torch

from phiforge.model import ModelConfig, build
from phiforge.model.transformer import KVCache

BASE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=64,
    eos_token_id=None,
    pad_token_id=0,
)
CASES = {
    "phi3-gqa-window": dict(arch="phi3", num_key_value_heads=2, sliding_window=8),
    "phi-parallel": dict(arch="phi", partial_rotary_factor=0.5),
    "phi3small-sparse": dict(
        arch="phi3small",
        num_key_value_heads=2,
        blocksparse_block_size=4,
        blocksparse_num_local_blocks=2,
        blocksparse_vert_stride=2,
    ),
}


def _model(case: str):
    m = build(ModelConfig(**BASE, **CASES[case]), seed=0).eval()
    for p in m.parameters():  # weights large enough that a missed key, pad or window changes the logits
        p.data.normal_(0, 0.3) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    return m


def _run(m, ids, chunks, last_only, pads=None):
    """Logits of the last position after feeding `ids` in `chunks`, and the cache."""
    B, T = ids.shape
    cache = KVCache(m.cfg, B, T + 1)
    a, mask, positions = 0, None, None
    for c in chunks:
        x = ids[:, a : a + c]
        if pads is not None:  # the engine's left padding: per-row positions, pad keys hidden
            slots = torch.arange(a, a + c)
            positions = (slots[None, :] - pads[:, None]).clamp(min=0)
            keys = torch.arange(a + c)
            mask = ((keys[None, :] <= slots[:, None])[None] & (keys[None, None, :] >= pads[:, None, None]))[
                :, None
            ]
        out = m(x, pos=a, cache=cache, positions=positions, mask=mask, last_only=last_only)
        a += c
    return out[:, -1], cache


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunks", [(20,), (12, 8)])
@torch.no_grad()
def test_last_only_matches_full_forward_and_fills_the_cache(case, chunks):
    m = _model(case)
    ids = torch.randint(1, 128, (2, sum(chunks)), generator=torch.Generator().manual_seed(1))
    pads = torch.tensor([0, 5]) if case != "phi3small-sparse" else None
    want, full = _run(m, ids, chunks, False, pads)
    got, cache = _run(m, ids, chunks, True, pads)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    T = ids.shape[1]
    assert torch.equal(cache.k[:, :, :, :T], full.k[:, :, :, :T])  # every layer, every position
    assert torch.equal(cache.v[:, :, :, :T], full.v[:, :, :, :T])
    # and the next token decodes the same from either cache
    nxt = torch.randint(1, 128, (2, 1), generator=torch.Generator().manual_seed(2))
    kw = {}
    if pads is not None:
        kw = dict(
            positions=(T - pads)[:, None], mask=(torch.arange(T + 1)[None, :] >= pads[:, None])[:, None, None]
        )
    a = m(nxt, pos=T, cache=cache, **kw)
    b = m(nxt, pos=T, cache=full, **kw)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
