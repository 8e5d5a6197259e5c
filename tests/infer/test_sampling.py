"""Next-token selection against transformers' logits processors: temperature, top-k, top-p, repetition
penalty; greedy is argmax; sampling draws only from what the filters keep, in proportion."""

from __future__ import annotations

import math

import pytest
import torch

from phiforge.infer.sampling import SamplingParams, apply_repetition_penalty, filter_logits, sample

lp = pytest.importorskip("transformers.generation.logits_process")

INF = float("-inf")


def hand_logits(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def kept(logits: torch.Tensor) -> list[list[bool]]:
    return torch.isfinite(logits).tolist()


def random_logits(B: int = 4, V: int = 300, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


def hf_ids(B: int) -> torch.Tensor:
    return torch.zeros(B, 1, dtype=torch.long)  # warpers ignore input_ids


# ---- top-k ----


@pytest.mark.parametrize("k", [1, 5, 50, 299])
def test_top_k_keeps_exactly_k(k):
    logits = random_logits()
    out = filter_logits(logits, SamplingParams(top_k=k, temperature=1.0))
    assert (torch.isfinite(out).sum(-1) == k).all()
    top = logits.topk(k, dim=-1).indices
    assert torch.isfinite(out.gather(-1, top)).all()  # the k largest, untouched
    assert torch.equal(out.gather(-1, top), logits.gather(-1, top))
    want = lp.TopKLogitsWarper(top_k=k)(hf_ids(4), logits.clone())
    assert torch.equal(out, want)


def test_top_k_off():
    logits = random_logits()
    for k in (0, 300, 1000):  # off, or not smaller than the vocabulary
        assert torch.equal(filter_logits(logits, SamplingParams(top_k=k, temperature=1.0)), logits)


# ---- top-p ----


@pytest.mark.parametrize(
    "top_p, n_kept",
    [
        (0.8, 2),  # 0.5 + 0.3 reaches 0.8 exactly: the minimal nucleus is two tokens
        (0.75, 2),
        (0.81, 3),
        (0.95, 3),
        (0.96, 4),
        (0.5, 1),
        (0.3, 1),  # never empty: the most likely token always stays
        (1e-9, 1),
        (1.0, 4),
    ],
)
def test_top_p_keeps_the_minimal_nucleus(top_p, n_kept):
    logits = hand_logits(0.5, 0.3, 0.15, 0.05)
    out = filter_logits(logits, SamplingParams(top_p=top_p, temperature=1.0))
    assert kept(out) == [[i < n_kept for i in range(4)]]
    want = lp.TopPLogitsWarper(top_p=top_p)(hf_ids(1), logits.clone())
    assert kept(out) == kept(want)
    # order in the vocabulary does not matter
    perm = torch.tensor([2, 0, 3, 1])
    assert kept(filter_logits(logits[:, perm], SamplingParams(top_p=top_p, temperature=1.0))) == [
        [perm[j].item() < n_kept for j in range(4)]
    ]


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers_on_random_logits(top_p):
    logits = random_logits(seed=1)
    out = filter_logits(logits, SamplingParams(top_p=top_p, temperature=1.0))
    want = lp.TopPLogitsWarper(top_p=top_p)(hf_ids(4), logits.clone())
    assert torch.equal(out, want)
    probs = logits.softmax(-1)
    for row in range(4):
        keep = torch.isfinite(out[row])
        mass = probs[row][keep].sum().item()
        assert mass >= top_p - 1e-6  # the nucleus reaches p ...
        assert mass - probs[row][keep].min().item() < top_p  # ... and is minimal


def test_temperature_then_top_k_then_top_p_as_transformers():
    logits = random_logits(seed=2)
    p = SamplingParams(temperature=0.7, top_k=40, top_p=0.9)
    want = logits.clone()
    for warper in (lp.TemperatureLogitsWarper(0.7), lp.TopKLogitsWarper(40), lp.TopPLogitsWarper(0.9)):
        want = warper(hf_ids(4), want)
    out = filter_logits(logits, p)
    assert torch.equal(torch.isfinite(out), torch.isfinite(want))
    torch.testing.assert_close(out[torch.isfinite(out)], want[torch.isfinite(want)])


# ---- temperature ----


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0])
def test_temperature_scales_logits(t):
    logits = random_logits(seed=3)
    out = filter_logits(logits, SamplingParams(temperature=t))
    torch.testing.assert_close(out, logits / t)
    torch.testing.assert_close(out, lp.TemperatureLogitsWarper(t)(hf_ids(4), logits.clone()))
    # softmax sharpens below 1, flattens above
    h = -(out.softmax(-1) * out.log_softmax(-1)).sum(-1)
    h1 = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    assert (h < h1).all() if t < 1 else (h > h1).all() if t > 1 else torch.allclose(h, h1)


# ---- repetition penalty ----


@pytest.mark.parametrize("penalty", [0.7, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(penalty):
    V = 50
    logits = random_logits(B=3, V=V, seed=4)
    logits[0, 7] = 0.0  # zero stays zero either way
    input_ids = torch.tensor([[7, 3, 3, 9, 49], [0, 1, 2, 3, 4], [10, 10, 10, 10, 10]])
    seen = torch.zeros(3, V, dtype=torch.bool)
    seen[torch.arange(3)[:, None], input_ids] = True
    out = apply_repetition_penalty(logits.clone(), seen, penalty)
    want = lp.RepetitionPenaltyLogitsProcessor(penalty)(input_ids, logits.clone())
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert torch.equal(out[~seen], logits[~seen])  # unseen tokens untouched
    if penalty > 1:  # seen tokens get less likely, positive or negative
        assert (out[seen] <= logits[seen]).all()


# ---- greedy and sampling ----


def test_greedy_is_argmax():
    logits = random_logits(seed=5)
    p = SamplingParams(temperature=0.0, top_k=3, top_p=0.5)  # filters are irrelevant when greedy
    assert p.greedy
    assert torch.equal(sample(logits, p, None), logits.argmax(-1))
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(sample(logits, p, g), logits.argmax(-1))
    assert torch.equal(g.get_state(), state)  # greedy draws no random numbers


def test_top_k_1_is_greedy_at_any_temperature():
    logits = random_logits(seed=6)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert torch.equal(sample(logits, SamplingParams(temperature=1.5, top_k=1), g), logits.argmax(-1))


def test_sampling_draws_from_the_filtered_distribution():
    logits = hand_logits(0.5, 0.3, 0.15, 0.05).expand(20000, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    draws = sample(logits, SamplingParams(temperature=1.0, top_p=0.9), g)  # keeps 0.5, 0.3, 0.15
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[3] == 0
    torch.testing.assert_close(freq[:3], torch.tensor([0.5, 0.3, 0.15]) / 0.95, atol=0.015, rtol=0)
    draws = sample(logits, SamplingParams(temperature=1.0, top_k=2), g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[2:].sum() == 0
    torch.testing.assert_close(freq[:2], torch.tensor([0.625, 0.375]), atol=0.015, rtol=0)


def test_seeded_sample_is_reproducible():
    logits = random_logits(seed=7)
    p = SamplingParams(temperature=0.8, top_k=50, top_p=0.9)
    a = [sample(logits, p, torch.Generator().manual_seed(123)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    runs = {tuple(sample(logits, p, torch.Generator().manual_seed(s)).tolist()) for s in range(10)}
    assert len(runs) > 1
