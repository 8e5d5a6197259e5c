"""`phiforge grow` (model/grow.py): a grown model computes what the small one computes (logits, held-out loss),
the copies are not identical (training can tell them apart), the checkpoint is an ordinary one that
`phiforge train` continues from, and a target it cannot grow into is one line naming the field."""

from __future__ import annotations

import pytest
import torch
import yaml

from phiforge.model import ModelConfig, build, load_model, save_model
from phiforge.model.grow import GrowError, grow, grow_checkpoint, grown_config
from phiforge.tokenizer import Tokenizer

V = 97


def cfg(arch="phi3", **kw) -> ModelConfig:
    base = dict(arch=arch, vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                tie_word_embeddings=arch != "phi", bos_token_id=None, eos_token_id=0, pad_token_id=0)  # fmt: skip
    if arch == "phi":
        base.update(hidden_act="gelu_new", partial_rotary_factor=0.5)
    return ModelConfig(**{**base, **kw})


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


BIG = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=8, num_key_value_heads=4
)
CASES = {
    "phi3-gqa": (cfg(), cfg(**BIG)),  # tied, RMSNorm, SwiGLU; depth 2 -> 5 (not a multiple)
    "phi3-groups-grow": (cfg(), cfg(**{**BIG, "num_key_value_heads": 2})),  # 2 -> 4 q heads per kv head
    "phi3-groups-shrink": (cfg(), cfg(**{**BIG, "num_key_value_heads": 8})),  # GQA -> MHA
    "llama-untied": (cfg("llama", tie_word_embeddings=False), cfg("llama", **BIG, tie_word_embeddings=False)),
    # LayerNorm, parallel block, biases everywhere, untied head, partial rotary
    "phi": (cfg("phi", num_key_value_heads=4), cfg("phi", **{**BIG, "num_key_value_heads": 8})),
    "depth-only": (cfg(), cfg(num_hidden_layers=6)),
    "width-only": (cfg(), cfg(**{**BIG, "num_hidden_layers": 2})),
}


@pytest.mark.parametrize("case", CASES)
def test_grown_model_computes_the_small_models_logits(case, model_factory):
    small_cfg, big_cfg = CASES[case]
    small = model_factory(small_cfg, seed=1, scale=3.0)  # random norms and biases: every tensor matters
    big = grow(small, big_cfg, noise=0.1, seed=0)
    assert big.cfg == big_cfg and big.num_params() == big_cfg.num_params() > small.num_params()
    x = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = small(x), big(x)
    assert rel_err(got, want) < 1e-5, case
    # and the same through the KV cache, token by token (the grown kv heads are read like any others)
    from phiforge.model import KVCache

    cache = KVCache(big.cfg, 3, 40)
    with torch.no_grad():
        steps = [big(x[:, t : t + 1], pos=t, cache=cache) for t in range(40)]
    assert rel_err(torch.cat(steps, 1), want) < 1e-5


def test_copies_differ_so_training_can_separate_them(model_factory):
    small_cfg, big_cfg = CASES["phi3-gqa"]
    small = model_factory(small_cfg, seed=1)
    H = small_cfg.hidden_size
    for noise, differ in ((0.0, False), (0.1, True)):
        big = grow(small, big_cfg, noise=noise).train()
        w = big.blocks[
            0
        ].attn.qkv.weight  # consumes the residual stream: columns j and j + H are one unit split
        assert torch.allclose(w[:, :H], w[:, H:]) != differ
        x = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
        big(x[:, :-1], targets=x[:, 1:]).backward()
        gr = big.embed.weight.grad  # the copies of a hidden unit get different gradients only with noise
        assert torch.allclose(gr[:, :H], gr[:, H:], atol=1e-7) != differ


