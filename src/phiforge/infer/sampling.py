"""Next-token selection: repetition penalty, temperature, top-k, top-p, in transformers' order.

Semantics follow transformers' logits processors so seeded sampling is comparable: repetition penalty
(divide positive / multiply negative logits of every token already in the sequence, prompt included),
then temperature, then top-k, then top-p (keep the smallest set whose mass reaches p, at least one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    stop_token_ids: list[int] = field(default_factory=list)  # added to the tokenizer's / config's eos ids
    stop: list[str] = field(default_factory=list)  # stop strings: output ends before them
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: always produce max_new_tokens
    logprobs: int | None = None  # None: off; k >= 0: each token's logprob + its k best alternatives

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits (B, V); seen (B, V) bool mask of tokens present in each sequence."""
    if penalty == 1.0:
        return logits
    scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, scaled, logits)


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    if p.temperature not in (0.0, 1.0):
        logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= (1 - p.top_p)
        drop[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) float32 -> next ids (B,)."""
    if p.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
