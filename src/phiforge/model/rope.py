"""Rotary position embeddings: default, partial (first rotary_dim dims of each head), longrope, linear,
llama3 and yarn.

Numbers are computed exactly as transformers' ROPE_INIT_FUNCTIONS do (float32 inverse frequencies,
position * inv_freq in float32, cos/sin scaled by the attention factor) so logits match to the last bit
we can get. Tables hold only the half-size cos/sin; the rotation is the "rotate_half" (non-interleaved)
layout.
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


def llama3_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
    rs = cfg.rope_scaling
    base = inv_freq(cfg)
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = cfg.original_max_position_embeddings
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = 2 * math.pi / base
    scaled = torch.where(wavelen > low_wavelen, base / factor, base)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def yarn_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """YaRN: interpolate the low frequencies by `factor`, extrapolate the high ones, linear ramp between."""
    rs, dim, base = cfg.rope_scaling, cfg.rotary_dim, cfg.rope_theta
    factor, orig = rs["factor"], cfg.original_max_position_embeddings
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no singularity
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation


def attention_scaling(cfg: ModelConfig) -> float:
    """The magnitude correction LongRoPE and YaRN apply to cos/sin; 1.0 for the other kinds."""
    rs, kind = cfg.rope_scaling, cfg.rope_kind
    if kind not in ("longrope", "yarn"):
        return 1.0
    if rs.get("attention_factor") is not None:
        return float(rs["attention_factor"])
    orig = cfg.original_max_position_embeddings
    factor = rs.get("factor") or cfg.max_position_embeddings / orig
    if kind == "longrope":
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    m, m_all = rs.get("mscale"), rs.get("mscale_all_dim")
    return float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)


def frequencies(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """inv_freq per table kind: "short" always; "long" too for longrope (switched past the original length)."""
    rs, kind = cfg.rope_scaling, cfg.rope_kind
    if kind == "longrope":
        return {"short": inv_freq(cfg, rs["short_factor"]), "long": inv_freq(cfg, rs["long_factor"])}
    if kind == "linear":
        return {"short": inv_freq(cfg) / rs["factor"]}
    if kind == "llama3":
        return {"short": llama3_inv_freq(cfg)}
    if kind == "yarn":
        return {"short": yarn_inv_freq(cfg)}
    return {"short": inv_freq(cfg)}


class RopeTables:
    """cos/sin tables, grown on demand, one set per frequency kind ("short" or "long")."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.freqs = frequencies(cfg)
        self.scale = scale = attention_scaling(cfg)
        # Phi-3-small-128k's config gives the magnitude of each table itself (short_mscale, long_mscale)
        rs = cfg.rope_scaling or {}
        self.scales = {kind: float(rs.get(f"{kind}_mscale") or scale) for kind in self.freqs}
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
            scale = self.scales[kind]
            have = ((f.cos() * scale).to(device, dtype), (f.sin() * scale).to(device, dtype))
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
