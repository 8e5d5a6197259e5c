"""The main job end to end at a few seconds' budget: corpus -> tokenizer -> training -> HF checkpoint -> text."""

from __future__ import annotations

import json

import torch

from phiforge.demo import run
from phiforge.infer.engine import Engine
from phiforge.infer.sampling import SamplingParams


def test_demo_produces_a_loadable_checkpoint(tmp_path, capsys):
    ckpt = run(out=tmp_path / "demo", seconds=3, vocab=512, max_bytes=300_000)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (ckpt / name).is_file()
    assert json.loads((ckpt / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]
    assert capsys.readouterr().out.startswith("def fibonacci(n):")
    engine = Engine.load(ckpt)
    res = engine.complete("import os\n", SamplingParams(max_new_tokens=5, ignore_eos=True))
    assert len(res.tokens) == 5
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    ids = torch.tensor([engine.tok.encode("import os\n")])
    with torch.no_grad():
        torch.testing.assert_close(engine.model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)