def test_new_blocks_add_nothing_until_trained(model_factory):
    small = model_factory(cfg(), seed=1)
    big = grow(small, cfg(num_hidden_layers=5))
    zero = [
        i for i, b in enumerate(big.blocks) if not b.attn.out.weight.any() and not b.mlp.down.weight.any()
    ]
    assert zero == [1, 3, 4]  # one new block after block 0, two after block 1: spread over the depth
    torch.testing.assert_close(big.blocks[1].attn.qkv.weight, big.blocks[0].attn.qkv.weight)


def test_trained_model_grown_to_twice_the_size_keeps_its_held_out_loss(trained):
    ckpt, held = trained
    small = load_model(ckpt).eval()
    tok = Tokenizer.from_file(ckpt)
    ids = torch.tensor(tok.encode(held)[: 8 * 129]).view(8, 129)
    big_cfg = small.cfg.replace(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=8)  # fmt: skip
    big = grow(small, big_cfg, noise=0.1)
    with torch.no_grad():
        a = small(ids[:, :-1], targets=ids[:, 1:]).item()
        b = big(ids[:, :-1], targets=ids[:, 1:]).item()
        fresh = build(big_cfg, seed=0)(ids[:, :-1], targets=ids[:, 1:]).item()
    print(f"held-out loss: small {a:.5f}, grown (step 0) {b:.5f}, from scratch (step 0) {fresh:.3f}")
    assert abs(a - b) < 1e-4 and fresh > a + 1


BAD = [
    (cfg(), cfg("llama"), "arch: the model has 'phi3', the target has 'llama'"),
    (cfg(), cfg(hidden_size=16, num_attention_heads=2, num_key_value_heads=1), "hidden_size: the target's 16 is smaller"),
    (cfg(), cfg(hidden_size=48, num_attention_heads=6, num_key_value_heads=2), "hidden_size: the target's 48 is not a multiple"),
    (cfg(), cfg(intermediate_size=64), "intermediate_size: the target's 64 is not a multiple of the model's 48"),
    (cfg(), cfg(num_hidden_layers=1), "num_hidden_layers: the target's 1 is smaller than the model's 2"),
    (cfg(), cfg(hidden_size=64), "head_dim: the model has 8, the target has 16"),
    (cfg(), cfg(num_key_value_heads=1), "num_key_value_heads: the target's 1 is smaller"),
    (cfg(), cfg(tie_word_embeddings=False), "tie_word_embeddings"),
    (cfg(), cfg(rope_theta=5e5), "rope_theta"),
]  # fmt: skip


@pytest.mark.parametrize("small,big,msg", BAD)
def test_targets_it_cannot_grow_into_name_the_field(small, big, msg):
    with pytest.raises(GrowError, match="^" + msg.replace("(", r"\(")) as e:
        grown_config(small, big)
    assert "\n" not in str(e.value)


def test_vocabulary_and_special_tokens_are_the_small_models():
    g = grown_config(cfg(eos_token_id=5, pad_token_id=6), cfg(**BIG, vocab_size=8192, eos_token_id=0))
    assert (g.vocab_size, g.eos_token_id, g.pad_token_id, g.hidden_size) == (V, 5, 6, 64)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory, train_data):
    """A random `tiny`-shaped model on train_data's tokenizer, in HF layout with that tokenizer."""
    d = tmp_path_factory.mktemp("small")
    tok = Tokenizer.from_file(train_data["tok"])
    from phiforge.model import get_preset

    c = get_preset("tiny").replace(
        vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, pad_token_id=tok.eos_id
    )
    save_model(build(c, seed=0), d)
    tok.save(d)
    return d


def test_grow_checkpoint_writes_an_ordinary_checkpoint(small_dir, tmp_path):
    out = tmp_path / "grown"
    info = grow_checkpoint(small_dir, "tiny-10m", out)
    assert info["max_logit_diff"] < 1e-4 and info["params"] > 4 * info["small_params"]
    assert (out / "tokenizer.json").read_bytes() == (small_dir / "tokenizer.json").read_bytes()
    big = load_model(out)
    assert (big.cfg.hidden_size, big.cfg.num_hidden_layers, big.cfg.vocab_size) == (256, 8, 512)
    x = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(big(x), load_model(small_dir)(x)) < 1e-5


