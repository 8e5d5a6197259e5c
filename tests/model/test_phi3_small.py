"""Phi-3-small: presets, HF layout (the remote code's names and row orders), and logits against an
independent dense-mask reference written from the published definition (Phi-3-small's remote code
`modeling_phi3_small.py` + `triton_blocksparse_attention_utils.py`, as also reimplemented by vLLM and mlx-lm).

The reference below reads the HF-layout tensors (grouped qkv, interleaved up_proj) and builds the full
T x T block mask, so it shares nothing with model/attention.py or hf.py's row reordering. No official
implementation could be run here: the remote code needs Triton + flash-attn on a GPU."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from phiforge.model import CheckpointError, KVCache, ModelConfig, build, get_preset, load_model, save_model
from phiforge.model.attention import BlockSparseLayout, block_sparse_attention
from phiforge.model.hf import hf_state_dict


def small_cfg(**kw) -> ModelConfig:
    base = dict(
        arch="phi3small",
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,  # sparse, dense, sparse, dense
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=1e6,
        hidden_act="gegelu",
        gegelu_limit=2.0,  # small enough that the clamp is exercised by the random weights
        mup_embedding_multiplier=10.0,
        mup_width_multiplier=8.0,
        mup_attn_multiplier=1.0,
        mup_use_scaling=True,
        tie_word_embeddings=True,
        blocksparse_block_size=8,
        blocksparse_num_local_blocks=2,
        blocksparse_vert_stride=3,
        masked_token_ids=(0, 5, 299),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    base.update(kw)
    return ModelConfig(**base)


def random_model(cfg: ModelConfig, seed: int = 0):
    model = build(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    for p in model.parameters():  # biases and norms nonzero too, so their mapping is tested
        p.data = torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1) + (p.dim() == 1) * 1.0
    return model.eval()


# ---- the reference: the published definition, op by op, on HF-layout tensors ---------------------------
def block_mask(cfg: ModelConfig, L: int) -> torch.Tensor:
    """(H, L, L) bool: the remote code's _get_sparse_attn_mask expanded to tokens (kron) and made causal."""
    H, bs, vert = cfg.num_attention_heads, cfg.blocksparse_block_size, cfg.blocksparse_vert_stride
    n = -(-L // bs)
    qb, kb = torch.arange(n)[None, :, None], torch.arange(n)[None, None]
    step = 0 if cfg.blocksparse_homo_head_pattern else max(1, vert // H)
    vertical = torch.stack([(torch.arange(n) + h * step + 1) % vert == 0 for h in range(H)])[:, None]
    blocks = (qb >= kb) & ((qb - kb < cfg.blocksparse_num_local_blocks) | vertical)
    dense = torch.kron(blocks.int(), torch.ones(bs, bs, dtype=torch.int))[:, :L, :L].bool()
    return dense & torch.ones(L, L, dtype=torch.bool).tril()


def reference_logits(cfg: ModelConfig, sd: dict, idx: torch.Tensor) -> torch.Tensor:
    B, L = idx.shape
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    hd, g = cfg.hidden_size // H, H // KV
    x = sd["model.embed_tokens.weight"][idx] * cfg.mup_embedding_multiplier
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, hd, 2).float() / hd)
    ang = torch.arange(L).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(t):  # (B, h, L, hd), rotate_half
        t1, t2 = t[..., : hd // 2], t[..., hd // 2 :]
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def ln(t, name):
        return F.layer_norm(t, (cfg.hidden_size,), sd[name + ".weight"], sd[name + ".bias"], cfg.norm_eps)

    def lin(t, name):
        return F.linear(t, sd[name + ".weight"], sd[name + ".bias"])

    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        qkv = lin(ln(x, p + "input_layernorm"), p + "self_attn.query_key_value").view(B, L, KV, g + 2, hd)
        q = qkv[:, :, :, :g].reshape(B, L, H, hd).transpose(1, 2)
        k = qkv[:, :, :, g].transpose(1, 2).repeat_interleave(g, 1)
        v = qkv[:, :, :, g + 1].transpose(1, 2).repeat_interleave(g, 1)
        s = rope(q) @ rope(k).transpose(-1, -2) * (cfg.mup_attn_multiplier / hd)
        dense = (i + 1) % cfg.dense_attention_every_n_layers == 0
        allowed = torch.ones(L, L, dtype=torch.bool).tril() if dense else block_mask(cfg, L)
        y = (s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(B, L, -1)
        x = x + lin(y, p + "self_attn.dense")
        h = lin(ln(x, p + "post_attention_layernorm"), p + "mlp.up_proj")
        a_gelu, a_lin = (
            h[..., ::2].clamp(max=cfg.gegelu_limit),
            h[..., 1::2].clamp(-cfg.gegelu_limit, cfg.gegelu_limit),
        )
        x = x + lin(a_gelu * torch.sigmoid(1.702 * a_gelu) * (a_lin + 1), p + "mlp.down_proj")
    logits = ln(x, "model.final_layernorm") @ sd["model.embed_tokens.weight"].t() / cfg.mup_width_multiplier
    logits[..., list(cfg.masked_token_ids)] = torch.finfo(logits.dtype).min
    return logits


def assert_close(ours, ref):
    keep = ref > torch.finfo(ref.dtype).min  # the masked ids are exactly the minimum on both sides
    assert torch.equal(keep, ours > torch.finfo(ours.dtype).min)
    assert (ours[keep] - ref[keep]).abs().max() <= 1e-5 * max(1.0, float(ref[keep].abs().max()))


# ---- tests -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["phi-3-small-8k", "phi-3-small-128k"])
def test_presets_7b39_on_meta(name):
    cfg = get_preset(name)
    model = build(cfg, device="meta")
    assert all(p.is_meta for p in model.parameters())  # nothing allocated
    assert model.num_params() == cfg.num_params() == 7_392_272_384
    assert [cfg.sparse_layer(i) for i in range(4)] == [True, False, True, False]
    assert model.blocks[0].attn.sparse.num_heads == 32 and model.blocks[1].attn.sparse is None
    assert cfg.attention_scale == 1 / 128
    assert len(cfg.masked_token_ids) == 91 and 100257 not in cfg.masked_token_ids  # 100257: eos


@pytest.mark.parametrize("L", [1, 7, 8, 9, 23, 40, 61])
@pytest.mark.parametrize("homo", [False, True])
def test_full_forward_matches_reference(L, homo):
    cfg = small_cfg(blocksparse_homo_head_pattern=homo)
    model = random_model(cfg, seed=L)
    idx = torch.randint(0, cfg.vocab_size, (2, L), generator=torch.Generator().manual_seed(L))
    with torch.no_grad():
        assert_close(model(idx), reference_logits(cfg, hf_state_dict(model), idx))


def test_sparsity_matters_in_the_reference():
    # at 61 tokens with 2 local blocks of 8, the pattern hides keys: dense attention gives other logits
    cfg = small_cfg()
    model = random_model(cfg)
    idx = torch.randint(0, cfg.vocab_size, (1, 61), generator=torch.Generator().manual_seed(0))
    dense_cfg = cfg.replace(dense_attention_every_n_layers=1)  # every layer dense
    dense = build(dense_cfg)
    dense.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (model(idx) - dense.eval()(idx))[:, 20:].abs().max() > 1e-2


@pytest.mark.parametrize("chunks", [(61,), (5, 1, 1, 1, 30, 1, 1), (16, 16, 1, 8, 9), (1,) * 40])
def test_kv_cached_prefill_and_decode_match_reference(chunks):
    cfg = small_cfg()
    model = random_model(cfg, seed=7)
    L = sum(chunks)
    idx = torch.randint(0, cfg.vocab_size, (2, L), generator=torch.Generator().manual_seed(1))
    ref = reference_logits(cfg, hf_state_dict(model), idx)
    cache = KVCache(cfg, 2, L)
    pos, outs = 0, []
    with torch.no_grad():
        for n in chunks:
            outs.append(model(idx[:, pos : pos + n], pos=pos, cache=cache))
            pos += n
    assert_close(torch.cat(outs, 1), ref)


def test_left_padded_rows_match_unpadded():
    # the engine's left padding: positions = slot - pad, pads' keys masked; each row must equal its own run
    from phiforge.infer.engine import Engine
    from phiforge.infer.sampling import SamplingParams

    cfg = small_cfg(pad_token_id=0, eos_token_id=None)
    model = random_model(cfg, seed=3)
    engine = Engine(model)
    prompts = [[7, 8, 9], list(range(10, 40))]
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    batched = engine.generate(prompts, params)
    for p, b in zip(prompts, batched, strict=True):
        assert engine.generate([p], params)[0].tokens == b.tokens


@pytest.mark.parametrize("T", [1, 4, 7])  # a decode step, one block of queries, two blocks
def test_kernel_touches_only_allowed_blocks(T):
    # poison every key/value the pattern hides from these queries: the output must not change
    lay = BlockSparseLayout(block=4, local=2, vert=3, num_heads=4)
    L = 40
    q = torch.randn(1, 4, T, 8)
    k, v = torch.randn(1, 2, L, 8), torch.randn(1, 2, L, 8)
    base = block_sparse_attention(q, k, v, L - T, lay, 0.3)
    cfg = small_cfg(
        num_attention_heads=4,
        num_key_value_heads=2,
        blocksparse_block_size=4,
        blocksparse_num_local_blocks=2,
        blocksparse_vert_stride=3,
    )
    seen = block_mask(cfg, L)[:, L - T :].any(1)  # (H, L): keys some query of the block may see
    hidden = ~seen.view(2, 2, L).any(1)  # (KV, L): keys no head of the group sees
    assert hidden.any()
    k2, v2 = k.clone(), v.clone()
    k2[0][hidden], v2[0][hidden] = float("nan"), float("nan")
    assert torch.equal(block_sparse_attention(q, k2, v2, L - T, lay, 0.3), base)


def test_hf_round_trip_keeps_remote_code_names(tmp_path):
    cfg = small_cfg()
    model = random_model(cfg)
    save_model(model, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["architectures"] == ["Phi3SmallForCausalLM"] and d["model_type"] == "phi3small"
    for key in (
        "rope_embedding_base",
        "ff_intermediate_size",
        "layer_norm_epsilon",
        "gegelu_limit",
        "mup_width_multiplier",
        "blocksparse_vert_stride",
        "dense_attention_every_n_layers",
    ):
        assert key in d, key
    assert d["dummy_token_indices"] == [0, 5, 299] and "rope_theta" not in d
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert "model.layers.0.self_attn.query_key_value.bias" in names
    assert "model.layers.3.mlp.up_proj.weight" in names and "lm_head.weight" not in names
    back = load_model(tmp_path)
    assert back.cfg == cfg
    idx = torch.randint(0, cfg.vocab_size, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back.eval()(idx), model(idx))


def test_published_config_json_loads(tmp_path):
    # Phi-3-small-8k-instruct's config.json fields (no dummy_token_indices: the remote code derives them)
    from phiforge.model.hf import config_from_hf

    published = {
        "architectures": ["Phi3SmallForCausalLM"],
        "model_type": "phi3small",
        "_name_or_path": "Phi-3-small-8k-instruct",
        "auto_map": {"AutoConfig": "configuration_phi3_small.Phi3SmallConfig"},
        "transformers_version": "4.38.1",
        "attention_bias": False,
        "attention_dropout_prob": 0.0,
        "blocksparse_block_size": 64,
        "blocksparse_homo_head_pattern": False,
        "blocksparse_num_local_blocks": 16,
        "blocksparse_triton_kernel_block_size": 64,
        "blocksparse_vert_stride": 8,
        "bos_token_id": 100257,
        "dense_attention_every_n_layers": 2,
        "embedding_dropout_prob": 0.1,
        "eos_token_id": 100257,
        "ff_dim_multiplier": None,
        "ff_intermediate_size": 14336,
        "ffn_dropout_prob": 0.1,
        "gegelu_limit": 20.0,
        "gegelu_pad_to_256": True,
        "hidden_act": "gegelu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "max_position_embeddings": 8192,
        "mup_attn_multiplier": 1.0,
        "mup_embedding_multiplier": 10.0,
        "mup_use_scaling": True,
        "mup_width_multiplier": 8.0,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pad_sequence_to_multiple_of_64": True,
        "reorder_and_upcast_attn": False,
        "rope_embedding_base": 1000000,
        "rope_position_scale": 1.0,
        "rope_scaling": None,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 100352,
    }
    assert config_from_hf(published) == get_preset("phi-3-small-8k")
    long = {
        **published,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "type": "su",
            "short_factor": [1.0] * 64,
            "long_factor": [2.0] * 64,
            "short_mscale": 1.0,
            "long_mscale": 1.19,
            "original_max_position_embeddings": 8192,
        },
    }
    cfg = config_from_hf(long)
    assert cfg.rope_kind == "longrope" and cfg.original_max_position_embeddings == 8192
    from phiforge.model.rope import RopeTables

    assert RopeTables(cfg).scales == {"short": 1.0, "long": 1.19}
    with pytest.raises(CheckpointError, match="blocksparse_triton_kernel_block_size=32"):
        config_from_hf({**published, "blocksparse_triton_kernel_block_size": 32})


def test_loss_path_matches_logits():
    cfg = small_cfg()
    model = random_model(cfg)
    idx = torch.randint(1, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    y = idx.roll(-1, 1)
    y[y == 5] = 6  # a masked id as a target would be an infinite loss
    with torch.no_grad():
        want = F.cross_entropy(model(idx).flatten(0, 1), y.flatten())
        assert torch.allclose(model(idx, targets=y), want, atol=1e-6)


def test_gguf_export_refuses_with_one_line(tmp_path):
    # llama.cpp (src/llama-arch.cpp, gguf-py's MODEL_ARCH) has phi2, phi3 and phimoe, no Phi-3-small
    from phiforge.infer.gguf_export import export_gguf

    save_model(random_model(small_cfg()), tmp_path / "m")
    with pytest.raises(CheckpointError, match="llama.cpp has no architecture for Phi-3-small") as e:
        export_gguf(tmp_path / "m", tmp_path / "m.gguf", "f16")
    assert "\n" not in str(e.value) and not (tmp_path / "m.gguf").exists()


def test_memory_grows_with_allowed_blocks_not_t_squared():
    # the largest single allocation of a 2048-token prefill: the (T x D) output, not a T x T mask or scores
    from torch.profiler import ProfilerActivity, profile

    lay = BlockSparseLayout(block=16, local=4, vert=4, num_heads=4)
    T = 2048
    q, k, v = torch.randn(1, 4, T, 8), torch.randn(1, 2, T, 8), torch.randn(1, 2, T, 8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        block_sparse_attention(q, k, v, 0, lay, 0.3)
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert biggest <= q.numel() * 4  # one fp32 (H, T, D) tensor
    assert biggest < 4 * T * T * 4 / 200  # dense scores would be 67 MB
