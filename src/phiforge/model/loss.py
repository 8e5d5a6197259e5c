"""Output projection + cross-entropy in row chunks, gradients computed in the forward pass.

The plain path materialises (tokens x vocab) logits, log-softmax and its gradient, and a zero-filled
NLL gradient of the same size: several full passes over a tensor far larger than the cache (262 MB for
2048 tokens at vocab 32064). Here each chunk of rows does logits -> exp once -> loss and d(loss)/d(logits)
while it is in cache, and immediately the two matmuls of the head's backward; backward only scales the
stored gradients. Same FLOPs, fewer memory passes, one exp per logit instead of two, and the logits never
exist in full (Liger-Kernel's fused linear cross-entropy, in plain PyTorch). Rows whose target is -100
(prompts, padding) get no logits at all.

`reduction="none"` (per-token losses: DPO's per-sequence log-probs) cannot finish the head's weight gradient
in the forward pass, since each token's weight in it arrives only with backward: it keeps d(loss)/d(logits)
of the rows with a target (what the plain path keeps as logits, once instead of several times) and does that
one matmul in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 256  # rows per chunk: 256 x 32064 fp32 logits = 33 MB, about one L3


def _chunk_loss(hc, w, b, tc, need_grad: bool, out=None):
    """Per-row losses (0 where the target is -100) and, if asked, d(loss)/d(logits), in `out` if given."""
    logits = torch.mm(hc, w.t(), out=out)
    if b is not None:
        logits += b
    valid = tc != -100
    t = tc.clamp_min(0)
    m = logits.amax(-1, keepdim=True)
    picked = logits.gather(1, t[:, None]).squeeze(1)
    e = logits.sub_(m).exp_()  # in place: the logits are not needed again
    s = e.sum(-1)
    loss = (s.log() + m.squeeze(1) - picked) * valid
    if not need_grad:
        return loss, None
    g = e.div_(s[:, None])  # softmax
    g[torch.arange(len(t), device=t.device), t] -= 1.0
    g.mul_(valid[:, None].to(g.dtype))
    return loss, g


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, targets):
        # the first chunk writes the head's gradient (no zero-fill of a vocab x hidden tensor), the rest add
        gh, gw = torch.empty_like(h), torch.empty_like(w)
        gb = torch.empty_like(b) if b is not None else None
        if h.shape[0] == 0:
            gw.zero_()
            if gb is not None:
                gb.zero_()
        total = h.new_zeros((), dtype=torch.float32)
        for s in range(0, h.shape[0], CHUNK):
            hc = h[s : s + CHUNK]
            loss, g = _chunk_loss(hc, w, b, targets[s : s + CHUNK], True)
            total += loss.sum()
            torch.mm(g, w, out=gh[s : s + CHUNK])
            if s == 0:
                torch.mm(g.t(), hc, out=gw)
                if gb is not None:
                    torch.sum(g, 0, out=gb)
            else:
                gw.addmm_(g.t(), hc)
                if gb is not None:
                    gb += g.sum(0)
        ctx.save_for_backward(gh, gw, *([gb] if gb is not None else []))
        return total

    @staticmethod
    def backward(ctx, go):
        # scaled in place: no second vocab x hidden allocation (fresh pages fault, ~0.1 s a step on the
        # ~160M model). A second backward through the same graph then fails autograd's saved-tensor version
        # check with its own error instead of returning twice-scaled gradients.
        gh, gw, *gb = ctx.saved_tensors
        return gh.mul_(go), gw.mul_(go), (gb[0].mul_(go) if gb else None), None


class _LinearCrossEntropyTokens(torch.autograd.Function):
    """Per-token losses; keeps d(loss)/d(logits) (tokens x vocab) for the weight gradient in backward."""

    @staticmethod
    def forward(ctx, h, w, b, targets):
        n = h.shape[0]
        g = torch.empty((n, w.shape[0]), dtype=h.dtype, device=h.device)
        gh, losses = torch.empty_like(h), torch.empty(n, dtype=h.dtype, device=h.device)
        for s in range(0, n, CHUNK):
            losses[s : s + CHUNK], gc = _chunk_loss(
                h[s : s + CHUNK], w, b, targets[s : s + CHUNK], True, g[s : s + CHUNK]
            )
            torch.mm(gc, w, out=gh[s : s + CHUNK])  # each row's share of d/dh: scaled by its weight later
        ctx.save_for_backward(h, g, gh)
        ctx.bias = b is not None
        return losses

    @staticmethod
    def backward(ctx, go):
        h, g, gh = ctx.saved_tensors  # scaled in place, as _LinearCrossEntropy's
        go = go[:, None]
        g.mul_(go)
        return gh.mul_(go), g.t() @ h, (g.sum(0) if ctx.bias else None), None


def linear_cross_entropy(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """cross_entropy(h @ w.T + b, targets, ignore_index=-100, reduction) for h (N, d) fp32, without full
    logits. reduction "mean", "sum" or "none" (per token, 0 where the target is -100)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    keep = targets != -100
    n_all, n_keep = len(targets), int(keep.sum())
    if n_keep < n_all:  # rows without a target need no logits (prompt and padding rows)
        h, targets = h[keep], targets[keep]
    if h.dtype != torch.float32 or w.dtype != torch.float32 or torch.is_autocast_enabled(h.device.type):
        logits = F.linear(h, w, b).float()  # low precision: the plain path (upcast logits, as transformers)
        loss = F.cross_entropy(logits, targets, reduction="none" if reduction == "none" else "sum")
    elif torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
        fn = _LinearCrossEntropyTokens if reduction == "none" else _LinearCrossEntropy
        loss = fn.apply(h, w, b, targets)
    else:
        with torch.no_grad():
            parts = [
                _chunk_loss(h[s : s + CHUNK], w, b, targets[s : s + CHUNK], False)[0]
                for s in range(0, h.shape[0], CHUNK)
            ]
            loss = torch.cat(parts) if reduction == "none" else sum(p.sum() for p in parts)
            if not parts:
                loss = h.new_zeros(0 if reduction == "none" else ())
    if reduction == "none":
        if n_keep == n_all:
            return loss
        return loss.new_zeros(n_all).index_put((keep,), loss)  # autograd: the kept rows' gradients
    if reduction == "sum":
        return loss
    return loss / n_keep
