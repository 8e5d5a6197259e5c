"""Phi-3's sliding_window (2047 in Phi-3-mini-4k / medium-4k): past W tokens, each query sees only the last W
keys, in transformers and so in phiforge: full forward, KV-cached decode (PyTorch and native) and generation."""

from __future__ import annotations

import pytest
import torch

from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams
from phiforge.model import ModelConfig, build, save_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import transformers

    cfg = ModelConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        sliding_window=16,
        eos_token_id=None,
        pad_token_id=0,
    )
    model = build(cfg, seed=3)
    for p in model.parameters():  # big enough weights that the window changes the argmax
        p.data.normal_(0, 0.3) if p.dim() > 1 else p.data.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("swa")
    save_model(model, d)
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return model.eval(), hf, d


def test_forward_beyond_window_matches_transformers(pair):
    model, hf, _ = pair
    x = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
        full = model.__class__(model.cfg.replace(sliding_window=None))
        full.load_state_dict(model.state_dict())
        assert (full(x)[:, 20:] - theirs[:, 20:]).abs().max() > 1e-3  # the window really matters here
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float(theirs.abs().max()))


def test_greedy_generation_across_window_matches_transformers(pair):
    _, hf, d = pair
    engine = Engine.load(d)
    prompt = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(1))
    ours = engine.generate([prompt[0].tolist()], SamplingParams(max_new_tokens=40, ignore_eos=True))[0].tokens
    with torch.inference_mode():
        theirs = hf.generate(prompt, max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    assert ours == theirs[0, 10:].tolist()
