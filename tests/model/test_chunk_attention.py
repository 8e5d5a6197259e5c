"""chunk_attention (a prefill chunk over the cache, CPU): the same output as one masked SDPA call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phiforge.model.transformer import chunk_attention


@pytest.mark.parametrize("heads,kv,T,pos", [(4, 4, 7, 5), (9, 3, 33, 1), (6, 2, 1, 9), (4, 1, 70, 130)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_chunk_attention_equals_masked_sdpa(heads, kv, T, pos, dtype, tol):
    g = torch.Generator().manual_seed(T * 31 + pos)
    q = torch.randn(2, heads, T, 16, generator=g).to(dtype)
    k, v = (torch.randn(2, kv, pos + T, 16, generator=g).to(dtype) for _ in range(2))
    mask = torch.ones(T, pos + T, dtype=torch.bool).tril(pos)  # query i sits at slot pos + i
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=heads != kv, scale=0.3)
    got = chunk_attention(q, k, v, pos, 0.3)
    assert got.shape == want.shape and got.dtype == dtype
    assert (got.float() - want.float()).abs().max() < tol * want.float().abs().max()
