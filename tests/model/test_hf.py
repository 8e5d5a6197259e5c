"""The interop contract: phiforge <-> Hugging Face layout, logits equal to transformers'.

Every preset is built with 2 layers and random weights (vocab cut to 512, wide MLPs cut to 320; hidden size,
heads, kv heads and partial rotary stay exact), saved with phiforge, loaded with transformers, and compared.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from phiforge.model import PRESETS, CheckpointError, KVCache, build, get_preset, load_model, save_model
from phiforge.model.hf import config_to_hf, load_config

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TOL = 1e-5
VOCAB = 512
# Phi-3-small (remote code, not in transformers) is compared with its published definition in test_phi3_small.py
IN_TRANSFORMERS = [n for n, c in PRESETS.items() if not c.block_sparse]
LONGROPE = [n for n in IN_TRANSFORMERS if PRESETS[n].rope_scaling]
# Longrope presets get their switch point shrunk to 32 (and max to 32 * 32, keeping the 128k/4k ratio
# and hence the attention factor), so a 50-token sequence already runs on the long factors.
ORIG = 32


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _fit_token(tok, default):
    if tok is None:
        return None
    if isinstance(tok, list):
        return [t if t < VOCAB else default for t in tok]
    return tok if tok < VOCAB else default


def resize(cfg, hidden: int, heads: int, kv_heads: int | None = None, **kw):
    """Narrower model; longrope factor lists follow the new rotary size (one replace: validation runs once)."""
    if cfg.rope_scaling:
        half = int(hidden // heads * cfg.partial_rotary_factor) // 2
        kw["rope_scaling"] = {
            **cfg.rope_scaling,
            "short_factor": [1.0] * half,
            "long_factor": [1.0 + i / 4 for i in range(half)],
        }
    return cfg.replace(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads, **kw)


def small_cfg(name: str):
    cfg = get_preset(name)
    kw = dict(
        num_hidden_layers=2,
        vocab_size=min(cfg.vocab_size, VOCAB),
        bos_token_id=_fit_token(cfg.bos_token_id, 1),
        eos_token_id=_fit_token(cfg.eos_token_id, 2),
        pad_token_id=_fit_token(cfg.pad_token_id, 0),
    )
    if cfg.intermediate_size > 1024:
        kw["intermediate_size"] = 320
    if cfg.rope_scaling:
        kw.update(original_max_position_embeddings=ORIG, max_position_embeddings=ORIG * 32)
    return cfg.replace(**kw)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Random norm weights and biases (the default 1/0 init would hide a swapped or dropped mapping)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1:
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_((1.0 + noise) if name.endswith("weight") and "norm" in name else noise * 0.2)


def tokens(cfg, B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_load(path, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kw).eval()


def left_pad(cfg, lengths: list[int], T: int, seed: int = 2):
    """Left-padded batch: ids, attention_mask (B,T), positions (B,T) and bool mask (B,1,T,T)."""
    ids = tokens(cfg, len(lengths), T, seed)
    am = torch.zeros(len(lengths), T, dtype=torch.long)
    for r, n in enumerate(lengths):
        am[r, T - n :] = 1
        ids[r, : T - n] = cfg.pad_token_id or 0
    positions = (am.cumsum(-1) - 1).clamp(min=0)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = causal[None, None] & am.bool()[:, None, None, :]
    return ids, am, positions, mask


# ---------------------------------------------------------------------------------------------------
# One saved model per preset, shared by the tests below (pytest groups tests by the module-scoped param,
# so only one preset's models are alive at a time).


@pytest.fixture(scope="module", params=IN_TRANSFORMERS)
def pair(request, tmp_path_factory):
    cfg = small_cfg(request.param)
    built = build(cfg, seed=0).eval()
    perturb(built)
    path = tmp_path_factory.mktemp(request.param)
    save_model(built, path)
    ns = SimpleNamespace(name=request.param, cfg=cfg, built=built, path=path)
    ns.ours = load_model(path).eval()
    ns.hf = hf_load(path)
    yield ns
    del ns.built, ns.ours, ns.hf


@torch.no_grad()
def test_logits_match_transformers(pair):
    cfg = pair.cfg
    lengths = (20, 50) if cfg.rope_scaling else (20,)  # 50 > ORIG: the long factors
    for T in lengths:
        idx = tokens(cfg, 2, T)
        want = pair.hf(idx).logits
        got = pair.ours(idx)
        assert got.shape == (2, T, cfg.vocab_size)
        assert rel_err(got, want) < TOL, (pair.name, T)
        assert torch.equal(pair.built(idx), got)  # the reloaded model is the saved one
        # the last layer runs one query and one row of its output projection and MLP: same sums, other
        # kernels (measured 4e-7 to 1.1e-6 from the full forward), within transformers' tolerance of both
        last = pair.ours(idx, last_only=True)
        assert last.shape == (2, 1, cfg.vocab_size)
        assert rel_err(last, got[:, -1:]) < TOL and rel_err(last, want[:, -1:]) < TOL


@torch.no_grad()
def test_loss_matches_transformers(pair):
    idx = tokens(pair.cfg, 2, 20)
    targets = torch.cat([idx[:, 1:], torch.full((2, 1), -100)], dim=1)  # ours: already shifted
    want = pair.hf(idx, labels=idx).loss
    got = pair.ours(idx, targets=targets)
    assert abs(got.item() - want.item()) / want.item() < TOL


def test_loaded_config_equals_saved(pair):
    assert load_config(pair.path) == pair.cfg
    assert pair.ours.num_params() == pair.cfg.num_params() == pair.hf.num_parameters()


@torch.no_grad()
def test_kv_cache_decode_matches_transformers(pair):
    # For longrope the whole run stays inside the original window (T <= ORIG): crossing it mid-decode
    # would need keys re-rotated with the long factors; transformers' own generate re-prefills at the
    # switch point and the engine does the same, so the cached path is only specified inside the window.
    cfg, T, P = pair.cfg, 20, 7
    idx = tokens(cfg, 2, T, seed=3)
    want = pair.hf(idx).logits
    full = pair.ours(idx)
    assert rel_err(full, want) < TOL
    cache = KVCache(cfg, batch=2, max_len=T + 4)
    steps = [pair.ours(idx[:, :P], pos=0, cache=cache)]
    for p in range(P, T):
        steps.append(pair.ours(idx[:, p, None], pos=p, cache=cache))
    got = torch.cat(steps, dim=1)
    assert rel_err(got, want) < TOL
    assert rel_err(got, full) < TOL


@torch.no_grad()
def test_kv_cache_chunked_prefill(pair):
    """Prefill in two chunks (T > 1 at pos > 0: the offset causal mask) then one decode step."""
    cfg = pair.cfg
    idx = tokens(cfg, 2, 16, seed=4)
    want = pair.hf(idx).logits
    cache = KVCache(cfg, batch=2, max_len=16)
    got = torch.cat(
        [
            pair.ours(idx[:, :5], cache=cache),
            pair.ours(idx[:, 5:15], pos=5, cache=cache),
            pair.ours(idx[:, 15:], pos=15, cache=cache),
        ],
        dim=1,
    )
    assert rel_err(got, want) < TOL


@torch.no_grad()
def test_left_padded_batch_matches_transformers(pair):
    cfg = pair.cfg
    cases = [(16, [16, 11, 5])]
    if cfg.rope_scaling:
        cases.append((40, [40, 30, 12]))  # longest row past ORIG: the whole batch on long factors, as HF
    for T, lengths in cases:
        ids, am, positions, mask = left_pad(cfg, lengths, T)
        want = pair.hf(ids, attention_mask=am, position_ids=positions).logits
        got = pair.ours(ids, positions=positions, mask=mask)
        assert torch.isfinite(got).all()
        real = am.bool()
        assert rel_err(got[real], want[real]) < TOL, (pair.name, T)
        # each row equals that row run alone without padding
        for r, n in enumerate(lengths):
            if cfg.rope_scaling and max(lengths) > ORIG >= n:
                continue  # alone, a short row would run on the short factors
            alone = pair.ours(ids[r : r + 1, T - n :])
            assert rel_err(got[r, T - n :], alone[0]) < TOL


@torch.no_grad()
def test_left_padded_cached_decode(pair):
    """Padded prefill into the cache, then decode with positions (B,1) and a key-not-pad mask (B,1,1,S)."""
    cfg, T, P = pair.cfg, 18, 10
    lengths = [T, T - 4, T - 9]
    ids, am, positions, mask = left_pad(cfg, lengths, T, seed=5)
    want = pair.hf(ids, attention_mask=am, position_ids=positions).logits
    cache = KVCache(cfg, batch=3, max_len=T)
    steps = [pair.ours(ids[:, :P], cache=cache, positions=positions[:, :P], mask=mask[:, :, :P, :P])]
    for p in range(P, T):
        steps.append(
            pair.ours(
                ids[:, p, None],
                pos=p,
                cache=cache,
                positions=positions[:, p, None],
                mask=mask[:, :, p : p + 1, : p + 1],
            )
        )
    got = torch.cat(steps, dim=1)
    real = am.bool()
    assert rel_err(got[real], want[real]) < TOL


# ---------------------------------------------------------------------------------------------------
# Round trips, transformers-written checkpoints, sharding, dtypes.


@pytest.mark.parametrize("name", ["phi-3-mini-128k", "phi-2", "tiny"])
def test_save_load_save_is_identical(name, tmp_path):
    cfg = resize(small_cfg(name), 256, 8)
    m = build(cfg, seed=0)
    perturb(m)
    save_model(m, tmp_path / "a")
    save_model(load_model(tmp_path / "a"), tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    for f in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "a" / f).read_text()) == json.loads((tmp_path / "b" / f).read_text())
    assert load_config(tmp_path / "b") == cfg


@pytest.mark.parametrize("name", IN_TRANSFORMERS)
def test_transformers_rewritten_config_loads(name, tmp_path):
    """transformers >= 5 rewrites config.json (rope settings nested under rope_parameters, `dtype`...);
    what it writes back must map to the same ModelConfig."""
    cfg = small_cfg(name)
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(cfg)))
    transformers.AutoConfig.from_pretrained(str(tmp_path)).save_pretrained(str(tmp_path / "hf"))
    assert load_config(tmp_path / "hf") == cfg


def _half(hidden, heads, factor=1.0):
    return int(hidden // heads * factor) // 2


HF_CONFIGS = {
    # GQA + tied embeddings + longrope (switch at 32)
    "phi3-gqa-tied-longrope": lambda: transformers.Phi3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=ORIG * 32,
        original_max_position_embeddings=ORIG,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(_half(64, 4))],
            "long_factor": [1.0 + i for i in range(_half(64, 4))],
        },
    ),
    # phi-4-mini shape in small: partial rotary 0.75, GQA 3:1, tied
    "phi3-partial-rotary": lambda: transformers.Phi3Config(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        partial_rotary_factor=0.75,
        max_position_embeddings=256,
        original_max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    ),
    "phi-gqa-tied": lambda: transformers.PhiConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        partial_rotary_factor=0.4,
    ),
    "phi-untied": lambda: transformers.PhiConfig(
        vocab_size=VOCAB,
        hidden_size=80,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        partial_rotary_factor=0.4,
    ),
}


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
@torch.no_grad()
def test_transformers_checkpoint_loads(kind, sharded, tmp_path):
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(HF_CONFIGS[kind]()).eval()
    perturb(hf, seed=1)
    hf.save_pretrained(str(tmp_path), max_shard_size="20KB" if sharded else "5GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded
    ours = load_model(tmp_path).eval()
    assert ours.num_params() == hf.num_parameters()
    if ours.cfg.tie_word_embeddings:
        assert ours.lm_head.weight is ours.embed.weight
    for T in (20, 50):
        idx = tokens(ours.cfg, 2, T)
        assert rel_err(ours(idx), hf(idx).logits) < TOL, (kind, T)


@torch.no_grad()
def test_phiforge_sharded_save_loads_both_ways(tmp_path):
    cfg = resize(small_cfg("phi-3-mini-4k"), 128, 4, 2, intermediate_size=96)
    m = build(cfg, seed=0).eval()
    perturb(m)
    save_model(m, tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and not (tmp_path / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for s in shards for t in load_file(tmp_path / s).values()
    )
    idx = tokens(cfg, 2, 20)
    want = m(idx)
    assert torch.equal(load_model(tmp_path)(idx), want)
    assert rel_err(want, hf_load(tmp_path)(idx).logits) < TOL
    # re-saving unsharded into the same directory drops the index and the shards' role
    save_model(m, tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert torch.equal(load_model(tmp_path)(idx), want)


@torch.no_grad()
def test_bf16(tmp_path):
    cfg = resize(small_cfg("phi-4-mini"), 384, 3, 1)  # head_dim 128, partial rotary 0.75, GQA: as the preset
    m = build(cfg, seed=0).eval()
    perturb(m)
    save_model(m, tmp_path / "fp32")
    idx = tokens(cfg, 2, 40)
    ref = m(idx)
    low = load_model(tmp_path / "fp32", dtype=torch.bfloat16).eval()
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    out = low(idx)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 5e-2
    # a bf16 checkpoint: stored dtype kept, config says so, transformers reads it the same
    save_model(low, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = load_model(tmp_path / "bf16").eval()
    assert next(again.parameters()).dtype == torch.bfloat16
    assert torch.equal(again(idx), out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "bf16"), dtype=torch.bfloat16
    ).eval()
    assert rel_err(hf(idx).logits, ref) < 5e-2


@pytest.mark.slow
@pytest.mark.parametrize("name", LONGROPE)
@torch.no_grad()
def test_longrope_real_switch_point(name):
    """The real 4096 switch point (widths shrunk, head size and factor count exact)."""
    cfg = get_preset(name)
    heads = (
        2
        if cfg.num_key_value_heads == cfg.num_attention_heads
        else cfg.num_attention_heads // cfg.num_key_value_heads
    )
    cfg = cfg.replace(
        num_hidden_layers=2,
        vocab_size=VOCAB,
        hidden_size=heads * cfg.head_dim,
        num_attention_heads=heads,
        num_key_value_heads=heads if cfg.num_key_value_heads == cfg.num_attention_heads else 1,
        intermediate_size=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    assert cfg.original_max_position_embeddings == 4096 and cfg.rotary_dim == get_preset(name).rotary_dim
    m = build(cfg, seed=0).eval()
    perturb(m)
    with tempfile.TemporaryDirectory() as d:
        save_model(m, d)
        hf = hf_load(d)
        idx = tokens(cfg, 1, 4100)
        for T in (4096, 4100):  # 4096 fits the window (short factors), 4100 does not (long)
            assert rel_err(m(idx[:, :T]), hf(idx[:, :T]).logits) < TOL, T
        # the switch really happens: the long factors change logits at early positions too
        assert rel_err(m(idx[:, :4096])[:, :100], m(idx)[:, :100]) > 1e-3


# ---------------------------------------------------------------------------------------------------
# Bad input: one CheckpointError (a ValueError) naming the file, field or value.


def _tiny_cfg(arch: str):
    if arch == "phi":
        return resize(small_cfg("phi-2"), 64, 4, intermediate_size=96)
    if arch == "llama":
        return resize(small_cfg("smollm2-135m"), 64, 4, 2, intermediate_size=96, tie_word_embeddings=False)
    return resize(small_cfg("tiny"), 64, 4, 2, intermediate_size=96, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def good_dirs(tmp_path_factory):
    out = {}
    for arch in ("phi3", "phi", "llama"):
        path = tmp_path_factory.mktemp(f"good-{arch}")
        save_model(build(_tiny_cfg(arch), seed=0), path)
        out[arch] = path
    return out


@pytest.fixture(params=["phi3", "phi", "llama"])
def ckpt(request, good_dirs, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(good_dirs[request.param], path)
    load_model(path)  # sanity: the untouched copy loads
    return SimpleNamespace(arch=request.param, path=path, cfg=_tiny_cfg(request.param))


def _edit_config(path: Path, **changes):
    f = path / "config.json"
    d = json.loads(f.read_text())
    d.update(changes)
    f.write_text(json.dumps(d))


def _edit_tensors(path: Path, edit):
    f = path / "model.safetensors"
    sd = load_file(f)
    edit(sd)
    save_file(sd, f, metadata={"format": "pt"})


def _raises(path, *needles):
    with pytest.raises(CheckpointError) as e:
        load_model(path)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_missing_config(ckpt):
    (ckpt.path / "config.json").unlink()
    _raises(ckpt.path, "config.json", "not found")


def test_invalid_json(ckpt):
    (ckpt.path / "config.json").write_text('{"architectures": ["Phi3ForCausalLM"],')
    _raises(ckpt.path, "config.json", "invalid JSON")


def test_unknown_architecture(ckpt):
    _edit_config(ckpt.path, architectures=["MambaForCausalLM"], model_type="mamba")
    _raises(ckpt.path, "config.json", "MambaForCausalLM")


def test_unknown_config_field(ckpt):
    _edit_config(ckpt.path, head_scale_mystery=2.0)
    _raises(ckpt.path, "config.json", "head_scale_mystery")


def test_invalid_config_value(ckpt):
    _edit_config(ckpt.path, num_attention_heads=5)
    _raises(ckpt.path, "config.json", "num_attention_heads")


def test_qk_layernorm(ckpt):
    _edit_config(ckpt.path, qk_layernorm=True)
    _raises(ckpt.path, "config.json", "qk_layernorm")


def test_unsupported_bias_flag(ckpt):
    _edit_config(ckpt.path, attention_bias=True)
    _raises(ckpt.path, "config.json", "attention_bias")


def test_missing_weights(ckpt):
    (ckpt.path / "model.safetensors").unlink()
    _raises(ckpt.path, "model.safetensors", "not found")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "tiny"])
def test_corrupt_safetensors(ckpt, damage):
    f = ckpt.path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xff" * 200, "tiny": data[:3]}[damage])
    _raises(ckpt.path, "model.safetensors", "corrupt")


def test_wrong_shape_from_config(ckpt):
    _edit_config(ckpt.path, intermediate_size=100)
    _raises(ckpt.path, "model.layers.", "mlp", "has shape")


@pytest.mark.parametrize("which", ["down", "qkv", "gate"])
def test_wrong_shape_tensor(ckpt, which):
    name = {
        ("phi3", "down"): "model.layers.1.mlp.down_proj.weight",
        ("phi3", "qkv"): "model.layers.1.self_attn.qkv_proj.weight",
        ("phi", "down"): "model.layers.1.mlp.fc2.weight",
        ("phi", "qkv"): "model.layers.1.self_attn.k_proj.weight",
        ("llama", "down"): "model.layers.1.mlp.down_proj.weight",
        ("llama", "qkv"): "model.layers.1.self_attn.k_proj.weight",
        ("phi3", "gate"): "model.layers.1.mlp.gate_up_proj.weight",
        ("phi", "gate"): "model.layers.1.mlp.fc1.weight",
        ("llama", "gate"): "model.layers.1.mlp.gate_proj.weight",
    }[ckpt.arch, which]

    def edit(sd):
        t = sd[name]
        sd[name] = torch.zeros(t.shape[0], t.shape[1] + 1)

    _edit_tensors(ckpt.path, edit)
    _raises(ckpt.path, name, "shape")


@pytest.mark.parametrize("which", ["o", "q", "up", "norm"])
def test_missing_tensor(ckpt, which):
    name = {
        ("phi3", "o"): "model.layers.1.self_attn.o_proj.weight",
        ("phi3", "q"): "model.layers.0.self_attn.qkv_proj.weight",
        ("phi3", "norm"): "model.norm.weight",
        ("phi", "o"): "model.layers.1.self_attn.dense.weight",
        ("phi", "q"): "model.layers.0.self_attn.v_proj.bias",
        ("phi", "norm"): "model.final_layernorm.bias",
        ("llama", "o"): "model.layers.1.self_attn.o_proj.weight",
        ("llama", "q"): "model.layers.0.self_attn.q_proj.weight",
        ("llama", "up"): "model.layers.1.mlp.up_proj.weight",
        ("llama", "norm"): "model.norm.weight",
        ("phi3", "up"): "model.layers.1.mlp.gate_up_proj.weight",
        ("phi", "up"): "model.layers.1.mlp.fc1.bias",
    }[ckpt.arch, which]
    _edit_tensors(ckpt.path, lambda sd: sd.pop(name))
    _raises(ckpt.path, name, "missing")


def test_missing_all_of_qkv(ckpt):
    prefix = "model.layers.1.self_attn."
    _edit_tensors(
        ckpt.path,
        lambda sd: [
            sd.pop(k) for k in list(sd) if k.startswith(prefix) and "proj" in k and "o_proj" not in k
        ],
    )
    _raises(ckpt.path, "missing", prefix)


def test_unexpected_tensor(ckpt):
    _edit_tensors(
        ckpt.path, lambda sd: sd.__setitem__("model.layers.0.self_attn.q_norm.weight", torch.ones(16))
    )
    _raises(ckpt.path, "model.layers.0.self_attn.q_norm.weight", "unexpected")


def test_sharded_missing_shard(ckpt, tmp_path):
    m = load_model(ckpt.path)
    save_model(m, tmp_path / "s", max_shard_bytes=50_000)
    shard = sorted((tmp_path / "s").glob("model-*.safetensors"))[1]
    shard.unlink()
    _raises(tmp_path / "s", shard.name, "not found")


def test_sharded_bad_index(ckpt, tmp_path):
    save_model(load_model(ckpt.path), tmp_path / "s", max_shard_bytes=50_000)
    (tmp_path / "s" / "model.safetensors.index.json").write_text("{}")
    _raises(tmp_path / "s", "model.safetensors.index.json")
