"""Training-path autograd Functions whose backward writes one gradient tensor instead of many.

Autograd's backward of a slice is a zero-filled tensor of the whole input plus a copy, and of a chunk or a
cat is a fresh cat: on the ~160M model these zero-fills, cats and their fresh pages were ~7% of a CPU
training step (torch.profiler, RESULTS.md 2026-12-02). Each Function here computes its forward with the same
ops as the plain code (bit for bit the same outputs) and writes its input's gradient into one `empty` tensor
by halves. Used only when gradients are being recorded; inference keeps the plain ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up for h = [gate | up] (the fused gate/up projection's output)."""

    @staticmethod
    def forward(ctx, h):
        gate, up = h.chunk(2, dim=-1)
        s = F.silu(gate)
        ctx.save_for_backward(h, s)
        return up * s

    @staticmethod
    def backward(ctx, da):
        h, s = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        n = gate.shape[-1]
        # the same ops as autograd of `up * F.silu(gate)`: d_up = da * silu(gate), d_gate = silu'(da * up)
        torch.mul(da, s, out=dh[..., n:])
        torch.ops.aten.silu_backward.grad_input(da * up, gate, grad_input=dh[..., :n])
        return dh


def swiglu(h: torch.Tensor) -> torch.Tensor:
    """silu(h[..., :n]) * h[..., n:] for n = h.shape[-1] // 2."""
    if torch.is_grad_enabled() and h.requires_grad:
        return _SwiGLU.apply(h)
    gate, up = h.chunk(2, dim=-1)
    return up * F.silu(gate)


def _rotate(x1, x2, cos, sin, out):
    """out = [x1 cos - x2 sin | x2 cos + x1 sin] over the rotary dims (apply_rope's formula, op for op)."""
    half = x1.shape[-1]
    torch.sub(x1 * cos, x2 * sin, out=out[..., :half])
    torch.add(x2 * cos, x1 * sin, out=out[..., half : 2 * half])


class _QKVRope(torch.autograd.Function):
    """Split a fused (B, T, heads, D) q|k|v projection into rotated q|k heads and v; backward writes one
    (B, T, heads, D) gradient (the inverse rotation for q|k, v's gradient as it is)."""

    @staticmethod
    def forward(ctx, qkv, cos, sin, n_rot: int):
        half = cos.shape[-1]
        x = qkv[:, :, :n_rot]
        out = torch.empty(x.shape, dtype=qkv.dtype, device=qkv.device)
        _rotate(x[..., :half], x[..., half : 2 * half], cos, sin, out)
        if 2 * half < x.shape[-1]:  # partial rotary: the other dims pass through
            out[..., 2 * half :] = x[..., 2 * half :]
        ctx.save_for_backward(cos, sin)
        ctx.n_rot = n_rot
        return out, qkv[:, :, n_rot:]

    @staticmethod
    def backward(ctx, dqk, dv):
        cos, sin = ctx.saved_tensors
        n, half = ctx.n_rot, cos.shape[-1]
        B, T, H, D = dqk.shape
        dqkv = torch.empty((B, T, n + dv.shape[2], D), dtype=dqk.dtype, device=dqk.device)
        # the inverse rotation is the rotation by -angle: [g1 cos + g2 sin | g2 cos - g1 sin]
        g1, g2 = dqk[..., :half], dqk[..., half : 2 * half]
        out = dqkv[:, :, :n]
        torch.add(g1 * cos, g2 * sin, out=out[..., :half])
        torch.sub(g2 * cos, g1 * sin, out=out[..., half : 2 * half])
        if 2 * half < D:
            out[..., 2 * half :] = dqk[..., 2 * half :]
        dqkv[:, :, n:] = dv
        return dqkv, None, None, None


def qkv_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int):
    """(rotated heads :n_rot of qkv, heads n_rot: of qkv) for qkv (B, T, heads, D); cos/sin (B or 1, T, 1,
    rotary_dim/2) as rope.apply_rope's. Only for recorded gradients: inference keeps apply_rope."""
    return _QKVRope.apply(qkv, cos, sin, n_rot)
