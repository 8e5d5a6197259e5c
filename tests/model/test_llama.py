"""Llama architecture (SmolLM2, TinyLlama, Llama-3.2, Mistral-style GQA) against transformers' LlamaForCausalLM.

Each variant is a small random LlamaForCausalLM written by transformers itself (separate q/k/v/gate/up, the
HF spelling of every config field), loaded through phiforge's one model code, and compared: fp32 logits,
KV-cached decode, a left-padded batch, greedy generation, and the save back to LlamaForCausalLM.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import KVCache, load_model, save_model
from phiforge.model.rope import frequencies

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-5
VOCAB = 256


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def llama(rope: dict | None = None, **kw):
    base = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    base.update(kw)
    base["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "default", **(rope or {})}
    return transformers.LlamaConfig(**base)


VARIANTS = {
    "tied-gqa": lambda: llama(),  # SmolLM2's shape: tied, 2 query heads per KV head
    "untied-mha": lambda: llama(num_key_value_heads=4, tie_word_embeddings=False),
    "head-dim": lambda: llama(head_dim=24),  # q/k/v width 4*24 != hidden 64 (as Mistral-Nemo)
    "theta-100k": lambda: llama(rope={"rope_theta": 100000.0}, num_key_value_heads=1),
    "linear": lambda: llama(rope={"rope_type": "linear", "factor": 4.0}),
    "llama3": lambda: llama(
        rope={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        tie_word_embeddings=False,
    ),
    "yarn": lambda: llama(rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    "yarn-mscale": lambda: llama(
        rope={
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 16,
            "beta_slow": 2,
            "mscale": 0.8,
            "mscale_all_dim": 0.6,
        }
    ),
}


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random norm weights (the default ones would hide a swapped or dropped mapping)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() == 1:
            p.copy_(1.0 + torch.randn(p.shape, generator=g) * 0.1)


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request, tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(VARIANTS[request.param]()).eval()
    perturb(hf)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(str(path))
    ns = SimpleNamespace(name=request.param, path=path, hf=hf, ours=load_model(path).eval())
    ns.cfg = ns.ours.cfg
    yield ns


def test_config_and_rope_match(pair):
    cfg, hf = pair.cfg, pair.hf
    assert cfg.arch == "llama"
    assert pair.ours.num_params() == cfg.num_params() == hf.num_parameters()
    assert cfg.head_dim == hf.config.head_dim
    rot = hf.model.rotary_emb
    assert torch.equal(frequencies(cfg)["short"], rot.inv_freq)
    assert pair.ours.rope.scale == rot.attention_scaling


@torch.no_grad()
def test_logits_and_loss(pair):
    idx = tokens(2, 120)  # past the llama3/yarn original length (64)
    want = pair.hf(idx, labels=idx)
    got = pair.ours(idx)
    assert rel_err(got, want.logits) < TOL, pair.name
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)
    loss = pair.ours(idx, targets=targets)
    assert abs(loss.item() - want.loss.item()) / want.loss.item() < TOL


@torch.no_grad()
def test_kv_cache_decode(pair):
    idx, P = tokens(2, 40, seed=3), 9
    want = pair.hf(idx).logits
    cache = KVCache(pair.cfg, batch=2, max_len=40)
    steps = [pair.ours(idx[:, :P], cache=cache)]
    steps += [pair.ours(idx[:, p, None], pos=p, cache=cache) for p in range(P, 40)]
    assert rel_err(torch.cat(steps, dim=1), want) < TOL


@torch.no_grad()
def test_left_padded_batch(pair):
    T, lengths = 24, [24, 17, 6]
    ids = tokens(3, T, seed=5)
    am = torch.zeros(3, T, dtype=torch.long)
    for r, n in enumerate(lengths):
        am[r, T - n :] = 1
        ids[r, : T - n] = 0
    positions = (am.cumsum(-1) - 1).clamp(min=0)
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & am.bool()[:, None, None, :]
    want = pair.hf(ids, attention_mask=am, position_ids=positions).logits
    got = pair.ours(ids, positions=positions, mask=mask)
    assert rel_err(got[am.bool()], want[am.bool()]) < TOL


@torch.no_grad()
def test_greedy_generation_matches_transformers(pair):
    """Batch 1 (the native decode path where it applies) and a left-padded batch of three."""
    engine = Engine(load_model(pair.path))
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    gen = dict(max_new_tokens=24, do_sample=False, min_new_tokens=24, pad_token_id=0)
    prompts = [tokens(1, n, seed=10 + n)[0].tolist() for n in (11, 5, 8)]
    out = pair.hf.generate(
        torch.tensor([prompts[0]]), attention_mask=torch.ones(1, 11, dtype=torch.long), **gen
    )
    assert engine.generate([prompts[0]], params)[0].tokens == out[0, 11:].tolist()
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    am = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    out = pair.hf.generate(ids, attention_mask=am, **gen)
    got = engine.generate(prompts, params)
    assert [r.tokens for r in got] == out[:, T:].tolist()


@torch.no_grad()
def test_save_back_as_llama(pair, tmp_path):
    save_model(pair.ours, tmp_path)
    theirs, ours = load_file(pair.path / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert ours.keys() == theirs.keys()  # separate q/k/v/gate/up again, no lm_head when tied
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(back).__name__ == "LlamaForCausalLM"
    idx = tokens(2, 100, seed=7)
    assert torch.equal(back(idx).logits, pair.hf(idx).logits)
    assert load_model(tmp_path).cfg == pair.cfg


def test_trains(pair):
    """One optimizer step through the fused loss moves the loss (the Llama path trains like Phi's)."""
    model = load_model(pair.path).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    idx = tokens(4, 32, seed=9)
    targets = torch.cat([idx[:, 1:], torch.full((4, 1), -100)], dim=1)
    before = model(idx, targets=targets)
    before.backward()
    opt.step()
    with torch.no_grad():
        assert model(idx, targets=targets).item() < before.item()
