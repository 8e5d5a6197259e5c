"""Phi-3-small's block-sparse attention, in plain PyTorch, touching only the allowed key blocks.

The pattern (Phi-3-small's remote code and vLLM): keys and queries are cut into blocks of `block` tokens
by absolute position. Query block i of head h sees key block j <= i when
    i - j < local                                     (the last `local` blocks: a sliding window), or
    (j + h * step + 1) % vert == 0                    (every vert-th block, shifted per head),
with step = max(1, vert // num_heads) (0 when homo_head: every head shares head 0's pattern), and the
usual causal rule inside the diagonal block. With Phi-3-small's 32 heads and vert 8, heads h and h + 8
share a pattern.

How it is computed: per query block, the local window is one contiguous slice of the cache (shared by
every head, no copy) and the vertical blocks before it are gathered per head (about 1/vert of the
distant keys). Scores of both parts are concatenated, soft-maxed together, and applied to the two value
sets. Work and memory per query block grow with the allowed blocks (local + i / vert), not with the
sequence, so a long prefill is O(T * (local * block + T / vert)) and a decode step reads only its
allowed blocks. The dense T x T mask exists only in the tests' reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class BlockSparseLayout:
    block: int
    local: int
    vert: int
    num_heads: int
    homo_head: bool = False

    @property
    def head_offsets(self) -> torch.Tensor:
        """(num_heads,) the shift of each head's vertical pattern: h * step + 1."""
        step = 0 if self.homo_head else max(1, self.vert // self.num_heads)
        return torch.arange(self.num_heads) * step + 1

    def vertical_blocks(self, i: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Key blocks before query block i's local window that head h sees: (num_heads, n) block ids
        and a validity mask (heads differ in count by at most one; the short rows are padded)."""
        last = i - self.local  # the last block before the window
        if last < 0:
            return torch.empty(self.num_heads, 0, dtype=torch.long, device=device), None
        first = (-self.head_offsets) % self.vert  # smallest j >= 0 with (j + offset) % vert == 0
        n = last // self.vert + 1
        ids = first[:, None] + self.vert * torch.arange(n)[None, :]
        valid = ids <= last
        # pad short rows with the window's first block: one this head reads anyway (masked out here)
        return torch.where(valid, ids, last + 1).to(device), valid.to(device)


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_start: int, layout: BlockSparseLayout, scale: float
) -> torch.Tensor:
    """q (B, H, T, D) at absolute positions q_start..q_start+T-1; k, v (B, KV, q_start+T, D) at positions
    0..q_start+T-1 (the cache so far). Returns (B, H, T, D)."""
    B, H, T, D = q.shape
    KV = k.shape[1]
    g = H // KV
    bs = layout.block
    out = q.new_empty(B, KV, g, T, D)
    qg = (q * scale).view(B, KV, g, T, D)
    kv_of_head = torch.arange(H, device=q.device) // g
    end = q_start + T
    first = q_start // bs
    if q_start == 0:  # blocks before `local` see every earlier key: plain causal attention (one fused call)
        n0 = min(T, layout.local * bs)
        y0 = F.scaled_dot_product_attention(
            q[:, :, :n0], k[:, :, :n0], v[:, :, :n0], is_causal=True, enable_gqa=g > 1, scale=scale
        )
        out[:, :, :, :n0] = y0.view(B, KV, g, n0, D)
        first = layout.local
    for i in range(first, (end - 1) // bs + 1):
        qa, qb = max(q_start, i * bs), min(end, (i + 1) * bs)  # this block's queries (absolute)
        n, lo = qb - qa, max(0, i - layout.local + 1) * bs  # the local window starts at lo
        qi = qg[:, :, :, qa - q_start : qb - q_start]  # (B, KV, g, n, D)
        # local: one slice of the cache shared by the g heads of a group (one matmul per KV head)
        s = torch.matmul(qi.reshape(B, KV, g * n, D), k[:, :, lo:qb].transpose(-1, -2)).view(B, KV, g, n, -1)
        if qb - 1 > qa:  # a key after some query: causal inside the diagonal block (its last columns)
            keys = torch.arange(qa, qb, device=q.device)
            s[..., qa - lo :].masked_fill_(keys[None, :] > keys[:, None], float("-inf"))
        m = s.amax(-1, keepdim=True)
        ids, valid = layout.vertical_blocks(i, q.device)
        if ids.shape[1]:  # vertical: each head's own blocks before the window, gathered
            tok = (ids[:, :, None] * bs + torch.arange(bs, device=q.device)).flatten(1)  # (H, m)
            k_v = k[:, kv_of_head[:, None], tok].view(B, KV, g, -1, D)
            v_v = v[:, kv_of_head[:, None], tok].view(B, KV, g, -1, D)
            s_v = torch.matmul(qi, k_v.transpose(-1, -2))  # (B, KV, g, n, m)
            s_v.masked_fill_(~valid[:, :, None].expand(-1, -1, bs).reshape(KV, g, 1, -1), float("-inf"))
            m = torch.maximum(m, s_v.amax(-1, keepdim=True))
        # one softmax over both parts without concatenating them: shared max, summed denominators
        e = s.sub_(m).exp_()
        denom = e.sum(-1, keepdim=True)
        y = torch.matmul(e.view(B, KV, g * n, -1), v[:, :, lo:qb]).view(B, KV, g, n, D)
        if ids.shape[1]:
            e_v = s_v.sub_(m).exp_()
            denom += e_v.sum(-1, keepdim=True)
            y += torch.matmul(e_v, v_v)
        out[:, :, :, qa - q_start : qb - q_start] = y / denom
    return out.view(B, H, T, D)
