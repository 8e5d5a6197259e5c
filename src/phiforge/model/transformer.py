"""Phi, Llama and their kin as one small PyTorch module.

Two block shapes, chosen by the config's derived flags (config.ARCHS), never by the architecture name:
  sequential: x = x + attn(rms(x)); x = x + swiglu(rms(x))     (Phi-3, Phi-4, Llama, SmolLM2, Mistral)
  parallel:   h = ln(x); x = x + attn(h) + gelu_mlp(h)          (phi-1, phi-1.5, phi-2)
q, k and v are always one fused projection, and so are gate and up (separate HF tensors are fused on
load, split on save) because one matmul per layer is what makes batch-1 decode fast. Internal names are
our own; hf.py maps them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import BlockSparseLayout, block_sparse_attention
from .config import ModelConfig
from .fused import qkv_rope, swiglu
from .loss import linear_cross_entropy
from .rope import RopeTables, apply_rope


class KVCache:
    """Preallocated keys/values for every layer: (layers, B, kv_heads, max_len, head_dim) each."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        # empty, not zeros: a slot is always written before it is read (pads included), and zeroing a
        # long cache is a measurable part of a short prefill
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.max_len = max_len

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        bias = cfg.attention_bias
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.layer = layer
        self.qkv = nn.Linear(cfg.hidden_size, cfg.q_dim + 2 * cfg.kv_dim, bias=bias)
        self.out = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=bias)
        self.dropout = cfg.dropout
        self.scale = cfg.attention_scale
        self.sparse = None
        if cfg.sparse_layer(layer):
            self.sparse = BlockSparseLayout(
                cfg.blocksparse_block_size,
                cfg.blocksparse_num_local_blocks,
                cfg.blocksparse_vert_stride,
                self.nh,
                cfg.blocksparse_homo_head_pattern,
            )

    def forward(
        self, x, cos, sin, pos: int, cache: KVCache | None, mask: torch.Tensor | None, pads=None, last=False
    ):
        """`last`: only the last query's output, (B, 1, hidden); keys and values of every position still go to
        the cache."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.nh + 2 * self.nkv, self.hd)
        if qkv.requires_grad and torch.is_grad_enabled():  # training: one gradient tensor (fused.py)
            qk, v = qkv_rope(qkv, cos, sin, self.nh + self.nkv)
        else:
            qk, v = apply_rope(qkv[:, :, : self.nh + self.nkv], cos, sin), qkv[:, :, self.nh + self.nkv :]
        q = qk[:, :, : self.nh].transpose(1, 2)
        k = qk[:, :, self.nh :].transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:
            ck, cv = cache.k[self.layer], cache.v[self.layer]
            ck[:, :, pos : pos + T] = k
            cv[:, :, pos : pos + T] = v
            if pos > 0:  # attend over everything cached so far (a fresh prefill can use k, v directly)
                k, v = ck[:, :, : pos + T], cv[:, :, : pos + T]
        if self.sparse is not None:
            y = self._sparse_attention(q, k, v, pos, pads)
            y = y[:, :, -1:] if last else y
            return self.out(y.transpose(1, 2).reshape(B, y.shape[2], self.nh * self.hd))
        gqa = self.nkv != self.nh
        if last and T > 1:  # the last query sees every key (causally): one decode-style query
            q, T = q[:, :, -1:], 1
            mask = mask[..., -1:, :] if mask is not None else None
        if T == 1 and not self.training:
            return self.out(self._decode_attention(q, k, v, mask).reshape(B, 1, self.nh * self.hd))
        if mask is None and T > 1 and pos > 0 and x.device.type == "cpu" and not self.training:
            y = chunk_attention(q, k, v, pos, self.scale)  # a prefill chunk after the first
        elif mask is None:
            # causal needs a mask only when new queries sit behind old keys with T > 1
            causal = T > 1 and pos == 0
            if T > 1 and pos > 0:
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(pos)
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=causal,
                enable_gqa=gqa,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.scale,
            )
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))

    def _decode_attention(self, q, k, v, mask):
        # One query per row: PyTorch's CPU flash kernel costs milliseconds here (measured 6 ms/call on the
        # tiny model), two small matmuls cost microseconds. Query heads of a KV group share one matmul.
        B, L = q.shape[0], k.shape[2]
        g = self.nh // self.nkv
        q = q.reshape(B, self.nkv, g, self.hd)
        s = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, nkv, g, L)
        if mask is not None:
            s = s.masked_fill(~mask.reshape(-1, 1, 1, L), float("-inf"))
        return torch.matmul(s.softmax(-1), v)  # (B, nkv, g, hd) == heads in order

    def _sparse_attention(self, q, k, v, pos: int, pads: torch.Tensor | None):
        # The block pattern is by position from the row's first real token, so a left-padded row runs
        # on its own, past its pads (whose queries get zeros: they are never read, and must not be NaN).
        if pads is None or not bool(pads.any()):
            return block_sparse_attention(q, k, v, pos, self.sparse, self.scale)
        T = q.shape[2]
        y = torch.zeros_like(q)
        for b, p in enumerate(pads.tolist()):
            first = max(pos, p)  # this row's first real query slot
            if first < pos + T:
                y[b : b + 1, :, first - pos :] = block_sparse_attention(
                    q[b : b + 1, :, first - pos :],
                    k[b : b + 1, :, p:],
                    v[b : b + 1, :, p:],
                    first - p,
                    self.sparse,
                    self.scale,
                )
        return y


def chunk_attention(q, k, v, pos: int, scale: float) -> torch.Tensor:
    """Causal attention of queries at slots pos..pos+T-1 over keys 0..pos+T-1 (a prefill chunk over the
    cache), on CPU. With an explicit (T, pos+T) mask PyTorch's CPU flash kernel reads the mask for every
    score and cannot skip the blocks above the diagonal (is_causal aligns top-left, so it does not fit
    T < pos+T): 1.6x the time of the same call unmasked. Here every query sees the whole cached prefix
    (no mask) and the chunk's own keys form a square causal block (is_causal); the two partial softmaxes
    are merged by their log-sum-exps, which the CPU flash op returns."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    y_old, lse_old = flash(q, k[:, :, :pos], v[:, :, :pos], 0.0, False, scale=scale)
    y_new, lse_new = flash(q, k[:, :, pos:], v[:, :, pos:], 0.0, True, scale=scale)
    # the prefix's share of the total softmax mass: exp(a) / (exp(a) + exp(b)) = sigmoid(a - b)
    w = torch.sigmoid(lse_old - lse_new).unsqueeze(-1).to(y_new.dtype)
    return torch.lerp(y_new, y_old, w)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.gated_mlp
        if cfg.hidden_act not in ("silu", "gelu_new", "gelu_pytorch_tanh", "gelu", "gegelu"):
            raise ValueError(f"unsupported hidden_act {cfg.hidden_act!r}")
        if cfg.hidden_act == "gegelu" and not self.swiglu:
            raise ValueError("hidden_act 'gegelu' needs a gated MLP (arch phi3small)")
        self.act = cfg.hidden_act
        self.limit = cfg.gegelu_limit
        up = 2 * cfg.intermediate_size if self.swiglu else cfg.intermediate_size
        self.up = nn.Linear(cfg.hidden_size, up, bias=cfg.mlp_bias)  # gated: fused gate|up
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        h = self.up(x)
        if self.swiglu:
            if self.act == "silu":
                return self.down(swiglu(h))
            gate, up = h.chunk(2, dim=-1)
            if self.act == "gegelu":
                return self.down(gegelu(gate, up, self.limit))
            return self.down(up * self._act(gate))
        return self.down(self._act(h))

    def _act(self, h):
        if self.act == "silu":
            return F.silu(h)
        if self.act == "gelu":
            return F.gelu(h)
        return F.gelu(h, approximate="tanh")  # gelu_new == gelu_pytorch_tanh == tanh approximation


