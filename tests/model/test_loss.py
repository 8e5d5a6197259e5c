import pytest
import torch
import torch.nn.functional as F

from phiforge.model.loss import CHUNK, linear_cross_entropy


@pytest.mark.parametrize("bias", [False, True])
def test_fused_linear_cross_entropy_matches_plain(bias):
    torch.manual_seed(0)
    N, d, V = 2 * CHUNK + 37, 16, 300  # several chunks and a ragged last one
    h = torch.randn(N, d, requires_grad=True)
    w = (0.3 * torch.randn(V, d)).requires_grad_()
    b = torch.randn(V, requires_grad=True) if bias else None
    t = torch.randint(0, V, (N,))
    t[::5] = -100
    params = [h, w] + ([b] if bias else [])
    for reduction in ("mean", "sum"):
        want = F.cross_entropy(F.linear(h, w, b), t, ignore_index=-100, reduction=reduction)
        got = linear_cross_entropy(h, w, b, t, reduction)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
        for a, c in zip(
            torch.autograd.grad(2 * want, params), torch.autograd.grad(2 * got, params), strict=True
        ):
            torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))  # fp32 sums
    with torch.no_grad():  # loss only, no gradient work
        torch.testing.assert_close(linear_cross_entropy(h, w, b, t), F.cross_entropy(F.linear(h, w, b), t))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # low precision: upcast logits, plain path
        assert (
            abs(
                float(linear_cross_entropy(h, w, b, t).detach())
                - float(want.detach()) / int((t != -100).sum())
            )
            < 0.05
        )
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, b, t, "none")


def test_fused_loss_backward_twice_fails_loudly():
    # backward scales the stored gradients in place: a second pass over a retained graph must not
    # silently return gradients scaled twice
    h = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(10, 4, requires_grad=True)
    loss = 3 * linear_cross_entropy(h, w, None, torch.randint(0, 10, (8,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
