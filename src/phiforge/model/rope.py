"""Rotary position embeddings: default, partial (first rotary_dim dims of each head) and longrope.

Numbers are computed exactly as transformers does (float32 inverse frequencies, position * inv_freq in
float32, cos/sin scaled by the longrope attention factor) so logits match to the last bit we can get.
Tables hold only the half-size cos/sin; the rotation is the "rotate_half" (non-interleaved) layout.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig


def inv_freq(cfg: ModelConfig, factors: list[float] | None = None) -> torch.Tensor:
    # explicit cpu: the model may be built under `with torch.device("meta")`, tables must stay real
    dim = cfg.rotary_dim
    exps = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    if factors is None:
        return 1.0 / (cfg.rope_theta**exps)
    return 1.0 / (torch.tensor(factors, dtype=torch.float32, device="cpu") * cfg.rope_theta**exps)


def attention_scaling(cfg: ModelConfig) -> float:
    """LongRoPE's magnitude correction; 1.0 without scaling."""
    rs = cfg.rope_scaling
    if rs is None:
        return 1.0
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    orig = cfg.original_max_position_embeddings
    factor = rs.get("factor") or cfg.max_position_embeddings / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


class RopeTables:
    """cos/sin tables, grown on demand, one set per frequency kind ("short" or "long")."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        rs = cfg.rope_scaling
        if rs is None:
            self.freqs = {"short": inv_freq(cfg)}
        else:
            self.freqs = {
                "short": inv_freq(cfg, rs["short_factor"]),
                "long": inv_freq(cfg, rs["long_factor"]),
            }
        self.scale = attention_scaling(cfg)
        self.tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def kind_for(self, max_pos: int) -> str:
        """transformers switches the whole sequence to the long factors once it is longer than the
        pretraining length (max position id + 1 > original_max_position_embeddings)."""
        if "long" in self.freqs and max_pos + 1 > self.cfg.original_max_position_embeddings:
            return "long"
        return "short"

    def get(self, n: int, kind: str, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (kind, device, dtype)
        have = self.tables.get(key)
        if have is None or have[0].shape[0] < n:
            size = max(n, 2 * have[0].shape[0] if have else 256)
            pos = torch.arange(size, dtype=torch.int64, device="cpu").float()
            f = pos[:, None] * self.freqs[kind][None, :]
            have = ((f.cos() * self.scale).to(device, dtype), (f.sin() * self.scale).to(device, dtype))
            self.tables[key] = have
        return have


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D); cos/sin: (B or 1, T, 1, rotary_dim/2). Rotates the first rotary_dim dims."""
    half = cos.shape[-1]
    rd = 2 * half
    x1, x2 = x[..., :half], x[..., half:rd]
    rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    if rd == x.shape[-1]:
        return rot
    return torch.cat((rot, x[..., rd:]), dim=-1)