def gegelu(gate: torch.Tensor, up: torch.Tensor, limit: float | None) -> torch.Tensor:
    """Phi-3-small's GEGELU: quick_gelu(gate) * (up + 1), both clamped to `limit` first (the gate from
    above only; infinities are left as they are, as the remote code does)."""
    if limit is not None:
        gate = torch.where(gate.isinf(), gate, gate.clamp(max=limit))
        up = torch.where(up.isinf(), up, up.clamp(-limit, limit))
    return gate * torch.sigmoid(1.702 * gate) * (up + 1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # transformers' formula, op for op (so logits match bit for bit). F.rms_norm is one call but
        # decomposes into ~8 kernels on CPU; this is 5 and measured faster at batch-1 decode.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm_kind == "rms":
        return RMSNorm(cfg.hidden_size, cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.parallel = cfg.parallel_block
        self.norm1 = norm(cfg)
        self.attn = Attention(cfg, layer)
        if not self.parallel:
            self.norm2 = norm(cfg)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, pos, cache, mask, pads=None, last=False):
        """`last`: the output of the last position only (B, 1, hidden), as the last layer of a prefill needs:
        every position's keys and values are cached, but one query, one row of the output projection and of
        the MLP are computed (llama.cpp skips the same rows; a 4-layer Phi-3-mini slice's 512-token prefill: 1.20x)."""
        y = x[:, -1:] if last else x
        if self.parallel:
            h = self.norm1(x)
            a = self.attn(h, cos, sin, pos, cache, mask, pads, last)
            return y + self.drop(a) + self.drop(self.mlp(h[:, -1:] if last else h))
        y = y + self.drop(self.attn(self.norm1(x), cos, sin, pos, cache, mask, pads, last))
        return y + self.drop(self.mlp(self.norm2(y)))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = norm(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = RopeTables(cfg)
        self._masked: torch.Tensor | None = None

    def forward(
        self,
        idx: torch.Tensor,
        pos: int = 0,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        rope_kind: str | None = None,
    ):
        """idx (B, T) token ids starting at cache slot `pos`. `positions` (B, T) overrides the rotary
        positions (left-padded batches); `mask` (B, 1, T, pos+T) bool overrides causal masking.
        Returns logits (B, T or 1, V), or the cross-entropy when `targets` is given (-100 ignored;
        `reduction="sum"` lets a trainer normalise by the token count of a whole distributed batch;
        "none": (B * T,) per-token losses, 0 at ignored targets).
        `rope_kind` ("short"/"long") overrides the LongRoPE table choice: a chunk of a long prompt must use
        the tables of the whole prompt, not of its own last position."""
        B, T = idx.shape
        x = self.embed(idx)
        if self.cfg.mup_embedding_multiplier:
            x = x * self.cfg.mup_embedding_multiplier
        x = self.drop(x)
        max_pos = int(positions.max()) if positions is not None else pos + T - 1
        kind = rope_kind or self.rope.kind_for(max_pos)
        cos, sin = self.rope.get(max_pos + 1, kind, x.device, x.dtype)
        if positions is None:
            cos, sin = cos[pos : pos + T, None], sin[pos : pos + T, None]  # (T, 1, half): broadcast over B
        else:
            cos, sin = cos[positions].unsqueeze(2), sin[positions].unsqueeze(2)
        W = self.cfg.sliding_window
        if W is not None and pos + T > W:
            # transformers' sliding-window mask: key slot k is visible to query slot q iff q - W < k <= q
            q = torch.arange(pos, pos + T, device=idx.device)[:, None]
            k = torch.arange(pos + T, device=idx.device)[None, :]
            window = (k <= q) & (k > q - W)
            mask = window if mask is None else mask & window
        pads = self._pads(pos, T, positions, mask) if self.cfg.block_sparse else None
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, pos, cache, mask, pads, last_only and i == len(self.blocks) - 1)
        if last_only:  # (no layers: the embedding's last row)
            x = x[:, -1:]
        if targets is None:
            return self.logits(self.norm(x))
        h = self.norm(x).flatten(0, 1)
        if self.cfg.masked_token_ids or self.cfg.mup_width_multiplier:  # plain path: exact masking
            logits = self.logits(h).float()
            return F.cross_entropy(logits, targets.reshape(-1), ignore_index=-100, reduction=reduction)
        if not isinstance(self.lm_head, nn.Linear):  # a quantized head (infer/quant.py): plain logits + loss
            logits = self.lm_head(h).float()
            return F.cross_entropy(logits, targets.reshape(-1), ignore_index=-100, reduction=reduction)
        # fused head + loss (loss.py): the full logits are never materialised
        return linear_cross_entropy(h, self.lm_head.weight, self.lm_head.bias, targets.reshape(-1), reduction)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """lm_head, then muP's division by the width multiplier and the masked vocabulary slots."""
        out = self.lm_head(h)
        if self.cfg.mup_width_multiplier:
            out = out / self.cfg.mup_width_multiplier
        if self.cfg.masked_token_ids:
            if self._masked is None or self._masked.device != out.device:
                self._masked = torch.tensor(self.cfg.masked_token_ids, device=out.device)
            out = out.index_fill(-1, self._masked, torch.finfo(out.dtype).min)
        return out

    @staticmethod
    def _pads(pos: int, T: int, positions, mask) -> torch.Tensor | None:
        """Left pads per row, from the rotary positions (engine and batcher: position = slot - pad)."""
        if positions is None:
            if mask is not None:
                raise ValueError("block-sparse attention takes left padding as positions, not a bare mask")
            return None
        slots = torch.arange(pos, pos + T, device=positions.device)
        pads = slots[-1] - positions[:, -1]
        if not bool(((slots[None] - pads[:, None]).clamp(min=0) == positions).all()):
            raise ValueError("block-sparse attention needs positions = slot - left pad (no packed documents)")
        return pads

    def num_params(self) -> int:
        seen = {id(p): p.numel() for p in self.parameters()}  # tied weights count once
        return sum(seen.values())


def build(cfg: ModelConfig, device="cpu", dtype=torch.float32, seed: int | None = None) -> Transformer:
    """Build a randomly initialised model (std 0.02 as Phi's initializer_range). device="meta" allocates nothing."""
    if seed is not None:
        torch.manual_seed(seed)
    # construct on meta and initialise once: nn.Linear's own init would cost as much as ours again
    with torch.device("meta"):
        model = Transformer(cfg)
    if str(device) == "meta":
        return model.to(dtype)
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty re-creates parameters one module at a time: re-tie
        model.lm_head.weight = model.embed.weight
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() == 1:
            nn.init.ones_(p)
        else:
            nn.init.normal_(p, std=0.02)
    return model.to(dtype)