def test_grow_checkpoint_rejects_a_tokenizer_the_model_cannot_embed(small_dir, tmp_path):
    bad = tmp_path / "bad"
    m = load_model(small_dir)
    save_model(build(m.cfg.replace(vocab_size=300), seed=0), bad)
    (bad / "tokenizer.json").write_bytes((small_dir / "tokenizer.json").read_bytes())
    with pytest.raises(GrowError, match="^vocab_size: the tokenizer has 512 tokens, the model embeds 300"):
        grow_checkpoint(bad, "tiny-10m", tmp_path / "o")
    (bad / "tokenizer.json").unlink()
    with pytest.raises(GrowError, match="tokenizer.json: not found"):
        grow_checkpoint(bad, "tiny-10m", tmp_path / "o")


@pytest.mark.slow  # two phiforge processes, one training tiny-10m: ~30 s quiet, minutes on a loaded VM
def test_cli_grow_then_train_continues_from_it(small_dir, train_data, tmp_path, phiforge):
    out = tmp_path / "grown"
    r = phiforge("grow", "--model", small_dir, "--preset", "tiny-10m", "--out", out)
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "logit" in r.stdout
    recipe = {"name": "g", "out": str(tmp_path / "run"), "init_from": str(out), "seq_len": 32, "micro_batch": 2,
              "warmup_steps": 1, "eval_every": 0, "save_every": 0, "eval_tokens": 256, "progress": False,
              "phases": [{"name": "p", "tokens": 128, "datasets": [str(train_data["a"])]}]}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    r = phiforge("train", "--recipe", tmp_path / "r.yaml")
    assert r.returncode == 0, r.stderr
    final = load_model(r.stdout.strip().splitlines()[-1])
    assert final.cfg.hidden_size == 256 and final.cfg.num_hidden_layers == 8


def test_cli_bad_targets_are_one_line(small_dir, tmp_path, phiforge, one_line_error):
    x = tmp_path / "x"
    one_line_error(
        phiforge("grow", "--model", small_dir, "--preset", "phi-2", "--out", x), "arch: the model has 'phi3'"
    )
    one_line_error(phiforge("grow", "--model", small_dir, "--preset", "tiny-30m", "--out", x), "head_dim")
    one_line_error(
        phiforge("grow", "--model", tmp_path, "--preset", "tiny-10m", "--out", x), "tokenizer.json: not found"
    )
    assert not x.exists()


@pytest.mark.slow  # ~1 min on 2 quiet cores, minutes on a loaded one
def test_benchmark_smoke_size_runs_every_arm(train_data, tmp_path):
    """benchmarks/grow.py --size smoke on train_data's shards (standing in for the speedrun's data stages)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_grow", Path(__file__).parents[2] / "benchmarks" / "grow.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "run"
    out.mkdir()
    for name, src in (("tokenizer", "tok"), ("shards", "a"), ("shards_all", "b"), ("shards_instruct", "a")):
        (out / name).symlink_to(train_data[src])
    res = bench.run(out, "smoke", [0])
    small, grown = res["small"], res["arms"]["grown-0"]
    assert abs(grown["step0"]["val_loss"] - small["val_loss"]) < 1e-4  # function-preserving: same start
    assert grown["step0"]["humaneval_bpb"] == pytest.approx(small["humaneval_bpb"], abs=1e-4)
    assert set(res["arms"]) == {"grown-0", "scratch-0", "scratch-long-0"}
    assert [len(r["curve"]) for r in res["arms"].values()] == [3, 2, 7]  # + step 0 for the grown model
    bench.plot(res, tmp_path / "grow.png")
    assert (tmp_path / "grow.png").stat().st_size > 10_000
    again = bench.run(out, "smoke", [0])  # every stage is recorded: a re-run trains nothing
    assert again["arms"]["scratch-0"]["val_loss"] == res["arms"]["scratch-0"]["val_loss"]
    print(bench.summary(res))
