"""The training-path fused autograd Functions against the plain ops they replace, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from phiforge.model.fused import qkv_rope, swiglu
from phiforge.model.rope import apply_rope


def _grads(fn, inputs, seed):
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g)).sum() for o in outs)
    return outs, torch.autograd.grad(loss, inputs)


def test_swiglu_matches_plain():
    h = torch.randn(2, 5, 2 * 24, requires_grad=True)

    def plain(h):
        gate, up = h.chunk(2, dim=-1)
        return up * F.silu(gate)

    (want,), (gw,) = _grads(plain, (h,), 0)
    (got,), (gg,) = _grads(swiglu, (h,), 0)
    assert torch.equal(got, want)  # same ops forward: the same bits
    torch.testing.assert_close(gg, gw, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        assert torch.equal(swiglu(h), want)


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_qkv_rope_matches_plain(partial, per_row):
    B, T, nh, nkv, D = 2, 7, 4, 2, 16
    half = 4 if partial else D // 2  # partial rotary: only the first 2 * half dims rotate
    qkv = torch.randn(B, T, nh + 2 * nkv, D, requires_grad=True)
    ang = torch.rand(B if per_row else 1, T, 1, half) * 6
    cos, sin = ang.cos(), ang.sin()

    def plain(qkv):
        return apply_rope(qkv[:, :, : nh + nkv], cos, sin), qkv[:, :, nh + nkv :]

    want, gw = _grads(plain, (qkv,), 1)
    got, gg = _grads(lambda t: qkv_rope(t, cos, sin, nh + nkv), (qkv,), 1)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(gg[0], gw[0], rtol=1e-6, atol=1e-6)
