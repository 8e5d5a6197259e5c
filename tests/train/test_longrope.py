"""Context extension (train/longrope.py): the configs each method writes load in transformers with the same
logits on both sides of the longrope switch, the search keeps its constraints and improves its fitness,
and the whole `extend` (search -> checkpoint -> fine-tune at the target length) runs on a trained model."""

from __future__ import annotations

import inspect
import json
import random

import pytest
import torch

from phiforge.model import build, get_preset, load_model, save_model
from phiforge.model.rope import inv_freq, yarn_inv_freq
from phiforge.tokenizer import Tokenizer
from phiforge.train import longrope as lr

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ORIG, LENGTH = 32, 256  # 8x, as the demo


def small(arch: str):
    if arch == "llama":
        cfg = get_preset("smollm2-135m")
        return cfg.replace(num_hidden_layers=2, vocab_size=300, hidden_size=96, num_attention_heads=6,
                           num_key_value_heads=2, intermediate_size=128, max_position_embeddings=ORIG,
                           bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
    return get_preset("tiny").replace(
        num_hidden_layers=2,
        vocab_size=300,
        max_position_embeddings=ORIG,
        original_max_position_embeddings=ORIG,
    )


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def searched_factors(half: int, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return lr.monotone([rng.uniform(1, 2 * LENGTH / ORIG) for _ in range(half)], 1.0, 16.0)


@pytest.mark.parametrize("arch", ["phi3", "llama"])
@pytest.mark.parametrize("method", ["longrope", "yarn", "pi"])
@torch.no_grad()
def test_extended_checkpoint_matches_transformers_across_the_switch(arch, method, tmp_path):
    cfg0 = small(arch)
    half = cfg0.rotary_dim // 2
    long_f, short_f = searched_factors(half), lr.monotone([1 + i / half for i in range(half)], 1, 2)
    cfg = lr.extended_config(cfg0, LENGTH, ORIG, method, long_f, short_f)
    m = build(cfg, seed=0).eval()
    save_model(m, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["max_position_embeddings"] == LENGTH
    if method == "longrope":
        assert d["rope_scaling"]["type"] == "longrope"
        assert d["rope_scaling"]["long_factor"] == long_f and d["rope_scaling"]["short_factor"] == short_f
        orig = (
            d.get("original_max_position_embeddings") or d["rope_scaling"]["original_max_position_embeddings"]
        )
        assert orig == ORIG
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert load_model(tmp_path).cfg == cfg
    idx = torch.randint(0, cfg.vocab_size, (1, 200), generator=torch.Generator().manual_seed(0))
    for T in (ORIG, ORIG + 1, 200):  # the last short-factor length, the first long one, deep past it
        assert rel_err(m(idx[:, :T]), hf(idx[:, :T]).logits) < 1e-5, T
    if method == "longrope":  # the switch is real: the first 32 positions change once the long factors apply
        assert rel_err(m(idx[:, :ORIG]), m(idx[:, : ORIG + 1])[:, :ORIG]) > 1e-3


def test_yarn_factors_reproduce_yarn_frequencies():
    cfg = small("phi3")
    f = lr.yarn_factors(cfg, 8.0, ORIG)
    y = cfg.replace(arch="llama", rope_scaling={"type": "yarn", "factor": 8.0})
    assert torch.allclose(inv_freq(cfg, f), yarn_inv_freq(y.replace(original_max_position_embeddings=ORIG)))
    assert f == sorted(f) and f[0] == pytest.approx(1.0) and f[-1] == pytest.approx(8.0)


def test_extended_config_errors():
    cfg = small("phi3")
    with pytest.raises(ValueError, match="--method 'ntk'"):
        lr.extended_config(cfg, LENGTH, ORIG, "ntk")
    with pytest.raises(ValueError, match="--length 32: must exceed the original context 32"):
        lr.extended_config(cfg, 32, ORIG, "pi")


def test_monotone_mutation_crossover_keep_the_constraint():
    rng = random.Random(0)
    sc = lr.SearchConfig(mutation_rate=1.0, mutation_sigma=1.0)
    f = [1.0] * 16
    for _ in range(50):
        f = lr.mutate(
            lr.crossover(f, searched_factors(16, rng.randrange(99)), rng, 1.0, 16.0), rng, sc, 1.0, 16.0
        )
        assert f == sorted(f) and f[0] >= 1.0 and f[-1] <= 16.0


def test_search_finds_a_monotone_target():
    target = [1 + 7 * (i / 15) ** 3 for i in range(16)]  # non-decreasing: reachable

    def fitness(f):
        return sum((a - b) ** 2 for a, b in zip(f, target, strict=True))

    seeds = [[8.0] * 16, [1.0] * 16]
    best, score, hist = lr.search(fitness, seeds, 1.0, 16.0, lr.SearchConfig(population=12, generations=15))
    assert best == sorted(best)
    assert score < 0.25 * min(fitness(s) for s in seeds)
    assert [h["best"] for h in hist] == sorted(
        (h["best"] for h in hist), reverse=True
    )  # elitism: never worse


def test_extend_searches_and_fine_tunes(train_data, tmp_path):
    """The whole path at smoke size: search (4 candidates, 1 generation) -> checkpoint -> 2 fine-tune steps
    at the target length from it."""
    tok = Tokenizer.from_file(train_data["tok"])
    cfg = get_preset("tiny").replace(vocab_size=tok.vocab_size, max_position_embeddings=64,
                                     original_max_position_embeddings=64, eos_token_id=tok.eos_id)  # fmt: skip
    base = tmp_path / "base"
    save_model(build(cfg, seed=0), base)
    tok.save(base)
    text = inspect.getsource(json.decoder) * 4
    sc = lr.SearchConfig(population=4, generations=1)
    rep = lr.extend(base, tmp_path / "out", 256, text, "longrope", sc=sc, docs=1, finetune_tokens=2 * 256,
                    shards=[str(train_data["a"])])  # fmt: skip
    assert rep["scale"] == 4.0 and rep["search"]["history_long"][-1]["evaluated"] >= 4
    m = load_model(rep["model"])
    assert m.cfg.rope_kind == "longrope" and m.cfg.max_position_embeddings == 256
    assert "finetune" in rep["model"] and (tmp_path / "out" / "finetune" / "metrics.jsonl").is_file()
