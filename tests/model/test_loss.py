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
        linear_cross_entropy(h, w, b, t, "max")


@pytest.mark.parametrize("bias", [False, True])
def test_fused_per_token_loss_matches_plain(bias):
    # reduction="none" (DPO's per-sequence log-probs): each token's gradient weight comes with backward
    torch.manual_seed(1)
    N, d, V = 2 * CHUNK + 37, 16, 300
    h = torch.randn(N, d, requires_grad=True)
    w = (0.3 * torch.randn(V, d)).requires_grad_()
    b = torch.randn(V, requires_grad=True) if bias else None
    t = torch.randint(0, V, (N,))
    t[: CHUNK + 5] = -100  # a prompt: rows without targets get no logits
    t[-3:] = -100
    params = [h, w] + ([b] if bias else [])
    want = F.cross_entropy(F.linear(h, w, b), t, ignore_index=-100, reduction="none")
    got = linear_cross_entropy(h, w, b, t, "none")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    assert bool((got[t == -100] == 0).all())
    weights = torch.randn(N)  # a different upstream gradient for every token
    for a, c in zip(
        torch.autograd.grad((want * weights).sum(), params),
        torch.autograd.grad((got * weights).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, b, t, "none"), want, rtol=1e-6, atol=1e-5)
    # the sum and mean paths skip the target-less rows too
    for reduction in ("sum", "mean"):
        ref = F.cross_entropy(F.linear(h, w, b), t, ignore_index=-100, reduction=reduction)
        torch.testing.assert_close(linear_cross_entropy(h, w, b, t, reduction), ref, rtol=1e-6, atol=1e-5)


def test_fused_loss_without_any_target():
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(10, 4, requires_grad=True)
    t = torch.full((6,), -100)
    assert float(linear_cross_entropy(h, w, None, t, "sum").detach()) == 0.0
    linear_cross_entropy(h, w, None, t, "sum").backward()
    assert float(h.grad.abs().sum()) == 0.0 and float(w.grad.abs().sum()) == 0.0
    assert torch.equal(linear_cross_entropy(h, w, None, t, "none").detach(), torch.zeros(6))


def test_fused_loss_backward_twice_fails_loudly():
    # backward scales the stored gradients in place: a second pass over a retained graph must not
    # silently return gradients scaled twice
    h = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(10, 4, requires_grad=True)
    loss = 3 * linear_cross_entropy(h, w, None, torch.randint(0, 10, (8,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()
